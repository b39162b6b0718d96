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

use std::cell::RefCell;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

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
}

/// Writes `line` if an access log was installed; false otherwise (the caller then logs through
/// `tracing`, as in tests that run the proxy in-process without `main`).
pub fn write(line: &AccessLine<'_>) -> bool {
    let Some((sink, format)) = SINK.get() else {
        return false;
    };
    let now = time::OffsetDateTime::now_utc();
    BUF.with(|b| {
        let mut buf = b.borrow_mut();
        buf.clear();
        render(&mut buf, *format, now, line);
        sink.append(buf.as_bytes());
    });
    true
}

/// RFC 3339 with microseconds, as `tracing-subscriber` prints it.
fn timestamp(out: &mut String, t: time::OffsetDateTime) {
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    );
}

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The line for `l` at time `t`, newline included.
pub fn render(out: &mut String, format: Format, t: time::OffsetDateTime, l: &AccessLine<'_>) {
    match format {
        Format::Human => {
            timestamp(out, t);
            let _ = write!(
                out,
                "  INFO access: route={:?} method={:?} path={:?} status={} sid={:?}",
                l.route, l.method, l.path, l.status, l.sid
            );
            if let Some(c) = l.client {
                let _ = write!(out, " client={c}");
            }
            if let Some(u) = l.upstream {
                let _ = write!(out, " upstream={u}");
            }
            if let Some(e) = l.error {
                let _ = write!(out, " error={e:?}");
            }
            let _ = writeln!(out, " latency_ms={:.3}", l.latency_ms);
        }
        Format::Json => {
            out.push_str("{\"timestamp\":\"");
            timestamp(out, t);
            out.push_str("\",\"level\":\"INFO\",\"route\":");
            json_str(out, l.route);
            out.push_str(",\"method\":");
            json_str(out, l.method);
            out.push_str(",\"path\":");
            json_str(out, l.path);
            let _ = write!(out, ",\"status\":{},\"sid\":", l.status);
            json_str(out, l.sid);
            if let Some(c) = l.client {
                let _ = write!(out, ",\"client\":\"{c}\"");
            }
            if let Some(u) = l.upstream {
                let _ = write!(out, ",\"upstream\":\"{u}\"");
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
            let _ = writeln!(out, ",\"latency_ms\":{latency:.3},\"target\":\"access\"}}");
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
