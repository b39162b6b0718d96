//! How a client connection becomes a request: the PROXY protocol header and
//! the TLS handshake on the gate's own listeners, and which client address
//! the gate believes (`X-Forwarded-For`, rate limits, logs).
//!
//! Pingora accepts every connection (so a graceful upgrade hands over its
//! listening sockets), then [`EdgeApp`] reads the PROXY header off the raw
//! TCP stream, does the TLS handshake itself (Pingora 0.9's rustls listener
//! fixes the versions and has no pre-read hook on plain listeners) and hands
//! the stream to Pingora's HTTP service, which picks HTTP/2 by ALPN.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::listeners::tls::Acceptor;
use pingora::protocols::GetSocketDigest;
use pingora::protocols::SocketDigest;
use pingora::protocols::Stream;
use pingora::protocols::l4::socket::SocketAddr as PSocketAddr;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::server::ShutdownWatch;
use tokio::io::AsyncReadExt;

use crate::config::Cidr;
use crate::iptext::push_ip;

/// The PROXY header and the TLS handshake together must be done within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("PROXY header: {0}")]
    Proxy(#[from] ProxyError),
    #[error("reading the PROXY header: {0}")]
    Read(#[source] std::io::Error),
    #[error("TLS handshake: {0}")]
    Tls(#[source] Box<pingora::Error>),
    #[error("the listener gave a stream that is not TCP")]
    NotTcp,
    #[error("PROXY header and TLS handshake not done within {HANDSHAKE_TIMEOUT:?}")]
    Timeout,
}

/// Wraps Pingora's HTTP app for one kind of listener: reads the PROXY
/// header when `proxy_protocol`, terminates TLS when `tls` is set.
pub struct EdgeApp<A> {
    inner: Arc<A>,
    tls: Option<Arc<Acceptor>>,
    proxy_protocol: bool,
}

impl<A> EdgeApp<A> {
    pub fn new(inner: Arc<A>, tls: Option<Arc<Acceptor>>, proxy_protocol: bool) -> Self {
        EdgeApp {
            inner,
            tls,
            proxy_protocol,
        }
    }

    /// Hands an accepted stream to the HTTP app. A stream it gives back for
    /// reuse stays with it: its PROXY header and TLS handshake are done.
    async fn serve(&self, mut stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream>
    where
        A: ServerApp + Send + Sync + 'static,
    {
        loop {
            match self.inner.process_new(stream, shutdown).await {
                Some(again) => stream = again,
                None => return None,
            }
        }
    }

    async fn accept(&self, stream: Stream) -> Result<Stream, AcceptError> {
        // Pingora's TCP listeners give an L4 stream; only it can be rewound
        // and wrapped in TLS.
        let mut l4 = stream
            .into_any()
            .downcast::<L4Stream>()
            .map_err(|_| AcceptError::NotTcp)?;
        if self.proxy_protocol {
            read_proxy_header(&mut l4).await?;
        }
        match &self.tls {
            None => Ok(l4),
            Some(acceptor) => {
                let tls = acceptor
                    .tls_handshake(*l4)
                    .await
                    .map_err(AcceptError::Tls)?;
                Ok(Box::new(tls))
            }
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for EdgeApp<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if !self.proxy_protocol && self.tls.is_none() {
            return self.serve(stream, shutdown).await;
        }
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().cloned());
        let accepted = match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.accept(stream)).await {
            Ok(r) => r,
            Err(_) => Err(AcceptError::Timeout),
        };
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                // Scanners and broken clients make these common: not a warning.
                tracing::debug!(peer = ?peer, error = %e, "connection closed before HTTP");
                return None;
            }
        };
        self.serve(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

/// Why the running gate could not be asked to hand its sockets over.
#[derive(Debug, thiserror::Error)]
pub enum HandOverError {
    #[error("{}: cannot read the running gate's pid: {source}", file.display())]
    Read {
        file: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a process id: {text:?}", file.display())]
    NotPid {
        file: std::path::PathBuf,
        text: String,
        #[source]
        source: std::num::ParseIntError,
    },
    #[error("{}: names this very process", file.display())]
    Itself { file: std::path::PathBuf },
    #[error("cannot run kill: {0}")]
    Kill(#[source] std::io::Error),
    #[error("pid {pid} (from {}) cannot be signalled", file.display())]
    NotSignalled { pid: u32, file: std::path::PathBuf },
}

/// `run --upgrade`: asks the gate whose pid `pid_file` holds to send its
/// listening sockets over (SIGQUIT, Pingora's graceful upgrade signal).
pub fn ask_to_hand_over(pid_file: &std::path::Path) -> Result<(), HandOverError> {
    let file = || pid_file.to_owned();
    let text = std::fs::read_to_string(pid_file).map_err(|source| HandOverError::Read {
        file: file(),
        source,
    })?;
    let pid: u32 = text
        .trim()
        .parse()
        .map_err(|source| HandOverError::NotPid {
            file: file(),
            text: text.trim().to_owned(),
            source,
        })?;
    if pid == std::process::id() {
        return Err(HandOverError::Itself { file: file() });
    }
    // `kill` rather than a signal crate: one call per upgrade, and no unsafe.
    let status = std::process::Command::new("kill")
        .args(["-QUIT", &pid.to_string()])
        .status()
        .map_err(HandOverError::Kill)?;
    if !status.success() {
        return Err(HandOverError::NotSignalled { pid, file: file() });
    }
    tracing::info!(
        pid,
        "asked the running gate to hand over its listening sockets"
    );
    Ok(())
}

/// Tells systemd (`Type=notify`, `NotifyAccess=all`) that this process is
/// ready and is now the service's main process, which is what lets a
/// `run --upgrade` started by `ExecReload` replace the old one.
pub fn notify_systemd() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let msg = format!("READY=1\nMAINPID={}\n", std::process::id());
    let sent = std::os::unix::net::UnixDatagram::unbound().and_then(|sock| {
        let bytes = path.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(msg.as_bytes(), &addr)
            }
            None => sock.send_to(msg.as_bytes(), &path),
        }
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Reads a PROXY v1 or v2 header and makes its source the stream's peer
/// address; whatever came after the header is put back for HTTP.
async fn read_proxy_header(l4: &mut L4Stream) -> Result<(), AcceptError> {
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    let (header, used) = loop {
        if let Some(done) = parse_proxy(&buf)? {
            break done;
        }
        let n = l4.read(&mut chunk).await.map_err(AcceptError::Read)?;
        if n == 0 {
            return Err(ProxyError::Truncated.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    if used < buf.len() {
        l4.rewind(&buf[used..]);
    }
    if let ProxyHeader::Proxied { source } = header {
        let digest = SocketDigest::from_raw_fd(std::os::fd::AsRawFd::as_raw_fd(&*l4));
        let _ = digest.peer_addr.set(Some(PSocketAddr::Inet(source)));
        l4.set_socket_digest(digest);
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("the connection does not start with a PROXY v1 or v2 header")]
    Missing,
    #[error("the connection ended inside the PROXY header")]
    Truncated,
    #[error("malformed v1 header")]
    BadV1,
    #[error("malformed v2 header")]
    BadV2,
    #[error("header longer than {MAX_PROXY_HEADER} bytes")]
    TooLong,
}

/// What a PROXY header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// A proxied connection from this client.
    Proxied { source: SocketAddr },
    /// v1 `UNKNOWN`, v2 `LOCAL` or a family other than TCP over IPv4/IPv6
    /// (a balancer's health check): the connecting peer stays the client.
    Local,
}

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// v1's limit is 107 bytes; v2 may carry TLVs, which are skipped.
pub const MAX_PROXY_HEADER: usize = 4096;

/// Parses a PROXY header at the start of `buf`: `Ok(None)` when more bytes
/// are needed, else the header and how many bytes it took.
pub fn parse_proxy(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    // What has arrived so far must agree with one signature's start.
    let prefix = |sig: &[u8]| {
        let n = sig.len().min(buf.len());
        sig[..n] == buf[..n]
    };
    if prefix(V2_SIGNATURE) {
        return parse_v2(buf);
    }
    if prefix(b"PROXY ") {
        return parse_v1(buf);
    }
    Err(ProxyError::Missing)
}

fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    const MAX_V1: usize = 107;
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= MAX_V1 {
            Err(ProxyError::BadV1)
        } else {
            Ok(None)
        };
    };
    if end + 2 > MAX_V1 {
        return Err(ProxyError::BadV1);
    }
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| ProxyError::BadV1)?;
    let parts: Vec<&str> = line.split(' ').collect();
    let header = match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => ProxyHeader::Local,
        ["PROXY", fam @ ("TCP4" | "TCP6"), src, _dst, sport, _dport] => {
            let ip: IpAddr = src.parse().map_err(|_| ProxyError::BadV1)?;
            if ip.is_ipv4() != (*fam == "TCP4") {
                return Err(ProxyError::BadV1);
            }
            let port: u16 = sport.parse().map_err(|_| ProxyError::BadV1)?;
            ProxyHeader::Proxied {
                source: SocketAddr::new(ip, port),
            }
        }
        _ => return Err(ProxyError::BadV1),
    };
    Ok(Some((header, end + 2)))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let (ver_cmd, fam, len) = (
        buf[12],
        buf[13],
        usize::from(u16::from_be_bytes([buf[14], buf[15]])),
    );
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::BadV2);
    }
    let total = 16 + len;
    if total > MAX_PROXY_HEADER {
        return Err(ProxyError::TooLong);
    }
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[16..total];
    let header = match (ver_cmd & 0x0f, fam) {
        (0x0, _) => ProxyHeader::Local,
        // TCP over IPv4: src addr, dst addr, src port, dst port.
        (0x1, 0x11) if body.len() >= 12 => {
            let ip = IpAddr::from([body[0], body[1], body[2], body[3]]);
            let port = u16::from_be_bytes([body[8], body[9]]);
            ProxyHeader::Proxied {
                source: SocketAddr::new(ip, port),
            }
        }
        (0x1, 0x21) if body.len() >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            let port = u16::from_be_bytes([body[32], body[33]]);
            ProxyHeader::Proxied {
                source: SocketAddr::new(IpAddr::from(octets), port),
            }
        }
        (0x1, 0x11 | 0x21) => return Err(ProxyError::BadV2),
        // UDP, Unix sockets, unspecified: nothing to believe.
        (0x1, _) => ProxyHeader::Local,
        _ => return Err(ProxyError::BadV2),
    };
    Ok(Some((header, total)))
}

/// Who sent a request, by SPEC section 6's rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAddr {
    /// The address rate limits and logs use, and `X-Forwarded-For` ends with.
    pub ip: IpAddr,
    /// The `X-Forwarded-For` value for the upstream, built once per request
    /// and cloned (a reference count) onto each try's upstream request.
    pub forwarded_for: http::HeaderValue,
}

/// The client address the gate believes. `peer` is the connecting peer, or
/// the PROXY header's source when `proxied`; `xff` the request's
/// `X-Forwarded-For` values in order.
///
/// With a PROXY header its source is the client, and no incoming
/// `X-Forwarded-For` is kept (a PROXY header comes from the balancer in
/// front, which saw the client's own connection). From a peer in `trusted`,
/// the client is the rightmost entry that is not itself trusted, and what
/// precedes it is kept; entries after it (trusted hops) are dropped so the
/// chain ends with the client. From anyone else, only the peer.
pub fn client_addr<'a>(
    peer: IpAddr,
    proxied: bool,
    xff: impl Iterator<Item = &'a str>,
    trusted: &[Cidr],
) -> ClientAddr {
    let alone = |ip: IpAddr| ClientAddr {
        ip,
        forwarded_for: ip_value(ip),
    };
    let peer = canonical(peer);
    if proxied || !trusted.iter().any(|c| c.contains(peer)) {
        return alone(peer);
    }
    let entries: Vec<&str> = xff
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    // Walk from the right past trusted hops; the first address that is not
    // trusted is the client. A malformed entry ends the walk and nothing left
    // of it is kept: the last trusted hop seen is then the client.
    let mut client = None;
    let mut keep = 0;
    for (i, e) in entries.iter().enumerate().rev() {
        let Some(ip) = parse_forwarded_ip(e) else {
            keep = 0;
            break;
        };
        client = Some(ip);
        keep = i;
        if !trusted.iter().any(|c| c.contains(ip)) {
            break;
        }
    }
    let Some(client) = client else {
        return alone(peer);
    };
    let mut chain = String::with_capacity(64);
    for e in &entries[..keep] {
        chain.push_str(e);
        chain.push_str(", ");
    }
    push_ip(&mut chain, client);
    // The entries came from header values that were valid text, and the
    // separators and address are ASCII: this cannot fail, but if it did the
    // client alone would be what goes on.
    match http::HeaderValue::from_maybe_shared(bytes::Bytes::from(chain)) {
        Ok(forwarded_for) => ClientAddr {
            ip: client,
            forwarded_for,
        },
        Err(_) => alone(client),
    }
}

/// One address as a header value.
fn ip_value(ip: IpAddr) -> http::HeaderValue {
    let mut text = String::with_capacity(15);
    push_ip(&mut text, ip);
    // Digits, dots, colons and hex: always a valid value.
    http::HeaderValue::from_maybe_shared(bytes::Bytes::from(text))
        .unwrap_or_else(|_| http::HeaderValue::from_static(""))
}

/// An IPv4-mapped IPv6 address is its IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// An `X-Forwarded-For` entry: `1.2.3.4`, `1.2.3.4:5678`, `::1`, `[::1]:80`.
fn parse_forwarded_ip(e: &str) -> Option<IpAddr> {
    if let Ok(ip) = e.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sa) = e.parse::<SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    e.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse::<IpAddr>().ok())
        .map(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().filter_map(|c| c.parse().ok()).collect()
    }

    fn believed(peer: &str, proxied: bool, xff: &[&str], trusted: &[&str]) -> (String, String) {
        let c = client_addr(ip(peer), proxied, xff.iter().copied(), &cidrs(trusted));
        let xff = c.forwarded_for.to_str().unwrap_or_default().to_owned();
        (c.ip.to_string(), xff)
    }

    #[test]
    fn an_untrusted_peer_keeps_nothing_of_its_forwarded_for() {
        assert_eq!(
            believed("203.0.113.9", false, &["1.1.1.1, 2.2.2.2"], &["10.0.0.0/8"]),
            ("203.0.113.9".into(), "203.0.113.9".into())
        );
        assert_eq!(
            believed("203.0.113.9", false, &[], &[]),
            ("203.0.113.9".into(), "203.0.113.9".into())
        );
    }

    #[test]
    fn a_trusted_peer_gives_the_rightmost_untrusted_entry() {
        assert_eq!(
            believed(
                "10.0.0.1",
                false,
                &["6.6.6.6, 1.2.3.4, 10.0.0.7"],
                &["10.0.0.0/8"]
            ),
            ("1.2.3.4".into(), "6.6.6.6, 1.2.3.4".into())
        );
        // Several headers read as one list, in order.
        assert_eq!(
            believed("10.0.0.1", false, &["6.6.6.6", "1.2.3.4"], &["10.0.0.0/8"]),
            ("1.2.3.4".into(), "6.6.6.6, 1.2.3.4".into())
        );
    }

    #[test]
    fn a_trusted_peer_without_forwarded_for_is_the_client() {
        assert_eq!(
            believed("10.0.0.1", false, &[], &["10.0.0.0/8"]),
            ("10.0.0.1".into(), "10.0.0.1".into())
        );
    }

    #[test]
    fn all_trusted_entries_give_the_leftmost() {
        assert_eq!(
            believed("10.0.0.1", false, &["10.0.0.5, 10.0.0.6"], &["10.0.0.0/8"]),
            ("10.0.0.5".into(), "10.0.0.5".into())
        );
    }

    #[test]
    fn a_malformed_entry_stops_the_walk() {
        assert_eq!(
            believed(
                "10.0.0.1",
                false,
                &["1.1.1.1, bogus, 10.0.0.2"],
                &["10.0.0.0/8"]
            ),
            ("10.0.0.2".into(), "10.0.0.2".into())
        );
        assert_eq!(
            believed("10.0.0.1", false, &["bogus"], &["10.0.0.0/8"]),
            ("10.0.0.1".into(), "10.0.0.1".into())
        );
    }

    #[test]
    fn ports_brackets_and_mapped_addresses_are_read() {
        assert_eq!(
            believed(
                "::ffff:10.0.0.1",
                false,
                &["[2001:db8::1]:443"],
                &["10.0.0.0/8"]
            ),
            ("2001:db8::1".into(), "2001:db8::1".into())
        );
        assert_eq!(
            believed("10.0.0.1", false, &["1.2.3.4:5678"], &["10.0.0.0/8"]),
            ("1.2.3.4".into(), "1.2.3.4".into())
        );
    }

    #[test]
    fn a_proxy_header_source_is_the_client_whatever_it_forwards() {
        assert_eq!(
            believed("10.0.0.1", true, &["6.6.6.6"], &["10.0.0.0/8"]),
            ("10.0.0.1".into(), "10.0.0.1".into())
        );
    }

    #[test]
    fn cidr_blocks_contain_their_addresses() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap_or_else(|_| unreachable!());
        assert!(c.contains(ip("10.1.200.3")));
        assert!(!c.contains(ip("10.2.0.1")));
        assert!(c.contains(ip("::ffff:10.1.0.9")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap_or_else(|_| unreachable!());
        assert!(all.contains(ip("8.8.8.8")));
        assert!(!all.contains(ip("::1")));
        let one: Cidr = "::1".parse().unwrap_or_else(|_| unreachable!());
        assert!(one.contains(ip("::1")));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope/8".parse::<Cidr>().is_err());
    }

    #[test]
    fn proxy_v1_tcp4_tcp6_and_unknown() {
        let h = b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\nGET /";
        assert_eq!(
            parse_proxy(h),
            Ok(Some((
                ProxyHeader::Proxied {
                    source: "192.0.2.1:56324".parse().unwrap_or_else(|_| unreachable!())
                },
                45
            )))
        );
        let h6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n";
        assert!(matches!(
            parse_proxy(h6),
            Ok(Some((ProxyHeader::Proxied { .. }, 40)))
        ));
        assert_eq!(
            parse_proxy(b"PROXY UNKNOWN\r\nGET"),
            Ok(Some((ProxyHeader::Local, 15)))
        );
    }

    #[test]
    fn proxy_v1_partial_and_malformed() {
        assert_eq!(parse_proxy(b"PRO"), Ok(None));
        assert_eq!(parse_proxy(b"PROXY TCP4 1.2.3.4"), Ok(None));
        assert_eq!(parse_proxy(b"GET / HTTP/1.1\r\n"), Err(ProxyError::Missing));
        assert_eq!(
            parse_proxy(b"PROXY TCP4 ::1 1.2.3.4 1 2\r\n"),
            Err(ProxyError::BadV1)
        );
        assert_eq!(
            parse_proxy(b"PROXY TCP4 1.2.3.4 1.2.3.4 99999 2\r\n"),
            Err(ProxyError::BadV1)
        );
        assert_eq!(parse_proxy(&[b'P'; 200]), Err(ProxyError::Missing));
        let mut long = b"PROXY TCP4 ".to_vec();
        long.extend([b'1'; 120]);
        assert_eq!(parse_proxy(&long), Err(ProxyError::BadV1));
    }

    fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | cmd);
        h.push(fam);
        h.extend((body.len() as u16).to_be_bytes());
        h.extend(body);
        h
    }

    #[test]
    fn proxy_v2_ipv4_ipv6_local_and_tlvs() {
        let mut body = vec![192, 0, 2, 7, 10, 0, 0, 1];
        body.extend(4242u16.to_be_bytes());
        body.extend(443u16.to_be_bytes());
        body.extend([0x04, 0, 1, 0]); // a TLV (NOOP), skipped
        let mut h = v2(1, 0x11, &body);
        let len = h.len();
        h.extend(b"GET /");
        assert_eq!(
            parse_proxy(&h),
            Ok(Some((
                ProxyHeader::Proxied {
                    source: "192.0.2.7:4242".parse().unwrap_or_else(|_| unreachable!())
                },
                len
            )))
        );
        let mut b6 = vec![0u8; 36];
        b6[0] = 0x20;
        b6[1] = 0x01;
        b6[15] = 9;
        b6[32..34].copy_from_slice(&80u16.to_be_bytes());
        assert!(matches!(
            parse_proxy(&v2(1, 0x21, &b6)),
            Ok(Some((ProxyHeader::Proxied { source }, 52))) if source.to_string() == "[2001::9]:80"
        ));
        assert_eq!(
            parse_proxy(&v2(0, 0, &[])),
            Ok(Some((ProxyHeader::Local, 16)))
        );
        // Partial, short address block, wrong version.
        assert_eq!(parse_proxy(&h[..20]), Ok(None));
        assert_eq!(
            parse_proxy(&v2(1, 0x11, &[1, 2, 3])),
            Err(ProxyError::BadV2)
        );
        let mut bad = v2(1, 0x11, &body);
        bad[12] = 0x11;
        assert_eq!(parse_proxy(&bad), Err(ProxyError::BadV2));
    }
}
