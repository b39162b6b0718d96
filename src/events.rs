//! The admin listener's HTTP glue, and its one streaming endpoint:
//! `GET /admin/events`, server-sent events with one `event: session` per
//! status change on any node (SPEC section 8).
//!
//! Every other admin request is answered whole by [`crate::admin::handle`];
//! the stream needs the session's writer for as long as it lives, which
//! Pingora's `ServeHttp` (one response, then done) cannot give.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, header};
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use tokio::sync::broadcast::error::RecvError;

use crate::gate::Gate;
use crate::reject::Reject;
use crate::response::Response;
use crate::session::Event;

pub const EVENTS_PATH: &str = "/admin/events";

/// A comment line this often keeps idle proxies and load balancers from
/// cutting a quiet stream (most cut after 60 s of silence).
const HEARTBEAT: Duration = Duration::from_secs(15);

/// The admin listener's application.
pub struct AdminServer {
    pub gate: Arc<Gate>,
}

/// One server-sent event for a status change.
pub fn frame(ev: &Event) -> String {
    // serde_json never emits a raw newline, so the JSON fits one `data:` line.
    format!(
        "event: session\ndata: {}\n\n",
        serde_json::to_string(ev).unwrap_or_default()
    )
}

fn header_of(resp: &Response) -> Option<ResponseHeader> {
    let mut h = ResponseHeader::build(resp.status, Some(resp.headers.len() + 1)).ok()?;
    for (k, v) in &resp.headers {
        h.append_header(k.clone(), v.clone()).ok()?;
    }
    h.insert_header(header::CONTENT_LENGTH, resp.body.len())
        .ok()?;
    Some(h)
}

#[async_trait]
impl HttpServerApp for AdminServer {
    async fn process_new_http(
        self: &Arc<Self>,
        mut http: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match http.read_request().await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                tracing::debug!(error = %e, "admin: cannot read request");
                return None;
            }
        }
        let req = http.req_header();
        if req.uri.path() == EVENTS_PATH {
            let refusal = if req.method != Method::GET {
                Some(Reject::MethodNotAllowed("GET"))
            } else {
                crate::admin::authorize(&self.gate, &req.headers).err()
            };
            match refusal {
                Some(r) => return answer(http, Response::reject(&r), shutdown).await,
                None => {
                    stream(&self.gate, http, shutdown).await;
                    return None;
                }
            }
        }
        let resp = crate::admin::handle(
            &self.gate,
            &req.method,
            req.uri.path(),
            req.uri.query(),
            &req.headers,
        )
        .await;
        answer(http, resp, shutdown).await
    }
}

/// Writes a whole response and hands the connection back for keep-alive.
async fn answer(
    mut http: ServerSession,
    resp: Response,
    shutdown: &ShutdownWatch,
) -> Option<ReusedHttpStream> {
    http.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
    let head = header_of(&resp)?;
    if let Err(e) = http.write_response_header(Box::new(head)).await {
        tracing::debug!(error = %e, "admin: cannot write response");
        return None;
    }
    if !resp.body.is_empty()
        && http
            .write_response_body(resp.body.into(), true)
            .await
            .is_err()
    {
        return None;
    }
    let persistent = HttpPersistentSettings::for_session(&http);
    match http.finish().await {
        Ok(c) => c.map(|s| ReusedHttpStream::from_reusable_stream(s, persistent)),
        Err(_) => None,
    }
}

/// Streams events until the client goes away or the server stops.
async fn stream(gate: &Gate, mut http: ServerSession, shutdown: &ShutdownWatch) {
    // Subscribed before the head is written: a client that saw the head
    // misses no change made after it.
    let mut rx = gate.subscribe_events();
    let Ok(mut head) = ResponseHeader::build(200, Some(4)) else {
        return;
    };
    let fields = [
        (header::CONTENT_TYPE, "text/event-stream"),
        (header::CACHE_CONTROL, "no-store"),
        (header::TRANSFER_ENCODING, "chunked"),
    ];
    for (k, v) in fields {
        if head.insert_header(k, v).is_err() {
            return;
        }
    }
    // Asks nginx-style proxies not to buffer the stream.
    if head.insert_header("x-accel-buffering", "no").is_err() {
        return;
    }
    http.set_keepalive(None);
    if http.write_response_header(Box::new(head)).await.is_err() {
        return;
    }
    let mut out = Bytes::from_static(b": connected\n\n");
    let mut shutdown = shutdown.clone();
    loop {
        if http.write_response_body(out, false).await.is_err() {
            return;
        }
        out = tokio::select! {
            ev = rx.recv() => match ev {
                Ok(ev) => Bytes::from(frame(&ev)),
                // A slow reader missed some: say so rather than go silent.
                Err(RecvError::Lagged(n)) => Bytes::from(format!(": missed {n} events\n\n")),
                Err(RecvError::Closed) => break,
            },
            () = tokio::time::sleep(HEARTBEAT) => Bytes::from_static(b": heartbeat\n\n"),
            _ = shutdown.changed() => break,
        };
    }
    let _ = http.write_response_body(Bytes::new(), true).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_one_sse_frame_with_the_spec_json() {
        let ev = Event {
            sid: "s1".into(),
            user_id: "u-1".into(),
            status: "revoked".into(),
            at: "2026-01-01T00:00:00.000Z".into(),
        };
        assert_eq!(
            frame(&ev),
            "event: session\ndata: {\"sid\":\"s1\",\"userId\":\"u-1\",\"status\":\"revoked\",\"at\":\"2026-01-01T00:00:00.000Z\"}\n\n"
        );
    }
}
