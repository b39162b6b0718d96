//! An upstream that records the raw head of every request the gate forwards
//! to it, and readers for what it recorded: the attack tests assert on the
//! exact bytes an upstream received.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Upstream;

/// Every request head an upstream received, raw.
pub type Seen = Arc<Mutex<Vec<Vec<u8>>>>;

/// A whole answer that closes the connection.
pub const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";

/// An upstream that records each request head and answers `answer`, then
/// keeps the connection until the gate closes it.
pub async fn recording(answer: &'static [u8]) -> (Upstream, Seen) {
    let seen = Seen::default();
    let log = Arc::clone(&seen);
    let up = Upstream::custom(move |mut tcp| {
        let log = Arc::clone(&log);
        async move {
            // The blank line is found by hand, not by a parser, on purpose:
            // a head the gate should never have forwarded is recorded even
            // when no HTTP parser would accept it.
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            log.lock().expect("seen lock").push(head);
            if tcp.write_all(answer).await.is_err() {
                return;
            }
            while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
        }
    })
    .await;
    (up, seen)
}

/// A recorded head: its request line (method and target) and its header
/// lines (lowercase name, raw value bytes), in order.
pub fn parse_head(head: &[u8]) -> (String, Vec<(String, Vec<u8>)>) {
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut hs);
    assert!(matches!(req.parse(head), Ok(httparse::Status::Complete(_))));
    let line = format!("{} {}", req.method.unwrap_or(""), req.path.unwrap_or(""));
    let lines = req
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .collect();
    (line, lines)
}

/// A recorded head's header lines.
pub fn header_lines(head: &[u8]) -> Vec<(String, Vec<u8>)> {
    parse_head(head).1
}

/// The values of `name` (lowercase), in order.
pub fn values<'a>(lines: &'a [(String, Vec<u8>)], name: &str) -> Vec<&'a [u8]> {
    lines
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_slice())
        .collect()
}

/// The names a head carries, sorted.
pub fn names(lines: &[(String, Vec<u8>)]) -> Vec<String> {
    let mut n: Vec<String> = lines.iter().map(|(n, _)| n.clone()).collect();
    n.sort();
    n
}

/// Every head recorded so far.
pub fn recorded(seen: &Seen) -> Vec<Vec<u8>> {
    seen.lock().expect("seen lock").clone()
}

/// Every head recorded so far, forgetting them.
pub fn take(seen: &Seen) -> Vec<Vec<u8>> {
    std::mem::take(&mut *seen.lock().expect("seen lock"))
}
