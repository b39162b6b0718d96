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

use crate::api::{self, ApiRequest};
use crate::cache::Admitted;
use crate::clock::now_ms;
use crate::config::{AuthPolicy, RouteKind, RouteTls};
use crate::credentials::{
    TicketFrom, bearer_token, cookies_without, find_ticket, has_cookie, join_cookies,
    query_without_ticket,
};
use crate::gate::Gate;
use crate::handshake::{self, HandshakeError, TlsClient};
use crate::health::Health;
use crate::inflight::InFlight;
use crate::listeners::{ClientAddr, client_addr};
use crate::path::{match_path, normalize_path, same_authority};
use crate::reject::Reject;
use crate::response::Response;
use crate::route::Route;
use crate::settings::Settings;
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
    /// An absolute-form target's authority: the upstream's `Host`.
    authority: Option<String>,
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
    /// The request came in on a TLS listener: its scheme is `https`.
    pub tls: bool,
    /// The client the gate believes (SPEC 6), for rate limits, logs and
    /// `X-Forwarded-For`; `None` only for a peer with no IP address.
    pub client: Option<ClientAddr>,
    /// `Strict-Transport-Security` for every answer on a TLS listener.
    hsts: Option<http::HeaderValue>,
}

impl Ctx {
    /// The scheme of the listener the request came in on.
    pub fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    /// The client's IP address as the gate believes it.
    pub fn client_ip(&self) -> Option<IpAddr> {
        self.client.as_ref().map(|c| c.ip)
    }

    fn route<'a>(&self, s: &'a Settings) -> Option<&'a Route> {
        self.route.and_then(|i| s.routes.routes().get(i))
    }
}

/// The client address by SPEC 6's rule, from the connection's peer (the
/// PROXY header's source when the listeners read one).
fn client_of(session: &Session, s: &Settings) -> Option<ClientAddr> {
    let peer = session.client_addr().and_then(|a| a.as_inet())?.ip();
    let xff = session
        .req_header()
        .headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let clients = &s.config.clients;
    Some(client_addr(
        peer,
        clients.proxy_protocol,
        xff,
        &clients.trusted_proxies,
    ))
}

const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// `x_forwarded_for`, `x-forwarded_proto`, …: a spelling of a forwarding
/// header the gate sets (SPEC 6) with `_` for `-`. A CGI/WSGI upstream reads
/// it as the header itself (`HTTP_X_FORWARDED_FOR`), beside or instead of
/// the gate's own, so it never goes on. Names are lowercase (`HeaderName`).
fn forwarding_alias(name: &http::HeaderName) -> bool {
    let n = name.as_str().as_bytes();
    n.contains(&b'_')
        && ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"]
            .iter()
            .any(|f| {
                f.len() == n.len()
                    && n.iter()
                        .zip(f.as_bytes())
                        .all(|(&a, &b)| a == b || (a == b'_' && b == b'-'))
            })
}

/// Writes a whole response, keeping the connection reusable; `hsts` is the
/// `Strict-Transport-Security` of a TLS listener.
async fn respond(
    session: &mut Session,
    hsts: Option<&http::HeaderValue>,
    resp: Response,
) -> pingora::Result<()> {
    let mut h = ResponseHeader::build(resp.status, Some(resp.headers.len() + 2))?;
    for (k, v) in resp.headers {
        h.append_header(k, v)?;
    }
    if let Some(v) = hsts {
        h.insert_header(header::STRICT_TRANSPORT_SECURITY, v.clone())?;
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
        respond(session, ctx.hsts.as_ref(), resp).await?;
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
        since: u64,
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
        // during the handshake still ends the tunnel the moment it opens; and
        // re-checked once registered, for one that landed after the admission.
        let mut registration = self.gate.tunnels.register(sid, route.name());
        if let Err(r) = self.gate.recheck(s, sid, since).await {
            drop(registration);
            self.gate.metrics.auth.with_label_values(&[r.code()]).inc();
            return self.refuse(session, ctx, r).await;
        }
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
            respond(session, ctx.hsts.as_ref(), resp).await?;
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

    /// `tls.redirect_plain`: 308 to the same path and query on https, at the
    /// Host's name and the first TLS port.
    async fn redirect_to_https(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        port: u16,
    ) -> pingora::Result<bool> {
        let req = session.req_header();
        let host = req
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.host());
        let Some(name) = host.and_then(host_name) else {
            let why = "a redirect to https needs a valid Host".into();
            return self.refuse(session, ctx, Reject::BadRequest(why)).await;
        };
        let pq = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let location = if port == 443 {
            format!("https://{name}{pq}")
        } else {
            format!("https://{name}:{port}{pq}")
        };
        let Ok(location) = http::HeaderValue::from_str(&location) else {
            let why = "a redirect to https needs a valid target".into();
            return self.refuse(session, ctx, Reject::BadRequest(why)).await;
        };
        ctx.responded = Some(308);
        let resp = Response {
            status: 308,
            headers: vec![(header::LOCATION, location)],
            body: Vec::new(),
        };
        respond(session, None, resp).await?;
        Ok(true)
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
        let ip = ctx.client_ip();
        let scheme = ctx.scheme();
        let req = session.req_header();
        let method = req.method.clone();
        let host = req
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.authority().map(|a| a.as_str()));
        let resp = api::handle(
            &self.gate,
            s,
            ApiRequest {
                method: &method,
                path,
                headers: &req.headers,
                body: &body,
                client_ip: ip,
                scheme,
                host,
            },
        )
        .await;
        ctx.responded = Some(resp.status);
        respond(session, ctx.hsts.as_ref(), resp).await?;
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

/// What a request's `Upgrade` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upgrade {
    None,
    /// `websocket` is one of its tokens (any case, any `Upgrade` header).
    WebSocket,
    /// Something else (`h2c`, `foo`): never tunnelled.
    Other,
}

fn upgrade_of(headers: &http::HeaderMap) -> Upgrade {
    let mut values = headers.get_all(header::UPGRADE).iter().peekable();
    if values.peek().is_none() {
        return Upgrade::None;
    }
    let websocket = values.any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"websocket"))
    });
    if websocket {
        Upgrade::WebSocket
    } else {
        Upgrade::Other
    }
}

/// Takes a non-WebSocket upgrade off the client's request, `Upgrade` and the
/// `upgrade` token of `Connection` both, so that neither Pingora (which
/// tunnels any request with an `Upgrade` whose answer is 101) nor the
/// upstream sees one: the request is served as plain HTTP.
fn drop_upgrade(req: &mut RequestHeader) -> pingora::Result<()> {
    req.remove_header(&header::UPGRADE);
    let connection: Vec<http::HeaderValue> = req
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .cloned()
        .collect();
    if connection.is_empty() {
        return Ok(());
    }
    req.remove_header(&header::CONNECTION);
    for value in connection {
        let kept: Vec<&[u8]> = value
            .as_bytes()
            .split(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
            .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case(b"upgrade"))
            .collect();
        if !kept.is_empty() {
            req.append_header(header::CONNECTION, kept.join(&b", "[..]))?;
        }
    }
    Ok(())
}

/// The authority an absolute-form target (`GET http://api.example.com/x`)
/// names, with its scheme. Pingora keeps it off the request's `Uri` (which
/// holds only the path), so it is read from the raw target, with Pingora's
/// own classifier. `Err` for a target that is ambiguous or not http(s).
fn target_authority(req: &RequestHeader) -> Result<Option<(String, String)>, &'static str> {
    use pingora::http::authority::{RawTargetAuthority, raw_target_authority};
    if let Some(a) = req.uri.authority() {
        // An HTTP/2 request's `:authority`.
        let scheme = req.uri.scheme_str().unwrap_or("https");
        return Ok(Some((scheme.to_owned(), a.as_str().to_owned())));
    }
    match raw_target_authority(req.raw_path()) {
        RawTargetAuthority::None if req.raw_path().first() == Some(&b'/') => Ok(None),
        RawTargetAuthority::None => Err("request target is neither a path nor an http(s) URL"),
        RawTargetAuthority::AmbiguousAuthority => Err("ambiguous request target"),
        RawTargetAuthority::Absolute {
            scheme, authority, ..
        } => {
            let (Ok(scheme), Ok(authority)) =
                (std::str::from_utf8(scheme), std::str::from_utf8(authority))
            else {
                return Err("request target's authority is not ASCII");
            };
            let web = ["http", "https", "ws", "wss"]
                .iter()
                .any(|w| scheme.eq_ignore_ascii_case(w));
            if !web || authority.is_empty() || authority.contains('@') {
                return Err("request target is not an http(s) URL with a host");
            }
            Ok(Some((scheme.to_owned(), authority.to_owned())))
        }
    }
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
            authority: None,
            websocket: false,
            upstream: None,
            tries: 0,
            reject: None,
            responded: None,
            handed_off: None,
            tls: false,
            client: None,
            hsts: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> pingora::Result<bool> {
        let s = self.gate.settings();
        ctx.settings = Some(Arc::clone(&s));
        ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        ctx.client = client_of(session, &s);
        if let Some(tls) = &s.config.tls {
            if ctx.tls {
                ctx.hsts.clone_from(&tls.hsts);
            } else if tls.redirect_plain {
                return self
                    .redirect_to_https(session, ctx, tls.redirect_port())
                    .await;
            }
        }
        let req = session.req_header();
        let uri_len = req.uri.path_and_query().map_or(0, |p| p.as_str().len());
        if uri_len > MAX_URI {
            return self.refuse(session, ctx, Reject::UriTooLong).await;
        }
        if header_bytes(session) > MAX_HEADERS {
            return self.refuse(session, ctx, Reject::HeadersTooLarge).await;
        }
        // Which server the request is for: an absolute-form target's authority,
        // which `Host` must agree with, else `Host`, which must be there (RFC 9112
        // section 3.2).
        let authority = match target_authority(req) {
            Ok(a) => a,
            Err(why) => {
                return self
                    .refuse(session, ctx, Reject::BadRequest(why.into()))
                    .await;
            }
        };
        let host_problem = match (
            &authority,
            req.headers.get(header::HOST).map(|h| h.to_str()),
        ) {
            (_, Some(Err(_))) => Some("Host is not ASCII"),
            (Some((scheme, a)), Some(Ok(h))) if !same_authority(scheme, a, h) => {
                Some("Host differs from the request target's authority")
            }
            (None, None) => Some("no Host"),
            _ => None,
        };
        if let Some(why) = host_problem {
            return self
                .refuse(session, ctx, Reject::BadRequest(why.into()))
                .await;
        }
        // A cheap clone (the URI's bytes are shared), so the normalized path
        // can borrow it without holding the session.
        let uri = req.uri.clone();
        let path = match normalize_path(uri.path()) {
            Ok(p) => p,
            Err(e) => {
                return self
                    .refuse(session, ctx, Reject::BadRequest(format!("bad path: {e}")))
                    .await;
            }
        };
        // Routes are decided without `;parameters`; the upstream still gets them.
        let matched = match_path(&path);
        let upgrade = upgrade_of(&req.headers);
        if matched == api::PREFIX || matched.starts_with("/_session/") {
            if upgrade == Upgrade::WebSocket {
                let why = "WebSocket handshakes are for gateway routes".into();
                return self.refuse(session, ctx, Reject::BadRequest(why)).await;
            }
            return self.serve_api(session, ctx, &s, &matched).await;
        }
        let req = session.req_header();
        let host = req.headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let route_host = authority.as_ref().map(|(_, a)| a.as_str()).or(host);
        let Some(route) = s.routes.find(route_host, &matched) else {
            return self.refuse(session, ctx, Reject::NoRoute).await;
        };
        ctx.route = s
            .routes
            .routes()
            .iter()
            .position(|r| std::ptr::eq(r, route));
        let websocket = upgrade == Upgrade::WebSocket;
        let gateway = route.config.kind == RouteKind::Gateway;
        if websocket && !gateway {
            let why = "WebSocket handshakes are for gateway routes".into();
            return self.refuse(session, ctx, Reject::BadRequest(why)).await;
        }
        if upgrade == Upgrade::Other {
            drop_upgrade(session.req_header_mut())?;
        }
        let req = session.req_header();
        ctx.websocket = websocket;
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
        // The upstream is told the server the route was chosen for.
        if let Some((_, a)) = authority {
            ctx.authority = Some(a);
        }

        // Noted before the admission: a tunnel re-checks its session against it.
        let mut since = 0;
        if route.config.auth != AuthPolicy::Public {
            let found = find_ticket(&s, &req.headers, req.uri.query(), websocket);
            ctx.ticket_from = found.map(|(_, from)| from);
            since = self.gate.generation();
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
            return self.open_tunnel(session, ctx, &s, route, since).await;
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

    /// Requests on this path are never upgrades (WebSocket handshakes are the
    /// gate's own, other upgrades were dropped), so a 101 here is an upstream
    /// switching protocols on a plain request: passing it on would open a
    /// tunnel no session governs. The client gets 502 instead.
    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        if upstream_response.status == http::StatusCode::SWITCHING_PROTOCOLS {
            ctx.reject = Some(Reject::UpstreamUnavailable);
            let mut e = Error::explain(
                ErrorType::InvalidHTTPHeader,
                "upstream answered 101 to a request that is not an upgrade",
            );
            e.as_up();
            return Err(e);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        if let Some(v) = &ctx.hsts {
            resp.insert_header(header::STRICT_TRANSPORT_SECURITY, v.clone())?;
        }
        Ok(())
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
            if respond(session, ctx.hsts.as_ref(), resp).await.is_err() {
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
            client: ctx.client_ip(),
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
                client = line.client.map(tracing::field::display),
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
    // Identity headers come only from the gate; so do forwarding headers,
    // whose `_` spellings a CGI/WSGI upstream reads as the real ones.
    let forged: Vec<http::HeaderName> = up
        .headers
        .keys()
        .filter(|n| s.identity.is_identity(n) || forwarding_alias(n))
        .cloned()
        .collect();
    for name in &forged {
        up.remove_header(name);
    }
    // A ticket is the gate's credential, not the upstream's: an upstream
    // holding one could replay it. A Bearer value signed by one of the gate's
    // keys goes, expired or not, whatever the route and however admission
    // went; any other use of `Authorization` passes through.
    if ctx.claims.is_some() && ctx.ticket_from == Some(TicketFrom::Header) {
        up.remove_header(&header::AUTHORIZATION);
    }
    let is_ticket = |v: &http::HeaderValue| bearer_token(v).is_some_and(|t| s.keys.is_signed(t));
    if up
        .headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .any(is_ticket)
    {
        let kept: Vec<http::HeaderValue> = up
            .headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter(|v| !is_ticket(v))
            .cloned()
            .collect();
        up.remove_header(&header::AUTHORIZATION);
        for v in kept {
            up.append_header(header::AUTHORIZATION, v)?;
        }
    }
    // Ticket cookies never reach the upstream, whatever bytes sit beside them.
    // HTTP/2 clients may split `Cookie` into crumbs, one field per cookie;
    // they go to an HTTP/1.1 upstream as one field (RFC 9113 section 8.2.3),
    // which is all many servers read.
    let crumbs = session.is_http2() && up.headers.get_all(header::COOKIE).iter().nth(1).is_some();
    if crumbs || has_cookie(&up.headers, &s.strip_cookies) {
        let mut rest = cookies_without(&up.headers, &s.strip_cookies);
        if crumbs {
            rest = join_cookies(rest).into_iter().collect();
        }
        up.remove_header(&header::COOKIE);
        for value in rest {
            up.append_header(header::COOKIE, value)?;
        }
    }
    // An absolute-form target goes on in origin-form (below), with its
    // authority as `Host`.
    if let Some(a) = &ctx.authority {
        up.insert_header(header::HOST, a.as_str())?;
    }
    // Path: normalized, prefix stripped, `ticket` query parameter removed.
    let path = ctx.path.as_deref().unwrap_or(up.uri.path());
    let query = up.uri.query();
    let new_path = route.upstream_path(path);
    let strip_query = query.is_some_and(|q| q.contains("ticket"));
    if ctx.path.is_some() || route.config.strip_prefix || strip_query || ctx.authority.is_some() {
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
    // Only the gate's view of the client goes upstream: what the client sent
    // survives only as `ctx.client` kept it (SPEC 6).
    up.remove_header(X_FORWARDED_FOR);
    if let Some(c) = &ctx.client {
        up.insert_header(X_FORWARDED_FOR, c.forwarded_for.as_str())?;
    }
    up.insert_header("x-forwarded-proto", ctx.scheme())?;
    let req = session.req_header();
    // HTTP/2 carries the host as `:authority`, which lands in the URI.
    let host = match req.headers.get(header::HOST) {
        Some(h) => Some(h.clone()),
        None => req
            .uri
            .authority()
            .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok()),
    };
    if let Some(host) = host {
        up.insert_header("x-forwarded-host", host)?;
    }
    Ok(())
}

/// The name part of a `Host` value (`name`, `name:port`, `[v6]:port`), when
/// it is a plain host name or address that can go into a redirect.
fn host_name(host: &str) -> Option<&str> {
    if host.starts_with('[') {
        let end = host.find(']')?;
        let (v6, rest) = host.split_at(end + 1);
        let ok = v6[1..end].parse::<std::net::Ipv6Addr>().is_ok()
            && (rest.is_empty() || rest[1..].bytes().all(|b| b.is_ascii_digit()));
        return ok.then_some(v6);
    }
    let name = host.split_once(':').map_or(host, |(n, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            n
        } else {
            ""
        }
    });
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    valid.then_some(name)
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
        308 => "308",
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn underscore_spellings_of_forwarding_headers_are_aliases() {
        let alias =
            |n: &str| super::forwarding_alias(&http::HeaderName::from_bytes(n.as_bytes()).unwrap());
        for n in ["x_forwarded_for", "X_Forwarded-Proto", "x-forwarded_host"] {
            assert!(alias(n), "{n}");
        }
        // The gate's own spellings are replaced, not dropped; others are not its.
        for n in [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x_forwarded_fo",
            "x_forwarded_for_x",
            "x_real_ip",
        ] {
            assert!(!alias(n), "{n}");
        }
    }

    fn request(pairs: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in pairs {
            req.append_header(k.to_string(), *v).unwrap();
        }
        req
    }

    #[test]
    fn websocket_is_one_token_of_any_upgrade_header() {
        for pairs in [
            &[("upgrade", "websocket")][..],
            &[("upgrade", "WebSocket")],
            &[("upgrade", "foo, websocket")],
            &[("upgrade", "foo"), ("upgrade", " websocket ")],
        ] {
            assert_eq!(
                upgrade_of(&request(pairs).headers),
                Upgrade::WebSocket,
                "{pairs:?}"
            );
        }
        for pairs in [
            &[("upgrade", "h2c")][..],
            &[("upgrade", "websocketx")],
            &[("upgrade", "web socket")],
        ] {
            assert_eq!(
                upgrade_of(&request(pairs).headers),
                Upgrade::Other,
                "{pairs:?}"
            );
        }
        assert_eq!(
            upgrade_of(&request(&[("connection", "upgrade")]).headers),
            Upgrade::None
        );
    }

    #[test]
    fn a_dropped_upgrade_takes_its_connection_token_along() {
        let mut req = request(&[
            ("upgrade", "h2c"),
            ("connection", "Upgrade, HTTP2-Settings"),
            ("connection", "upgrade"),
            ("connection", "keep-alive"),
        ]);
        drop_upgrade(&mut req).unwrap();
        assert!(req.headers.get(header::UPGRADE).is_none());
        let connection: Vec<&[u8]> = req
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        assert_eq!(connection, [&b"HTTP2-Settings"[..], b"keep-alive"]);
    }

    #[test]
    fn absolute_form_authority_comes_from_the_raw_target() {
        let req = RequestHeader::build("GET", b"http://api.example.com/x?q=1", None).unwrap();
        assert_eq!(
            target_authority(&req),
            Ok(Some(("http".to_owned(), "api.example.com".to_owned())))
        );
        assert_eq!(
            req.uri.path(),
            "/x",
            "Pingora keeps only the path in the Uri"
        );
        let req = RequestHeader::build("GET", b"/x", None).unwrap();
        assert_eq!(target_authority(&req), Ok(None));
        for target in [
            &b"*"[..],
            b"ftp://api.example.com/x",
            b"http://u@api.example.com/x",
        ] {
            let Ok(req) = RequestHeader::build("GET", target, None) else {
                continue;
            };
            assert!(
                target_authority(&req).is_err(),
                "{:?}",
                target.escape_ascii().to_string()
            );
        }
    }
}
