//! The WebSocket hand-off: a gateway route's handshake done by the gate itself with the
//! upstream, and on a 101 the client socket taken out of Pingora's session ([`HandedOff`]
//! stands in for it) so both sockets go to a [`Relay`]; handshake and tunnel failures
//! answer 502/504 here.

use std::pin::Pin;
use std::task::{Context, Poll};

use pingora::prelude::*;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora::proxy::Session;

use super::answer::respond;
use super::rewrite::rewrite_request;
use super::{Ctx, Proxy};
use crate::handshake::{self, HandshakeError};
use crate::inflight::InFlight;
use crate::reject::Reject;
use crate::response::Response;
use crate::route::Route;
use crate::settings::Settings;
use crate::tunnel::Relay;

impl Proxy {
    /// Does a gateway route's WebSocket handshake with its upstream and, on a
    /// 101, turns the connection into a [`Relay`] of the gate's own.
    pub(super) async fn open_tunnel(
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
        let forward = ctx.forward(s, route, session.is_http2());
        rewrite_request(session.req_header(), &mut up, &forward)?;
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
        // Built with the settings; a TLS gateway route always has its client.
        let tls = ctx.upstream_tls(s).and_then(|u| u.client.clone());
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

    pub(super) async fn handshake_failed(
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

    pub(super) async fn tunnel_failed(
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
