//! The last step before a log line reaches stderr: no raw control character
//! from client input (a username, a path, an id) may forge or split a line.
//!
//! Field escaping is left to each format (JSON escapes by itself; the human
//! format writes `%` fields raw), so this writer enforces the rule for every
//! format at once, for the gate's events and Pingora's alike: each event is
//! one write, and every control character in it but the final newline is
//! written as an escape (`\n`, `\r`, `\t`, `\x1b`, `\u{85}`).

use std::borrow::Cow;
use std::io::{self, Write};

/// Wraps the sink the non-blocking log worker writes to, so the escaping
/// runs on that worker thread, off the request path.
pub struct Escaping<W>(pub W);

impl<W: Write> Write for Escaping<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_all(&escape_line(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// One event's bytes with every control character escaped, except a
/// trailing `\n` (the line's own end). Borrowed when there is nothing to do,
/// which is every line without client control characters.
pub fn escape_line(buf: &[u8]) -> Cow<'_, [u8]> {
    let (body, newline) = match buf.strip_suffix(b"\n") {
        Some(body) => (body, true),
        None => (buf, false),
    };
    let text = String::from_utf8_lossy(body);
    if !text.chars().any(char::is_control) && matches!(text, Cow::Borrowed(_)) {
        return Cow::Borrowed(buf);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() && u32::from(c) < 0x80 => {
                out.push_str(&format!("\\x{:02x}", u32::from(c)));
            }
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    if newline {
        out.push('\n');
    }
    Cow::Owned(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esc(s: &str) -> String {
        String::from_utf8(escape_line(s.as_bytes()).into_owned()).unwrap()
    }

    #[test]
    fn a_clean_line_passes_untouched() {
        let line = b"2026-01-01T00:00:00Z INFO access: route=public status=200\n";
        assert!(matches!(escape_line(line), Cow::Borrowed(_)));
        assert!(matches!(escape_line("é ok\n".as_bytes()), Cow::Borrowed(_)));
    }

    #[test]
    fn control_characters_inside_a_line_are_escaped() {
        assert_eq!(
            esc("login refused username=x\nINFO access: route=admin status=200\n"),
            "login refused username=x\\nINFO access: route=admin status=200\n"
        );
        assert_eq!(
            esc("a\rb\tc\u{1b}[31md\u{7f}\n"),
            "a\\rb\\tc\\x1b[31md\\x7f\n"
        );
        assert_eq!(esc("next\u{85}line\u{2028}"), "next\\u{85}line\u{2028}");
        // Only the last newline is the line's own.
        assert_eq!(esc("a\n\n"), "a\\n\n");
    }

    #[test]
    fn json_lines_stay_valid_json() {
        let line = "{\"username\":\"x\\nINFO\",\"msg\":\"login refused\"}\n";
        assert!(matches!(escape_line(line.as_bytes()), Cow::Borrowed(_)));
    }

    #[test]
    fn invalid_utf8_is_replaced_not_passed_raw() {
        let out = escape_line(b"bad \xff\x1b byte\n");
        assert_eq!(
            String::from_utf8(out.into_owned()).unwrap(),
            "bad \u{fffd}\\x1b byte\n"
        );
    }
}
