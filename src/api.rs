//! The session HTTP API under `/_session` (SPEC section 8), served by the
//! gate itself: login, info, touch, refresh, logout, list, end, remove.
//!
//! Framework-free: the proxy glue hands over a parsed [`ApiRequest`] and
//! writes back the [`Response`]. Every answer carries `Cache-Control: no-store`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use serde::Deserialize;
use serde_json::json;

use crate::config::SameSite;
use crate::credentials::find_ticket;
use crate::gate::{Gate, Settings, now_ms, store_reject};
use crate::login;
use crate::reject::Reject;
use crate::session::{Session, Status, validate_vars};
use crate::store::RateDecision;
use crate::ticket::{Claims, new_session_id};

/// `/_session` bodies larger than this answer 413.
pub const MAX_BODY: usize = 16 * 1024;
pub const PREFIX: &str = "/_session";

pub struct ApiRequest<'a> {
    pub method: &'a Method,
    /// The normalized path, starting with `/_session`.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    pub client_ip: Option<IpAddr>,
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, body: &serde_json::Value) -> Response {
        Response {
            status,
            headers: vec![(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body: serde_json::to_vec(body).unwrap_or_default(),
        }
    }

    pub fn empty(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// The SPEC's error body for a refusal. Refusals are never cacheable, so
    /// every one says `Cache-Control: no-store`, wherever it is written.
    pub fn reject(r: &Reject) -> Response {
        let mut out = Response {
            status: r.status(),
            headers: vec![
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
            body: r.body(),
        };
        for (k, v) in r.extra_headers() {
            if let Ok(v) = HeaderValue::from_str(&v) {
                out.headers.push((k, v));
            }
        }
        out
    }

    fn with_cookie(mut self, cookie: String) -> Response {
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            self.headers.push((header::SET_COOKIE, v));
        }
        self
    }
}

/// Serves one `/_session` request.
pub async fn handle(gate: &Gate, s: &Settings, req: ApiRequest<'_>) -> Response {
    match route(gate, s, &req).await {
        Ok(mut resp) => {
            resp.headers
                .push((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
            resp
        }
        Err(r) => Response::reject(&r),
    }
}

async fn route(gate: &Gate, s: &Settings, req: &ApiRequest<'_>) -> Result<Response, Reject> {
    let rest = req
        .path
        .strip_prefix(PREFIX)
        .ok_or(Reject::NotFound)?
        .trim_end_matches('/');
    let m = req.method;
    let allow = |methods: &'static str, ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(Reject::MethodNotAllowed(methods))
        }
    };
    match rest {
        "" => {
            allow("GET", m == Method::GET)?;
            info(gate, s, req).await
        }
        "/login" => {
            allow("POST", m == Method::POST)?;
            login(gate, s, req).await
        }
        "/touch" => {
            allow("POST", m == Method::POST)?;
            touch(gate, s, req).await
        }
        "/refresh" => {
            allow("POST", m == Method::POST)?;
            refresh(gate, s, req).await
        }
        "/logout" => {
            allow("POST", m == Method::POST)?;
            logout(gate, s, req).await
        }
        "/list" => {
            allow("GET", m == Method::GET)?;
            list(gate, s, req).await
        }
        "/openapi.json" => {
            allow("GET", m == Method::GET)?;
            Ok(crate::openapi::response())
        }
        other => {
            let tail = other.strip_prefix('/').unwrap_or(other);
            match tail.split_once('/') {
                Some((id, "end")) if !id.is_empty() => {
                    allow("POST", m == Method::POST)?;
                    end_or_remove(gate, s, req, id, Status::Ended).await
                }
                None if !tail.is_empty() => {
                    allow("DELETE", m == Method::DELETE)?;
                    end_or_remove(gate, s, req, tail, Status::Removed).await
                }
                _ => Err(Reject::NotFound),
            }
        }
    }
}

/// The caller's verified claims; their session must be active.
async fn caller(gate: &Gate, s: &Settings, req: &ApiRequest<'_>) -> Result<Claims, Reject> {
    let ticket = find_ticket(s, req.headers, None, false).map(|(t, _)| t);
    Ok(gate.admit(s, ticket, now_ms()).await?.claims.clone())
}

fn user_json(id: &str, name: &str, roles: &[String]) -> serde_json::Value {
    json!({"id": id, "name": name, "roles": roles})
}

fn session_json(s: &Settings, session: &Session) -> serde_json::Value {
    serde_json::to_value(session.view(s.rules.idle_ms)).unwrap_or_default()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    username: String,
    password: String,
    #[serde(default)]
    vars: BTreeMap<String, String>,
}

async fn login(gate: &Gate, s: &Settings, req: &ApiRequest<'_>) -> Result<Response, Reject> {
    let Some(cfg) = &s.config.login else {
        return Err(Reject::NotFound);
    };
    let body: LoginBody = serde_json::from_slice(req.body)
        .map_err(|e| Reject::BadRequest(format!("malformed login body: {e}")))?;
    validate_vars(&body.vars).map_err(|e| Reject::BadRequest(e.to_string()))?;
    if body.vars.values().any(|v| v.chars().any(char::is_control)) {
        return Err(Reject::BadRequest(
            "var values may not hold control characters".into(),
        ));
    }
    let now = now_ms();
    let limits = [
        req.client_ip
            .map(|ip| (format!("login:ip:{ip}"), cfg.rate_limit.per_ip)),
        Some((
            format!("login:user:{}", body.username),
            cfg.rate_limit.per_user,
        )),
    ];
    for (key, rate) in limits.into_iter().flatten() {
        let window = u64::try_from(rate.per.as_millis()).unwrap_or(u64::MAX);
        match gate.store.hit_rate(&key, rate.count, window, now).await {
            Ok(RateDecision::Allow) => {}
            Ok(RateDecision::Deny { retry_after_ms }) => {
                tracing::info!(%key, "login rate limited");
                return Err(Reject::RateLimited {
                    retry_after_secs: retry_after_ms.div_ceil(1000),
                });
            }
            Err(e) => return Err(store_reject(e)),
        }
    }
    let ident = login::check(s, &body.username, &body.password, &body.vars).await?;
    let mut vars = body.vars;
    vars.extend(ident.vars.clone());
    validate_vars(&vars).map_err(|e| Reject::BadRequest(e.to_string()))?;

    let now = now_ms();
    let max_expire_at = now.saturating_add(s.max_lifetime_ms());
    let session = Session {
        id: new_session_id(&ident.id),
        user_id: ident.id.clone(),
        name: ident.name.clone(),
        roles: ident.roles.clone(),
        vars,
        status: Status::Active,
        created_at: now,
        last_active_at: now,
        expire_at: now.saturating_add(s.ttl_ms()).min(max_expire_at),
        max_expire_at,
        updated_at: now,
    };
    let created = gate
        .store
        .create(&session, s.config.sessions.max_per_user, s.rules)
        .await
        .map_err(store_reject)?;
    for sid in &created.replaced {
        gate.cache.forget(sid);
    }
    let ticket = mint(s, &session)?;
    tracing::info!(sid = %session.id, user = %session.user_id, "login");
    Ok(Response::json(
        201,
        &json!({
            "ticket": ticket,
            "session": session_json(s, &session),
            "user": user_json(&session.user_id, &session.name, &session.roles),
        }),
    )
    .with_cookie(set_cookie(
        s,
        &ticket,
        session.expire_at.saturating_sub(now) / 1000,
    )))
}

fn mint(s: &Settings, session: &Session) -> Result<String, Reject> {
    let claims = Claims {
        iss: s.config.tickets.issuer.clone(),
        sid: session.id.clone(),
        sub: session.user_id.clone(),
        name: session.name.clone(),
        roles: session.roles.clone(),
        vars: session.vars.clone(),
        iat: session.updated_at / 1000,
        exp: session.expire_at / 1000,
    };
    s.keys.sign(&claims).map_err(|e| {
        tracing::error!(error = %e, "cannot sign ticket");
        Reject::BadRequest("cannot issue a ticket for this session".into())
    })
}

/// The ticket cookie (SPEC section 8): `__Host-` prefixed when secure.
pub fn set_cookie(s: &Settings, value: &str, max_age_secs: u64) -> String {
    let c = &s.config.tickets.cookie;
    let mut out = format!("{}={value}; Path=/; HttpOnly", s.cookie_name);
    if c.secure {
        out.push_str("; Secure");
    } else if let Some(d) = &c.domain {
        out.push_str("; Domain=");
        out.push_str(d);
    }
    out.push_str(match c.same_site {
        SameSite::Lax => "; SameSite=Lax",
        SameSite::Strict => "; SameSite=Strict",
        SameSite::None => "; SameSite=None",
    });
    out.push_str(&format!("; Max-Age={max_age_secs}"));
    out
}

async fn info(gate: &Gate, s: &Settings, req: &ApiRequest<'_>) -> Result<Response, Reject> {
    let claims = caller(gate, s, req).await?;
    // The admission may have come from the liveness cache; the record read
    // here is authoritative.
    let session = still_active(Some(load(gate, s, &claims.sid).await?))?;
    Ok(Response::json(
        200,
        &json!({
            "user": user_json(&session.user_id, &session.name, &session.roles),
            "session": session_json(s, &session),
        }),
    ))
}

async fn load(gate: &Gate, s: &Settings, sid: &str) -> Result<Session, Reject> {
    gate.store
        .get(sid, now_ms(), s.rules)
        .await
        .map_err(store_reject)?
        .ok_or(Reject::InvalidTicket)
}

/// A session that must still be active after the operation.
fn still_active(session: Option<Session>) -> Result<Session, Reject> {
    match session {
        Some(s) if s.status.is_active() => Ok(s),
        Some(s) => Err(Reject::Session(s.status)),
        None => Err(Reject::InvalidTicket),
    }
}

async fn touch(gate: &Gate, s: &Settings, req: &ApiRequest<'_>) -> Result<Response, Reject> {
    let claims = caller(gate, s, req).await?;
    let session = gate
        .store
        .touch(&claims.sid, now_ms(), s.rules)
        .await
        .map_err(store_reject)
        .and_then(still_active)?;
    gate.cache.forget(&claims.sid);
    Ok(Response::json(
        200,
        &json!({"session": session_json(s, &session)}),
    ))
}

async fn refresh(gate: &Gate, s: &Settings, req: &ApiRequest<'_>) -> Result<Response, Reject> {
    let claims = caller(gate, s, req).await?;
    let now = now_ms();
    let session = gate
        .store
        .refresh(&claims.sid, now.saturating_add(s.ttl_ms()), now, s.rules)
        .await
        .map_err(store_reject)
        .and_then(still_active)?;
    gate.cache.forget(&claims.sid);
    let ticket = mint(s, &session)?;
    Ok(Response::json(
        200,
        &json!({"ticket": ticket, "session": session_json(s, &session)}),
    )
    .with_cookie(set_cookie(
        s,
        &ticket,
        session.expire_at.saturating_sub(now) / 1000,
    )))
}

async fn logout(gate: &Gate, s: &Settings, req: &ApiRequest<'_>) -> Result<Response, Reject> {
    let claims = caller(gate, s, req).await?;
    gate.store
        .set_status(&claims.sid, Status::Ended, now_ms(), s.rules)
        .await
        .map_err(store_reject)?;
    gate.cache.forget(&claims.sid);
    tracing::info!(sid = %claims.sid, user = %claims.sub, "logout");
    Ok(Response::empty(204).with_cookie(set_cookie(s, "", 0)))
}

async fn list(gate: &Gate, s: &Settings, req: &ApiRequest<'_>) -> Result<Response, Reject> {
    let claims = caller(gate, s, req).await?;
    let sessions = gate
        .store
        .list(&claims.sub, now_ms(), s.rules)
        .await
        .map_err(store_reject)?;
    let views: Vec<_> = sessions.iter().map(|x| session_json(s, x)).collect();
    Ok(Response::json(200, &json!({"sessions": views})))
}

/// `POST /_session/{id}/end` and `DELETE /_session/{id}`: only the caller's
/// own sessions; any other id answers 404 so ids cannot be probed.
async fn end_or_remove(
    gate: &Gate,
    s: &Settings,
    req: &ApiRequest<'_>,
    id: &str,
    target: Status,
) -> Result<Response, Reject> {
    let claims = caller(gate, s, req).await?;
    let now = now_ms();
    let owned = gate
        .store
        .get(id, now, s.rules)
        .await
        .map_err(store_reject)?
        .filter(|x| x.user_id == claims.sub && x.status != Status::Removed);
    if owned.is_none() {
        return Err(Reject::NotFound);
    }
    let session = gate
        .store
        .set_status(id, target, now, s.rules)
        .await
        .map_err(store_reject)?
        .ok_or(Reject::NotFound)?;
    gate.cache.forget(id);
    if target == Status::Removed {
        Ok(Response::empty(204))
    } else {
        Ok(Response::json(
            200,
            &json!({"session": session_json(s, &session)}),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(cookie: &str) -> Settings {
        crate::gate::tests::settings_with(&format!("  cookie: {cookie}\n"))
    }

    #[test]
    fn secure_cookie_is_host_prefixed_secure_http_only_with_same_site() {
        let s = settings("{name: sg_ticket, secure: true, same_site: strict}");
        assert_eq!(
            set_cookie(&s, "T", 60),
            "__Host-sg_ticket=T; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=60"
        );
    }

    #[test]
    fn insecure_cookie_keeps_its_name_and_may_carry_a_domain() {
        let s = settings("{name: sid, secure: false, domain: example.com}");
        assert_eq!(
            set_cookie(&s, "", 0),
            "sid=; Path=/; HttpOnly; Domain=example.com; SameSite=Lax; Max-Age=0"
        );
    }
}
