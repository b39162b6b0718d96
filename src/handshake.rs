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
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

use crate::config::RouteTls;
use crate::http1::{self, Limits, ParseError, ReadError};

/// Largest response head accepted from an upstream.
pub const MAX_HEAD: usize = 64 * 1024;
/// Largest refusal body passed on to the client.
pub const MAX_REFUSAL_BODY: usize = 256 * 1024;
/// Most headers accepted in an upstream's response head.
const MAX_RESPONSE_HEADERS: usize = 100;

/// What is read from an upstream; time is bounded by the caller's timeouts.
const LIMITS: Limits = Limits {
    head: MAX_HEAD,
    headers: MAX_RESPONSE_HEADERS,
    body: MAX_REFUSAL_BODY,
    idle: None,
};

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
    #[error("upstream {addr} answered with a malformed response: {source}")]
    Malformed {
        addr: SocketAddr,
        source: http1::ParseError,
    },
    #[error("TLS with {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl HandshakeError {
    fn reading(addr: SocketAddr, e: ReadError) -> HandshakeError {
        match e {
            ReadError::Io(source) => HandshakeError::Io { addr, source },
            ReadError::Parse(ParseError::Truncated) => HandshakeError::Closed { addr },
            ReadError::Parse(source) => HandshakeError::Malformed { addr, source },
            // Unreachable with no idle limit; a timeout all the same.
            ReadError::Idle(after) => HandshakeError::Timeout { addr, after },
        }
    }

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
    parsed: http1::Head,
    buf: Vec<u8>,
}

impl Answer {
    /// The response head as the upstream sent it, blank line included.
    pub fn head(&self) -> &[u8] {
        &self.buf[..self.parsed.len]
    }

    /// Bytes read past the head: the first WebSocket frames after a 101
    /// (an upstream may greet at once), or the start of a refusal's body.
    pub fn rest(&self) -> &[u8] {
        &self.buf[self.parsed.len..]
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
        let parsed = http1::read_head(tcp, &mut buf, &LIMITS)
            .await
            .map_err(|e| HandshakeError::reading(addr, e))?;
        Ok(Answer {
            status: parsed.status,
            parsed,
            buf,
        })
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or(Err(HandshakeError::Timeout {
            addr,
            after: timeout,
        }))
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
    let Answer {
        status,
        parsed,
        mut buf,
    } = answer;
    let mut kept = Vec::with_capacity(parsed.headers.len());
    for (name, value) in &parsed.headers {
        let name = name.to_ascii_lowercase();
        // The proxy glue sets the framing for the client.
        if name == "content-length" || HOP_BY_HOP.contains(&name.as_str()) {
            continue;
        }
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            kept.push((k, v));
        }
    }
    let rest = buf.split_off(parsed.len);
    let read = http1::read_body(tcp, parsed.framing, rest, &LIMITS);
    let body = match tokio::time::timeout(timeout, read).await {
        Ok(read) => read.map_err(|e| HandshakeError::reading(addr, e))?,
        Err(_) => {
            return Err(HandshakeError::Timeout {
                addr,
                after: timeout,
            });
        }
    };
    Ok(Refusal {
        status,
        headers: kept,
        body,
    })
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
}
