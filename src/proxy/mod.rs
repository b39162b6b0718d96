//! The Pingora glue: the only implementation of `ProxyHttp`, its hooks here, each a
//! sequence of decisions. The request head is read by `target`; what the upstream receives
//! is `rewrite`'s pure function; the WebSocket hand-off is `handoff`; the answers the gate
//! writes itself are `answer`.
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
//! sockets to a `tunnel::Relay`, so Pingora's task for the connection ends.

mod answer;
mod handoff;
mod rewrite;
mod target;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::header;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;

use crate::api;
use crate::cache::Admitted;
use crate::clock::now_ms;
use crate::config::{AuthPolicy, RouteKind};
use crate::credentials::{TicketFrom, find_ticket};
use crate::gate::Gate;
use crate::health::Health;
use crate::inflight::InFlight;
use crate::listeners::{ClientAddr, client_addr};
use crate::path::{match_path, normalize_path};
use crate::reject::Reject;
use crate::response::Response;
use crate::route::Route;
use crate::settings::Settings;
use crate::upstream_tls::UpstreamTls;
use answer::{respond, status_label};
use rewrite::{Forward, X_FORWARDED_FOR_NAME, drop_upgrade, rewrite_request};
use target::{Upgrade, request_authority, upgrade_of, within_limits};

/// Pooled upstream connections idle longer than this are closed.
pub const UPSTREAM_IDLE: Duration = Duration::from_secs(60);

pub struct Proxy {
    gate: Arc<Gate>,
    health: Arc<Health>,
}

impl Proxy {
    pub fn new(gate: Arc<Gate>, health: Arc<Health>) -> Proxy {
        Proxy { gate, health }
    }

    /// The route's auth policy applied to the request's ticket: the identity goes into
    /// `ctx`; `Err` is the refusal of a required route. `Ok` holds the gate's generation
    /// noted before the admission (0 on a public route), which a tunnel re-checks against.
    async fn admit(
        &self,
        req: &RequestHeader,
        ctx: &mut Ctx,
        s: &Settings,
        route: &Route,
    ) -> Result<u64, Reject> {
        if route.config.auth == AuthPolicy::Public {
            return Ok(0);
        }
        let found = find_ticket(s, &req.headers, req.uri.query(), ctx.websocket);
        ctx.ticket_from = found.map(|(_, from)| from);
        let since = self.gate.generation();
        let auth = &self.gate.metrics.auth;
        match self.gate.admit(s, found.map(|(t, _)| t), now_ms()).await {
            Ok(admitted) => {
                if route.config.auth == AuthPolicy::Required
                    && !route.role_allowed(&admitted.claims.roles)
                {
                    auth.with_label_values(&["forbidden"]).inc();
                    return Err(Reject::Forbidden);
                }
                self.gate.metrics.admitted.inc();
                ctx.claims = Some(admitted);
            }
            Err(r) => {
                auth.with_label_values(&[r.code()]).inc();
                if route.config.auth == AuthPolicy::Required {
                    return Err(r);
                }
                // An optional route never fails over a ticket: it proceeds anonymously.
            }
        }
        Ok(since)
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

    /// What the upstream rewrite needs of this request's decisions.
    fn forward<'a>(&'a self, s: &'a Settings, route: &'a Route, http2: bool) -> Forward<'a> {
        Forward {
            settings: s,
            route,
            admitted: self.claims.as_deref(),
            ticket_from: self.ticket_from,
            path: self.path.as_deref(),
            authority: self.authority.as_deref(),
            client: self.client.as_ref(),
            scheme: self.scheme(),
            http2,
            now_secs: now_ms() / 1000,
        }
    }

    /// The TLS material of the request's route, built when its config loaded.
    fn upstream_tls<'a>(&self, s: &'a Settings) -> Option<&'a UpstreamTls> {
        self.route.and_then(|i| s.upstream_tls(i))
    }
}

/// The client address by SPEC 6's rule, from the connection's peer (the
/// PROXY header's source when the listeners read one).
fn client_of(session: &Session, s: &Settings) -> Option<ClientAddr> {
    let peer = session.client_addr().and_then(|a| a.as_inet())?.ip();
    let xff = session
        .req_header()
        .headers
        .get_all(&X_FORWARDED_FOR_NAME)
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

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    /// None: Pingora's default is a response compression module at level 0,
    /// which never compresses for the gate but costs every request its context
    /// and a call in each of four phases.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

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
        let authority = match within_limits(req).and_then(|()| request_authority(req)) {
            Ok(a) => a,
            Err(r) => return self.refuse(session, ctx, r).await,
        };
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
        let since = match self.admit(session.req_header(), ctx, &s, route).await {
            Ok(since) => since,
            Err(r) => return self.refuse(session, ctx, r).await,
        };
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
                peer.options.ca = ctx.upstream_tls(&s).and_then(|u| u.ca.clone());
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
        let forward = ctx.forward(&s, route, session.is_http2());
        rewrite_request(session.req_header(), up, &forward)
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
