//! The WebSocket handshake with a gateway upstream, done by the gate itself.
//!
//! Doing it here rather than through Pingora's upstream path is what lets a
//! tunnel's two sockets end up in the gate's own [`crate::tunnel::Relay`]
//! once the upstream answers 101, instead of pinning a Pingora task (and its
//! buffers) for the tunnel's whole life. This module owns the wire work:
//! making the client's headers fit to send on, writing the request head,
//! reading the response head, and reading a refusal (any answer but 101)
//! whole, so the proxy glue can pass it to the client on a connection that
//! stays open. A route with `tls` reaches its upstream over TLS ([`TlsClient`]).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Method;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

use crate::config::RouteTls;

/// Largest response head accepted from an upstream.
pub const MAX_HEAD: usize = 64 * 1024;
/// Largest refusal body passed on to the client.
pub const MAX_REFUSAL_BODY: usize = 256 * 1024;
/// Most headers accepted in an upstream's response head.
const MAX_RESPONSE_HEADERS: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connecting to {addr}: no answer within {after:?}")]
    ConnectTimeout { addr: SocketAddr, after: Duration },
    #[error("upstream {addr} did not answer within {after:?}")]
    Timeout { addr: SocketAddr, after: Duration },
    #[error("upstream {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("upstream {addr} closed the connection before answering")]
    Closed { addr: SocketAddr },
    #[error("upstream {addr} answered with a malformed response: {why}")]
    Malformed { addr: SocketAddr, why: &'static str },
    #[error("TLS with {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl HandshakeError {
    /// No connection was made: another upstream may be tried.
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            HandshakeError::Connect { .. }
                | HandshakeError::ConnectTimeout { .. }
                | HandshakeError::Tls { .. }
        )
    }

    /// The upstream took too long (504 rather than 502).
    pub fn is_timeout(&self) -> bool {
        matches!(self, HandshakeError::Timeout { .. })
    }
}

/// Headers that belong to one hop and never travel on (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Headers a client may not have removed by naming them in `Connection`.
const PROTECTED: [&str; 4] = [
    "host",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
];

/// The headers of a client's handshake that must not travel upstream, as
/// Pingora decides for proxied requests: those the client named in
/// `Connection` (naming a protected one is refused) and the hop-by-hop ones.
/// A handshake has no body, so its framing headers go too. The caller then
/// restates the upgrade with [`UPGRADE_HEADERS`].
pub fn headers_to_drop(headers: &HeaderMap) -> Result<Vec<HeaderName>, &'static str> {
    let mut drop: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(value) = value.to_str() else {
            return Err("Connection header is not ASCII");
        };
        for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let Ok(name) = HeaderName::from_bytes(token.as_bytes()) else {
                return Err("Connection names an invalid header");
            };
            if PROTECTED.contains(&name.as_str()) {
                return Err("Connection names a protected header");
            }
            drop.push(name);
        }
    }
    drop.extend(HOP_BY_HOP.iter().map(|n| HeaderName::from_static(n)));
    drop.push(header::CONTENT_LENGTH);
    drop.push(HeaderName::from_static("http2-settings"));
    drop.retain(|n| headers.contains_key(n));
    Ok(drop)
}

/// The upgrade as the gate states it upstream.
pub const UPGRADE_HEADERS: [(HeaderName, &str); 2] = [
    (header::CONNECTION, "Upgrade"),
    (header::UPGRADE, "websocket"),
];

/// The HTTP/1.1 request head for `target` (path and query).
pub fn request_head(method: &Method, target: &str, headers: &HeaderMap) -> Vec<u8> {
    let size = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>();
    let mut out = Vec::with_capacity(method.as_str().len() + target.len() + 13 + size + 2);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (k, v) in headers {
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// An upstream's answer: its status, the raw head, and whatever came after it.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    head_len: usize,
    buf: Vec<u8>,
}

impl Answer {
    /// The response head as the upstream sent it, blank line included.
    pub fn head(&self) -> &[u8] {
        &self.buf[..self.head_len]
    }

    /// Bytes read past the head: the first WebSocket frames after a 101
    /// (an upstream may greet at once), or the start of a refusal's body.
    pub fn rest(&self) -> &[u8] {
        &self.buf[self.head_len..]
    }
}

/// What a route's upstreams are verified with, built once per config.
pub struct TlsClient {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

/// Why a route's TLS client cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsClientError {
    #[error("CA certificate: {0}")]
    Ca(#[source] rustls::Error),
    #[error("{0}")]
    Protocols(#[source] rustls::Error),
    #[error("sni: {0}")]
    Sni(#[source] rustls::pki_types::InvalidDnsNameError),
}

impl TlsClient {
    /// The route's CA, or the system's roots when it names none (a file read: built when the
    /// config loads, never on a request).
    pub fn new(tls: &RouteTls) -> Result<TlsClient, TlsClientError> {
        let mut roots = rustls::RootCertStore::empty();
        match &tls.ca {
            Some(ders) => {
                for der in ders.iter() {
                    roots
                        .add(CertificateDer::from(der.clone()))
                        .map_err(TlsClientError::Ca)?;
                }
            }
            None => {
                // One unusable system certificate must not cost the others.
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsClientError::Protocols)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from(tls.sni.clone()).map_err(TlsClientError::Sni)?;
        Ok(TlsClient {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            name,
        })
    }
}

/// A connection to an upstream, plain or TLS.
pub enum Upstream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Connects to `addr`, and does the TLS handshake when `tls` is given, all
/// within `timeout`.
pub async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<&TlsClient>,
) -> Result<Upstream, HandshakeError> {
    let work = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| HandshakeError::Connect { addr, source })?;
        // Frames are small and latency-bound.
        let _ = tcp.set_nodelay(true);
        match tls {
            None => Ok(Upstream::Plain(tcp)),
            Some(t) => t
                .connector
                .connect(t.name.clone(), tcp)
                .await
                .map(|s| Upstream::Tls(Box::new(s)))
                .map_err(|source| HandshakeError::Tls { addr, source }),
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or(Err(HandshakeError::ConnectTimeout {
            addr,
            after: timeout,
        }))
}

impl AsyncRead for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_write(cx, data),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_flush(cx),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Sends `request` and reads the response head, all within `timeout`.
pub async fn exchange(
    tcp: &mut Upstream,
    addr: SocketAddr,
    request: &[u8],
    timeout: Duration,
) -> Result<Answer, HandshakeError> {
    let work = async {
        tcp.write_all(request)
            .await
            .map_err(|source| HandshakeError::Io { addr, source })?;
        let mut buf = Vec::with_capacity(1024);
        loop {
            if let Some((status, head_len)) = parse_status(&buf, addr)? {
                return Ok(Answer {
                    status,
                    head_len,
                    buf,
                });
            }
            if buf.len() >= MAX_HEAD {
                return Err(HandshakeError::Malformed {
                    addr,
                    why: "response head too large",
                });
            }
            if read_more(tcp, &mut buf, addr).await? == 0 {
                return Err(HandshakeError::Closed { addr });
            }
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or(Err(HandshakeError::Timeout {
            addr,
            after: timeout,
        }))
}

async fn read_more(
    tcp: &mut Upstream,
    buf: &mut Vec<u8>,
    addr: SocketAddr,
) -> Result<usize, HandshakeError> {
    buf.reserve(4096);
    tcp.read_buf(buf)
        .await
        .map_err(|source| HandshakeError::Io { addr, source })
}

/// The status and head length once `buf` holds a whole response head.
fn parse_status(buf: &[u8], addr: SocketAddr) -> Result<Option<(u16, usize)>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => Ok(resp.code.map(|c| (c, len))),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(HandshakeError::Malformed {
            addr,
            why: "unparseable response head",
        }),
    }
}

/// An upstream's refusal of the upgrade, read whole.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    /// End-to-end headers only; the proxy glue sets the framing.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Vec<u8>,
}

/// Reads the rest of a non-101 answer: its body, framed by `Content-Length`,
/// chunked coding or the end of the connection, within `timeout`.
pub async fn read_refusal(
    tcp: &mut Upstream,
    addr: SocketAddr,
    answer: Answer,
    timeout: Duration,
) -> Result<Refusal, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    if !matches!(resp.parse(answer.head()), Ok(httparse::Status::Complete(_))) {
        return Err(HandshakeError::Malformed {
            addr,
            why: "unparseable response head",
        });
    }
    let status = answer.status;
    let mut framing = Framing::UntilClose;
    let mut kept = Vec::with_capacity(resp.headers.len());
    for h in resp.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        if name == "content-length" {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or(HandshakeError::Malformed {
                    addr,
                    why: "bad Content-Length",
                })?;
            if framing != Framing::Chunked {
                framing = Framing::Length(n);
            }
            continue;
        }
        if name == "transfer-encoding" {
            if h.value.eq_ignore_ascii_case(b"chunked") {
                framing = Framing::Chunked;
            }
            continue;
        }
        if HOP_BY_HOP.contains(&name.as_str()) {
            continue;
        }
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) {
            kept.push((k, v));
        }
    }
    if matches!(status, 100..=199 | 204 | 304) {
        framing = Framing::Length(0);
    }
    let rest = answer.rest().to_vec();
    let body = tokio::time::timeout(timeout, read_body(tcp, addr, rest, framing))
        .await
        .unwrap_or(Err(HandshakeError::Timeout {
            addr,
            after: timeout,
        }))?;
    Ok(Refusal {
        status,
        headers: kept,
        body,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

async fn read_body(
    tcp: &mut Upstream,
    addr: SocketAddr,
    mut raw: Vec<u8>,
    framing: Framing,
) -> Result<Vec<u8>, HandshakeError> {
    let too_large = HandshakeError::Malformed {
        addr,
        why: "refusal body too large",
    };
    match framing {
        Framing::Length(n) => {
            if n > MAX_REFUSAL_BODY {
                return Err(too_large);
            }
            while raw.len() < n {
                if read_more(tcp, &mut raw, addr).await? == 0 {
                    return Err(HandshakeError::Closed { addr });
                }
            }
            raw.truncate(n);
            Ok(raw)
        }
        Framing::UntilClose => loop {
            if raw.len() > MAX_REFUSAL_BODY {
                return Err(too_large);
            }
            if read_more(tcp, &mut raw, addr).await? == 0 {
                return Ok(raw);
            }
        },
        Framing::Chunked => {
            let mut body = Vec::new();
            let mut at = 0;
            loop {
                match dechunk(&raw[at..], &mut body) {
                    Ok(Chunk::Done) => return Ok(body),
                    Ok(Chunk::Took(n)) => {
                        at += n;
                        if body.len() > MAX_REFUSAL_BODY {
                            return Err(too_large);
                        }
                        continue;
                    }
                    Ok(Chunk::NeedMore) => {}
                    Err(why) => return Err(HandshakeError::Malformed { addr, why }),
                }
                if raw.len() - at > MAX_REFUSAL_BODY + 1024 {
                    return Err(too_large);
                }
                if read_more(tcp, &mut raw, addr).await? == 0 {
                    return Err(HandshakeError::Closed { addr });
                }
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Chunk {
    /// One chunk, this many bytes of input, was decoded into the body.
    Took(usize),
    /// The last chunk: the body is complete (trailers are not passed on).
    Done,
    NeedMore,
}

/// Decodes the chunk at the start of `raw`, if it is all there.
fn dechunk(raw: &[u8], body: &mut Vec<u8>) -> Result<Chunk, &'static str> {
    let (size_len, size) = match httparse::parse_chunk_size(raw) {
        Ok(httparse::Status::Complete(v)) => v,
        Ok(httparse::Status::Partial) => return Ok(Chunk::NeedMore),
        Err(_) => return Err("bad chunk size"),
    };
    if size == 0 {
        return Ok(Chunk::Done);
    }
    let size = usize::try_from(size).map_err(|_| "chunk too large")?;
    if size > MAX_REFUSAL_BODY {
        return Err("chunk too large");
    }
    let end = size_len + size;
    if raw.len() < end + 2 {
        return Ok(Chunk::NeedMore);
    }
    if &raw[end..end + 2] != b"\r\n" {
        return Err("chunk not followed by CRLF");
    }
    body.extend_from_slice(&raw[size_len..end]);
    Ok(Chunk::Took(end + 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn fit(h: &mut HeaderMap) -> Result<(), &'static str> {
        for name in headers_to_drop(h)? {
            h.remove(name);
        }
        for (k, v) in UPGRADE_HEADERS {
            h.insert(k, HeaderValue::from_static(v));
        }
        Ok(())
    }

    #[test]
    fn nominated_and_hop_by_hop_headers_go_and_the_upgrade_is_restated() {
        let mut h = headers(&[
            ("host", "gate"),
            ("connection", "keep-alive, Upgrade, X-Private"),
            ("upgrade", "WebSocket"),
            ("x-private", "secret"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("sec-websocket-key", "abc"),
            ("content-length", "0"),
        ]);
        fit(&mut h).unwrap();
        assert!(h.get("x-private").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get("te").is_none());
        assert!(h.get("content-length").is_none());
        assert_eq!(h["connection"], "Upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["sec-websocket-key"], "abc");
        assert_eq!(h["host"], "gate");
    }

    #[test]
    fn naming_a_protected_header_is_refused() {
        for protected in ["Host", "X-Forwarded-For", "x-forwarded-proto"] {
            let h = headers(&[("connection", &format!("upgrade, {protected}"))]);
            assert!(headers_to_drop(&h).is_err(), "{protected}");
        }
    }

    #[test]
    fn request_head_is_http11_with_every_header() {
        let h = headers(&[("host", "gate"), ("x-session-id", "s1")]);
        let head = request_head(&Method::GET, "/chat?x=1", &h);
        assert_eq!(
            head,
            b"GET /chat?x=1 HTTP/1.1\r\nhost: gate\r\nx-session-id: s1\r\n\r\n"
        );
    }

    #[test]
    fn status_needs_the_whole_head() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";
        assert_eq!(parse_status(&head[..20], addr).unwrap(), None);
        let mut with_frame = head.to_vec();
        with_frame.extend_from_slice(&[0x81, 0x02, b'h', b'i']);
        assert_eq!(
            parse_status(&with_frame, addr).unwrap(),
            Some((101, head.len()))
        );
        assert!(parse_status(b"HTTP/1.1 abc\r\n\r\n", addr).is_err());
    }

    #[test]
    fn chunks_decode_one_at_a_time() {
        let raw = b"4\r\nnope\r\n3;ext=1\r\n!!!\r\n0\r\n\r\n";
        let mut body = Vec::new();
        assert_eq!(dechunk(raw, &mut body), Ok(Chunk::Took(9)));
        assert_eq!(dechunk(&raw[9..], &mut body), Ok(Chunk::Took(14)));
        assert_eq!(dechunk(&raw[23..], &mut body), Ok(Chunk::Done));
        assert_eq!(body, b"nope!!!");
        assert_eq!(dechunk(b"4\r\nno", &mut body), Ok(Chunk::NeedMore));
        assert!(dechunk(b"zz\r\n", &mut body).is_err());
        assert!(dechunk(b"2\r\nabXY", &mut body).is_err());
    }
}
