//! Client connections in front of Pingora's HTTP/1 loop: a deadline for the
//! whole request head (`server.header_timeout`) and an idle limit between
//! keep-alive requests (`server.keepalive_timeout`).
//!
//! Pingora 0.9 only times each read of a head, resetting on every byte, so a
//! head trickled one byte at a time is never cut. [`Downstream`] reads each
//! head itself, under one deadline (the connection's [`Deadline`], kept by a
//! sweeper rather than a timer per request), and hands the bytes to Pingora's session
//! as its pipelined prefix, which Pingora parses without reading again.
//! HTTP/2 connections go to Pingora whole, with the idle limit as its
//! `h2_idle_timeout`, once their connection preface has come within the head
//! deadline: Pingora's HTTP/2 handshake waits for it with no limit, and its
//! idle limit only starts after it ([`read_preface`], [`Prefaced`]).
//!
//! One look at the head comes first: Pingora refuses, with a bare 400, an
//! absolute-form target whose authority differs from `Host` in any byte. The
//! gate reads them as equal when they differ only in case or by the scheme's
//! default port ([`crate::path::same_authority`]): such a target is sent on
//! in origin-form, routed by `Host`; one that really differs gets the gate's
//! JSON 400 ([`absolute_form`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{ALPN, Stream};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::deadline::Deadline;
use crate::gate::Gate;
use crate::path::same_authority;
use crate::reject::Reject;
use crate::response::Response;

/// Pingora's own cap on a request head; past it the bytes go to Pingora,
/// which answers 400.
const MAX_HEAD: usize = 1024 * 1024;
/// What Pingora allocates for a head; the buffer becomes its buffer.
const HEAD_BUF: usize = 4096;
/// How long a 408 may take to write before the connection is dropped anyway.
const WRITE_408: Duration = Duration::from_secs(1);
const RESPONSE_408: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// The time limits for one head, read from the config in force.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header: Duration,
    pub keepalive: Duration,
}

/// How waiting for a head ended.
#[derive(Debug)]
enum Head {
    /// A complete head (perhaps with body bytes after it), or more bytes than
    /// any head may have, for Pingora to refuse.
    Ready(BytesMut),
    /// The client closed, the read failed, or the gate is shutting down.
    Closed,
    /// The deadline passed; `partial` when some of a head had arrived.
    TimedOut { partial: bool },
}

/// A Pingora HTTP application with the head deadline and keep-alive limit in
/// front of it.
pub struct Downstream<A> {
    app: Arc<A>,
    gate: Arc<Gate>,
}

impl<A> Downstream<A> {
    pub fn new(app: A, gate: Arc<Gate>) -> Downstream<A> {
        Downstream {
            app: Arc::new(app),
            gate,
        }
    }

    fn limits(&self) -> Limits {
        let s = self.gate.settings();
        Limits {
            header: s.config.server.header_timeout,
            keepalive: s.config.server.keepalive_timeout,
        }
    }
}

#[async_trait]
impl<A> ServerApp for Downstream<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let h2c = self.app.server_options().is_some_and(|o| o.h2c);
        if h2c || matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            let limit = self.limits().header;
            let Some(prefix) = read_preface(&mut stream, limit).await else {
                tracing::debug!(
                    peer = ?stream.get_socket_digest().and_then(|d| d.peer_addr().cloned()),
                    timeout = ?limit,
                    "HTTP/2 connection preface not received in time: connection closed"
                );
                return None;
            };
            let stream: Stream = Box::new(Prefaced {
                inner: stream,
                prefix,
            });
            return ServerApp::process_new(&self.app, stream, shutdown).await;
        }
        let mut settings: Option<HttpPersistentSettings> = None;
        let mut first = true;
        // Both once per connection, not per request.
        let deadline = Deadline::new();
        let mut watch = shutdown.clone();
        loop {
            let limits = self.limits();
            let head = match read_head(&mut stream, first, limits, &mut watch, &deadline).await {
                Head::Ready(head) => head,
                Head::Closed => return None,
                Head::TimedOut { partial } => {
                    if partial {
                        tracing::info!(
                            peer = ?stream.get_socket_digest().and_then(|d| d.peer_addr().cloned()),
                            timeout = ?limits.header,
                            "request head not complete in time: 408, connection closed"
                        );
                        let _ = pingora::prelude::timeout(WRITE_408, async {
                            stream.write_all(RESPONSE_408).await?;
                            stream.flush().await
                        })
                        .await;
                    }
                    return None;
                }
            };
            let head = match absolute_form(head) {
                Target::Keep(head) => head,
                Target::Refuse(why) => {
                    tracing::info!(reason = why, "bad request target: 400, connection closed");
                    let _ = pingora::prelude::timeout(WRITE_408, async {
                        stream.write_all(&refusal(why)).await?;
                        stream.flush().await
                    })
                    .await;
                    return None;
                }
            };
            let mut session = ServerSession::new_http1(stream);
            match settings.take() {
                Some(s) => s.apply_to_session(&mut session),
                None => {
                    session.set_keepalive(Some(limits.keepalive.as_secs().max(1)));
                    session.set_keepalive_reuses_remaining(
                        self.app
                            .server_options()
                            .and_then(|o| o.keepalive_request_limit),
                    );
                }
            }
            if *shutdown.borrow() {
                session.set_keepalive(None);
            }
            // Pingora parses this before reading anything itself. It only
            // sets a prefix of its own with pipelining on, which is off here.
            session.set_pipelined_prefix(head);
            let reused = HttpServerApp::process_new_http(&self.app, session, shutdown).await?;
            let (next, next_settings) = reused.consume();
            stream = next;
            settings = next_settings;
            first = false;
        }
    }

    async fn cleanup(&self) {
        self.app.http_cleanup().await;
    }
}

/// Reads one request head. A new connection's first head must be complete
/// within `limits.header` of the start; on a kept-alive connection the next
/// request may take `limits.keepalive` to begin, and its head
/// `limits.header` from its first byte. An idle kept-alive connection is
/// closed at once when the gate shuts down. `deadline` is the connection's,
/// disarmed again on return.
async fn read_head(
    stream: &mut Stream,
    first: bool,
    limits: Limits,
    shutdown: &mut ShutdownWatch,
    deadline: &Deadline,
) -> Head {
    if !first && *shutdown.borrow() {
        return Head::Closed;
    }
    let mut buf = BytesMut::with_capacity(HEAD_BUF);
    let mut scan = HeadScan::default();
    deadline.arm_in(if first {
        limits.header
    } else {
        limits.keepalive
    });
    let head = loop {
        let idle = buf.is_empty();
        // Only a kept-alive connection waiting for its next request is closed
        // at shutdown. A new one was accepted before it and its client is
        // sending its first request (a graceful upgrade hands the listener
        // over meanwhile): it is served, within the head deadline.
        let read = tokio::select! {
            biased;
            res = stream.read_buf(&mut buf) => Some(res),
            () = deadline.expired() => None,
            _ = shutdown.changed(), if idle && !first => break Head::Closed,
        };
        match read {
            None => {
                break Head::TimedOut {
                    partial: !buf.is_empty(),
                };
            }
            Some(Ok(0) | Err(_)) => break Head::Closed,
            Some(Ok(_)) => {}
        }
        if scan.complete(&buf) || buf.len() > MAX_HEAD {
            break Head::Ready(buf);
        }
        if idle && !first {
            // The next request began: its head gets the head deadline.
            deadline.arm_in(limits.header);
        }
        // The deadline's branch is only polled while the read waits: a client
        // whose next byte is always there when read would never meet it.
        if deadline.passed() {
            break Head::TimedOut { partial: true };
        }
    };
    deadline.disarm();
    head
}

/// The HTTP/2 client connection preface (RFC 9113 section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads an HTTP/2 connection's first bytes: the preface, within `limit`.
/// `None` when it did not come in time or the client closed. Bytes that are not the preface are returned as soon as
/// they differ, for Pingora's HTTP/2 handshake to refuse.
async fn read_preface(stream: &mut Stream, limit: Duration) -> Option<BytesMut> {
    // Not cut short at shutdown: the connection was accepted before it (see
    // `read_head`); the deadline bounds it.
    let mut buf = BytesMut::with_capacity(H2_PREFACE.len());
    let deadline = Instant::now() + limit;
    while buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&buf) {
        let left = deadline.checked_duration_since(Instant::now())?;
        match pingora::prelude::timeout(left, stream.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
    Some(buf)
}

/// A stream whose first bytes were already read: they are read again first.
/// Everything else (TLS, ALPN, digests) is the inner stream's.
#[derive(Debug)]
struct Prefaced {
    inner: Stream,
    prefix: BytesMut,
}

impl tokio::io::AsyncRead for Prefaced {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let head = self.prefix.split_to(n);
            buf.put_slice(&head);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Prefaced {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl pingora::protocols::Shutdown for Prefaced {
    async fn shutdown(&mut self) {
        pingora::protocols::Shutdown::shutdown(self.inner.as_mut()).await;
    }
}

impl pingora::protocols::UniqueID for Prefaced {
    fn id(&self) -> pingora::protocols::UniqueIDType {
        self.inner.id()
    }
}

impl pingora::protocols::Ssl for Prefaced {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl pingora::protocols::GetTimingDigest for Prefaced {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl pingora::protocols::GetProxyDigest for Prefaced {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: pingora::protocols::raw_connect::ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl pingora::protocols::GetSocketDigest for Prefaced {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: pingora::protocols::SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

/// Not peekable, like Pingora's TLS streams: its HTTP/2 path never peeks.
impl pingora::protocols::Peek for Prefaced {}

/// What [`absolute_form`] made of a head.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// For Pingora, as it came or with its target in origin-form.
    Keep(BytesMut),
    /// The target's authority and `Host` name different servers.
    Refuse(&'static str),
}

/// Most headers Pingora parses in a head.
const MAX_HEADERS: usize = 256;

/// An absolute-form target whose authority names the same server as `Host`
/// but not in the same bytes (`http://API.example.com/x` with
/// `Host: api.example.com`, or `http://a.example:80/x` with `Host: a.example`)
/// becomes origin-form (`/x`), so Pingora takes it and the route is chosen
/// by `Host`; one naming another server is refused. Every other head is kept
/// as it is: origin-form (looked at by one byte), a target without `Host`
/// (the proxy routes it by its authority), and whatever Pingora refuses
/// itself (several `Host`s, userinfo, an ambiguous target).
fn absolute_form(head: BytesMut) -> Target {
    use pingora::http::authority::{RawTargetAuthority, raw_target_authority};
    let start = head
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(head.len());
    let line = &head[start..];
    let Some(sp) = line.iter().position(|&b| b == b' ') else {
        return Target::Keep(head);
    };
    if matches!(line.get(sp + 1), Some(b'/' | b'*') | None) {
        return Target::Keep(head);
    }
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut hs);
    if !matches!(req.parse(&head), Ok(httparse::Status::Complete(_))) {
        return Target::Keep(head);
    }
    let Some(target) = req.path else {
        return Target::Keep(head);
    };
    let mut hosts = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"));
    let (Some(host), None) = (hosts.next(), hosts.next()) else {
        return Target::Keep(head);
    };
    let RawTargetAuthority::Absolute {
        scheme,
        authority,
        path_and_query,
    } = raw_target_authority(target.as_bytes())
    else {
        return Target::Keep(head);
    };
    if host.value == authority || authority.contains(&b'@') {
        return Target::Keep(head);
    }
    let (Ok(scheme), Ok(authority), Ok(host)) = (
        std::str::from_utf8(scheme),
        std::str::from_utf8(authority),
        std::str::from_utf8(host.value),
    ) else {
        return Target::Keep(head);
    };
    if !same_authority(scheme, authority, host) {
        return Target::Refuse("Host differs from the request target's authority");
    }
    // httparse's path is a slice of `head`: splice origin-form in its place.
    let at = (target.as_ptr() as usize).checked_sub(head.as_ptr() as usize);
    let (Some(before), Some(after)) = (
        at.and_then(|at| head.get(..at)),
        at.and_then(|at| head.get(at + target.len()..)),
    ) else {
        return Target::Keep(head);
    };
    let origin: &[u8] = if path_and_query.is_empty() {
        b"/"
    } else {
        path_and_query
    };
    let mut out = BytesMut::with_capacity(head.len());
    out.extend_from_slice(before);
    out.extend_from_slice(origin);
    out.extend_from_slice(after);
    Target::Keep(out)
}

/// The gate's JSON 400, on a connection about to close.
fn refusal(why: &'static str) -> Vec<u8> {
    let resp = Response::reject(&Reject::BadRequest(why.into()));
    let mut out = format!("HTTP/1.1 {} Bad Request\r\n", resp.status).into_bytes();
    for (k, v) in &resp.headers {
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(
        format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            resp.body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&resp.body);
    out
}

/// Finds the end of a request head incrementally, as httparse reads it:
/// leading empty lines skipped, then a line ending (`\n` or `\r\n`) followed
/// by an empty line. Within a line it jumps to the next `\n` with `memchr`
/// (a word at a time) and looks only at the byte or two after each: a head's
/// lines are long and its line ends few, so that is most of the scan. Each byte
/// is passed over about once, so a head trickled a byte at a time costs no more
/// to scan than one sent whole.
#[derive(Debug, Default)]
struct HeadScan {
    /// Bytes already looked at.
    seen: usize,
    /// Past the leading empty lines.
    started: bool,
    /// The previous byte was `\n` (optionally followed by `\r`): one more
    /// `\n` ends the head.
    at_line_start: bool,
    /// A `\r` right after a line start.
    cr: bool,
}

impl HeadScan {
    fn complete(&mut self, buf: &[u8]) -> bool {
        let mut i = self.seen.min(buf.len());
        if !self.started {
            match buf
                .get(i..)
                .unwrap_or_default()
                .iter()
                .position(|&b| b != b'\r' && b != b'\n')
            {
                Some(n) => {
                    i += n;
                    self.started = true;
                }
                None => {
                    self.seen = buf.len();
                    return false;
                }
            }
        }
        loop {
            if self.at_line_start {
                match buf.get(i) {
                    None => break,
                    Some(b'\n') => {
                        self.seen = i + 1;
                        return true;
                    }
                    Some(b'\r') if !self.cr => {
                        self.cr = true;
                        i += 1;
                        continue;
                    }
                    Some(_) => {
                        self.at_line_start = false;
                        self.cr = false;
                        i += 1;
                    }
                }
            }
            // Inside a line: nothing matters before its `\n`.
            match memchr::memchr(b'\n', buf.get(i..).unwrap_or_default()) {
                Some(n) => {
                    i += n + 1;
                    self.at_line_start = true;
                    self.cr = false;
                }
                None => {
                    i = buf.len();
                    break;
                }
            }
        }
        self.seen = i;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete_whole(head: &[u8]) -> bool {
        HeadScan::default().complete(head)
    }

    fn complete_bytewise(head: &[u8]) -> bool {
        let mut scan = HeadScan::default();
        (1..=head.len()).any(|n| scan.complete(&head[..n]))
    }

    fn target(head: &str) -> Target {
        absolute_form(BytesMut::from(head.as_bytes()))
    }

    fn kept(head: &str) -> String {
        match target(head) {
            Target::Keep(b) => String::from_utf8(b.to_vec()).unwrap(),
            Target::Refuse(why) => panic!("{head:?} refused: {why}"),
        }
    }

    #[test]
    fn same_server_in_other_bytes_becomes_origin_form() {
        for (head, expected) in [
            (
                "GET http://API.Example.com/x?q=1 HTTP/1.1\r\nHost: api.example.com\r\n\r\nbody",
                "GET /x?q=1 HTTP/1.1\r\nHost: api.example.com\r\n\r\nbody",
            ),
            (
                "GET http://a.example:80 HTTP/1.1\r\nhost: a.example\r\n\r\n",
                "GET / HTTP/1.1\r\nhost: a.example\r\n\r\n",
            ),
            (
                "\r\nGET https://a.example/x HTTP/1.1\r\nHost: a.example:443\r\n\r\n",
                "\r\nGET /x HTTP/1.1\r\nHost: a.example:443\r\n\r\n",
            ),
        ] {
            assert_eq!(kept(head), expected, "{head:?}");
        }
    }

    #[test]
    fn other_heads_are_kept_as_they_came() {
        for head in [
            "GET /x HTTP/1.1\r\nHost: a\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET http://a.example/x HTTP/1.1\r\n\r\n",
            "GET http://a.example/x HTTP/1.1\r\nHost: a.example\r\n\r\n",
            "GET http://a.example/x HTTP/1.1\r\nHost: a.example\r\nHost: A.example\r\n\r\n",
            "GET http://u@a.example/x HTTP/1.1\r\nHost: A.example\r\n\r\n",
            "CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n",
            "garbage",
        ] {
            assert_eq!(kept(head), head);
        }
    }

    #[test]
    fn another_server_is_refused() {
        for head in [
            "GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\n\r\n",
            "GET http://a.example:8080/x HTTP/1.1\r\nHost: a.example\r\n\r\n",
            "GET https://a.example/x HTTP/1.1\r\nHost: a.example:80\r\n\r\n",
        ] {
            assert!(matches!(target(head), Target::Refuse(_)), "{head:?}");
        }
        let r = String::from_utf8(refusal("why")).unwrap();
        assert!(r.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{r}");
        assert!(
            r.ends_with(r#"{"error":"bad_request","message":"why"}"#) || r.contains("bad_request"),
            "{r}"
        );
    }

    #[test]
    fn head_ends_at_the_first_empty_line() {
        for head in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"GET / HTTP/1.1\nHost: a\n\n",
            b"GET / HTTP/1.1\r\nHost: a\n\r\n",
            b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                complete_whole(head),
                "{:?}",
                head.escape_ascii().to_string()
            );
            assert!(
                complete_bytewise(head),
                "{:?}",
                head.escape_ascii().to_string()
            );
        }
    }

    #[test]
    fn partial_head_is_not_complete() {
        for head in [
            &b""[..],
            b"\r\n\r\n",
            b"GET / HTTP/1.1\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\r",
            b"GET / HTTP/1.1\r\nHost: a\r\r\n",
        ] {
            assert!(
                !complete_whole(head),
                "{:?}",
                head.escape_ascii().to_string()
            );
            assert!(
                !complete_bytewise(head),
                "{:?}",
                head.escape_ascii().to_string()
            );
        }
    }

    /// The byte-at-a-time scan the `memchr` one replaced, kept as the reference.
    fn reference_end(head: &[u8]) -> Option<usize> {
        let (mut started, mut at_line_start, mut cr) = (false, false, false);
        for (i, &b) in head.iter().enumerate() {
            if !started {
                if b == b'\r' || b == b'\n' {
                    continue;
                }
                started = true;
            }
            match b {
                b'\n' if at_line_start => return Some(i + 1),
                b'\n' => {
                    at_line_start = true;
                    cr = false;
                }
                b'\r' if at_line_start && !cr => cr = true,
                _ => {
                    at_line_start = false;
                    cr = false;
                }
            }
        }
        None
    }

    proptest::proptest! {
        /// Whatever the bytes and however they arrive, the scan ends the head where the
        /// byte-at-a-time reference does.
        #[test]
        fn memchr_scan_agrees_with_the_bytewise_one(
            head in proptest::collection::vec(proptest::sample::select(b"a :\r\n".to_vec()), 0..64),
            cuts in proptest::collection::vec(0usize..64, 0..6),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c <= head.len()).collect();
            cuts.push(head.len());
            cuts.sort_unstable();
            let mut scan = HeadScan::default();
            let found = cuts.into_iter().find(|&n| scan.complete(&head[..n]));
            let want = reference_end(&head);
            // Fed in pieces, the scan reports the end at the first piece that holds it.
            proptest::prop_assert_eq!(found.is_some(), want.is_some());
            if let (Some(_), Some(end)) = (found, want) {
                proptest::prop_assert_eq!(scan.seen, end);
            }
        }
    }

    #[test]
    fn head_agrees_with_httparse() {
        let heads: [&[u8]; 4] = [
            b"GET /a HTTP/1.1\r\nHost: a\r\nX: 1\r\n\r\nbody",
            b"\nGET /a HTTP/1.1\nHost: a\n\nbody",
            b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi",
            b"GET /a HTTP/1.1\r\nHost: a\r\nX: \r\n\r\n",
        ];
        for head in heads {
            let mut hs = [httparse::EMPTY_HEADER; 16];
            let mut req = httparse::Request::new(&mut hs);
            let end = match req.parse(head) {
                Ok(httparse::Status::Complete(n)) => n,
                other => panic!("{other:?}"),
            };
            let mut scan = HeadScan::default();
            let found = (1..=head.len()).find(|&n| scan.complete(&head[..n]));
            assert_eq!(found, Some(end), "{:?}", head.escape_ascii().to_string());
        }
    }
}
