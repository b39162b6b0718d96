//! The access log's own formatter: one line per request, in the same shape as the `tracing`
//! event it replaces (target `access`, both the human and the JSON format), written straight into
//! the batching log writer ([`crate::logwriter`]).
//!
//! Why not a `tracing::info!`: measured on the public route (release build, `-c32`, one run,
//! load average ~5 on 2 cores), the access event through `tracing-subscriber`'s fmt layer cost
//! the gate about 12 % of its throughput (public / stock Pingora 0.78 with the log at `info`,
//! 0.90 at `warn`). Here a line is formatted into a per-thread buffer with no allocation once
//! warm. The filter still decides: the caller asks `tracing::enabled!` for target `access` first,
//! so `SESSIONGATE_LOG` turns it off as before. Strings are escaped (Rust `Debug` quoting in the
//! human format, JSON escapes in the other), so no client byte can split or forge a line.
//!
//! Built field by field (digits, IPv4 addresses and latencies pushed by hand, the timestamp's
//! date and time of day formatted once a second per thread): the formatting machinery only
//! runs for rare values (non-ASCII strings, IPv6 addresses), with the same output.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::iptext::{Ipv4Text, push_ip};
use crate::logwriter::LineSink;

/// One request's line.
pub struct AccessLine<'a> {
    pub route: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub sid: &'a str,
    /// The client address the gate believes (PROXY header, trusted proxies).
    pub client: Option<IpAddr>,
    pub upstream: Option<SocketAddr>,
    pub error: Option<&'a str>,
    pub latency_ms: f64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Format {
    Human,
    Json,
}

static SINK: OnceLock<(LineSink, Format)> = OnceLock::new();

/// Makes `sink` the access log's destination for the process (the first call wins).
pub fn install(sink: LineSink, format: Format) {
    let _ = SINK.set((sink, format));
}

thread_local! {
    static BUF: RefCell<String> = RefCell::new(String::with_capacity(512));
    /// The second last stamped on this thread and its text up to the fraction
    /// (`2025-12-04T02:23:20.`): a calendar conversion once a second, not per line.
    static STAMP: Cell<(i64, [u8; STAMP_LEN])> = const { Cell::new((i64::MIN, [0; STAMP_LEN])) };
}

/// `YYYY-MM-DDTHH:MM:SS.`
const STAMP_LEN: usize = 20;

/// Writes `line` if an access log was installed; false otherwise (the caller then logs through
/// `tracing`, as in tests that run the proxy in-process without `main`).
pub fn write(line: &AccessLine<'_>) -> bool {
    let Some((sink, format)) = SINK.get() else {
        return false;
    };
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = i64::try_from(since.as_secs()).unwrap_or(i64::MAX);
    BUF.with(|b| {
        let mut buf = b.borrow_mut();
        buf.clear();
        render_at(&mut buf, *format, secs, since.subsec_micros(), line);
        sink.append(buf.as_bytes());
    });
    true
}

/// RFC 3339 with microseconds, as `tracing-subscriber` prints it; the date
/// and time of day come from the per-second cache.
fn timestamp(out: &mut String, secs: i64, micros: u32) {
    let (cached, mut text) = STAMP.get();
    if cached != secs {
        text = stamp_of(secs);
        STAMP.set((secs, text));
    }
    // Only ASCII digits and separators went in.
    out.push_str(std::str::from_utf8(&text).unwrap_or_default());
    push_padded(out, micros, 6);
    out.push('Z');
}

fn stamp_of(secs: i64) -> [u8; STAMP_LEN] {
    let t =
        time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let mut s = String::with_capacity(STAMP_LEN);
    push_padded(&mut s, u32::try_from(t.year()).unwrap_or(0), 4);
    s.push('-');
    push_padded(&mut s, u32::from(u8::from(t.month())), 2);
    s.push('-');
    push_padded(&mut s, u32::from(t.day()), 2);
    s.push('T');
    push_padded(&mut s, u32::from(t.hour()), 2);
    s.push(':');
    push_padded(&mut s, u32::from(t.minute()), 2);
    s.push(':');
    push_padded(&mut s, u32::from(t.second()), 2);
    s.push('.');
    let mut out = [b'0'; STAMP_LEN];
    for (o, b) in out.iter_mut().zip(s.bytes()) {
        *o = b;
    }
    out
}

/// `n` in decimal, zero-padded to `width` digits (more when it needs them).
fn push_padded(out: &mut String, n: u32, width: usize) {
    let mut digits = [b'0'; 10];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let start = i.min(digits.len().saturating_sub(width));
    // ASCII digits only.
    out.push_str(std::str::from_utf8(digits.get(start..).unwrap_or_default()).unwrap_or_default());
}

fn push_u64(out: &mut String, n: u64) {
    match u32::try_from(n) {
        Ok(n) => push_padded(out, n, 1),
        Err(_) => {
            let _ = write!(out, "{n}");
        }
    }
}

fn push_socket(out: &mut String, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(a) => {
            out.push_str(Ipv4Text::new(*a.ip()).as_str());
            out.push(':');
            push_padded(out, u32::from(a.port()), 1);
        }
        SocketAddr::V6(a) => {
            let _ = write!(out, "{a}");
        }
    }
}

/// `s` as Rust's `{:?}` quotes it: printable ASCII needs only `"` and `\\`
/// escaped, so that common case skips the formatter, and a string with
/// neither (most routes, methods, paths and ids) is copied whole.
fn debug_str(out: &mut String, s: &str) {
    if !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        let _ = write!(out, "{s:?}");
        return;
    }
    out.push('"');
    if s.bytes().any(|b| b == b'"' || b == b'\\') {
        for c in s.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
    } else {
        out.push_str(s);
    }
    out.push('"');
}

/// `ms` as `{:.3}` prints it. Through whole microseconds, unless the value
/// is negative, not finite, past 1e9 µs (where one ulp of the product
/// nears 1e-6), or within 1e-6 of a rounding tie (where the float product
/// could round the other way from the formatter's exact decimal): those go
/// to the formatter.
fn push_ms(out: &mut String, ms: f64) {
    let us = ms * 1000.0;
    let near_tie = (us - us.floor() - 0.5).abs() < 1e-6;
    if !(0.0..1e9).contains(&us) || ms.is_sign_negative() || near_tie {
        let _ = write!(out, "{ms:.3}");
        return;
    }
    let us = us.round() as u64;
    push_u64(out, us / 1000);
    out.push('.');
    push_padded(out, (us % 1000) as u32, 3);
}

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    // Nothing to escape (the usual case): copied whole.
    if !s
        .bytes()
        .any(|b| b < 0x20 || b == b'"' || b == b'\\' || b == 0x7f)
    {
        out.push_str(s);
        out.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                out.push_str("\\u00");
                push_hex2(out, u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn push_hex2(out: &mut String, n: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(char::from(HEX[(n >> 4 & 0xf) as usize]));
    out.push(char::from(HEX[(n & 0xf) as usize]));
}

/// The line for `l` at time `t`, newline included.
pub fn render(out: &mut String, format: Format, t: time::OffsetDateTime, l: &AccessLine<'_>) {
    render_at(out, format, t.unix_timestamp(), t.microsecond(), l);
}

/// [`render`] at `secs` since the epoch and `micros` into that second. Field by field into
/// `out`, with no formatter for the usual values (ASCII strings, IPv4, finite latencies).
fn render_at(out: &mut String, format: Format, secs: i64, micros: u32, l: &AccessLine<'_>) {
    match format {
        Format::Human => {
            timestamp(out, secs, micros);
            out.push_str("  INFO access: route=");
            debug_str(out, l.route);
            out.push_str(" method=");
            debug_str(out, l.method);
            out.push_str(" path=");
            debug_str(out, l.path);
            out.push_str(" status=");
            push_padded(out, u32::from(l.status), 1);
            out.push_str(" sid=");
            debug_str(out, l.sid);
            if let Some(c) = l.client {
                out.push_str(" client=");
                push_ip(out, c);
            }
            if let Some(u) = l.upstream {
                out.push_str(" upstream=");
                push_socket(out, u);
            }
            if let Some(e) = l.error {
                out.push_str(" error=");
                debug_str(out, e);
            }
            out.push_str(" latency_ms=");
            push_ms(out, l.latency_ms);
            out.push('\n');
        }
        Format::Json => {
            out.push_str("{\"timestamp\":\"");
            timestamp(out, secs, micros);
            out.push_str("\",\"level\":\"INFO\",\"route\":");
            json_str(out, l.route);
            out.push_str(",\"method\":");
            json_str(out, l.method);
            out.push_str(",\"path\":");
            json_str(out, l.path);
            out.push_str(",\"status\":");
            push_padded(out, u32::from(l.status), 1);
            out.push_str(",\"sid\":");
            json_str(out, l.sid);
            if let Some(c) = l.client {
                out.push_str(",\"client\":\"");
                push_ip(out, c);
                out.push('"');
            }
            if let Some(u) = l.upstream {
                out.push_str(",\"upstream\":\"");
                push_socket(out, u);
                out.push('"');
            }
            if let Some(e) = l.error {
                out.push_str(",\"error\":");
                json_str(out, e);
            }
            let latency = if l.latency_ms.is_finite() {
                l.latency_ms
            } else {
                0.0
            };
            out.push_str(",\"latency_ms\":");
            push_ms(out, latency);
            out.push_str(",\"target\":\"access\"}\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(path: &'a str, error: Option<&'a str>) -> AccessLine<'a> {
        AccessLine {
            route: "shop",
            method: "GET",
            path,
            status: 200,
            sid: "abc",
            client: None,
            upstream: "127.0.0.1:7001".parse().ok(),
            error,
            latency_ms: 1.25,
        }
    }

    fn at() -> time::OffsetDateTime {
        time::OffsetDateTime::from_unix_timestamp_nanos(1_764_815_000_123_456_000)
            .expect("valid time")
    }

    #[test]
    fn human_lines_look_like_the_tracing_event_they_replace() {
        let mut out = String::new();
        render(&mut out, Format::Human, at(), &line("/items", None));
        assert_eq!(
            out,
            "2025-12-04T02:23:20.123456Z  INFO access: route=\"shop\" method=\"GET\" \
             path=\"/items\" status=200 sid=\"abc\" upstream=127.0.0.1:7001 latency_ms=1.250\n"
        );
    }

    #[test]
    fn json_lines_parse_and_carry_every_field() {
        let mut out = String::new();
        render(
            &mut out,
            Format::Json,
            at(),
            &line("/items", Some("bad_request")),
        );
        assert!(out.ends_with("}\n") && out.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
        assert_eq!(v["target"], "access");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["route"], "shop");
        assert_eq!(v["path"], "/items");
        assert_eq!(v["status"], 200);
        assert_eq!(v["sid"], "abc");
        assert_eq!(v["upstream"], "127.0.0.1:7001");
        assert_eq!(v["error"], "bad_request");
        assert_eq!(v["latency_ms"], 1.25);
        assert_eq!(v["timestamp"], "2025-12-04T02:23:20.123456Z");
    }

    #[test]
    fn control_characters_never_split_a_line_in_either_format() {
        let evil = "/a\nINFO access: route=\"admin\"\r\u{1b}[31m\"\\";
        for format in [Format::Human, Format::Json] {
            let mut out = String::new();
            render(&mut out, format, at(), &line(evil, None));
            assert_eq!(out.matches('\n').count(), 1, "{out}");
            assert!(out.ends_with('\n'));
            assert!(!out.contains('\r') && !out.contains('\u{1b}'), "{out}");
            if format == Format::Json {
                let v: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
                assert_eq!(v["path"], evil);
            }
        }
    }

    #[test]
    fn hand_formatting_matches_the_formatter() {
        for v in [
            0.0,
            0.0004,
            0.0005,
            0.0015,
            0.0025,
            1.25,
            12.3456,
            999.9995,
            123_456.789_5,
            2.5e-7,
            1e7,
            -1.0,
            -0.0,
            f64::NAN,
            f64::INFINITY,
        ] {
            let mut out = String::new();
            push_ms(&mut out, v);
            assert_eq!(out, format!("{v:.3}"), "{v}");
        }
        for s in [
            "",
            "plain",
            "q\"uote",
            "back\\slash",
            "tab\t",
            "é",
            "\u{1b}[31m",
            "a'b",
            "\u{301}",
        ] {
            let mut out = String::new();
            debug_str(&mut out, s);
            assert_eq!(out, format!("{s:?}"));
        }
        for a in [
            "1.2.3.4:80",
            "[::1]:8080",
            "255.255.255.255:65535",
            "0.0.0.0:0",
        ] {
            let a: SocketAddr = a.parse().expect("address");
            let mut out = String::new();
            push_socket(&mut out, a);
            assert_eq!(out, a.to_string());
        }
        for n in [0, 7, 10, 65_535, u64::from(u32::MAX) + 1] {
            let mut out = String::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string());
        }
    }

    proptest::proptest! {
        /// Latencies as the formatter writes them, whatever the value.
        #[test]
        fn latency_matches_the_formatter(v in 0.0f64..2e6) {
            let mut out = String::new();
            push_ms(&mut out, v);
            proptest::prop_assert_eq!(out, format!("{v:.3}"));
        }
    }

    /// The per-second cache follows the clock back and forth on one thread.
    #[test]
    fn the_timestamp_cache_follows_the_clock() {
        let t = at();
        for (delta, want) in [
            (0, "2025-12-04T02:23:20.123456Z"),
            (1, "2025-12-04T02:23:21.123456Z"),
            (86_400 * 30, "2026-01-03T02:23:20.123456Z"),
            (0, "2025-12-04T02:23:20.123456Z"),
        ] {
            let mut out = String::new();
            render(
                &mut out,
                Format::Human,
                t + time::Duration::seconds(delta),
                &line("/", None),
            );
            assert!(out.starts_with(want), "{out}");
        }
    }

    #[test]
    fn absent_fields_are_left_out() {
        let mut out = String::new();
        let mut l = line("/", None);
        l.upstream = None;
        render(&mut out, Format::Json, at(), &l);
        let v: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
        assert!(
            v.get("upstream").is_none() && v.get("error").is_none(),
            "{out}"
        );
    }
}
