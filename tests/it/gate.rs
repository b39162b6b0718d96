//! Black-box tests of the proxy path: routing, auth per route, identity
//! headers, limits and upstream failures, against the real binary, a real
//! redis-server and real upstream servers.

use std::time::Duration;

use crate::support::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_route_without_ticket_is_401_missing_ticket() {
    let (_r, _h, _w, gate) = standard_gate(json!({})).await;
    let r = gate.get("/controller/shop/items", None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.error(), "missing_ticket");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(r.header("content-type"), Some("application/json"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_or_garbage_tickets_are_401_invalid_ticket() {
    let (_r, _h, _w, gate) = standard_gate(json!({})).await;
    let (ticket, _) = gate.login("alice", "wonderland").await;
    let mut tampered = ticket.clone().into_bytes();
    let i = tampered.len() - 3;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let none_alg = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzaWQiOiJ4In0.";
    let huge = "a".repeat(9000);
    for bad in [
        tampered.as_str(),
        "garbage",
        none_alg,
        "a.b.c",
        huge.as_str(),
    ] {
        let r = gate.get("/controller/shop/items", Some(bad)).await;
        assert_eq!(r.status, 401, "ticket {bad:.40}");
        assert_eq!(r.error(), "invalid_ticket");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
    // The good ticket still works afterwards: bad input harmed nothing.
    assert_eq!(
        gate.get("/controller/shop/items", Some(&ticket))
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_ticket_reaches_upstream_with_identity_headers() {
    let (_r, _h, _w, gate) = standard_gate(json!({})).await;
    let (ticket, login) = gate.login("alice", "wonderland").await;
    let sid = login.json()["session"]["id"].as_str().unwrap().to_owned();
    let r = gate.get("/controller/shop/items?x=1", Some(&ticket)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["path"], "/items", "strip_prefix");
    assert_eq!(body["query"], "x=1");
    let h = r.upstream_headers();
    assert_eq!(h.get("x-session-id"), Some(&sid));
    assert_eq!(h.get("x-session-user").map(String::as_str), Some("u-alice"));
    assert_eq!(h.get("x-session-name").map(String::as_str), Some("Alice"));
    assert_eq!(h.get("x-session-roles").map(String::as_str), Some("player"));
    assert_eq!(
        h.get("x-session-var-tier").map(String::as_str),
        Some("gold")
    );
    assert_eq!(
        h.get("x-forwarded-for").map(String::as_str),
        Some("127.0.0.1")
    );
    assert_eq!(h.get("x-forwarded-proto").map(String::as_str), Some("http"));
    assert_eq!(
        h.get("x-forwarded-host").map(String::as_str),
        Some("gate.test")
    );
    assert_eq!(
        h.get("authorization"),
        None,
        "the ticket is not passed upstream"
    );
    // An Authorization header that is not the gate's ticket passes through.
    let r = gate
        .req("GET /public/x HTTP/1.1\r\nHost: gate.test\r\nAuthorization: Basic dXNlcjpwYXNz\r\n\r\n")
        .await;
    assert_eq!(
        r.upstream_headers()
            .get("authorization")
            .map(String::as_str),
        Some("Basic dXNlcjpwYXNz")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_identity_headers_are_stripped_in_any_case() {
    let (_r, _h, _w, gate) = standard_gate(json!({})).await;
    let (ticket, _) = gate.login("bob", "builder").await;
    let r = gate
        .req(&format!(
            "GET /controller/shop/x HTTP/1.1\r\nHost: gate.test\r\nAuthorization: Bearer {ticket}\r\nx-session-user: u-admin\r\nX-SESSION-ROLES: admin\r\nX-Session-Var-Tier: platinum\r\nX-Session-Extra: 1\r\n\r\n"
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let h = r.upstream_headers();
    assert_eq!(h.get("x-session-user").map(String::as_str), Some("u-bob"));
    assert_eq!(h.get("x-session-roles").map(String::as_str), Some(""));
    assert_eq!(h.get("x-session-var-tier"), None);
    assert_eq!(h.get("x-session-extra"), None);
    // On a public route forged headers are stripped as well, and nothing is injected.
    let r = gate
        .req("GET /public/x HTTP/1.1\r\nHost: gate.test\r\nX-Session-User: u-admin\r\n\r\n")
        .await;
    assert_eq!(r.status, 200);
    assert!(
        r.upstream_headers()
            .keys()
            .all(|k| !k.starts_with("x-session-"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_header_cannot_remove_injected_identity() {
    let (_r, _h, _w, gate) = standard_gate(json!({})).await;
    let (ticket, _) = gate.login("alice", "wonderland").await;
    let r = gate
        .req(&format!(
            "GET /controller/shop/x HTTP/1.1\r\nHost: gate.test\r\nAuthorization: Bearer {ticket}\r\nConnection: keep-alive, X-Session-User, X-Session-Id\r\n\r\n"
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let h = r.upstream_headers();
    assert_eq!(h.get("x-session-user").map(String::as_str), Some("u-alice"));
    assert!(h.contains_key("x-session-id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticket_cookie_is_accepted_and_never_forwarded() {
    let (_r, _h, _w, gate) = standard_gate(json!({})).await;
    let (ticket, login) = gate.login("alice", "wonderland").await;
    let set_cookie = login.header("set-cookie").unwrap().to_owned();
    assert!(
        set_cookie.starts_with(&format!("sg_ticket={ticket}")),
        "{set_cookie}"
    );
    assert!(set_cookie.contains("HttpOnly"));
    assert!(set_cookie.contains("Path=/"));
    let r = gate
        .req(&format!(
            "GET /controller/shop/x HTTP/1.1\r\nHost: gate.test\r\nCookie: theme=dark\r\nCookie: sg_ticket={ticket}; lang=en\r\n\r\n"
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let h = r.upstream_headers();
    let cookies = h.get("cookie").cloned().unwrap_or_default();
    assert!(!cookies.contains("sg_ticket"), "{cookies}");
    assert!(
        cookies.contains("theme=dark") && cookies.contains("lang=en"),
        "{cookies}"
    );
    assert_eq!(h.get("x-session-user").map(String::as_str), Some("u-alice"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_ticket_only_counts_on_websocket_handshakes() {
    let (_r, _h, _w, gate) = standard_gate(json!({})).await;
    let (ticket, _) = gate.login("alice", "wonderland").await;
    let r = gate
        .get(&format!("/controller/shop/x?ticket={ticket}"), None)
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.error(), "missing_ticket");
    // On a public route the ticket parameter is removed before forwarding.
    let r = gate
        .get(&format!("/public/x?a=1&ticket={ticket}&b=2"), None)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["query"], "a=1&b=2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_gate_routes_with_403_forbidden() {
    let (_r, _h, _w, gate) = standard_gate(json!({})).await;
    let (ticket, _) = gate.login("alice", "wonderland").await;
    let r = gate.get("/admin/panel", Some(&ticket)).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.error(), "forbidden");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_route_admits_anonymous_and_identifies_ticket_holders() {
    let (_r, _h, _w, gate) = standard_gate(json!({})).await;
    let r = gate.get("/maybe/x", None).await;
    assert_eq!(r.status, 200);
    assert!(!r.upstream_headers().contains_key("x-session-id"));
    let r = gate.get("/maybe/x", Some("garbage")).await;
    assert_eq!(r.status, 200);
    let (ticket, _) = gate.login("alice", "wonderland").await;
    let r = gate.get("/maybe/x", Some(&ticket)).await;
    assert_eq!(
        r.upstream_headers()
            .get("x-session-user")
            .map(String::as_str),
        Some("u-alice")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_are_404_no_route_and_segments_match_whole() {
    let (_r, _h, _w, gate) = standard_gate(json!({})).await;
    for p in ["/nowhere", "/publicity", "/controller/shopping"] {
        let r = gate.get(p, None).await;
        assert_eq!(r.status, 404, "{p}");
        assert_eq!(r.error(), "no_route");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_cannot_escape_a_public_prefix() {
    let (_r, _h, _w, gate) = standard_gate(json!({})).await;
    for p in [
        "/public/../admin/panel",
        "/public/%2e%2e/admin/panel",
        "/public/./../admin/panel",
        "//public/..//admin/panel",
    ] {
        let r = gate.get(p, None).await;
        assert_eq!(r.status, 401, "{p} must land on the protected route");
        assert_eq!(r.error(), "missing_ticket", "{p}");
    }
    let r = gate.get("/public/..%2fadmin/panel", None).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error(), "bad_request");
    let r = gate.get("/public/a/../b", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["path"],
        "/public/b",
        "the upstream sees the normalized path"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_uri_and_headers_get_414_and_431() {
    let (_r, _h, _w, gate) = standard_gate(json!({})).await;
    let long = format!("/public/{}", "a".repeat(9000));
    let r = gate.get(&long, None).await;
    assert_eq!(r.status, 414);
    assert_eq!(r.error(), "uri_too_long");
    let big = "b".repeat(8000);
    let mut raw = String::from("GET /public/x HTTP/1.1\r\nHost: gate.test\r\n");
    for i in 0..10 {
        raw.push_str(&format!("X-Big-{i}: {big}\r\n"));
    }
    raw.push_str("\r\n");
    let r = gate.req(&raw).await;
    assert_eq!(r.status, 431);
    assert_eq!(r.error(), "headers_too_large");
    // The gate is unharmed.
    assert_eq!(gate.get("/public/x", None).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upstream_is_502_and_hanging_upstream_is_504() {
    let redis = Redis::spawn().await;
    let hang = Upstream::hanging().await;
    let dead = free_port();
    let routes = serde_json::json!([{"name": "dead", "kind": "controller", "path": "/dead", "upstreams": [format!("127.0.0.1:{dead}")], "auth": "public"}, {"name": "slow", "kind": "controller", "path": "/slow", "upstreams": [hang.addr.to_string()], "auth": "public", "timeout": "500ms"}]);
    let gate = Gate::start(&Setup::redis(&redis).routes(routes)).await;
    let r = gate.get("/dead/x", None).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.error(), "upstream_unavailable");
    let started = std::time::Instant::now();
    let r = gate.get("/slow/x", None).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.error(), "upstream_timeout");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_and_skips_a_dead_upstream() {
    let redis = Redis::spawn().await;
    // Each upstream answers with its own name, so the spread can be counted.
    let named = |name: &'static str| {
        Upstream::custom(move |mut s| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buf = [0u8; 4096];
            let mut head = Vec::new();
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    return;
                }
                head.extend_from_slice(&buf[..n]);
                while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                    head.drain(..end + 4);
                    let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n{name}");
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            }
        })
    };
    let a = named("a").await;
    let b = named("b").await;
    let dead = free_port();
    let routes = serde_json::json!([{"name": "rr", "kind": "controller", "path": "/rr", "upstreams": [a.addr.to_string(), format!("127.0.0.1:{dead}"), b.addr.to_string()], "auth": "public"}]);
    let gate = Gate::start(&Setup::redis(&redis).routes(routes)).await;
    let mut served = std::collections::BTreeMap::new();
    for _ in 0..9 {
        let r = gate.get("/rr/x", None).await;
        assert_eq!(
            r.status, 200,
            "a dead upstream must be retried on the next one"
        );
        *served.entry(r.text()).or_insert(0) += 1;
    }
    // Round robin over three with one dead: each live one gets a third, or
    // the dead one's third as well; never all nine.
    let (on_a, on_b) = (
        served.get("a").copied().unwrap_or(0),
        served.get("b").copied().unwrap_or(0),
    );
    assert_eq!(on_a + on_b, 9, "{served:?}");
    assert!(on_a >= 2 && on_b >= 2, "not spread: {served:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_is_503_with_retry_after_and_recovers() {
    let mut redis = Redis::spawn().await;
    let port = redis.port;
    let http = Upstream::http().await;
    let ws = Upstream::ws().await;
    let gate = Gate::start(&Setup::redis(&redis).routes(routes(http.addr, ws.addr))).await;
    let (ticket, _) = gate.login("alice", "wonderland").await;
    assert_eq!(
        gate.get("/controller/shop/x", Some(&ticket)).await.status,
        200
    );
    redis.kill();
    // Past the liveness cache the outage shows as 503, never as a 401 or a cleared cookie.
    let r = eventually(Duration::from_secs(5), || async {
        let r = gate.get("/controller/shop/x", Some(&ticket)).await;
        (r.status == 503).then_some(r)
    })
    .await
    .expect("503 during the outage");
    assert_eq!(r.error(), "store_unavailable");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(r.header("set-cookie").is_none());
    let r = gate.get("/_session", Some(&ticket)).await;
    assert_eq!(r.status, 503);
    assert!(r.header("set-cookie").is_none());
    // Public routes do not need the store.
    assert_eq!(gate.get("/public/x", None).await.status, 200);
    // Redis returns (empty: the session is gone, so the old ticket is invalid; a new login works).
    let _redis2 = Redis::spawn_on(port).await;
    let (t2, _) = eventually(Duration::from_secs(10), || async {
        let r = gate
            .post(
                "/_session/login",
                None,
                r#"{"username":"alice","password":"wonderland"}"#,
            )
            .await;
        (r.status == 201).then(|| (r.json()["ticket"].as_str().unwrap().to_owned(), ()))
    })
    .await
    .expect("gate recovers when redis returns");
    assert_eq!(gate.get("/controller/shop/x", Some(&t2)).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_survives_a_refusal() {
    let (_r, _h, _w, gate) = standard_gate(json!({})).await;
    let mut s = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    s.write_all(b"GET /controller/shop/x HTTP/1.1\r\nHost: g\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut s).await.unwrap();
    assert_eq!(r.status, 401);
    s.write_all(b"GET /public/x HTTP/1.1\r\nHost: g\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut s).await.unwrap();
    assert_eq!(r.status, 200, "same connection serves the next request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_mode_admits_recently_seen_sessions_through_an_outage() {
    let mut redis = Redis::spawn().await;
    let http = Upstream::http().await;
    let ws = Upstream::ws().await;
    let setup = Setup::redis(&redis)
        .routes(routes(http.addr, ws.addr))
        .patch(json!({"store": {"on_unavailable": "grace", "grace": "30s"}}));
    let gate = Gate::start(&setup).await;
    let (seen, _) = gate.login("alice", "wonderland").await;
    let (unseen, _) = gate.login("bob", "builder").await;
    assert_eq!(
        gate.get("/controller/shop/x", Some(&seen)).await.status,
        200
    );
    redis.kill();
    // Past the 1 s cache, the seen session is still admitted; the unseen one gets 503.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        gate.get("/controller/shop/x", Some(&seen)).await.status,
        200
    );
    let r = gate.get("/controller/shop/x", Some(&unseen)).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.error(), "store_unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400_and_harm_nothing() {
    let (_r, _h, _w, gate) = standard_gate(json!({})).await;
    let (ticket, _) = gate.login("alice", "wonderland").await;
    let huge = format!(
        "GET /public/x HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1_100_000)
    );
    for raw in [
        "GET /public/x HTTP/1.1\r\nHost: x\r\nBadHeaderNoColon\r\n\r\n",
        "GET /public/x HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n",
        "BLAH\r\n\r\n",
        "GET /public/x HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        "GET /public/x HTTP/1.1\r\nHost: x\r\nConnection: X-Forwarded-For\r\n\r\n",
        huge.as_str(),
    ] {
        let r = http(gate.addr, raw)
            .await
            .expect("an answer, not a dropped connection");
        assert_eq!(r.status, 400, "{raw:.60}");
    }
    // Everyone else is unaffected.
    assert_eq!(
        gate.get("/controller/shop/x", Some(&ticket)).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_is_followed() {
    let set = SentinelSet::spawn().await;
    let http = Upstream::http().await;
    let ws = Upstream::ws().await;
    let setup = Setup::redis(&set.master)
        .routes(routes(http.addr, ws.addr))
        .store(set.store());
    let gate = Gate::start(&setup).await;
    let (before, _) = gate.login("alice", "wonderland").await;
    assert_eq!(
        gate.get("/controller/shop/x", Some(&before)).await.status,
        200
    );

    // Known is not yet promotable: until the Sentinel has seen the replica's
    // link up it answers NOGOODSLAVE, so the failover is asked until taken.
    let asked = eventually(Duration::from_secs(20), || {
        let mut con = set.con.clone();
        async move {
            redis::cmd("SENTINEL")
                .arg("FAILOVER")
                .arg("mymaster")
                .query_async::<redis::Value>(&mut con)
                .await
                .ok()
        }
    })
    .await;
    assert!(asked.is_some(), "the Sentinel never took the failover");
    let replica_port = set.replica.port.to_string();
    let promoted = eventually(Duration::from_secs(20), || async {
        (set.master_port().await? == replica_port).then_some(())
    })
    .await;
    assert!(promoted.is_some(), "failover did not happen");
    // Writes (a login) reach the new master, and the session written before
    // the failover was replicated: its ticket still works.
    let after = gate
        .login_within("bob", "builder", Duration::from_secs(10))
        .await
        .expect("login after failover");
    assert_eq!(
        gate.get("/controller/shop/x", Some(&after)).await.status,
        200
    );
    assert_eq!(
        gate.get("/controller/shop/x", Some(&before)).await.status,
        200
    );
}

/// A Sentinel master frozen with SIGSTOP (it keeps its connections open and
/// answers nothing, unlike a killed one): the Sentinels fail over to the
/// replica, both gates follow within seconds — commands and the event
/// subscription alike — and a revoke on one gate still closes a WebSocket
/// on the other within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_sentinel_master_is_left_for_its_replica_on_every_gate() {
    let set = SentinelSet::spawn().await;
    let http = Upstream::http().await;
    let ws = Upstream::ws().await;
    let setup = Setup::redis(&set.master)
        .routes(routes(http.addr, ws.addr))
        .store(set.store());
    let gate = Gate::start(&setup).await;
    let other = Gate::start(&setup).await;
    let (alice, _) = gate.login("alice", "wonderland").await;
    let mut chat = open_chat(&other, &alice).await;
    // Replication is asynchronous: the login must be on the replica first.
    assert!(
        wait_replicated(&set.master).await,
        "the replica never caught up"
    );

    set.master.signal("STOP");
    let promoted = eventually(Duration::from_secs(30), || async {
        (set.master_port().await? == set.replica.port.to_string()).then_some(())
    })
    .await;
    assert!(promoted.is_some(), "the Sentinel never failed over");
    let switched = std::time::Instant::now();
    // Both gates write to the new master (a login each) and read what was
    // replicated (alice's session).
    for g in [&gate, &other] {
        let r = eventually(Duration::from_secs(10), || async {
            (g.try_login("bob", "builder").await.status == 201).then_some(())
        })
        .await;
        assert!(r.is_some(), "no login within 10 s of the switch");
    }
    let served = switched.elapsed();
    assert!(
        served < Duration::from_secs(5),
        "served {served:?} after the switch"
    );
    assert_eq!(
        gate.get("/controller/shop/x", Some(&alice)).await.status,
        200
    );
    // Both gates' event subscriptions left the frozen master for the new one.
    let subscribed = eventually(Duration::from_secs(10), || async {
        (subscribers(&set.replica.client(), "sg:events").await? >= 2).then_some(())
    })
    .await;
    assert!(
        subscribed.is_some(),
        "the gates did not resubscribe to the new master"
    );

    let revoked = std::time::Instant::now();
    let r = gate.admin_req("POST", "/admin/users/u-alice/revoke").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let closed = close_of(&mut chat, Duration::from_secs(2)).await;
    assert_eq!(closed, Some((4401, "session revoked".to_owned())));
    assert!(
        revoked.elapsed() < Duration::from_secs(1),
        "{:?}",
        revoked.elapsed()
    );
    let r = other.get("/controller/shop/x", Some(&alice)).await;
    assert_eq!((r.status, r.error()), (401, "session_revoked".to_owned()));
    set.master.signal("CONT");
}

/// `rediss://` with the CA given in `store.tls.ca_file`: the gate works over
/// TLS; without the CA (system roots only) the server is not trusted and
/// session calls answer 503, not a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_is_verified_against_the_configured_ca() {
    let redis = RedisTls::spawn().await;
    let http = Upstream::http().await;
    let store = |tls: Value| {
        let mut store = json!({"kind": "redis", "url": redis.url(), "timeout": "500ms"});
        if !tls.is_null() {
            store["tls"] = tls;
        }
        Setup::memory().store(store)
    };
    let trusted = store(json!({"ca_file": redis.ca}));
    let gate = Gate::start(&trusted.routes(routes(http.addr, http.addr))).await;
    let (ticket, _) = gate.login("alice", "wonderland").await;
    assert_eq!(
        gate.get("/controller/shop/x", Some(&ticket)).await.status,
        200
    );
    assert_eq!(gate.admin_req("GET", "/readyz").await.status, 200);

    let untrusted = Gate::start(&store(Value::Null).routes(routes(http.addr, http.addr))).await;
    let r = untrusted.try_login("alice", "wonderland").await;
    assert_eq!((r.status, r.error()), (503, "store_unavailable".to_owned()));
    assert_eq!(untrusted.admin_req("GET", "/readyz").await.status, 503);
}

/// `routes[].tls`: the gate speaks TLS to the upstream and verifies it with
/// the route's CA; a route that trusts only the system's roots refuses the
/// same upstream with 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_upstream_is_verified_against_the_routes_ca() {
    let redis = Redis::spawn().await;
    let dir = scratch_dir("https");
    let certs = TestCerts::make(&dir);
    let up = Upstream::https(&certs).await;
    let routes = {
        let a = up.addr;
        let ca = certs.ca.display();
        serde_json::json!([{"name": "secure", "kind": "controller", "path": "/secure", "upstreams": [a.to_string()], "auth": "required", "tls": {"ca_file": ca.to_string()}}, {"name": "untrusted", "kind": "controller", "path": "/untrusted", "upstreams": [a.to_string()], "auth": "required", "tls": {}}])
    };
    let gate = Gate::start(&Setup::redis(&redis).routes(routes)).await;
    let (ticket, _) = gate.login("alice", "wonderland").await;
    let r = gate.get("/secure/x", Some(&ticket)).await;
    assert_eq!((r.status, r.text()), (200, "tls:u-alice".to_owned()));
    let r = gate.get("/untrusted/x", Some(&ticket)).await;
    assert_eq!(
        (r.status, r.error()),
        (502, "upstream_unavailable".to_owned())
    );
    let _ = std::fs::remove_dir_all(&dir);
}
