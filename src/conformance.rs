//! Test-only: the OpenAPI document (`crate::openapi`) held to the handlers that serve the
//! session and admin APIs. Every path and method it lists is answered with one of the statuses
//! it documents, every method it leaves out gets 405 with the documented methods in `Allow`,
//! and every error code the gate can send is in its `ErrorCode` enum. Its own module so that
//! driving `api`, `admin` and `events` from here adds no import circle through the document.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method, header};
use serde_json::Value;

use crate::api::{ApiRequest, handle};
use crate::gate::Gate;
use crate::openapi::{DOCUMENT, response};
use crate::reject::Reject;
use crate::response::Response;
use crate::session::Status;
use crate::settings::Settings;
use crate::store::memory::MemoryStore;

const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];

fn doc() -> Value {
    serde_json::from_str(DOCUMENT).expect("docs/openapi.json is JSON")
}

fn gate() -> Arc<Gate> {
    let yaml = "listen: [\"127.0.0.1:1\"]\nadmin:\n  listen: \"127.0.0.1:2\"\n  token: tok\nstore:\n  kind: memory\ntickets:\n  keys:\n    - id: k1\n      secret: c2Vzc2lvbmdhdGUtdGVzdC1zZWNyZXQtMzItYnl0ZXMhIQ\n  cookie: {name: sg_ticket, secure: false}\nlogin:\n  users_file: users.yaml\nroutes:\n  - name: r\n    kind: controller\n    path: /r\n    upstreams: [\"127.0.0.1:9\"]\n";
    let cfg = crate::config::parse(yaml, std::path::Path::new("t.yaml"), &|_| None)
        .expect("test config parses");
    let user = crate::config::UserEntry {
        username: "alice".into(),
        password_hash: crate::login::hash_password("pw").expect("hash"),
        id: "u-alice".into(),
        name: "Alice".into(),
        roles: vec!["player".into()],
        vars: Default::default(),
    };
    let settings = Settings::new(cfg, vec![user]).expect("settings");
    Gate::new(settings, Arc::new(MemoryStore::new()), "t.yaml".into())
}

fn is_admin(path: &str) -> bool {
    !path.starts_with("/_session")
}

/// One request through the handler the path belongs to.
async fn call(
    gate: &Gate,
    method: &Method,
    path: &str,
    query: Option<&str>,
    auth: &str,
    body: &[u8],
) -> Response {
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {auth}")) {
        headers.insert(header::AUTHORIZATION, v);
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if is_admin(path) {
        return crate::admin::handle(gate, method, path, query, &headers).await;
    }
    let s = gate.settings();
    handle(
        gate,
        &s,
        ApiRequest {
            method,
            path,
            headers: &headers,
            body,
            client_ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            scheme: "http",
            host: headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok()),
        },
    )
    .await
}

const CREDENTIALS: &[u8] = br#"{"username":"alice","password":"pw"}"#;

/// A fresh session: its ticket and id.
async fn login(gate: &Gate) -> (String, String) {
    let r = call(
        gate,
        &Method::POST,
        "/_session/login",
        None,
        "",
        CREDENTIALS,
    )
    .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let body: Value = serde_json::from_slice(&r.body).expect("login body");
    let ticket = body["ticket"].as_str().expect("ticket").to_owned();
    let sid = body["session"]["id"].as_str().expect("sid").to_owned();
    (ticket, sid)
}

fn header<'a>(r: &'a Response, name: &header::HeaderName) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.to_str().ok())
}

#[test]
fn document_is_openapi_3_1_and_every_ref_resolves() {
    let d = doc();
    assert_eq!(d["openapi"], "3.1.0");
    fn walk(v: &Value, root: &Value) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    let ptr = r.strip_prefix('#').expect("local ref");
                    assert!(root.pointer(ptr).is_some(), "dangling $ref {r}");
                }
                m.values().for_each(|x| walk(x, root));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, root)),
            _ => {}
        }
    }
    walk(&d, &d);
}

/// Every code the gate can send is in the document's `ErrorCode`. The
/// match has no wildcard: a new refusal does not compile until it is
/// listed here, and then this test wants it documented.
#[test]
fn every_error_code_is_documented() {
    let d = doc();
    let codes: Vec<&str> = d["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .expect("ErrorCode enum")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mut all = vec![
        Reject::BadRequest("x".into()),
        Reject::MissingTicket,
        Reject::InvalidTicket,
        Reject::BadCredentials,
        Reject::Forbidden,
        Reject::OriginNotAllowed,
        Reject::NoRoute,
        Reject::NotFound,
        Reject::MethodNotAllowed("GET"),
        Reject::BodyTooLarge,
        Reject::UnsupportedMediaType,
        Reject::UriTooLong,
        Reject::HeadersTooLarge,
        Reject::RateLimited {
            retry_after_secs: 1,
        },
        Reject::UpstreamUnavailable,
        Reject::UpstreamTimeout,
        Reject::StoreUnavailable,
    ];
    // Every status but `active` ends a session.
    all.extend(
        Status::ALL
            .into_iter()
            .filter(|st| *st != Status::Active)
            .map(Reject::Session),
    );
    for r in &all {
        match r {
            Reject::BadRequest(_)
            | Reject::MissingTicket
            | Reject::InvalidTicket
            | Reject::Session(_)
            | Reject::BadCredentials
            | Reject::Forbidden
            | Reject::OriginNotAllowed
            | Reject::NoRoute
            | Reject::NotFound
            | Reject::MethodNotAllowed(_)
            | Reject::BodyTooLarge
            | Reject::UnsupportedMediaType
            | Reject::UriTooLong
            | Reject::HeadersTooLarge
            | Reject::RateLimited { .. }
            | Reject::UpstreamUnavailable
            | Reject::UpstreamTimeout
            | Reject::StoreUnavailable => {}
        }
        let body: Value = serde_json::from_slice(&r.body()).expect("error body");
        let code = body["error"].as_str().expect("error code");
        assert!(codes.contains(&code), "{code} missing from ErrorCode");
        assert!(body["message"].is_string());
        // The status is one the document describes as an error response.
        let key = format!("E{}", r.status());
        assert!(
            d["components"]["responses"].get(&key).is_some(),
            "no {key} response for {code}"
        );
    }
}

/// Walks the document against the handlers: a documented operation
/// answers one of its documented statuses (with a real ticket, so the
/// success paths are exercised too); an undocumented method on a
/// documented path answers 405 whose `Allow` lists exactly the
/// documented methods.
#[tokio::test]
async fn every_documented_operation_is_served_as_documented() {
    let d = doc();
    let gate = gate();
    let base = login(&gate).await;
    let paths = d["paths"].as_object().expect("paths");
    for (path, item) in paths {
        let documented: Vec<String> = METHODS
            .iter()
            .map(|m| m.as_str().to_ascii_lowercase())
            .filter(|m| item.get(m).is_some())
            .collect();
        assert!(!documented.is_empty(), "{path} has no operation");
        if path == "/admin/events" {
            // Streamed by crate::events, outside admin::handle.
            continue;
        }
        for m in &METHODS {
            let lower = m.as_str().to_ascii_lowercase();
            let op = item.get(&lower);
            if path.contains("revoke") && op.is_some() {
                // Revoking ends sessions the other paths use; checked
                // after the walk.
                continue;
            }
            // An operation that ends its session gets one of its own.
            let destructive = op.is_some() && (path.contains("logout") || path.contains("{id}"));
            let (ticket, sid) = if destructive {
                login(&gate).await
            } else {
                base.clone()
            };
            let concrete = path.replace(
                "{id}",
                if path.contains("users") {
                    "u-alice"
                } else {
                    &sid
                },
            );
            let query = (path == "/admin/sessions").then_some("user=u-alice");
            let auth = if is_admin(path) {
                "tok"
            } else {
                ticket.as_str()
            };
            let body: &[u8] = if path == "/_session/login" {
                CREDENTIALS
            } else {
                b""
            };
            let r = call(&gate, m, &concrete, query, auth, body).await;
            if let Some(op) = op {
                let statuses = op["responses"].as_object().expect("responses");
                assert!(
                    statuses.contains_key(&r.status.to_string()),
                    "{m} {path}: {} is not documented ({})",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                );
                assert!(r.status < 300, "{m} {path}: {}", r.status);
            } else {
                assert_eq!(r.status, 405, "{m} {path}");
                let allow = header(&r, &header::ALLOW).unwrap_or("");
                let mut got: Vec<String> = allow
                    .split(',')
                    .map(|x| x.trim().to_ascii_lowercase())
                    .collect();
                got.sort();
                let mut want = documented.clone();
                want.sort();
                assert_eq!(got, want, "Allow of {path}");
            }
        }
    }
    let sid = base.1;
    let revoke = call(
        &gate,
        &Method::POST,
        &format!("/admin/sessions/{sid}/revoke"),
        None,
        "tok",
        b"",
    )
    .await;
    assert_eq!(revoke.status, 200);
    let users = call(
        &gate,
        &Method::POST,
        "/admin/users/u-alice/revoke",
        None,
        "tok",
        b"",
    )
    .await;
    assert_eq!(users.status, 200);
}

/// The other direction: paths the handlers serve (anything but 404) are
/// in the document.
#[tokio::test]
async fn every_served_path_is_documented() {
    let d = doc();
    let gate = gate();
    let served = [
        "/_session",
        "/_session/login",
        "/_session/touch",
        "/_session/refresh",
        "/_session/logout",
        "/_session/list",
        "/_session/openapi.json",
        "/_session/abc/end",
        "/_session/abc",
        "/admin/sessions",
        "/admin/sessions/abc/revoke",
        "/admin/users/abc/revoke",
        "/healthz",
        "/readyz",
        "/metrics",
        "/",
    ];
    let templates: Vec<&String> = d["paths"].as_object().expect("paths").keys().collect();
    let matches = |p: &str| {
        templates.iter().any(|t| {
            let (ts, ps): (Vec<&str>, Vec<&str>) = (t.split('/').collect(), p.split('/').collect());
            ts.len() == ps.len()
                && ts
                    .iter()
                    .zip(&ps)
                    .all(|(a, b)| a.starts_with('{') || a == b)
        })
    };
    for p in served {
        assert!(matches(p), "{p} is served but not documented");
        let r = call(&gate, &Method::GET, p, Some("user=u"), "tok", b"").await;
        assert_ne!(r.status, 404, "{p} should be served");
    }
    for p in ["/_session/a/b/c", "/admin/nothing", "/nothing"] {
        assert!(!matches(p));
        let r = call(&gate, &Method::GET, p, None, "tok", b"").await;
        assert_eq!(r.status, 404, "{p}");
    }
    assert!(matches(crate::events::EVENTS_PATH));
}

#[test]
fn response_is_the_document() {
    let r = response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, DOCUMENT.as_bytes());
}
