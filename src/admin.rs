//! The admin listener: `/healthz`, `/readyz`, `/metrics` and the operator's
//! session API under `/admin` (bearer `admin.token`, compared in constant time).
//!
//! Framework-free like [`crate::api`]: the server glue parses the request
//! and writes back the [`Response`].

use http::{HeaderMap, HeaderValue, Method, header};
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::clock::now_ms;
use crate::credentials::bearer;
use crate::gate::{Gate, store_reject};
use crate::reject::Reject;
use crate::response::Response;
use crate::segment::percent_decode;
use crate::session::Status;

pub async fn handle(
    gate: &Gate,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Response {
    match route(gate, method, path, query, headers).await {
        Ok(r) => r,
        Err(r) => Response::reject(&r),
    }
}

fn text(status: u16, body: &str) -> Response {
    Response {
        status,
        headers: vec![(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        body: body.as_bytes().to_vec(),
    }
}

async fn route(
    gate: &Gate,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, Reject> {
    let get_only = |ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(Reject::MethodNotAllowed("GET"))
        }
    };
    match path {
        // The operator's page; it holds the token in memory and calls the API.
        "/" | "/index.html" => {
            get_only(method == Method::GET)?;
            Ok(crate::pages::admin_page())
        }
        "/healthz" => {
            get_only(method == Method::GET)?;
            Ok(text(200, "ok\n"))
        }
        "/readyz" => {
            get_only(method == Method::GET)?;
            Ok(match gate.ping_store().await {
                Ok(()) => text(200, "ready\n"),
                Err(e) => {
                    tracing::warn!(error = %e, "not ready: store unreachable");
                    text(503, "store unavailable\n")
                }
            })
        }
        "/metrics" => {
            get_only(method == Method::GET)?;
            let mut r = text(200, "");
            r.headers = vec![(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            )];
            r.body = gate.metrics.render();
            Ok(r)
        }
        p if p.starts_with("/admin/") => {
            // A wrong method is told as such before the token is asked for,
            // as on /_session.
            if let Some(allow) = allowed(p).filter(|a| *a != method.as_str()) {
                return Err(Reject::MethodNotAllowed(allow));
            }
            authorize(gate, headers)?;
            admin_api(gate, method, p, query).await
        }
        _ => Err(Reject::NotFound),
    }
}

pub(crate) fn authorize(gate: &Gate, headers: &HeaderMap) -> Result<(), Reject> {
    let presented = bearer(headers).ok_or(Reject::MissingTicket)?;
    let settings = gate.settings();
    let expected = settings
        .config
        .admin
        .as_ref()
        .and_then(|a| a.token.as_deref())
        .ok_or(Reject::InvalidTicket)?;
    if bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(Reject::InvalidTicket)
    }
}

async fn admin_api(
    gate: &Gate,
    method: &Method,
    path: &str,
    query: Option<&str>,
) -> Result<Response, Reject> {
    let s = gate.settings();
    let now = now_ms();
    let view = |x: &crate::session::Session| {
        serde_json::to_value(x.view(s.rules.idle_ms)).unwrap_or_default()
    };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["admin", "sessions"] => {
            if method != Method::GET {
                return Err(Reject::MethodNotAllowed("GET"));
            }
            let user = query
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("user=")))
                .map(decode)
                .transpose()?
                .filter(|u| !u.is_empty())
                .ok_or_else(|| Reject::BadRequest("the user query parameter is required".into()))?;
            let sessions = gate
                .sessions_of(&user, now, s.rules)
                .await
                .map_err(store_reject)?;
            let views: Vec<_> = sessions.iter().map(view).collect();
            Ok(Response::json(200, &json!({"sessions": views})))
        }
        ["admin", "sessions", id, "revoke"] => {
            if method != Method::POST {
                return Err(Reject::MethodNotAllowed("POST"));
            }
            let id = decode(id)?;
            let session = gate
                .set_status(&id, Status::Revoked, now, s.rules)
                .await
                .map_err(store_reject)?
                .ok_or(Reject::NotFound)?;
            tracing::info!(sid = ?id, "session revoked by operator");
            Ok(Response::json(200, &json!({"session": view(&session)})))
        }
        ["admin", "users", id, "revoke"] => {
            if method != Method::POST {
                return Err(Reject::MethodNotAllowed("POST"));
            }
            let user = decode(id)?;
            let n = gate
                .revoke_user(&user, now, s.rules)
                .await
                .map_err(store_reject)?
                .len();
            tracing::info!(user = ?user, revoked = n, "user's sessions revoked by operator");
            Ok(Response::json(200, &json!({"revoked": n})))
        }
        _ => Err(Reject::NotFound),
    }
}

/// An id from an admin path segment or query: percent-decoded, `+` kept.
fn decode(raw: &str) -> Result<String, Reject> {
    percent_decode(raw).map_err(|e| {
        tracing::info!(id = ?raw, "admin request refused: {e}");
        Reject::BadRequest(e.to_string())
    })
}

/// The one method an admin API path answers, if it is one.
fn allowed(path: &str) -> Option<&'static str> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["admin", "sessions"] | ["admin", "events"] => Some("GET"),
        ["admin", "sessions", _, "revoke"] | ["admin", "users", _, "revoke"] => Some("POST"),
        _ => None,
    }
}
