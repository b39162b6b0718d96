//! WebSocket tunnels that the gate can end from outside.
//!
//! Pingora has no API to close an upgraded connection from another task, and
//! no hook runs while a tunnel is idle. So a gateway route's upstream
//! connection is made by our own L4 connector ([`TunnelConnector`]), which
//! hands Pingora a [`TunnelSocket`]: the upstream `TcpStream` plus a control
//! block registered under the session id. Pingora polls that socket's
//! `poll_read` for the tunnel's whole life; ending the session wakes it, the
//! socket finishes the upstream frame in flight, yields a Close frame (code
//! 4401, reason `session <status>`) and then EOF, and Pingora's normal
//! end-of-upstream path tears both sides down. The upstream gets a masked
//! Close too.
//!
//! The same control block records client activity, so the lifecycle sweeper
//! can keep a chatting session from being `abandoned`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::task::AtomicWaker;
use pingora::connectors::L4Connect;
use pingora::protocols::l4::socket::SocketAddr as L4SocketAddr;
use pingora::protocols::l4::stream::Stream;
use pingora::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::session::Status;

/// Close code sent when the session ends (SPEC section 7).
pub const CLOSE_SESSION_ENDED: u16 = 4401;
/// Close code sent when the gate shuts down.
pub const CLOSE_GOING_AWAY: u16 = 1001;

/// One open tunnel's control block.
pub struct TunnelCtl {
    pub sid: String,
    pub route: String,
    ending: AtomicBool,
    close: Mutex<Option<(u16, String)>>,
    waker: AtomicWaker,
    /// ms since epoch of the last bytes from the client.
    last_client_activity: AtomicU64,
}

impl TunnelCtl {
    /// Asks the tunnel to close with `code` and `reason`; the first request wins.
    pub fn end(&self, code: u16, reason: String) {
        if let Ok(mut c) = self.close.lock()
            && c.is_none()
        {
            *c = Some((code, reason));
            self.ending.store(true, Ordering::Release);
        }
        self.waker.wake();
    }

    pub fn last_client_activity(&self) -> u64 {
        self.last_client_activity.load(Ordering::Relaxed)
    }
}

type Registry = Arc<Mutex<HashMap<String, Vec<Arc<TunnelCtl>>>>>;

/// The tunnels open on this node, by session id.
#[derive(Default)]
pub struct Tunnels {
    map: Registry,
}

impl Tunnels {
    pub fn register(&self, sid: &str, route: &str, now: u64) -> Arc<TunnelCtl> {
        let ctl = Arc::new(TunnelCtl {
            sid: sid.to_owned(),
            route: route.to_owned(),
            ending: AtomicBool::new(false),
            close: Mutex::new(None),
            waker: AtomicWaker::new(),
            last_client_activity: AtomicU64::new(now),
        });
        if let Ok(mut m) = self.map.lock() {
            m.entry(sid.to_owned()).or_default().push(Arc::clone(&ctl));
        }
        ctl
    }

    /// Ends every tunnel of a session that left `active`.
    pub fn end_session(&self, sid: &str, status: Status) {
        let ctls = self
            .map
            .lock()
            .ok()
            .and_then(|m| m.get(sid).cloned())
            .unwrap_or_default();
        for ctl in ctls {
            ctl.end(CLOSE_SESSION_ENDED, format!("session {status}"));
        }
    }

    /// Ends every tunnel (graceful shutdown).
    pub fn end_all(&self, code: u16, reason: &str) {
        let all: Vec<Arc<TunnelCtl>> = self
            .map
            .lock()
            .map(|m| m.values().flatten().cloned().collect())
            .unwrap_or_default();
        for ctl in all {
            ctl.end(code, reason.to_owned());
        }
    }

    /// Open tunnels: (session id, latest client activity among its tunnels).
    pub fn sessions(&self) -> Vec<(String, u64)> {
        self.map
            .lock()
            .map(|m| {
                m.iter()
                    .map(|(sid, v)| {
                        let act = v.iter().map(|c| c.last_client_activity()).max();
                        (sid.clone(), act.unwrap_or(0))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn count(&self) -> usize {
        self.map
            .lock()
            .map(|m| m.values().map(Vec::len).sum())
            .unwrap_or(0)
    }

    fn handle(&self) -> Registry {
        Arc::clone(&self.map)
    }
}

/// Pingora L4 connector for one WebSocket handshake.
#[derive(Debug)]
pub struct TunnelConnector {
    ctl: Arc<TunnelCtl>,
    registry: Registry,
    connect_timeout: Duration,
    on_close: Option<prometheus::IntGauge>,
}

impl std::fmt::Debug for TunnelCtl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelCtl")
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

impl TunnelConnector {
    pub fn new(
        tunnels: &Tunnels,
        ctl: Arc<TunnelCtl>,
        connect_timeout: Duration,
        open_gauge: prometheus::IntGauge,
    ) -> TunnelConnector {
        TunnelConnector {
            ctl,
            registry: tunnels.handle(),
            connect_timeout,
            on_close: Some(open_gauge),
        }
    }
}

impl Drop for TunnelConnector {
    fn drop(&mut self) {
        // A connector whose socket never got made still holds a registration.
        if Arc::strong_count(&self.ctl) <= 2 {
            unregister(&self.registry, &self.ctl);
        }
    }
}

fn unregister(registry: &Registry, ctl: &Arc<TunnelCtl>) {
    if let Ok(mut m) = registry.lock()
        && let Some(v) = m.get_mut(&ctl.sid)
    {
        v.retain(|c| !Arc::ptr_eq(c, ctl));
        if v.is_empty() {
            m.remove(&ctl.sid);
        }
    }
}

#[async_trait]
impl L4Connect for TunnelConnector {
    async fn connect(&self, addr: &L4SocketAddr) -> pingora::Result<Stream> {
        use pingora::{Error, ErrorType};
        let Some(inet) = addr.as_inet().copied() else {
            return Error::e_explain(
                ErrorType::ConnectError,
                "tunnel upstream is not an inet address",
            );
        };
        let tcp = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(inet)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => {
                let kind = if e.kind() == std::io::ErrorKind::ConnectionRefused {
                    ErrorType::ConnectRefused
                } else {
                    ErrorType::ConnectError
                };
                return Err(Error::because(kind, format!("connecting to {inet}"), e));
            }
            Err(_) => {
                return Error::e_explain(
                    ErrorType::ConnectTimedout,
                    format!("connecting to {inet}"),
                );
            }
        };
        let _ = tcp.set_nodelay(true);
        if let Some(g) = &self.on_close {
            g.inc();
        }
        let socket = TunnelSocket {
            tcp,
            peer: inet,
            ctl: Arc::clone(&self.ctl),
            registry: Arc::clone(&self.registry),
            frames: FrameTracker::default(),
            pending: Vec::new(),
            pending_at: 0,
            done: false,
            gauge: self.on_close.clone(),
        };
        Ok(Stream::from(VirtualSocketStream::new(Box::new(socket))))
    }
}

/// The upstream side of one tunnel, as Pingora sees it.
#[derive(Debug)]
pub struct TunnelSocket {
    tcp: TcpStream,
    peer: SocketAddr,
    ctl: Arc<TunnelCtl>,
    registry: Registry,
    frames: FrameTracker,
    /// Close frame still to hand to Pingora.
    pending: Vec<u8>,
    pending_at: usize,
    done: bool,
    gauge: Option<prometheus::IntGauge>,
}

impl Drop for TunnelSocket {
    fn drop(&mut self) {
        unregister(&self.registry, &self.ctl);
        if let Some(g) = &self.gauge {
            g.dec();
        }
    }
}

impl VirtualSocket for TunnelSocket {
    fn set_socket_option(&self, opt: VirtualSockOpt) -> std::io::Result<()> {
        match opt {
            VirtualSockOpt::NoDelay => self.tcp.set_nodelay(true),
            _ => Ok(()),
        }
    }
}

impl TunnelSocket {
    fn start_close(&mut self) {
        let (code, reason) = self
            .ctl
            .close
            .lock()
            .ok()
            .and_then(|c| c.clone())
            .unwrap_or((CLOSE_SESSION_ENDED, "session ended".into()));
        self.pending = close_frame(code, &reason, None);
        self.pending_at = 0;
        // Best effort: tell the upstream too (client frames are masked).
        let masked = close_frame(code, &reason, Some(rand::random::<[u8; 4]>()));
        let _ = self.tcp.try_write(&masked);
        tracing::debug!(sid = %self.ctl.sid, upstream = %self.peer, code, %reason, "ending tunnel");
    }
}

impl AsyncRead for TunnelSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        if me.done {
            return Poll::Ready(Ok(()));
        }
        if !me.pending.is_empty() {
            let rest = &me.pending[me.pending_at..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            me.pending_at += n;
            if me.pending_at >= me.pending.len() {
                me.pending.clear();
                me.done = true;
            }
            return Poll::Ready(Ok(()));
        }
        me.ctl.waker.register(cx.waker());
        let ending = me.ctl.ending.load(Ordering::Acquire);
        if ending {
            match me.frames.to_boundary() {
                Boundary::NotUpgraded => {
                    me.done = true;
                    return Poll::Ready(Ok(()));
                }
                Boundary::Here => {
                    me.start_close();
                    return Pin::new(me).poll_read(cx, buf);
                }
                Boundary::After(n) => {
                    // Finish the frame in flight, and not a byte more.
                    let limit = usize::try_from(n)
                        .unwrap_or(usize::MAX)
                        .min(buf.remaining())
                        .min(16 * 1024);
                    let mut tmp = vec![0u8; limit];
                    let mut sub = ReadBuf::new(&mut tmp);
                    let res = Pin::new(&mut me.tcp).poll_read(cx, &mut sub);
                    if let Poll::Ready(Ok(())) = &res {
                        let got = sub.filled();
                        if got.is_empty() {
                            me.done = true;
                            return Poll::Ready(Ok(()));
                        }
                        me.frames.feed(got);
                        buf.put_slice(got);
                    }
                    return res;
                }
            }
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut me.tcp).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &res {
            let after = buf.filled().len();
            me.frames.feed(&buf.filled()[before..after]);
        }
        res
    }
}

impl AsyncWrite for TunnelSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let me = self.get_mut();
        if me.frames.upgraded() {
            me.ctl
                .last_client_activity
                .store(crate::gate::now_ms(), Ordering::Relaxed);
        }
        Pin::new(&mut me.tcp).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// A WebSocket Close frame; masked when `mask` is given (client to server).
pub fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    // Control frame payloads are at most 125 bytes: 2 for the code, the rest reason.
    let mut reason_bytes = reason.as_bytes();
    if reason_bytes.len() > 123 {
        reason_bytes = &reason_bytes[..123];
    }
    let mut payload = Vec::with_capacity(2 + reason_bytes.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason_bytes);
    let mut out = Vec::with_capacity(6 + payload.len());
    out.push(0x88);
    match mask {
        None => {
            out.push(payload.len() as u8);
            out.extend_from_slice(&payload);
        }
        Some(m) => {
            out.push(0x80 | payload.len() as u8);
            out.extend_from_slice(&m);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Boundary {
    /// Still in the HTTP response head: no WebSocket yet.
    NotUpgraded,
    /// Between frames.
    Here,
    /// This many bytes (at least) end the frame in flight.
    After(u64),
}

/// Follows the upstream-to-client byte stream: the HTTP response head, then
/// WebSocket frame headers and payload lengths, so a Close can be inserted
/// between frames and never inside one.
#[derive(Debug, Default)]
struct FrameTracker {
    /// Bytes of "\r\n\r\n" matched at the end of the head.
    head_match: u8,
    in_frames: bool,
    /// The response status was not 101: a plain HTTP exchange.
    not_upgrade: bool,
    status_line: Vec<u8>,
    hdr: [u8; 14],
    hdr_len: usize,
    payload_left: u64,
}

impl FrameTracker {
    fn upgraded(&self) -> bool {
        self.in_frames
    }

    fn to_boundary(&self) -> Boundary {
        if !self.in_frames {
            return Boundary::NotUpgraded;
        }
        if self.hdr_len > 0 {
            return Boundary::After(1);
        }
        if self.payload_left > 0 {
            Boundary::After(self.payload_left)
        } else {
            Boundary::Here
        }
    }

    fn header_need(&self) -> usize {
        if self.hdr_len < 2 {
            return 2;
        }
        let len7 = self.hdr[1] & 0x7f;
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.hdr[1] & 0x80 != 0 { 4 } else { 0 };
        2 + ext + mask
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.not_upgrade {
                return;
            }
            if !self.in_frames {
                let b = data[0];
                data = &data[1..];
                if self.status_line.len() < 12 {
                    self.status_line.push(b);
                    if self.status_line.len() == 12 && &self.status_line[9..12] != b"101" {
                        self.not_upgrade = true;
                        return;
                    }
                }
                let want = b"\r\n\r\n"[self.head_match as usize];
                self.head_match = if b == want {
                    self.head_match + 1
                } else if b == b'\r' {
                    1
                } else {
                    0
                };
                if self.head_match == 4 {
                    self.in_frames = true;
                }
                continue;
            }
            if self.payload_left > 0 {
                let take = (data.len() as u64).min(self.payload_left);
                self.payload_left -= take;
                data = &data[take as usize..];
                continue;
            }
            self.hdr[self.hdr_len] = data[0];
            self.hdr_len += 1;
            data = &data[1..];
            if self.hdr_len == self.header_need() {
                let len7 = self.hdr[1] & 0x7f;
                self.payload_left = match len7 {
                    126 => u64::from(u16::from_be_bytes([self.hdr[2], self.hdr[3]])),
                    127 => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&self.hdr[2..10]);
                        u64::from_be_bytes(b)
                    }
                    n => u64::from(n),
                };
                self.hdr_len = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";

    #[test]
    fn head_then_boundary() {
        let mut t = FrameTracker::default();
        assert_eq!(t.to_boundary(), Boundary::NotUpgraded);
        t.feed(HEAD);
        assert_eq!(t.to_boundary(), Boundary::Here);
    }

    #[test]
    fn mid_frame_waits_for_payload_end() {
        let mut t = FrameTracker::default();
        t.feed(HEAD);
        t.feed(&[0x82, 126, 0x01, 0x00]); // 256-byte binary frame
        assert_eq!(t.to_boundary(), Boundary::After(256));
        t.feed(&[0u8; 200]);
        assert_eq!(t.to_boundary(), Boundary::After(56));
        t.feed(&[0u8; 56]);
        assert_eq!(t.to_boundary(), Boundary::Here);
    }

    #[test]
    fn split_header_is_mid_frame() {
        let mut t = FrameTracker::default();
        t.feed(HEAD);
        t.feed(&[0x82]);
        assert_eq!(t.to_boundary(), Boundary::After(1));
        t.feed(&[127, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(t.to_boundary(), Boundary::After(65536));
    }

    #[test]
    fn non_101_response_is_not_a_tunnel() {
        let mut t = FrameTracker::default();
        t.feed(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(t.to_boundary(), Boundary::NotUpgraded);
    }

    #[test]
    fn close_frame_layout() {
        let f = close_frame(4401, "session revoked", None);
        assert_eq!(f[0], 0x88);
        assert_eq!(f[1] as usize, 2 + "session revoked".len());
        assert_eq!(u16::from_be_bytes([f[2], f[3]]), 4401);
        assert_eq!(&f[4..], b"session revoked");
        let m = close_frame(4401, "x", Some([1, 2, 3, 4]));
        assert_eq!(m[1], 0x80 | 3);
        assert_eq!(m.len(), 2 + 4 + 3);
    }
}
