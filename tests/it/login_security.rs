//! Login and `/_session` hardening through the real binary (issue 9): vars
//! unique ignoring case, no forged log lines, case-folded rate limits,
//! cross-site rules, refused logins leaving nothing behind, percent-decoded
//! ids, and a bounded password-hashing pool.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::support::*;
use serde_json::{Value, json};

fn routes(http: SocketAddr) -> Value {
    serde_json::json!([{"name": "shop", "kind": "controller", "path": "/controller/shop", "strip_prefix": true, "upstreams": [http.to_string()], "auth": "required"}, {"name": "public", "kind": "controller", "path": "/public", "upstreams": [http.to_string()], "auth": "public"}])
}

/// What a test changes of the standard config.
struct Opts<'a> {
    /// A merge patch of the `login` block (rate limits, origins, hashing).
    login: Value,
    /// The `sessions` block.
    sessions: Value,
    /// `None`: the standard users file (alice and bob).
    users: Option<&'a [(&'a str, &'a str, &'a str, &'a str)]>,
    /// A login delegate instead of the users file.
    delegate: Option<SocketAddr>,
    args: &'a [&'a str],
}

impl Default for Opts<'_> {
    fn default() -> Self {
        Opts {
            login: json!({}),
            sessions: json!({}),
            users: Some(&[("alice", "wonderland", "u-alice", "{tier: gold}")]),
            delegate: None,
            args: &[],
        }
    }
}

struct Env {
    _redis: Redis,
    _http: Upstream,
    gate: Gate,
}

async fn start(o: Opts<'_>) -> Env {
    let redis = Redis::spawn().await;
    let http = Upstream::http().await;
    let mut setup = Setup::redis(&redis)
        .routes(routes(http.addr))
        .sessions(o.sessions)
        .login(o.login);
    if let Some(list) = o.users {
        setup = setup.users(list);
    }
    if let Some(d) = o.delegate {
        setup = setup.login(json!({
            "users_file": null,
            "delegate": {"url": format!("http://{d}/verify")},
        }));
    }
    let gate = Gate::start_args(&setup, o.args).await;
    Env {
        _redis: redis,
        _http: http,
        gate,
    }
}

fn login_body(user: &str, password: &str, vars: Value) -> String {
    json!({"username": user, "password": password, "vars": vars}).to_string()
}

/// A raw request with a body of the given `Content-Type` (none: `None`).
async fn post_typed(gate: &Gate, path: &str, content_type: Option<&str>, body: &str) -> Resp {
    let ct = content_type
        .map(|c| format!("Content-Type: {c}\r\n"))
        .unwrap_or_default();
    gate.req(&format!(
        "POST {path} HTTP/1.1\r\nHost: gate.test\r\n{ct}Content-Length: {}\r\n\r\n{body}",
        body.len()
    ))
    .await
}

/// The operator's view of a user's sessions: (id, status), newest first.
async fn sessions_of(gate: &Gate, user: &str) -> Vec<(String, String)> {
    let r = gate
        .admin_req("GET", &format!("/admin/sessions?user={user}"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    ids_and_statuses(r.json()["sessions"].as_array().unwrap())
}

// ------------------------------------------------------------ item 2: vars by case

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_var_wins_over_a_client_var_differing_only_in_case() {
    let e = start(Opts {
        users: Some(&[("carol", "pw", "u-carol", "{orgId: \"42\"}")]),
        ..Opts::default()
    })
    .await;
    let r = e
        .gate
        .post(
            "/_session/login",
            None,
            &login_body("carol", "pw", json!({"orgid": "1337", "team": "red"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    // The credential's spelling is kept; the client's variant is gone.
    assert_eq!(
        r.json()["session"]["vars"],
        json!({"orgId": "42", "team": "red"})
    );
    let ticket = r.json()["ticket"].as_str().unwrap().to_owned();
    let up = e.gate.get("/controller/shop/x", Some(&ticket)).await;
    assert_eq!(up.status, 200, "{}", up.text());
    // The echo joins repeated headers with ", ", so exactly "42" is exactly one header.
    let vars: BTreeMap<String, String> = up
        .upstream_headers()
        .into_iter()
        .filter(|(k, _)| k.to_ascii_lowercase().starts_with("x-session-var-"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    assert_eq!(
        vars,
        BTreeMap::from([
            ("x-session-var-orgid".to_owned(), "42".to_owned()),
            ("x-session-var-team".to_owned(), "red".to_owned()),
        ])
    );
}

/// A login delegate admitting anyone as `u-dana` with the var `orgId: 42`.
async fn org_delegate() -> Upstream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    Upstream::custom(|mut tcp| async move {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        // The gate sends Content-Length and then waits: read the head and that many bytes.
        loop {
            let Ok(n) = tcp.read(&mut chunk).await else { return };
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
            let Some(end) = text.find("\r\n\r\n") else { continue };
            let len: usize = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                break;
            }
        }
        let body = r#"{"id":"u-dana","vars":{"orgId":"42"}}"#;
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = tcp.write_all(resp.as_bytes()).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delegate_var_wins_over_a_client_var_differing_only_in_case() {
    let delegate = org_delegate().await;
    let e = start(Opts {
        delegate: Some(delegate.addr),
        ..Opts::default()
    })
    .await;
    let r = e
        .gate
        .post(
            "/_session/login",
            None,
            &login_body("dana", "pw", json!({"ORGID": "1337"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["session"]["vars"], json!({"orgId": "42"}));
    let ticket = r.json()["ticket"].as_str().unwrap().to_owned();
    let up = e.gate.get("/controller/shop/x", Some(&ticket)).await;
    let vars: Vec<(String, String)> = up
        .upstream_headers()
        .into_iter()
        .filter(|(k, _)| k.to_ascii_lowercase().starts_with("x-session-var-"))
        .collect();
    assert_eq!(vars, [("x-session-var-orgid".to_owned(), "42".to_owned())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_var_keys_differing_only_in_case_are_400_and_store_nothing() {
    let e = start(Opts::default()).await;
    let r = e
        .gate
        .post(
            "/_session/login",
            None,
            &login_body("alice", "wonderland", json!({"Device": "a", "device": "b"})),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.error(), "bad_request");
    assert!(r.json()["message"].as_str().unwrap().contains("case"));
    assert!(r.header("set-cookie").is_none());
    assert_eq!(sessions_of(&e.gate, "u-alice").await, vec![]);
}

// ---------------------------------------------------------- item 9: log injection

const FORGED: &str = "x\nINFO access: route=admin status=200";
const FORGED_PATH: &str = "/public/a%0aINFO%20access:%20route=admin%20status=200";
const FORGED_ADMIN: &str = "/admin/users/x%0aINFO%20access:%20route=admin%20status=200/revoke";

/// Sends the three injection attempts and waits until each left its line.
async fn inject(e: &Env, done: impl Fn(&str) -> bool) -> String {
    let r = e
        .gate
        .post(
            "/_session/login",
            None,
            &json!({"username": FORGED, "password": "p"}).to_string(),
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.error(), "bad_credentials");
    let r = e.gate.get(FORGED_PATH, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = e.gate.admin_req("POST", FORGED_ADMIN).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"revoked": 0}));
    eventually(Duration::from_secs(5), || async {
        let logs = e.gate.logs();
        done(&logs).then_some(logs)
    })
    .await
    .unwrap_or_else(|| panic!("the lines never appeared:\n{}", e.gate.logs()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_text_cannot_forge_a_human_log_line() {
    let e = start(Opts::default()).await;
    let logs = inject(&e, |l| {
        l.contains("login refused")
            && l.contains("revoked by operator")
            && l.contains("/public/a%0A")
    })
    .await;
    // Every line is an event of its own: it opens with its RFC 3339 timestamp.
    for line in logs.lines() {
        let b = line.as_bytes();
        assert!(
            b.len() > 20 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && b[10] == b'T',
            "a line that is not an event of its own: {line:?}\n{logs}"
        );
        assert!(!line.chars().any(char::is_control), "{line:?}");
    }
    let refused = logs.lines().find(|l| l.contains("login refused")).unwrap();
    assert!(
        refused.contains(r"x\nINFO access: route=admin status=200"),
        "{refused}"
    );
    let revoked = logs
        .lines()
        .find(|l| l.contains("revoked by operator"))
        .unwrap();
    assert!(revoked.contains(r"x\nINFO access:"), "{revoked}");
    let access = logs
        .lines()
        .find(|l| l.contains("access:") && l.contains("/public/a%0A"))
        .unwrap();
    assert!(access.contains("status=200"), "{access}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_text_cannot_forge_a_json_log_line() {
    let e = start(Opts {
        args: &["--log-format", "json"],
        ..Opts::default()
    })
    .await;
    let logs = inject(&e, |l| {
        l.contains("login refused")
            && l.contains("revoked by operator")
            && l.contains("/public/a%0A")
    })
    .await;
    let events: Vec<Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|err| panic!("{err}: {l:?}\n{logs}")))
        .collect();
    let refused = events
        .iter()
        .find(|v| v["message"] == "login refused")
        .unwrap();
    assert_eq!(refused["code"], "bad_credentials", "{refused}");
    assert!(
        refused["username"]
            .as_str()
            .unwrap()
            .contains(r"x\nINFO access:"),
        "{refused}"
    );
    let forged_access: Vec<&Value> = events
        .iter()
        .filter(|v| v["target"] == "access" && v["route"] == "admin")
        .collect();
    assert!(forged_access.is_empty(), "{forged_access:?}");
    let access = events
        .iter()
        .find(|v| v["target"] == "access" && v["route"] == "public")
        .unwrap();
    assert_eq!(
        access["path"],
        "/public/a%0AINFO%20access:%20route=admin%20status=200"
    );
}

// ------------------------------------------------------- item 10: rate-limit keys

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_user_limit_counts_the_case_folded_username() {
    let e = start(Opts {
        login: json!({"rate_limit": {"per_user": "3/min"}}),
        ..Opts::default()
    })
    .await;
    // Each attempt from another address, so only the per-user budget is shared.
    let from = |n: u8| IpAddr::V4(Ipv4Addr::new(127, 0, 0, n));
    for (i, name) in ["DCase", "dcase", "DCASE"].into_iter().enumerate() {
        let r = e
            .gate
            .send_from(
                from(10 + i as u8),
                "POST",
                "/_session/login",
                &login_body(name, "guess", json!({})),
            )
            .await;
        assert_eq!(
            (r.status, r.error()),
            (401, "bad_credentials".into()),
            "{name}"
        );
    }
    let r = e
        .gate
        .send_from(
            from(20),
            "POST",
            "/_session/login",
            &login_body("dCaSe", "guess", json!({})),
        )
        .await;
    assert_eq!((r.status, r.error()), (429, "rate_limited".into()));
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // Another user keeps its own budget.
    let r = e
        .gate
        .send_from(
            from(21),
            "POST",
            "/_session/login",
            &login_body("alice", "wonderland", json!({})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
}

// --------------------------------------------------------- item 11: cross-site rules

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_body_that_is_not_json_is_415_and_logs_nobody_in() {
    let e = start(Opts::default()).await;
    let body = login_body("alice", "wonderland", json!({}));
    let form = "username=alice&password=wonderland";
    for (ct, body) in [
        (Some("text/plain"), body.as_str()),
        (Some("text/plain; charset=utf-8"), body.as_str()),
        (Some("application/x-www-form-urlencoded"), form),
        (Some("multipart/form-data; boundary=x"), body.as_str()),
        (Some("application/json-patch+json"), body.as_str()),
        (None, body.as_str()),
    ] {
        let r = post_typed(&e.gate, "/_session/login", ct, body).await;
        assert_eq!(r.status, 415, "{ct:?}: {}", r.text());
        assert_eq!(r.error(), "unsupported_media_type", "{ct:?}");
        assert_eq!(r.header("cache-control"), Some("no-store"));
        assert!(r.header("set-cookie").is_none());
    }
    assert_eq!(sessions_of(&e.gate, "u-alice").await, vec![]);
    // Parameters are fine, and so is a body-less call without a type.
    let r = post_typed(
        &e.gate,
        "/_session/login",
        Some("Application/JSON; charset=utf-8"),
        &body,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let ticket = r.json()["ticket"].as_str().unwrap().to_owned();
    let r = e
        .gate
        .req(&format!(
            "POST /_session/touch HTTP/1.1\r\nHost: gate.test\r\nAuthorization: Bearer {ticket}\r\nContent-Length: 0\r\n\r\n"
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(sessions_of(&e.gate, "u-alice").await.len(), 1);
}

/// A cookie-authenticated call, with extra header lines.
async fn by_cookie(gate: &Gate, method: &str, path: &str, ticket: &str, extra: &str) -> Resp {
    gate.req(&format!(
        "{method} {path} HTTP/1.1\r\nHost: gate.test:{}\r\nCookie: sg_ticket={ticket}\r\n{extra}Content-Length: 0\r\n\r\n",
        gate.addr.port()
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_authenticated_changes_must_come_from_an_allowed_origin() {
    let e = start(Opts {
        login: json!({"origins": ["https://app.example.com"]}),
        ..Opts::default()
    })
    .await;
    let g = &e.gate;
    let (ticket, r) = g.login("alice", "wonderland").await;
    let sid = r.json()["session"]["id"].as_str().unwrap().to_owned();
    let port = g.addr.port();
    // Refused: cross-site, a look-alike, another port or scheme, `null`,
    // no Origin at all, and a cross-site Sec-Fetch-Site.
    for extra in [
        "Origin: https://evil.example\r\n".to_owned(),
        "Origin: https://app.example.com.evil.example\r\n".to_owned(),
        format!("Origin: http://gate.test:{}\r\n", port + 1),
        format!("Origin: https://gate.test:{port}\r\n"),
        "Origin: null\r\n".to_owned(),
        String::new(),
        "Sec-Fetch-Site: cross-site\r\n".to_owned(),
        "Sec-Fetch-Site: same-site\r\n".to_owned(),
    ] {
        for (method, path) in [
            ("POST", "/_session/logout".to_owned()),
            ("POST", "/_session/refresh".to_owned()),
            ("POST", format!("/_session/{sid}/end")),
            ("DELETE", format!("/_session/{sid}")),
        ] {
            let r = by_cookie(g, method, &path, &ticket, &extra).await;
            assert_eq!(r.status, 403, "{method} {path} {extra:?}: {}", r.text());
            assert_eq!(r.error(), "origin_not_allowed");
            assert!(r.header("set-cookie").is_none());
        }
    }
    assert_eq!(
        sessions_of(g, "u-alice").await,
        vec![(sid.clone(), "active".to_owned())]
    );
    // Reads are not checked; neither are calls carrying Authorization.
    let r = by_cookie(
        g,
        "GET",
        "/_session",
        &ticket,
        "Origin: https://evil.example\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = g
        .req(&format!(
            "POST /_session/touch HTTP/1.1\r\nHost: gate.test\r\nAuthorization: Bearer {ticket}\r\nOrigin: https://evil.example\r\nContent-Length: 0\r\n\r\n"
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Allowed: the gate's own origin (any case), Sec-Fetch-Site: same-origin, login.origins.
    for extra in [
        format!("Origin: HTTP://Gate.Test:{port}\r\n"),
        "Sec-Fetch-Site: same-origin\r\n".to_owned(),
        "Origin: https://app.example.com\r\n".to_owned(),
    ] {
        let r = by_cookie(g, "POST", "/_session/touch", &ticket, &extra).await;
        assert_eq!(r.status, 200, "{extra:?}: {}", r.text());
    }
    let r = by_cookie(
        g,
        "POST",
        "/_session/logout",
        &ticket,
        &format!("Origin: http://gate.test:{port}\r\n"),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        sessions_of(g, "u-alice").await,
        vec![(sid, "ended".to_owned())]
    );
}

// ------------------------------------------------- item 12: refused login, no trace

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_refused_for_its_ticket_size_stores_and_replaces_nothing() {
    let e = start(Opts {
        sessions: json!({"max_per_user": 2}),
        ..Opts::default()
    })
    .await;
    let g = &e.gate;
    let (t1, _) = g.login("alice", "wonderland").await;
    let (t2, _) = g.login("alice", "wonderland").await;
    let before = sessions_of(g, "u-alice").await;
    assert_eq!(before.len(), 2);
    assert!(before.iter().all(|(_, st)| st == "active"), "{before:?}");
    // 20 vars of 500 bytes: a valid body, a ticket well over 8 KiB.
    let big: serde_json::Map<String, Value> = (0..20)
        .map(|i| (format!("k{i}"), json!("v".repeat(500))))
        .collect();
    let r = g
        .post(
            "/_session/login",
            None,
            &login_body("alice", "wonderland", Value::Object(big)),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.error(), "bad_request");
    assert!(r.header("set-cookie").is_none());
    assert_eq!(sessions_of(g, "u-alice").await, before);
    for t in [&t1, &t2] {
        let r = g.get("/controller/shop/x", Some(t)).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

// ------------------------------------------------- item 13: ids decoded, `+` kept

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_in_paths_are_percent_decoded_and_plus_stays_plus() {
    let e = start(Opts {
        users: Some(&[
            ("a+b@x.com", "pw", "a+b@x.com", "{}"),
            ("a b@x.com", "pw", "a b@x.com", "{}"),
        ]),
        ..Opts::default()
    })
    .await;
    let g = &e.gate;
    let (plus, _) = g.login("a+b@x.com", "pw").await;
    let (space, _) = g.login("a b@x.com", "pw").await;
    let r = g.admin_req("POST", "/admin/users/a+b@x.com/revoke").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"revoked": 1}));
    let r = g.get("/controller/shop/x", Some(&plus)).await;
    assert_eq!((r.status, r.error()), (401, "session_revoked".into()));
    let r = g.get("/controller/shop/x", Some(&space)).await;
    assert_eq!(r.status, 200, "the user with a space was not touched");
    assert_eq!(sessions_of(g, "a+b@x.com").await[0].1, "revoked");
    assert_eq!(sessions_of(g, "a%2Bb%40x.com").await[0].1, "revoked");
    assert_eq!(sessions_of(g, "a%20b@x.com").await[0].1, "active");

    // A session id percent-encoded in an admin path is the same id.
    let (t, r) = g.login("a b@x.com", "pw").await;
    let sid = r.json()["session"]["id"].as_str().unwrap().to_owned();
    let encoded: String = sid.bytes().map(|b| format!("%{b:02X}")).collect();
    let r = g
        .admin_req("POST", &format!("/admin/sessions/{encoded}/revoke"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["session"]["id"], sid.as_str());
    assert_eq!(r.json()["session"]["status"], "revoked");
    let r = g.get("/controller/shop/x", Some(&t)).await;
    assert_eq!(r.error(), "session_revoked");
    // Not UTF-8 once decoded: a 400, not a lossy look-alike.
    let r = g.admin_req("POST", "/admin/users/%FF/revoke").await;
    assert_eq!((r.status, r.error()), (400, "bad_request".into()));

    // `/_session/{id}`: `+` is not a space, and no one's id.
    let (t, r) = g.login("a b@x.com", "pw").await;
    let sid = r.json()["session"]["id"].as_str().unwrap().to_owned();
    let r = g
        .send("DELETE", &format!("/_session/{sid}+"), Some(&t), "")
        .await;
    assert_eq!((r.status, r.error()), (404, "not_found".into()));
    let r = g
        .send("DELETE", &format!("/_session/{sid}%FF"), Some(&t), "")
        .await;
    assert_eq!((r.status, r.error()), (404, "not_found".into()));
    let r = g.post(&format!("/_session/{sid}/end"), Some(&t), "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["session"]["status"], "ended");
}

// ---------------------------------------------------- item 14: bounded hashing

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_beyond_the_hash_queue_gets_429_while_routes_answer() {
    // The standard users file: real argon2id parameters (19 MiB, t=2).
    let e = start(Opts {
        users: None,
        login: json!({"hashing": {"workers": 1, "queue": 2}}),
        ..Opts::default()
    })
    .await;
    let g = &e.gate;
    let bad = login_body("alice", "guess", json!({}));
    let flood: Vec<_> = (0..30)
        .map(|_| {
            let addr = g.addr;
            let raw = format!(
                "POST /_session/login HTTP/1.1\r\nHost: gate.test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{bad}",
                bad.len()
            );
            tokio::spawn(async move { http(addr, &raw).await.unwrap() })
        })
        .collect();
    // A public route is served meanwhile.
    let r = g.get("/public/x", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut busy = 0;
    let mut checked = 0;
    for task in flood {
        let r = task.await.unwrap();
        match r.status {
            429 => {
                busy += 1;
                assert_eq!(r.error(), "rate_limited");
                assert_eq!(r.header("retry-after"), Some("1"));
                assert_eq!(r.header("cache-control"), Some("no-store"));
            }
            _ => {
                checked += 1;
                assert_eq!((r.status, r.error()), (401, "bad_credentials".into()));
            }
        }
    }
    assert!(busy > 0, "no login was refused for a full queue");
    assert!(checked >= 3, "one running and two queued are always served");
    // The pool frees its places: a login afterwards is served.
    let (t, _) = g.login("alice", "wonderland").await;
    let r = g.get("/controller/shop/x", Some(&t)).await;
    assert_eq!(r.status, 200);
}
