//! The Pingora glue: the only implementation of `ProxyHttp`.
//!
//! `request_filter` does all the deciding before an upstream connection is
//! taken (limits, path normalization, `/_session`, route, origin, ticket,
//! session liveness, roles) and answers refusals itself, keeping the client
//! connection alive. `upstream_request_filter` runs after Pingora's own
//! hop-by-hop and `Connection`-nominated header stripping, so the identity
//! headers it injects cannot be removed by a client's `Connection` header.
//!
//! A WebSocket handshake on a gateway route never reaches Pingora's upstream
//! path: `request_filter` does the handshake itself ([`crate::handshake`]) and,
//! on a 101, takes the client socket out of Pingora's session and hands both
//! sockets to a [`Relay`], so Pingora's task for the connection ends.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::header;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora::protocols::tls::CaType;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{WrappedX509, parse_x509};

use crate::api::{self, ApiRequest, Response};
use crate::config::{AuthPolicy, RouteKind, RouteTls};
use crate::credentials::{TicketFrom, cookie, cookies_without, find_ticket, query_without_ticket};
use crate::gate::{Admitted, Gate, InFlight, Settings, now_ms};
use crate::handshake::{self, HandshakeError, TlsClient};
use crate::health::Health;
use crate::reject::Reject;
use crate::route::{Route, normalize_path};
use crate::tunnel::Relay;

pub const MAX_URI: usize = 8 * 1024;
pub const MAX_HEADERS: usize = 64 * 1024;
/// Pooled upstream connections idle longer than this are closed.
pub const UPSTREAM_IDLE: Duration = Duration::from_secs(60);

pub struct Proxy {
    gate: Arc<Gate>,
    health: Arc<Health>,
    /// Routes' upstream CAs in Pingora's form (controllers).
    cas: Derived<CaDers, CaType>,
    /// Routes' TLS clients (gateways), one per SNI and CA.
    tls_clients: Derived<(String, Option<CaDers>), TlsClient>,
}

/// A route's upstream CA as the config holds it: DER certificates.
type CaDers = Arc<Vec<Vec<u8>>>;

/// Values built once from parts of a config rather than on every request.
/// An entry is found by the config's own `Arc`s, which it holds on to, so
/// their addresses cannot be reused while it lives; beyond [`MAX_DERIVED`]
/// entries (many reloads) the oldest go.
struct Derived<K, V: ?Sized> {
    entries: std::sync::Mutex<Vec<(K, Arc<V>)>>,
}

const MAX_DERIVED: usize = 16;

impl<K, V: ?Sized> Derived<K, V> {
    fn new() -> Self {
        Derived {
            entries: std::sync::Mutex::default(),
        }
    }

    fn get_or_build<E>(
        &self,
        is_key: impl Fn(&K) -> bool,
        key: impl FnOnce() -> K,
        build: impl FnOnce() -> Result<Arc<V>, E>,
    ) -> Result<Arc<V>, E> {
        if let Ok(entries) = self.entries.lock()
            && let Some((_, v)) = entries.iter().find(|(k, _)| is_key(k))
        {
            return Ok(Arc::clone(v));
        }
        // Built outside the lock: two first requests may both build; one stays.
        let v = build()?;
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= MAX_DERIVED {
                entries.remove(0);
            }
            entries.push((key(), Arc::clone(&v)));
        }
        Ok(v)
    }
}

impl Proxy {
    pub fn new(gate: Arc<Gate>, health: Arc<Health>) -> Proxy {
        Proxy {
            gate,
            health,
            cas: Derived::new(),
            tls_clients: Derived::new(),
        }
    }

    /// The TLS client of a gateway route (loading the system's roots is not
    /// for every handshake).
    fn tls_client(&self, tls: &RouteTls) -> Result<Arc<TlsClient>, String> {
        self.tls_clients.get_or_build(
            |(sni, ca)| {
                *sni == tls.sni
                    && match (ca, &tls.ca) {
                        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                        (None, None) => true,
                        _ => false,
                    }
            },
            || (tls.sni.clone(), tls.ca.clone()),
            || TlsClient::new(tls).map(Arc::new),
        )
    }

    /// The CA of a controller's TLS route in the form Pingora takes.
    fn ca(&self, ders: &CaDers) -> Arc<CaType> {
        let Ok(ca) = self.cas.get_or_build(
            |k| Arc::ptr_eq(k, ders),
            || Arc::clone(ders),
            || {
                // The config check parsed each certificate, so parse_x509 cannot fail here.
                let certs: Vec<WrappedX509> = ders
                    .iter()
                    .map(|der| WrappedX509::new(der.clone(), parse_x509))
                    .collect();
                Ok::<_, std::convert::Infallible>(Arc::from(certs))
            },
        );
        ca
    }
}

/// Per-request state.
pub struct Ctx {
    _in_flight: InFlight,
    started: Instant,
    settings: Option<Arc<Settings>>,
    route: Option<usize>,
    claims: Option<Arc<Admitted>>,
    /// The normalized path, when it differs from the request's.
    path: Option<String>,
    ticket_from: Option<TicketFrom>,
    websocket: bool,
    upstream: Option<SocketAddr>,
    tries: usize,
    /// Set when the gate itself refused, for logs and metrics.
    reject: Option<Reject>,
    /// The gate wrote the response itself.
    responded: Option<u16>,
    /// The request became a tunnel and its client socket left Pingora's
    /// session: its method, for the access log.
    handed_off: Option<http::Method>,
}

impl Ctx {
    fn route<'a>(&self, s: &'a Settings) -> Option<&'a Route> {
        self.route.and_then(|i| s.routes.routes().get(i))
    }
}

fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// Writes a whole response, keeping the connection reusable.
async fn respond(session: &mut Session, resp: Response) -> pingora::Result<()> {
    let mut h = ResponseHeader::build(resp.status, Some(resp.headers.len() + 1))?;
    for (k, v) in resp.headers {
        h.append_header(k, v)?;
    }
    h.insert_header(header::CONTENT_LENGTH, resp.body.len())?;
    let empty = resp.body.is_empty();
    session.write_response_header(Box::new(h), empty).await?;
    if !empty {
        session
            .write_response_body(Some(Bytes::from(resp.body)), true)
            .await?;
    }
    Ok(())
}

impl Proxy {
    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        r: Reject,
    ) -> pingora::Result<bool> {
        ctx.responded = Some(r.status());
        let resp = Response::reject(&r);
        ctx.reject = Some(r);
        respond(session, resp).await?;
        Ok(true)
    }

    /// Does a gateway route's WebSocket handshake with its upstream and, on a
    /// 101, turns the connection into a [`Relay`] of the gate's own.
    async fn open_tunnel(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        s: &Settings,
        route: &Route,
    ) -> pingora::Result<bool> {
        if session.downstream_session.as_http1().is_none() {
            // The tunnel needs the connection to itself; an HTTP/2 stream is not one.
            let why = "WebSocket needs HTTP/1.1".into();
            return self.refuse(session, ctx, Reject::BadRequest(why)).await;
        }
        let mut up = session.req_header().clone();
        match handshake::headers_to_drop(&up.headers) {
            Ok(names) => {
                for name in &names {
                    up.remove_header(name);
                }
            }
            Err(why) => {
                return self
                    .refuse(session, ctx, Reject::BadRequest(why.into()))
                    .await;
            }
        }
        for (name, value) in handshake::UPGRADE_HEADERS {
            up.insert_header(name, value)?;
        }
        rewrite_request(session, &mut up, ctx, s, route)?;
        let target = up.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let request = handshake::request_head(&up.method, target, &up.headers);
        let sid = ctx.claims.as_ref().map_or("", |a| a.claims.sid.as_str());
        // Registered before the upstream is asked, so a status change landing
        // during the handshake still ends the tunnel the moment it opens.
        let mut registration = self.gate.tunnels.register(sid, route.name(), now_ms());
        let cfg = &route.config;
        // Looked up first, so the route's gauge reads 0 rather than missing
        // after a refused handshake.
        let gauge = self.gate.metrics.websockets.with_label_values(&[&cfg.name]);
        let tls = match cfg.tls.as_ref().map(|t| self.tls_client(t)).transpose() {
            Ok(tls) => tls,
            Err(why) => {
                return self
                    .tunnel_failed(session, ctx, route, Reject::UpstreamUnavailable, &why)
                    .await;
            }
        };
        let mut tries = 0;
        let (mut tcp, answer, addr) = loop {
            let Some(addr) = route.pick_upstream(|a| self.health.is_up(a)) else {
                let why = format!("route {}: no healthy upstream", cfg.name);
                return self
                    .tunnel_failed(session, ctx, route, Reject::UpstreamUnavailable, &why)
                    .await;
            };
            ctx.upstream = Some(addr);
            tries += 1;
            let res = match handshake::connect(addr, cfg.connect_timeout, tls.as_deref()).await {
                Ok(mut tcp) => handshake::exchange(&mut tcp, addr, &request, cfg.timeout)
                    .await
                    .map(|a| (tcp, a, addr)),
                Err(e) => Err(e),
            };
            match res {
                Ok(done) => break done,
                Err(e) if e.is_connect() => {
                    self.health.mark_down(addr);
                    if tries < cfg.upstreams.len() {
                        tracing::debug!(error = %e, "retrying the handshake on another upstream");
                        continue;
                    }
                    let why = e.to_string();
                    return self
                        .tunnel_failed(session, ctx, route, Reject::UpstreamUnavailable, &why)
                        .await;
                }
                Err(e) => return self.handshake_failed(session, ctx, route, &e).await,
            }
        };

        if answer.status != 101 {
            // A refusal passes to the client as an ordinary response; the
            // upstream connection is dropped with it.
            drop(registration);
            let refusal = match handshake::read_refusal(&mut tcp, addr, answer, cfg.timeout).await {
                Ok(r) => r,
                Err(e) => return self.handshake_failed(session, ctx, route, &e).await,
            };
            ctx.responded = Some(refusal.status);
            let resp = Response {
                status: refusal.status,
                headers: refusal.headers,
                body: refusal.body,
            };
            respond(session, resp).await?;
            return Ok(true);
        }

        // What the access log needs of the request, before it goes with the session.
        let req = session.req_header();
        let method = req.method.clone();
        if ctx.path.is_none() {
            ctx.path = Some(req.uri.path().to_owned());
        }
        let Some(mut client) = take_client(session) else {
            return Error::e_explain(ErrorType::InternalError, "no HTTP/1 client socket");
        };
        ctx.handed_off = Some(method);
        {
            use tokio::io::AsyncWriteExt;
            let sent = async {
                client.write_all(answer.head()).await?;
                client.flush().await
            };
            if let Err(e) = sent.await {
                tracing::debug!(error = %e, "client left during the handshake");
                return Ok(true);
            }
        }
        ctx.responded = Some(101);
        registration.opened(gauge, InFlight::new(&self.gate.in_flight));
        tokio::spawn(Relay::new(client, tcp, answer.rest(), registration));
        Ok(true)
    }

    async fn handshake_failed(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        route: &Route,
        e: &HandshakeError,
    ) -> pingora::Result<bool> {
        let reject = if e.is_timeout() {
            Reject::UpstreamTimeout
        } else {
            Reject::UpstreamUnavailable
        };
        self.tunnel_failed(session, ctx, route, reject, &e.to_string())
            .await
    }

    async fn tunnel_failed(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        route: &Route,
        reject: Reject,
        why: &str,
    ) -> pingora::Result<bool> {
        self.gate
            .metrics
            .upstream_errors
            .with_label_values(&[&route.config.name, reject.code()])
            .inc();
        tracing::warn!(
            error = why,
            code = reject.code(),
            "WebSocket handshake failed"
        );
        self.refuse(session, ctx, reject).await
    }

    /// Reads a `/_session` body, bounded by [`api::MAX_BODY`].
    async fn read_body(session: &mut Session) -> Result<Vec<u8>, Reject> {
        let declared = session
            .req_header()
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > api::MAX_BODY) {
            return Err(Reject::BodyTooLarge);
        }
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > api::MAX_BODY {
                        return Err(Reject::BodyTooLarge);
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(body),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read request body");
                    return Err(Reject::BadRequest("malformed request body".into()));
                }
            }
        }
    }

    async fn serve_api(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        s: &Settings,
        path: &str,
    ) -> pingora::Result<bool> {
        let body = match Self::read_body(session).await {
            Ok(b) => b,
            Err(r) => return self.refuse(session, ctx, r).await,
        };
        let ip = client_ip(session);
        let req = session.req_header();
        let method = req.method.clone();
        let resp = api::handle(
            &self.gate,
            s,
            ApiRequest {
                method: &method,
                path,
                headers: &req.headers,
                body: &body,
                client_ip: ip,
            },
        )
        .await;
        ctx.responded = Some(resp.status);
        respond(session, resp).await?;
        Ok(true)
    }
}

/// Takes the client's socket out of Pingora's session, leaving a stand-in
/// that reads EOF and swallows writes, so Pingora winds its side down
/// without touching the connection. `None` unless the session is HTTP/1.
fn take_client(session: &mut Session) -> Option<pingora::protocols::Stream> {
    session.downstream_session.as_http1()?;
    let stand_in = L4Stream::from(VirtualSocketStream::new(Box::new(HandedOff)));
    let stand_in = Box::new(ServerSession::new_http1(Box::new(stand_in)));
    match *std::mem::replace(&mut session.downstream_session, stand_in) {
        ServerSession::H1(h1) => Some(h1.into_inner()),
        _ => None,
    }
}

/// What Pingora's session holds once its client socket became a tunnel.
#[derive(Debug)]
struct HandedOff;

impl VirtualSocket for HandedOff {
    fn set_socket_option(&self, _opt: VirtualSockOpt) -> std::io::Result<()> {
        Ok(())
    }
}

impl tokio::io::AsyncRead for HandedOff {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        _buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for HandedOff {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn header_bytes(session: &Session) -> usize {
    session
        .req_header()
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum()
}

fn is_websocket(session: &Session) -> bool {
    session
        .req_header()
        .headers
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            _in_flight: InFlight::new(&self.gate.in_flight),
            started: Instant::now(),
            settings: None,
            route: None,
            claims: None,
            path: None,
            ticket_from: None,
            websocket: false,
            upstream: None,
            tries: 0,
            reject: None,
            responded: None,
            handed_off: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> pingora::Result<bool> {
        let s = self.gate.settings();
        ctx.settings = Some(Arc::clone(&s));
        let req = session.req_header();
        let uri_len = req.uri.path_and_query().map_or(0, |p| p.as_str().len());
        if uri_len > MAX_URI {
            return self.refuse(session, ctx, Reject::UriTooLong).await;
        }
        if header_bytes(session) > MAX_HEADERS {
            return self.refuse(session, ctx, Reject::HeadersTooLarge).await;
        }
        // A cheap clone (the URI's bytes are shared), so the normalized path
        // can borrow it without holding the session.
        let uri = session.req_header().uri.clone();
        let path = match normalize_path(uri.path()) {
            Ok(p) => p,
            Err(e) => {
                return self
                    .refuse(session, ctx, Reject::BadRequest(format!("bad path: {e}")))
                    .await;
            }
        };
        if path == api::PREFIX || path.starts_with("/_session/") {
            return self.serve_api(session, ctx, &s, &path).await;
        }
        let req = session.req_header();
        let host = req
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.host());
        let Some(route) = s.routes.find(host, &path) else {
            return self.refuse(session, ctx, Reject::NoRoute).await;
        };
        ctx.route = s
            .routes
            .routes()
            .iter()
            .position(|r| std::ptr::eq(r, route));
        let websocket = is_websocket(session);
        ctx.websocket = websocket && route.config.kind == RouteKind::Gateway;
        if ctx.websocket {
            let origin = req
                .headers
                .get(header::ORIGIN)
                .and_then(|o| o.to_str().ok());
            if !route.origin_allowed(origin) {
                return self.refuse(session, ctx, Reject::OriginNotAllowed).await;
            }
        }
        if let std::borrow::Cow::Owned(p) = path {
            ctx.path = Some(p);
        }

        if route.config.auth != AuthPolicy::Public {
            let found = find_ticket(&s, &req.headers, req.uri.query(), websocket);
            ctx.ticket_from = found.map(|(_, from)| from);
            let verdict = self.gate.admit(&s, found.map(|(t, _)| t), now_ms()).await;
            match (verdict, route.config.auth) {
                (Ok(admitted), _) => {
                    if route.config.auth == AuthPolicy::Required
                        && !route.role_allowed(&admitted.claims.roles)
                    {
                        self.gate
                            .metrics
                            .auth
                            .with_label_values(&["forbidden"])
                            .inc();
                        return self.refuse(session, ctx, Reject::Forbidden).await;
                    }
                    self.gate.metrics.admitted.inc();
                    ctx.claims = Some(admitted);
                }
                (Err(r), AuthPolicy::Required) => {
                    self.gate.metrics.auth.with_label_values(&[r.code()]).inc();
                    return self.refuse(session, ctx, r).await;
                }
                // An optional route never fails over a ticket: it proceeds anonymously.
                (Err(r), _) => {
                    self.gate.metrics.auth.with_label_values(&[r.code()]).inc();
                }
            }
        }
        if ctx.websocket {
            return self.open_tunnel(session, ctx, &s, route).await;
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Ctx,
    ) -> pingora::Result<Box<HttpPeer>> {
        let Some(s) = ctx.settings.clone() else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no settings in context",
            ));
        };
        let Some(route) = ctx.route(&s) else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no route in context",
            ));
        };
        let Some(addr) = route.pick_upstream(|a| self.health.is_up(a)) else {
            ctx.reject = Some(Reject::UpstreamUnavailable);
            return Err(Error::explain(
                ErrorType::ConnectNoRoute,
                format!("route {}: no healthy upstream", route.config.name),
            ));
        };
        ctx.upstream = Some(addr);
        let mut peer = match &route.config.tls {
            Some(tls) => {
                let mut peer = HttpPeer::new(addr, true, tls.sni.clone());
                peer.options.ca = tls.ca.as_ref().map(|ders| self.ca(ders));
                peer
            }
            None => HttpPeer::new(addr, false, String::new()),
        };
        peer.options.connection_timeout = Some(route.config.connect_timeout);
        peer.options.read_timeout = Some(route.config.timeout);
        peer.options.write_timeout = Some(route.config.timeout);
        peer.options.idle_timeout = Some(UPSTREAM_IDLE);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(addr) = peer._address.as_inet() {
            self.health.mark_down(*addr);
        }
        ctx.tries += 1;
        let more = ctx
            .settings
            .as_ref()
            .and_then(|s| ctx.route(s).map(|r| r.config.upstreams.len()))
            .unwrap_or(0);
        if ctx.tries < more {
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        up: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        let Some(s) = ctx.settings.clone() else {
            return Ok(());
        };
        let Some(route) = ctx.route(&s) else {
            return Ok(());
        };
        rewrite_request(session, up, ctx, &s, route)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let reject = ctx.reject.clone().unwrap_or_else(|| match e.etype() {
            ErrorType::ConnectTimedout
            | ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
            | ErrorType::SocketError
            | ErrorType::HandshakeError => Reject::UpstreamUnavailable,
            ErrorType::ReadTimedout | ErrorType::WriteTimedout
                if e.esource() == &ErrorSource::Upstream =>
            {
                Reject::UpstreamTimeout
            }
            _ if e.esource() == &ErrorSource::Upstream => Reject::UpstreamUnavailable,
            ErrorType::InvalidHTTPHeader | ErrorType::H1Error | ErrorType::HTTPStatus(400) => {
                Reject::BadRequest("malformed request".into())
            }
            _ if e.esource() == &ErrorSource::Downstream => {
                Reject::BadRequest("malformed request".into())
            }
            _ => Reject::UpstreamUnavailable,
        });
        let downstream_gone = e.esource() == &ErrorSource::Downstream
            && matches!(
                e.etype(),
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed
            );
        let upstream_failed = e.esource() == &ErrorSource::Upstream
            || matches!(
                reject,
                Reject::UpstreamUnavailable | Reject::UpstreamTimeout
            );
        if let Some(route) = ctx.settings.as_ref().and_then(|s| ctx.route(s))
            && upstream_failed
        {
            self.gate
                .metrics
                .upstream_errors
                .with_label_values(&[&route.config.name, reject.code()])
                .inc();
        }
        tracing::warn!(error = %e, code = reject.code(), "request failed");
        let code = if downstream_gone || session.response_written().is_some() {
            0
        } else {
            let resp = Response::reject(&reject);
            let status = resp.status;
            if respond(session, resp).await.is_err() {
                0
            } else {
                status
            }
        };
        ctx.reject = Some(reject);
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or(ctx.responded)
            .unwrap_or(0);
        let route = ctx
            .settings
            .as_ref()
            .and_then(|s| ctx.route(s))
            .map_or("-", Route::name);
        // A handed-off session has no request left to look at.
        let (method, path) = match &ctx.handed_off {
            Some(m) => (m.as_str(), ctx.path.as_deref().unwrap_or("")),
            None => {
                let req = session.req_header();
                let path = ctx.path.as_deref().unwrap_or(req.uri.path());
                (req.method.as_str(), path)
            }
        };
        let route_label = if path == api::PREFIX || path.starts_with("/_session/") {
            "_session"
        } else {
            route
        };
        self.gate
            .metrics
            .requests
            .with_label_values(&[route_label, &status_label(status)])
            .inc();
        let sid = ctx.claims.as_ref().map_or("-", |a| a.claims.sid.as_str());
        if !tracing::enabled!(target: "access", tracing::Level::INFO) {
            return;
        }
        let line = crate::accesslog::AccessLine {
            route: route_label,
            method,
            path,
            status,
            sid,
            upstream: ctx.upstream,
            error: ctx.reject.as_ref().map(Reject::code),
            latency_ms: ctx.started.elapsed().as_secs_f64() * 1000.0,
        };
        // The access log's own formatter (about 12 % of the public route's throughput
        // against the tracing event); `tracing` when none is installed.
        if !crate::accesslog::write(&line) {
            tracing::info!(
                target: "access",
                route = line.route,
                method = line.method,
                path = line.path,
                status = line.status,
                sid = line.sid,
                upstream = line.upstream.map(tracing::field::display),
                error = line.error,
                latency_ms = line.latency_ms,
            );
        }
    }
}

/// The gate's changes to a request on its way upstream: forged identity
/// headers, the ticket (cookie, `Authorization`, `?ticket=`) and the path
/// rewritten; identity and `X-Forwarded-*` headers added.
fn rewrite_request(
    session: &Session,
    up: &mut RequestHeader,
    ctx: &Ctx,
    s: &Settings,
    route: &Route,
) -> pingora::Result<()> {
    // Identity headers come only from the gate.
    let forged: Vec<http::HeaderName> = up
        .headers
        .keys()
        .filter(|n| s.identity.is_identity(n))
        .cloned()
        .collect();
    for name in &forged {
        up.remove_header(name);
    }
    // A ticket is the gate's credential, not the upstream's: an upstream
    // holding one could replay it. The `Authorization` header goes when it
    // carried the ticket; any other use of it passes through.
    if ctx.claims.is_some() && ctx.ticket_from == Some(TicketFrom::Header) {
        up.remove_header(&header::AUTHORIZATION);
    }
    // Ticket cookies never reach the upstream.
    if cookie(&up.headers, &s.cookie_name).is_some() {
        let rest = cookies_without(&up.headers, &s.cookie_name);
        up.remove_header(&header::COOKIE);
        if let Some(rest) = rest {
            up.insert_header(header::COOKIE, rest)?;
        }
    }
    // Path: normalized, prefix stripped, `ticket` query parameter removed.
    let path = ctx.path.as_deref().unwrap_or(up.uri.path());
    let query = up.uri.query();
    let new_path = route.upstream_path(path);
    let strip_query = query.is_some_and(|q| q.contains("ticket"));
    if ctx.path.is_some() || route.config.strip_prefix || strip_query {
        let query = if strip_query {
            query.and_then(query_without_ticket)
        } else {
            query.map(str::to_owned)
        };
        let pq = match query {
            Some(q) => format!("{new_path}?{q}"),
            None => new_path.into_owned(),
        };
        let uri = http::Uri::builder()
            .path_and_query(pq)
            .build()
            .map_err(|e| Error::because(ErrorType::InternalError, "rewriting uri", e))?;
        up.set_uri(uri);
    }
    if let Some(a) = &ctx.claims {
        for (k, v) in &a.headers {
            up.insert_header(k.clone(), v.clone())?;
        }
    }
    if let Some(ip) = client_ip(session) {
        let xff = match up
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) => format!("{prev}, {ip}"),
            None => ip.to_string(),
        };
        up.insert_header("x-forwarded-for", xff)?;
    }
    up.insert_header("x-forwarded-proto", "http")?;
    if let Some(host) = session.req_header().headers.get(header::HOST).cloned() {
        up.insert_header("x-forwarded-host", host)?;
    }
    Ok(())
}

/// The status as a metric label, without allocating for the common ones.
fn status_label(status: u16) -> std::borrow::Cow<'static, str> {
    let s = match status {
        101 => "101",
        200 => "200",
        201 => "201",
        204 => "204",
        301 => "301",
        302 => "302",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        413 => "413",
        414 => "414",
        429 => "429",
        431 => "431",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        other => return std::borrow::Cow::Owned(other.to_string()),
    };
    std::borrow::Cow::Borrowed(s)
}
