//! Black-box tests of what an attacker at the edge can try (issue 9): upgrades
//! outside gateway routes, tickets hidden beside odd cookie bytes or left in
//! `Authorization`, absolute-form targets, underscore spellings of identity
//! headers, `;parameters` in paths, slow and idle connections. Each asserts
//! what the upstream did or did not receive.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::recording::*;
use crate::support::*;
use serde_json::{Value, json};
use std::net::SocketAddr;

/// Standard routes, plus a `rec` controller (required) and `rec-public` on
/// `upstream`.
fn routes_with(http: &Upstream, ws: &Upstream, rec: &Upstream) -> Value {
    let route = |name: &str, kind: &str, path: &str, up: SocketAddr, auth: &str| {
        json!({
            "name": name, "kind": kind, "path": path,
            "upstreams": [up.to_string()], "auth": auth,
        })
    };
    let mut all = routes(http.addr, ws.addr);
    if let Some(list) = all.as_array_mut() {
        list.extend([
            route("rec", "controller", "/rec", rec.addr, "required"),
            route(
                "rec-public",
                "controller",
                "/rec-public",
                rec.addr,
                "public",
            ),
            route(
                "rec-optional",
                "controller",
                "/rec-optional",
                rec.addr,
                "optional",
            ),
            route(
                "plain-gateway",
                "gateway",
                "/gateway/plain",
                http.addr,
                "public",
            ),
        ]);
    }
    all
}

// ---- 1. upgrades ------------------------------------------------------------------------

const WS_HEADERS: &str =
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_handshake_off_a_gateway_route_is_400_and_reaches_no_upstream() {
    let redis = Redis::spawn().await;
    let (http, ws) = (Upstream::http().await, Upstream::ws().await);
    let (rec, seen) = recording(OK).await;
    let gate = Gate::start(&Setup::redis(&redis).routes(routes_with(&http, &ws, &rec))).await;
    let (ticket, _) = gate.login("alice", "wonderland").await;
    for (path, upgrade, connection) in [
        ("/rec/x", "websocket", "Upgrade"),
        ("/rec/x", "foo, WebSocket", "keep-alive, upgrade"),
        ("/rec-public/x", "WEBSOCKET", "Upgrade"),
        ("/_session", "websocket", "Upgrade"),
        ("/_session/list", "websocket", "Upgrade"),
    ] {
        let r = gate
            .req(&format!(
                "GET {path} HTTP/1.1\r\nHost: gate.test\r\nAuthorization: Bearer {ticket}\r\nUpgrade: {upgrade}\r\nConnection: {connection}\r\n{WS_HEADERS}\r\n"
            ))
            .await;
        assert_eq!(
            (r.status, r.error()),
            (400, "bad_request".to_owned()),
            "{path} {upgrade}"
        );
    }
    assert!(recorded(&seen).is_empty(), "the upstream heard nothing");
    // The same request without the upgrade is served.
    let r = gate.get("/rec/x", Some(&ticket)).await;
    assert_eq!((r.status, r.text()), (200, "ok".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_upgrades_are_dropped_and_served_as_plain_http() {
    let redis = Redis::spawn().await;
    let (http, ws) = (Upstream::http().await, Upstream::ws().await);
    let (rec, _) = recording(OK).await;
    let gate = Gate::start(&Setup::redis(&redis).routes(routes_with(&http, &ws, &rec))).await;
    for path in ["/public/x", "/gateway/plain/x"] {
        // With a body, and a second request after it on the same connection:
        // both are plain HTTP all the way.
        let mut s = TcpStream::connect(gate.addr).await.unwrap();
        s.write_all(format!(
            "POST {path} HTTP/1.1\r\nHost: gate.test\r\nUpgrade: h2c, foo\r\nConnection: Upgrade, HTTP2-Settings, X-Drop\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nX-Drop: 1\r\nX-Keep: 2\r\nContent-Length: 5\r\n\r\nhello"
        ).as_bytes()).await.unwrap();
        let r = read_response(&mut s).await.unwrap();
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.json()["body"], "hello", "{path}");
        s.write_all(format!("GET {path}/next HTTP/1.1\r\nHost: gate.test\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let next = read_response(&mut s).await.unwrap();
        assert_eq!(
            (next.status, next.json()["path"].as_str()),
            (200, Some(format!("{path}/next").as_str()))
        );
        let h = r.upstream_headers();
        assert_eq!(h.get("upgrade"), None, "{path}");
        assert_eq!(h.get("http2-settings"), None, "{path}");
        assert_eq!(h.get("x-drop"), None, "{path}: still named in Connection");
        assert_eq!(h.get("x-keep").map(String::as_str), Some("2"), "{path}");
        assert!(
            h.get("connection")
                .is_none_or(|c| !c.to_ascii_lowercase().contains("upgrade")),
            "{path}: {h:?}"
        );
    }
}

/// Reads a 101 and echoes one masked text frame through the tunnel.
async fn echo_through(s: &mut TcpStream) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x82];
    frame.extend_from_slice(&mask);
    frame.extend(b"hi".iter().zip(mask).map(|(b, m)| b ^ m));
    s.write_all(&frame).await.unwrap();
    let mut back = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    back.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_may_be_one_token_of_an_upgrade_list() {
    let redis = Redis::spawn().await;
    let (http, ws) = (Upstream::http().await, Upstream::ws().await);
    let gate = Gate::start(&Setup::redis(&redis).routes(routes(http.addr, ws.addr))).await;
    let (ticket, _) = gate.login("alice", "wonderland").await;
    let mut s = TcpStream::connect(gate.addr).await.unwrap();
    s.write_all(format!(
        "GET /gateway/chat HTTP/1.1\r\nHost: gate.test\r\nOrigin: https://app.example.com\r\nAuthorization: Bearer {ticket}\r\nUpgrade: foo, WebSocket\r\nConnection: keep-alive, Upgrade\r\n{WS_HEADERS}\r\n"
    ).as_bytes()).await.unwrap();
    let r = read_response(&mut s).await.unwrap();
    assert_eq!(r.status, 101, "{}", r.text());
    assert_eq!(echo_through(&mut s).await, [0x81, 0x02, b'h', b'i']);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_answering_101_to_a_plain_request_gets_502_and_no_tunnel() {
    let redis = Redis::spawn().await;
    let (http, ws) = (Upstream::http().await, Upstream::ws().await);
    let (rec, seen) = recording(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nTUNNEL-BYTES",
    )
    .await;
    let gate = Gate::start(&Setup::redis(&redis).routes(routes_with(&http, &ws, &rec))).await;
    for extra in ["", "Upgrade: h2c\r\nConnection: Upgrade\r\n"] {
        let mut s = TcpStream::connect(gate.addr).await.unwrap();
        s.write_all(
            format!("GET /rec-public/x HTTP/1.1\r\nHost: gate.test\r\n{extra}\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let r = read_response(&mut s).await.unwrap();
        assert_eq!(
            (r.status, r.error()),
            (502, "upstream_unavailable".to_owned()),
            "{extra:?}"
        );
        // Nothing the upstream sent after its 101 reaches the client, and the
        // connection is not a tunnel: what the client sends next goes nowhere.
        let _ = s.write_all(b"hello upstream").await;
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
        assert!(
            !String::from_utf8_lossy(&rest).contains("TUNNEL"),
            "{rest:?}"
        );
    }
    let heads = recorded(&seen);
    assert_eq!(heads.len(), 2);
    for head in &heads {
        let lines = header_lines(head);
        assert!(
            values(&lines, "upgrade").is_empty(),
            "{}",
            String::from_utf8_lossy(head)
        );
    }
}

// ---- 3. cookies ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ticket_cookie_is_removed_whatever_bytes_sit_beside_it() {
    let redis = Redis::spawn().await;
    let (http, ws) = (Upstream::http().await, Upstream::ws().await);
    let (rec, seen) = recording(OK).await;
    let setup = Setup::redis(&redis)
        .routes(routes_with(&http, &ws, &rec))
        .patch(json!({"tickets": {"cookie": {"secure": true}}}));
    let gate = Gate::start(&setup).await;
    let (ticket, login) = gate.login("alice", "wonderland").await;
    assert!(
        login
            .header("set-cookie")
            .unwrap()
            .starts_with("__Host-sg_ticket=")
    );
    for path in ["/rec/x", "/rec-public/x"] {
        let mut raw =
            format!("GET {path} HTTP/1.1\r\nHost: gate.test\r\nCookie: pref=caf").into_bytes();
        raw.extend_from_slice(b"\xe9; __Host-sg_ticket=");
        raw.extend_from_slice(ticket.as_bytes());
        raw.extend_from_slice(b"; x=\xff\xfe\r\nCookie: sg_ticket=");
        raw.extend_from_slice(ticket.as_bytes());
        raw.extend_from_slice(b"; lang=\xc3\xa9\r\nCookie: theme=dark\r\n\r\n");
        let r = http_bytes(gate.addr, &raw).await.unwrap();
        assert_eq!(
            (r.status, r.text()),
            (200, "ok".to_owned()),
            "{path}: the cookie ticket admits"
        );
    }
    let heads = recorded(&seen);
    assert_eq!(heads.len(), 2);
    for head in &heads {
        let lines = header_lines(head);
        let cookies = values(&lines, "cookie");
        assert_eq!(
            cookies,
            [
                &b"pref=caf\xe9; x=\xff\xfe"[..],
                b"lang=\xc3\xa9",
                b"theme=dark"
            ],
            "{}",
            String::from_utf8_lossy(head)
        );
        assert!(!head.windows(ticket.len()).any(|w| w == ticket.as_bytes()));
    }
}

// ---- 4. Bearer tickets ----------------------------------------------------------------------

/// A ticket signed with the test key, expired an hour ago.
fn expired_ticket() -> String {
    use sessiongate::ticket::{Claims, Key, KeyRing};
    let secret = sessiongate::ticket::decode_secret(SECRET).unwrap();
    let ring = KeyRing::new(vec![Key::new("k1", secret)], "sessiongate".into(), 5);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = Claims {
        iss: "sessiongate".into(),
        sid: sessiongate::ticket::new_session_id("u-alice"),
        sub: "u-alice".into(),
        name: "Alice".into(),
        roles: vec!["player".into()],
        vars: Default::default(),
        iat: now - 7200,
        exp: now - 3600,
    };
    ring.sign(&claims).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_ticket_in_authorization_is_never_forwarded() {
    let mut redis = Redis::spawn().await;
    let (http, ws) = (Upstream::http().await, Upstream::ws().await);
    let (rec, seen) = recording(OK).await;
    let setup = Setup::redis(&redis)
        .routes(routes_with(&http, &ws, &rec))
        .patch(json!({"store": {"cache": "0s"}}));
    let gate = Gate::start(&setup).await;
    let (live, _) = gate.login("alice", "wonderland").await;
    let (ended, _) = gate.login("bob", "builder").await;
    assert_eq!(
        gate.post("/_session/logout", Some(&ended), "").await.status,
        204
    );
    let expired = expired_ticket();
    let get = |path: &str, auth: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: gate.test\r\nAuthorization: {auth}\r\n\r\n")
    };
    for (path, auth) in [
        ("/rec-public/x", format!("Bearer {live}")),
        ("/rec-public/x", format!("bearer {expired}")),
        ("/rec-optional/x", format!("Bearer {ended}")),
        ("/rec-optional/x", format!("Bearer {expired}")),
    ] {
        let r = gate.req(&get(path, &auth)).await;
        assert_eq!(r.status, 200, "{path} {auth:.20}");
    }
    // Store down: the optional route admits anonymously, still without the ticket.
    redis.kill();
    let r = gate
        .req(&get("/rec-optional/x", &format!("Bearer {live}")))
        .await;
    assert_eq!(r.status, 200);
    // Not the gate's tickets: they pass through.
    let foreign = live.replacen('.', ".x", 1);
    for auth in [
        "Basic dXNlcjpwYXNz",
        "Bearer not-a-ticket",
        &format!("Bearer {foreign}"),
    ] {
        assert_eq!(gate.req(&get("/rec-public/x", auth)).await.status, 200);
    }
    let heads = recorded(&seen);
    assert_eq!(heads.len(), 8);
    for head in &heads[..5] {
        let lines = header_lines(head);
        assert!(
            values(&lines, "authorization").is_empty(),
            "{}",
            String::from_utf8_lossy(head)
        );
    }
    let passed: Vec<Vec<u8>> = heads[5..]
        .iter()
        .map(|h| values(&header_lines(h), "authorization").concat())
        .collect();
    assert_eq!(
        passed,
        [
            b"Basic dXNlcjpwYXNz".to_vec(),
            b"Bearer not-a-ticket".to_vec(),
            format!("Bearer {foreign}").into_bytes()
        ]
    );
}

// ---- 5. absolute-form targets ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_target_routes_by_its_authority() {
    let redis = Redis::spawn().await;
    let http = Upstream::http().await;
    let routes = {
        let h = http.addr;
        serde_json::json!([{"name": "hostonly", "kind": "controller", "host": "api.example.com", "path": "/hostonly", "upstreams": [h.to_string()], "auth": "public"}, {"name": "anyhost", "kind": "controller", "path": "/hostonly", "upstreams": [h.to_string()], "auth": "required"}])
    };
    let gate = Gate::start(&Setup::redis(&redis).routes(routes)).await;
    for raw in [
        "GET http://api.example.com/hostonly/secret?q=1 HTTP/1.1\r\n\r\n",
        "GET http://api.example.com/hostonly/secret?q=1 HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
        // The same server in other bytes: case, the default port.
        "GET http://API.Example.COM/hostonly/secret?q=1 HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
        "GET http://api.example.com:80/hostonly/secret?q=1 HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
    ] {
        let r = gate.req(raw).await;
        assert_eq!(r.status, 200, "{raw:?}: {}", r.text());
        let body = r.json();
        assert_eq!(body["path"], "/hostonly/secret", "origin-form upstream");
        assert_eq!(body["query"], "q=1");
        assert_eq!(
            r.upstream_headers().get("host").map(String::as_str),
            Some("api.example.com")
        );
    }
    // Without the authority, the host-less route's policy applies.
    let r = gate
        .req("GET /hostonly/secret HTTP/1.1\r\nHost: other.example.com\r\n\r\n")
        .await;
    assert_eq!((r.status, r.error()), (401, "missing_ticket".to_owned()));
    // Authority and Host disagree, or neither is there: 400, and nothing is forwarded.
    for raw in [
        "GET http://api.example.com/hostonly/secret HTTP/1.1\r\nHost: other.example.com\r\n\r\n",
        "GET http://other.example.com/hostonly/secret HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
        "GET /hostonly/secret HTTP/1.1\r\n\r\n",
        "GET /hostonly/secret HTTP/1.0\r\n\r\n",
        "GET ftp://api.example.com/hostonly/secret HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
    ] {
        let r = gate.req(raw).await;
        assert_eq!(
            (r.status, r.error()),
            (400, "bad_request".to_owned()),
            "{raw:?}"
        );
    }
}

// ---- 6. underscore spellings -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_spelled_with_underscores_are_stripped() {
    let redis = Redis::spawn().await;
    let (http, ws) = (Upstream::http().await, Upstream::ws().await);
    let (rec, seen) = recording(OK).await;
    let gate = Gate::start(&Setup::redis(&redis).routes(routes_with(&http, &ws, &rec))).await;
    let (ticket, _) = gate.login("bob", "builder").await;
    let forged = "X_Session_User: u-admin\r\nx_session-roles: admin\r\nX-SESSION_ID: forged\r\nx_SESSION_var_tier: platinum\r\nX-Session_Extra: 1\r\nX-Sessionx: kept\r\n";
    for (path, auth) in [
        ("/rec/x", format!("Authorization: Bearer {ticket}\r\n")),
        ("/rec-public/x", String::new()),
    ] {
        let r = gate
            .req(&format!(
                "GET {path} HTTP/1.1\r\nHost: gate.test\r\n{auth}{forged}\r\n"
            ))
            .await;
        assert_eq!(r.status, 200, "{path}");
    }
    let heads = recorded(&seen);
    assert_eq!(heads.len(), 2);
    let names = |head: &[u8]| -> Vec<String> {
        header_lines(head)
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| n.replace('_', "-").starts_with("x-session"))
            .collect()
    };
    let authed = header_lines(&heads[0]);
    assert_eq!(values(&authed, "x-session-user"), [&b"u-bob"[..]]);
    assert_eq!(values(&authed, "x-session-roles"), [&b""[..]]);
    let mut got = names(&heads[0]);
    got.sort();
    assert_eq!(
        got,
        [
            "x-session-id",
            "x-session-name",
            "x-session-roles",
            "x-session-user",
            "x-sessionx"
        ]
    );
    assert_eq!(
        names(&heads[1]),
        ["x-sessionx"],
        "public: nothing injected, forgeries gone"
    );
}

// ---- 7. path parameters -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_parameters_do_not_dodge_a_protected_route() {
    let redis = Redis::spawn().await;
    let http = Upstream::http().await;
    let routes = {
        let h = http.addr;
        serde_json::json!([{"name": "root", "kind": "controller", "path": "/", "upstreams": [h.to_string()], "auth": "public"}, {"name": "admin", "kind": "controller", "path": "/admin", "upstreams": [h.to_string()], "auth": "required"}, {"name": "shop", "kind": "controller", "path": "/controller/shop", "strip_prefix": true, "upstreams": [h.to_string()], "auth": "required"}])
    };
    let gate = Gate::start(&Setup::redis(&redis).routes(routes)).await;
    for path in [
        "/admin;jsessionid=x/secret",
        "/admin;/secret",
        "/admin%3Bx/secret",
        "/;x/admin/secret",
        "/admin;x",
    ] {
        let r = gate.get(path, None).await;
        assert_eq!(
            (r.status, r.error()),
            (401, "missing_ticket".to_owned()),
            "{path}"
        );
    }
    let (ticket, _) = gate.login("alice", "wonderland").await;
    let r = gate.get("/admin;jsessionid=x/secret", Some(&ticket)).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["path"],
        "/admin;jsessionid=x/secret",
        "parameters travel on"
    );
    let r = gate
        .get("/controller;a/shop;b/items;c?q=1", Some(&ticket))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["path"],
        "/items;c",
        "the prefix's segments go, params and all"
    );
    assert_eq!(r.json()["query"], "q=1");
    let r = gate.get("/public;x/..%3Bx/admin", None).await;
    assert_eq!((r.status, r.error()), (400, "bad_request".to_owned()));
}

// ---- 8. slow and idle connections -------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// Starts a head and trickles it a byte at a time.
    Trickle,
    /// Connects and sends nothing.
    Silent,
    /// One request, then idle on the kept-alive connection.
    Idle,
}

#[derive(Debug)]
struct Cut {
    hold: Hold,
    /// From the start of what the deadline times to the close.
    after: Duration,
    answer: Vec<u8>,
}

/// Holds one connection as `hold` says until the gate closes it.
async fn hold(hold: Hold, gate: std::net::SocketAddr, ready: tokio::sync::mpsc::Sender<()>) -> Cut {
    let mut s = TcpStream::connect(gate).await.unwrap();
    let mut started = Instant::now();
    match hold {
        Hold::Trickle => s
            .write_all(b"GET /public/x HTTP/1.1\r\nHost: gate.test\r\nX-Slow: ")
            .await
            .unwrap(),
        Hold::Silent => {}
        Hold::Idle => {
            s.write_all(b"GET /public/x HTTP/1.1\r\nHost: gate.test\r\n\r\n")
                .await
                .unwrap();
            assert_eq!(read_response(&mut s).await.unwrap().status, 200);
            started = Instant::now();
        }
    }
    let _ = ready.send(()).await;
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    // The attacker's pace, not a synchronization: a byte every 500 ms.
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            n = s.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            },
            _ = tick.tick(), if hold == Hold::Trickle => {
                if s.write_all(b"a").await.is_err() {
                    // Closed: read what was sent before.
                    let _ = s.read_to_end(&mut answer).await;
                    break;
                }
            }
        }
    }
    Cut {
        hold,
        after: started.elapsed(),
        answer,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_slow_or_idle_connections_are_cut_by_their_deadlines() {
    const HEADER: Duration = Duration::from_secs(4);
    const KEEPALIVE: Duration = Duration::from_secs(5);
    const SLACK: Duration = Duration::from_secs(3);
    let redis = Redis::spawn().await;
    let http = Upstream::http().await;
    let routes = serde_json::json!([{"name": "public", "kind": "controller", "path": "/public", "upstreams": [http.addr.to_string()], "auth": "public"}]);
    let setup = Setup::redis(&redis)
        .routes(routes)
        .server(json!({"header_timeout": "4s", "keepalive_timeout": "5s"}));
    let gate = Gate::start(&setup).await;
    let (ready_tx, mut ready) = tokio::sync::mpsc::channel(2000);
    let mut held = Vec::new();
    for i in 0..2000 {
        let kind = match i % 3 {
            0 => Hold::Trickle,
            1 => Hold::Silent,
            _ => Hold::Idle,
        };
        let bound = if kind == Hold::Idle {
            KEEPALIVE
        } else {
            HEADER
        } + SLACK
            + Duration::from_secs(10);
        held.push(tokio::spawn(tokio::time::timeout(
            bound,
            hold(kind, gate.addr, ready_tx.clone()),
        )));
    }
    drop(ready_tx);
    for _ in 0..2000 {
        tokio::time::timeout(Duration::from_secs(20), ready.recv())
            .await
            .expect("every connection set up in time")
            .expect("a holder failed to set up");
    }
    // Meanwhile a normal client is served, on fresh connections and on one kept alive.
    let served = Instant::now();
    let mut keep = TcpStream::connect(gate.addr).await.unwrap();
    for _ in 0..5 {
        assert_eq!(gate.get("/public/x", None).await.status, 200);
        keep.write_all(b"GET /public/x HTTP/1.1\r\nHost: gate.test\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(&mut keep).await.unwrap().status, 200);
    }
    let served = served.elapsed();
    assert!(
        served < Duration::from_secs(3),
        "normal requests took {served:?}"
    );
    let mut cuts = Vec::new();
    for h in held {
        cuts.push(
            h.await
                .unwrap()
                .expect("a connection outlived its deadline"),
        );
    }
    for cut in &cuts {
        let deadline = if cut.hold == Hold::Idle {
            KEEPALIVE
        } else {
            HEADER
        };
        assert!(
            // The holder's clock starts a little after the gate's (its task
            // shares two cores with 1,999 others), hence a second's leeway.
            cut.after + Duration::from_secs(1) >= deadline && cut.after <= deadline + SLACK,
            "{:?} cut after {:?}, deadline {deadline:?}",
            cut.hold,
            cut.after
        );
        match cut.hold {
            Hold::Trickle => assert!(
                cut.answer.starts_with(b"HTTP/1.1 408 "),
                "{:?}",
                String::from_utf8_lossy(&cut.answer)
            ),
            Hold::Silent | Hold::Idle => assert!(cut.answer.is_empty(), "{:?}", cut.answer),
        }
    }
    assert_eq!(cuts.len(), 2000);
    // The gate is unharmed.
    assert_eq!(gate.get("/public/x", None).await.status, 200);
}
