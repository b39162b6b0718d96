//! WebSocket tunnels: the gate's own relay between a client and a gateway
//! upstream, and the registry that lets the gate end them from outside.
//!
//! Once a gateway upstream answers a handshake with 101 ([`crate::handshake`]),
//! the proxy glue takes the client socket out of Pingora and hands both
//! sockets to a [`Relay`]; Pingora's task for the connection ends there. Two
//! things follow from the gate owning the relay:
//!
//! - An idle tunnel costs two sockets and a small state machine, no buffers.
//!   Bytes are read into a per-thread scratch buffer and written straight on;
//!   only what a slow peer has not taken yet is kept, and that side's reading
//!   pauses until it has.
//! - Ending a session (or stopping the gate) wakes the relay through its
//!   [`TunnelCtl`]: it lets the frame in flight each way finish, sends the
//!   client a Close frame (4401, `session <status>`; 1001 on shutdown) and the
//!   upstream a masked one, and closes both once they answer or after
//!   [`LINGER`].
//!
//! The control block also records client activity, so the lifecycle sweeper
//! can keep a chatting session from being `abandoned`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::clock::now_ms;
use crate::inflight::InFlight;
use crate::session::Status;

/// Close code sent when the session ends (SPEC section 7).
pub const CLOSE_SESSION_ENDED: u16 = 4401;
/// Close code sent when the gate shuts down.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// A peer that takes none of what the tunnel has for it this long is cut.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Once one side has finished (or the gate sent its Close frames), how long
/// the other may take to finish too.
pub const LINGER: Duration = Duration::from_secs(2);
/// Bytes moved per read; one buffer per thread, shared by every tunnel on it.
const SCRATCH: usize = 16 * 1024;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

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

    /// When the client last sent bytes (ms since epoch); 0: never.
    pub fn last_client_activity(&self) -> u64 {
        self.last_client_activity.load(Ordering::Relaxed)
    }

    /// Whether the gate has asked this tunnel to close.
    pub fn is_ending(&self) -> bool {
        self.ending.load(Ordering::Acquire)
    }

    fn close_reason(&self) -> (u16, String) {
        self.close
            .lock()
            .ok()
            .and_then(|c| c.clone())
            .unwrap_or((CLOSE_SESSION_ENDED, "session ended".into()))
    }
}

impl std::fmt::Debug for TunnelCtl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelCtl")
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

type Registry = Arc<Mutex<HashMap<String, Vec<Arc<TunnelCtl>>>>>;

/// The tunnels open on this node, by session id.
#[derive(Default)]
pub struct Tunnels {
    map: Registry,
}

impl Tunnels {
    /// Registers a tunnel about to open. Register before the session's last
    /// check ([`crate::gate::Gate::recheck`]), so a status change landing in
    /// between still reaches it. Opening is not client activity: only the
    /// client's frames are (SPEC 7), so a tunnel starts with none.
    pub fn register(&self, sid: &str, route: &str) -> Registration {
        let ctl = Arc::new(TunnelCtl {
            sid: sid.to_owned(),
            route: route.to_owned(),
            ending: AtomicBool::new(false),
            close: Mutex::new(None),
            waker: AtomicWaker::new(),
            last_client_activity: AtomicU64::new(0),
        });
        if let Ok(mut m) = self.map.lock() {
            m.entry(sid.to_owned()).or_default().push(Arc::clone(&ctl));
        }
        Registration {
            ctl,
            registry: Arc::clone(&self.map),
            open: None,
        }
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

    /// Open tunnels: (session id, latest client activity among its tunnels,
    /// 0 when none of them heard from its client yet).
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
}

/// A tunnel's place in the registry; dropping it unregisters the tunnel.
pub struct Registration {
    ctl: Arc<TunnelCtl>,
    registry: Registry,
    /// Set once the tunnel is open: the open-tunnels gauge it counts in, and
    /// its share of the requests a graceful stop waits for.
    open: Option<(prometheus::IntGauge, InFlight)>,
}

impl Registration {
    /// The tunnel's control block.
    pub fn ctl(&self) -> &Arc<TunnelCtl> {
        &self.ctl
    }

    /// Counts the tunnel as open (in `gauge` and as in flight) until it ends.
    pub fn opened(&mut self, gauge: prometheus::IntGauge, in_flight: InFlight) {
        gauge.inc();
        self.open = Some((gauge, in_flight));
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some((gauge, _)) = &self.open {
            gauge.dec();
        }
        if let Ok(mut m) = self.registry.lock()
            && let Some(v) = m.get_mut(&self.ctl.sid)
        {
            v.retain(|c| !Arc::ptr_eq(c, &self.ctl));
            if v.is_empty() {
                m.remove(&self.ctl.sid);
            }
        }
    }
}

/// Relays one open tunnel until either side ends it or the gate does.
/// Spawn it; it resolves when both sockets are done with.
pub struct Relay<C, U> {
    client: C,
    upstream: U,
    reg: Registration,
    /// Upstream to client.
    down: Flow,
    /// Client to upstream.
    up: Flow,
    /// Set once the gate ends the tunnel: the Close frames' code and reason.
    closing: Option<(u16, String)>,
    /// Bounds a tunnel that is finishing: set once, never reset.
    linger: Option<Pin<Box<Sleep>>>,
    /// Runs while a peer is not taking bytes; pushed back on progress.
    stall: Option<Pin<Box<Sleep>>>,
}

impl<C, U> Relay<C, U>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    /// `early` holds upstream bytes read past the 101 head: frames the upstream
    /// sent at once, still owed to the client.
    pub fn new(client: C, upstream: U, early: &[u8], reg: Registration) -> Relay<C, U> {
        let mut down = Flow::default();
        if !early.is_empty() {
            down.frames.feed(early);
            down.pending.extend_from_slice(early);
        }
        Relay {
            client,
            upstream,
            reg,
            down,
            up: Flow::default(),
            closing: None,
            linger: None,
            stall: None,
        }
    }

    fn start_linger(&mut self) {
        if self.linger.is_none() {
            self.linger = Some(Box::pin(tokio::time::sleep(LINGER)));
        }
    }

    /// Moves bytes both ways and steps the close; true once both sides are done.
    fn drive(&mut self, cx: &mut Context<'_>) -> io::Result<bool> {
        loop {
            let mut again = false;
            let closing = self.closing.is_some();
            self.down
                .pump(cx, &mut self.upstream, &mut self.client, closing, None)?;
            let activity = &self.reg.ctl.last_client_activity;
            self.up.pump(
                cx,
                &mut self.client,
                &mut self.upstream,
                closing,
                Some(activity),
            )?;
            if let Some((code, reason)) = &self.closing {
                // A Close goes out each way as soon as that way stands between frames.
                if !self.down.close_sent && self.down.frames.at_boundary() {
                    self.down
                        .pending
                        .extend_from_slice(&close_frame(*code, reason, None));
                    self.down.close_sent = true;
                    again = true;
                }
                if !self.up.close_sent && self.up.frames.at_boundary() {
                    let mask = rand::random::<[u8; 4]>();
                    self.up
                        .pending
                        .extend_from_slice(&close_frame(*code, reason, Some(mask)));
                    self.up.close_sent = true;
                    again = true;
                }
            }
            if self.down.ready_to_shut() && Pin::new(&mut self.client).poll_shutdown(cx).is_ready()
            {
                self.down.dst_shut = true;
                self.start_linger();
                again = true;
            }
            if self.up.ready_to_shut() && Pin::new(&mut self.upstream).poll_shutdown(cx).is_ready()
            {
                self.up.dst_shut = true;
                self.start_linger();
                again = true;
            }
            if self.down.finished() && self.up.finished() {
                return Ok(true);
            }
            if !again {
                return Ok(false);
            }
        }
    }
}

impl<C, U> Future for Relay<C, U>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let me = self.get_mut();
        me.reg.ctl.waker.register(cx.waker());
        if me.closing.is_none() && me.reg.ctl.ending.load(Ordering::Acquire) {
            me.closing = Some(me.reg.ctl.close_reason());
            tracing::debug!(sid = %me.reg.ctl.sid, route = %me.reg.ctl.route, "ending tunnel");
            me.start_linger();
        }
        match me.drive(cx) {
            Ok(true) => return Poll::Ready(()),
            Ok(false) => {}
            Err(e) => {
                tracing::debug!(sid = %me.reg.ctl.sid, error = %e, "tunnel closed");
                return Poll::Ready(());
            }
        }
        if let Some(l) = &mut me.linger
            && l.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(());
        }
        let blocked = me.down.blocked || me.up.blocked;
        let moved = std::mem::take(&mut me.down.moved) | std::mem::take(&mut me.up.moved);
        if !blocked {
            me.stall = None;
        } else {
            let deadline = Instant::now() + WRITE_TIMEOUT;
            let stall = me
                .stall
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_TIMEOUT)));
            if moved {
                stall.as_mut().reset(deadline);
            }
            if stall.as_mut().poll(cx).is_ready() {
                tracing::debug!(sid = %me.reg.ctl.sid, "tunnel peer stopped reading");
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}

/// One direction of a tunnel.
#[derive(Debug, Default)]
struct Flow {
    frames: FrameTracker,
    /// Bytes read but not yet taken by the destination.
    pending: Vec<u8>,
    at: usize,
    /// The destination holds bytes not flushed yet.
    dirty: bool,
    /// The source sent EOF.
    src_done: bool,
    /// The gate queued its Close frame on this flow.
    close_sent: bool,
    /// The destination's write side is shut; the source is only drained.
    dst_shut: bool,
    /// The destination stopped taking bytes.
    blocked: bool,
    /// Bytes moved since the relay last looked.
    moved: bool,
}

impl Flow {
    fn ready_to_shut(&self) -> bool {
        !self.dst_shut
            && (self.src_done || self.close_sent)
            && self.at >= self.pending.len()
            && !self.dirty
    }

    fn finished(&self) -> bool {
        self.dst_shut && self.src_done
    }

    /// Moves bytes from `src` to `dst` until one of them would block. While
    /// closing, reads stop at the end of the frame in flight; once `dst` is shut,
    /// what `src` still sends is read and dropped.
    fn pump<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut R,
        dst: &mut W,
        closing: bool,
        activity: Option<&AtomicU64>,
    ) -> io::Result<()>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        self.blocked = false;
        loop {
            while self.at < self.pending.len() {
                match Pin::new(&mut *dst).poll_write(cx, &self.pending[self.at..]) {
                    Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                    Poll::Ready(Ok(n)) => {
                        self.at += n;
                        self.dirty = true;
                        self.moved = true;
                    }
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => {
                        self.blocked = true;
                        return Ok(());
                    }
                }
            }
            if !self.pending.is_empty() {
                // Give the memory back: an idle tunnel holds no buffer.
                self.pending = Vec::new();
                self.at = 0;
            }
            if self.dirty {
                match Pin::new(&mut *dst).poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.dirty = false,
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => {
                        self.blocked = true;
                        return Ok(());
                    }
                }
            }
            if self.src_done {
                return Ok(());
            }
            let limit = if self.dst_shut {
                SCRATCH
            } else if closing {
                match self.frames.to_boundary() {
                    // Nothing more goes this way after the gate's Close frame.
                    _ if self.close_sent => return Ok(()),
                    Boundary::Here => return Ok(()),
                    Boundary::After(n) => usize::try_from(n).unwrap_or(SCRATCH).min(SCRATCH),
                }
            } else {
                SCRATCH
            };
            let read = SCRATCH_BUF.with(|scratch| -> io::Result<Option<usize>> {
                let mut scratch = scratch.borrow_mut();
                let mut rb = ReadBuf::new(&mut scratch[..limit]);
                match Pin::new(&mut *src).poll_read(cx, &mut rb) {
                    Poll::Pending => Ok(None),
                    Poll::Ready(Err(e)) => Err(e),
                    Poll::Ready(Ok(())) => {
                        let data = rb.filled();
                        if data.is_empty() || self.dst_shut {
                            return Ok(Some(data.len()));
                        }
                        self.frames.feed(data);
                        let mut off = 0;
                        while off < data.len() {
                            match Pin::new(&mut *dst).poll_write(cx, &data[off..]) {
                                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                                Poll::Ready(Ok(n)) => {
                                    off += n;
                                    self.dirty = true;
                                    self.moved = true;
                                }
                                Poll::Ready(Err(e)) => return Err(e),
                                Poll::Pending => break,
                            }
                        }
                        if off < data.len() {
                            self.pending.extend_from_slice(&data[off..]);
                        }
                        Ok(Some(data.len()))
                    }
                }
            })?;
            match read {
                None => return Ok(()),
                Some(0) => self.src_done = true,
                Some(_) => {
                    if let Some(a) = activity {
                        a.store(now_ms(), Ordering::Relaxed);
                    }
                }
            }
        }
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
    /// Between frames.
    Here,
    /// This many bytes (at least) end the frame in flight.
    After(u64),
}

/// Follows one direction's WebSocket frames (header, payload length), so a
/// Close can be put between frames and never inside one.
#[derive(Debug, Default)]
struct FrameTracker {
    hdr: [u8; 14],
    hdr_len: usize,
    payload_left: u64,
}

impl FrameTracker {
    fn at_boundary(&self) -> bool {
        self.to_boundary() == Boundary::Here
    }

    fn to_boundary(&self) -> Boundary {
        if self.hdr_len > 0 {
            // The rest of the header; the payload length is known after it.
            return Boundary::After((self.header_need() - self.hdr_len) as u64);
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
        let ext = match self.hdr[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.hdr[1] & 0x80 != 0 { 4 } else { 0 };
        2 + ext + mask
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
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
                self.payload_left = match self.hdr[1] & 0x7f {
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
    use tokio::net::TcpStream;

    #[test]
    fn small_frames_leave_a_boundary() {
        let mut t = FrameTracker::default();
        assert!(t.at_boundary());
        t.feed(&[0x81, 0x02, b'h', b'i', 0x81, 0x00]);
        assert!(t.at_boundary());
    }

    #[test]
    fn mid_frame_waits_for_payload_end() {
        let mut t = FrameTracker::default();
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
        t.feed(&[0x82]);
        assert_eq!(t.to_boundary(), Boundary::After(1));
        t.feed(&[127, 0, 0, 0, 0]);
        assert_eq!(t.to_boundary(), Boundary::After(4));
        t.feed(&[0, 1, 0, 0]);
        assert_eq!(t.to_boundary(), Boundary::After(65536));
    }

    #[test]
    fn masked_client_frames_count_the_mask() {
        let mut t = FrameTracker::default();
        t.feed(&[0x81, 0x80 | 3, 1, 2, 3]);
        assert_eq!(t.to_boundary(), Boundary::After(1));
        t.feed(&[4, b'a', b'b']);
        assert_eq!(t.to_boundary(), Boundary::After(1));
        t.feed(b"c");
        assert!(t.at_boundary());
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

    /// The gate's and the upstream's ends of one loopback connection.
    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (gate, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (gate.unwrap(), server.unwrap().0)
    }

    /// A relay between `client` and `upstream`, registered in `tunnels`, running.
    fn spawn_relay<U>(
        tunnels: &Tunnels,
        client: tokio::io::DuplexStream,
        upstream: U,
        early: &[u8],
    ) -> tokio::task::JoinHandle<()>
    where
        U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let reg = tunnels.register("s1", "chat");
        tokio::spawn(Relay::new(client, upstream, early, reg))
    }

    /// A relay between a loopback upstream and an in-process client: frames
    /// pass, and ending the tunnel mid-frame lets the frame finish before the Close.
    #[tokio::test]
    async fn ending_mid_frame_finishes_the_frame_then_closes() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (up_gate, mut up_server) = tcp_pair().await;
        let (client_gate, mut client) = tokio::io::duplex(64 * 1024);
        let tunnels = Tunnels::default();
        let relay = spawn_relay(&tunnels, client_gate, up_gate, &[0x81, 0x01, b'a']);

        let mut got = [0u8; 3];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [0x81, 0x01, b'a']);
        // Half of a 4-byte frame, then the end of the session.
        up_server.write_all(&[0x82, 0x04, 1, 2]).await.unwrap();
        let mut half = [0u8; 4];
        client.read_exact(&mut half).await.unwrap();
        tunnels.end_session("s1", Status::Revoked);
        up_server
            .write_all(&[3, 4, 0x81, 0x01, b'z'])
            .await
            .unwrap();
        let mut rest = [0u8; 2];
        client.read_exact(&mut rest).await.unwrap();
        assert_eq!(rest, [3, 4]);
        let mut close = vec![0u8; 4 + "session revoked".len()];
        client.read_exact(&mut close).await.unwrap();
        assert_eq!(close, close_frame(4401, "session revoked", None));
        // Nothing after the Close: the frame that followed is dropped.
        let mut tail = Vec::new();
        client.read_to_end(&mut tail).await.unwrap();
        assert!(tail.is_empty(), "{tail:?}");
        // The upstream got a masked Close and then EOF.
        let mut up_got = Vec::new();
        up_server.read_to_end(&mut up_got).await.unwrap();
        assert_eq!(up_got[0], 0x88);
        assert_eq!(up_got[1], 0x80 | (2 + "session revoked".len() as u8));
        drop(client);
        drop(up_server);
        relay.await.unwrap();
        assert_eq!(tunnels.count(), 0);
    }

    /// Pingora cuts a downstream silent for 60 s by default; once a tunnel is
    /// the relay's, nothing times out its silence. Both sides are in-process
    /// pipes, so the paused clock skips through the silence without racing real
    /// I/O: past 60 s and then a whole day, neither side sees a byte or an EOF,
    /// and the tunnel still relays a frame each way afterwards.
    #[tokio::test(start_paused = true)]
    async fn a_silent_tunnel_is_never_cut() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client_gate, mut client) = tokio::io::duplex(1024);
        let (up_gate, mut up_server) = tokio::io::duplex(1024);
        let tunnels = Tunnels::default();
        let relay = spawn_relay(&tunnels, client_gate, up_gate, &[]);
        let started = Instant::now();
        let (mut c_buf, mut u_buf) = ([0u8; 64], [0u8; 64]);
        for silence in [Duration::from_secs(61), Duration::from_secs(24 * 3600)] {
            tokio::select! {
                r = client.read(&mut c_buf) => panic!("client got {r:?} while silent"),
                r = up_server.read(&mut u_buf) => panic!("upstream got {r:?} while silent"),
                () = tokio::time::sleep(silence) => {}
            }
            assert!(
                !relay.is_finished(),
                "relay ended within {silence:?} of silence"
            );
        }
        assert!(started.elapsed() > Duration::from_secs(24 * 3600 + 60));
        assert_eq!(tunnels.count(), 1);
        // A masked client frame goes up, an upstream frame comes down.
        let hi = [0x81, 0x80 | 2, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
        client.write_all(&hi).await.unwrap();
        up_server.read_exact(&mut u_buf[..hi.len()]).await.unwrap();
        assert_eq!(u_buf[..hi.len()], hi);
        up_server
            .write_all(&[0x81, 0x02, b'o', b'k'])
            .await
            .unwrap();
        client.read_exact(&mut c_buf[..4]).await.unwrap();
        assert_eq!(c_buf[..4], [0x81, 0x02, b'o', b'k']);
        assert!(!relay.is_finished());
        drop((client, up_server));
        relay.await.unwrap();
        assert_eq!(tunnels.count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_is_cut_after_the_write_timeout() {
        use tokio::io::AsyncWriteExt;
        let (up_gate, mut up_server) = tcp_pair().await;
        let (client_gate, _client) = tokio::io::duplex(1024);
        let tunnels = Tunnels::default();
        let relay = spawn_relay(&tunnels, client_gate, up_gate, &[]);
        // Far more than the client side holds; the client reads none of it.
        let flood = tokio::spawn(async move {
            let chunk = vec![0u8; 64 * 1024];
            while up_server.write_all(&chunk).await.is_ok() {}
        });
        let started = Instant::now();
        relay.await.unwrap();
        let waited = started.elapsed();
        assert!(
            waited >= WRITE_TIMEOUT && waited < WRITE_TIMEOUT + Duration::from_secs(1),
            "{waited:?}"
        );
        assert_eq!(tunnels.count(), 0);
        flood.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn an_upstream_that_leaves_ends_the_tunnel_within_the_linger() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (up_gate, mut up_server) = tcp_pair().await;
        let (client_gate, mut client) = tokio::io::duplex(1024);
        let tunnels = Tunnels::default();
        let relay = spawn_relay(&tunnels, client_gate, up_gate, &[]);
        up_server
            .write_all(&[0x81, 0x02, b'o', b'k'])
            .await
            .unwrap();
        drop(up_server);
        // The client gets what was sent, then EOF.
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, [0x81, 0x02, b'o', b'k']);
        // A client that never closes its side holds the tunnel no longer than LINGER.
        let started = Instant::now();
        relay.await.unwrap();
        assert!(started.elapsed() <= LINGER, "{:?}", started.elapsed());
        assert_eq!(tunnels.count(), 0);
        drop(client);
    }
}
