//! The session HTTP API under `/_session` (SPEC section 8), served by the
//! gate itself: login, info, touch, refresh, logout, list, end, remove.
//!
//! Framework-free: the proxy glue hands over a parsed [`ApiRequest`] and
//! writes back the [`Response`]. Every answer carries `Cache-Control: no-store`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use http::{HeaderMap, HeaderValue, Method, header};
use serde::Deserialize;
use serde_json::json;

use crate::clock::now_ms;
use crate::config::{SameSite, normalize_origin};
use crate::credentials::{TicketFrom, find_ticket};
use crate::gate::{Gate, store_reject};
use crate::login;
use crate::reject::Reject;
use crate::response::Response;
use crate::segment::percent_decode;
use crate::session::{Session, Status, merge_vars, validate_vars};
use crate::settings::Settings;
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
    /// The listener's scheme (`http` or `https`) and the request's `Host`
    /// (or HTTP/2 `:authority`): together, the request's own origin.
    pub scheme: &'a str,
    pub host: Option<&'a str>,
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

/// What a `/_session` request asks for, once its path and method are known.
enum Endpoint {
    Info,
    Login,
    Touch,
    Refresh,
    Logout,
    List,
    End(String),
    Remove(String),
    OpenApi,
}

/// The endpoint for a path under `/_session` (404) and a method (405).
fn endpoint(rest: &str, m: &Method) -> Result<Endpoint, Reject> {
    let allow = |methods: &'static str, ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(Reject::MethodNotAllowed(methods))
        }
    };
    // A session id segment is percent-decoded only (`+` stays `+`); one that
    // is not UTF-8 names no session.
    let id = |raw: &str| percent_decode(raw).map_err(|_| Reject::NotFound);
    Ok(match rest {
        "" => {
            allow("GET", m == Method::GET)?;
            Endpoint::Info
        }
        "/login" => {
            allow("POST", m == Method::POST)?;
            Endpoint::Login
        }
        "/touch" => {
            allow("POST", m == Method::POST)?;
            Endpoint::Touch
        }
        "/refresh" => {
            allow("POST", m == Method::POST)?;
            Endpoint::Refresh
        }
        "/logout" => {
            allow("POST", m == Method::POST)?;
            Endpoint::Logout
        }
        "/list" => {
            allow("GET", m == Method::GET)?;
            Endpoint::List
        }
        "/openapi.json" => {
            allow("GET", m == Method::GET)?;
            Endpoint::OpenApi
        }
        other => {
            let tail = other.strip_prefix('/').unwrap_or(other);
            match tail.split_once('/') {
                Some((raw, "end")) if !raw.is_empty() => {
                    allow("POST", m == Method::POST)?;
                    Endpoint::End(id(raw)?)
                }
                None if !tail.is_empty() => {
                    allow("DELETE", m == Method::DELETE)?;
                    Endpoint::Remove(id(tail)?)
                }
                _ => return Err(Reject::NotFound),
            }
        }
    })
}

async fn route(gate: &Gate, s: &Settings, req: &ApiRequest<'_>) -> Result<Response, Reject> {
    let rest = req
        .path
        .strip_prefix(PREFIX)
        .ok_or(Reject::NotFound)?
        .trim_end_matches('/');
    let endpoint = endpoint(rest, req.method)?;
    json_body_only(req)?;
    if !matches!(endpoint, Endpoint::Login) {
        cookie_calls_from_allowed_origins(s, req)?;
    }
    match endpoint {
        Endpoint::Info => info(gate, s, req).await,
        Endpoint::Login => login(gate, s, req).await,
        Endpoint::Touch => touch(gate, s, req).await,
        Endpoint::Refresh => refresh(gate, s, req).await,
        Endpoint::Logout => logout(gate, s, req).await,
        Endpoint::List => list(gate, s, req).await,
        Endpoint::End(id) => end_or_remove(gate, s, req, &id, Status::Ended).await,
        Endpoint::Remove(id) => end_or_remove(gate, s, req, &id, Status::Removed).await,
        Endpoint::OpenApi => Ok(crate::openapi::response()),
    }
}

/// A body must be declared `application/json` (parameters allowed). Browsers
/// send `text/plain`, form and multipart bodies cross-site without asking,
/// but `application/json` only after a CORS preflight the gate never grants:
/// this rule is what keeps a cross-site form from logging a victim in.
fn json_body_only(req: &ApiRequest<'_>) -> Result<(), Reject> {
    if req.body.is_empty() {
        return Ok(());
    }
    let mut types = req.headers.get_all(header::CONTENT_TYPE).iter();
    let declared = match (types.next(), types.next()) {
        (Some(v), None) => v.to_str().ok(),
        _ => None,
    };
    if declared.is_some_and(is_json) {
        Ok(())
    } else {
        tracing::info!(content_type = ?declared, "/_session body refused: not application/json");
        Err(Reject::UnsupportedMediaType)
    }
}

/// Whether a `Content-Type` value is `application/json`, with any parameters.
fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
}

/// A POST or DELETE authenticated by the ticket cookie (which a browser
/// attaches to cross-site requests too) must come from the gate's own origin
/// or one of `login.origins`: its `Origin`, or without one, `Sec-Fetch-Site:
/// same-origin`. `Authorization` is never sent cross-site by a browser on its
/// own, so calls carrying it are not checked.
fn cookie_calls_from_allowed_origins(s: &Settings, req: &ApiRequest<'_>) -> Result<(), Reject> {
    let state_changing = req.method == Method::POST || req.method == Method::DELETE;
    let by_cookie = find_ticket(s, req.headers, None, false)
        .is_some_and(|(_, from)| from == TicketFrom::Cookie);
    if !state_changing || !by_cookie {
        return Ok(());
    }
    let text = |name: header::HeaderName| req.headers.get(name).and_then(|v| v.to_str().ok());
    let allowed = match text(header::ORIGIN) {
        Some(origin) => {
            let extra = s.config.login.as_ref().map_or(&[][..], |l| &l.origins[..]);
            origin_allowed(origin, req.scheme, req.host, extra)
        }
        None => text(header::HeaderName::from_static("sec-fetch-site"))
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("same-origin")),
    };
    if allowed {
        Ok(())
    } else {
        tracing::info!(
            origin = ?text(header::ORIGIN),
            host = ?req.host,
            "cookie-authenticated /_session call refused: origin not allowed"
        );
        Err(Reject::OriginNotAllowed)
    }
}

/// Whether `origin` is the request's own (`scheme://Host`) or one of `extra`
/// (already normalized). Compared normalized: case and default ports aside.
fn origin_allowed(origin: &str, scheme: &str, host: Option<&str>, extra: &[String]) -> bool {
    let Some(origin) = normalize_origin(origin) else {
        return false;
    };
    let own = host.and_then(|h| normalize_origin(&format!("{scheme}://{h}")));
    own.as_deref() == Some(origin.as_str()) || extra.contains(&origin)
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
    let body: LoginBody = serde_json::from_slice(req.body).map_err(|e| {
        tracing::info!(error = ?e.to_string(), "login refused: malformed body");
        Reject::BadRequest(format!("malformed login body: {e}"))
    })?;
    // Every refusal from here on names the attempted username in the log
    // (escaped: it is the client's text). Rate-limited ones, the bulk of a
    // flood, only at debug: their access-log line already has the code.
    let refused = |r: Reject| {
        if matches!(r, Reject::RateLimited { .. }) {
            tracing::debug!(username = ?body.username, code = r.code(), "login refused");
        } else {
            tracing::info!(username = ?body.username, code = r.code(), "login refused");
        }
        r
    };
    validate_vars(&body.vars).map_err(|e| refused(Reject::BadRequest(e.to_string())))?;
    if body.vars.values().any(|v| v.chars().any(char::is_control)) {
        return Err(refused(Reject::BadRequest(
            "var values may not hold control characters".into(),
        )));
    }
    let slot = login::reserve(s, &gate.hashing).map_err(refused)?;
    let now = now_ms();
    let limits = [
        req.client_ip
            .map(|ip| (login::ip_rate_key(ip), cfg.rate_limit.per_ip)),
        Some((
            login::user_rate_key(&body.username),
            cfg.rate_limit.per_user,
        )),
    ];
    for (key, rate) in limits.into_iter().flatten() {
        let window = u64::try_from(rate.per.as_millis()).unwrap_or(u64::MAX);
        match gate.hit_rate(&key, rate.count, window, now).await {
            Ok(RateDecision::Allow) => {}
            Ok(RateDecision::Deny { retry_after_ms }) => {
                tracing::info!(key = ?key, "login rate limited");
                return Err(refused(Reject::RateLimited {
                    retry_after_secs: retry_after_ms.div_ceil(1000),
                }));
            }
            Err(e) => return Err(refused(store_reject(e))),
        }
    }
    let ident = login::check(s, slot, &body.username, &body.password, &body.vars)
        .await
        .map_err(refused)?;
    let vars = merge_vars(body.vars.clone(), &ident.vars);
    validate_vars(&vars).map_err(|e| refused(Reject::BadRequest(e.to_string())))?;

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
    // Minted before anything is stored: a ticket that cannot be issued (over
    // 8 KiB) refuses the login with nothing stored and nothing replaced.
    let ticket = mint(s, &session).map_err(refused)?;
    gate.create_session(&session, s.config.sessions.max_per_user, s.rules)
        .await
        .map_err(|e| refused(store_reject(e)))?;
    tracing::info!(sid = %session.id, user = ?session.user_id, "login");
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
        // Over 8 KiB is the client's vars; a missing key the operator's config.
        tracing::warn!(error = %e, "cannot sign ticket");
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
    gate.session(sid, now_ms(), s.rules)
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
        .touch(&claims.sid, now_ms(), s.rules)
        .await
        .map_err(store_reject)
        .and_then(still_active)?;
    Ok(Response::json(
        200,
        &json!({"session": session_json(s, &session)}),
    ))
}

async fn refresh(gate: &Gate, s: &Settings, req: &ApiRequest<'_>) -> Result<Response, Reject> {
    let claims = caller(gate, s, req).await?;
    let now = now_ms();
    let session = gate
        .refresh(&claims.sid, now.saturating_add(s.ttl_ms()), now, s.rules)
        .await
        .map_err(store_reject)
        .and_then(still_active)?;
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
    gate.set_status(&claims.sid, Status::Ended, now_ms(), s.rules)
        .await
        .map_err(store_reject)?;
    tracing::info!(sid = %claims.sid, user = %claims.sub, "logout");
    Ok(Response::empty(204).with_cookie(set_cookie(s, "", 0)))
}

async fn list(gate: &Gate, s: &Settings, req: &ApiRequest<'_>) -> Result<Response, Reject> {
    let claims = caller(gate, s, req).await?;
    let sessions = gate
        .sessions_of(&claims.sub, now_ms(), s.rules)
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
        .session(id, now, s.rules)
        .await
        .map_err(store_reject)?
        .filter(|x| x.user_id == claims.sub && x.status != Status::Removed);
    if owned.is_none() {
        return Err(Reject::NotFound);
    }
    let session = gate
        .set_status(id, target, now, s.rules)
        .await
        .map_err(store_reject)?
        .ok_or(Reject::NotFound)?;
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
        crate::settings::tests::settings_with(&format!("  cookie: {cookie}\n"))
    }

    #[test]
    fn json_is_the_essence_whatever_the_parameters() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json(" application/json ;charset=UTF-8"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/x-www-form-urlencoded"));
        assert!(!is_json("application/json-seq"));
        assert!(!is_json("application/vnd.api+json"));
        assert!(!is_json(""));
    }

    #[test]
    fn own_origin_is_scheme_and_host_compared_normalized() {
        let extra = vec!["https://app.example.com".to_owned()];
        let ok = |o: &str, host: Option<&str>| origin_allowed(o, "http", host, &extra);
        assert!(ok("http://gate.test:6090", Some("gate.test:6090")));
        assert!(ok("HTTP://Gate.Test", Some("gate.test:80")));
        assert!(ok("https://app.example.com", Some("gate.test")));
        assert!(ok("https://app.example.com:443", None));
        assert!(
            !ok("https://gate.test:6090", Some("gate.test:6090")),
            "scheme"
        );
        assert!(!ok("http://gate.test:6091", Some("gate.test:6090")), "port");
        assert!(!ok("http://gate.test.evil.com", Some("gate.test")));
        assert!(!ok("null", Some("gate.test")));
        assert!(!ok("http://gate.test", None));
    }

    #[test]
    fn session_id_segments_are_percent_decoded_only() {
        let Ok(Endpoint::Remove(id)) = endpoint("/a+b%2Bc", &Method::DELETE) else {
            panic!("not a remove");
        };
        assert_eq!(id, "a+b+c");
        let Ok(Endpoint::End(id)) = endpoint("/x%40y/end", &Method::POST) else {
            panic!("not an end");
        };
        assert_eq!(id, "x@y");
        assert!(matches!(
            endpoint("/%FF", &Method::DELETE),
            Err(Reject::NotFound)
        ));
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
