//! Operating the gate: admin endpoints and metrics, the access log, config
//! reload (signal and file watch), key rotation and graceful stop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

struct Env {
    redis: Redis,
    http: Upstream,
    ws: Upstream,
    setup: Setup,
}

async fn env() -> Env {
    let redis = Redis::spawn().await;
    let http = Upstream::http().await;
    let ws = Upstream::ws().await;
    let setup = Setup::redis(&redis).routes(routes(http.addr, ws.addr));
    Env {
        redis,
        http,
        ws,
        setup,
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the standard `chat` gateway from an allowed Origin.
async fn open_chat(gate: &Gate, ticket: &str) -> Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut r = format!("ws://{}/gateway/chat?ticket={ticket}", gate.addr)
        .into_client_request()
        .unwrap();
    r.headers_mut()
        .insert("origin", "https://app.example.com".parse().unwrap());
    tokio_tungstenite::connect_async(r).await.unwrap().0
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_move_with_traffic() {
    let mut e = env().await;
    let gate = Gate::start(&e.setup).await;
    assert_eq!(gate.admin_req("GET", "/healthz").await.status, 200);
    assert_eq!(gate.admin_req("GET", "/readyz").await.status, 200);
    let (ticket, _) = gate.login("alice", "wonderland").await;
    for _ in 0..3 {
        assert_eq!(
            gate.get("/controller/shop/x", Some(&ticket)).await.status,
            200
        );
    }
    assert_eq!(gate.get("/controller/shop/x", None).await.status, 401);
    let mut ws = open_chat(&gate, &ticket).await;
    ws.send(Message::Text("m".into())).await.unwrap();
    ws.next().await.unwrap().unwrap();

    let m = gate.admin_req("GET", "/metrics").await;
    assert_eq!(m.status, 200);
    let text = m.text();
    assert_eq!(
        metric(
            &text,
            r#"sessiongate_requests_total{route="shop",status="200"}"#
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            r#"sessiongate_requests_total{route="shop",status="401"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            r#"sessiongate_requests_total{route="_session",status="201"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            r#"sessiongate_auth_decisions_total{reason="missing_ticket"}"#
        ),
        Some(1.0)
    );
    assert!(
        metric(
            &text,
            r#"sessiongate_auth_decisions_total{reason="admitted"}"#
        )
        .unwrap()
            >= 4.0
    );
    assert!(
        metric(
            &text,
            r#"sessiongate_store_round_trip_seconds_count{op="check"}"#
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        metric(&text, r#"sessiongate_websockets_open{route="chat"}"#),
        Some(1.0)
    );
    drop(ws);
    let closed = eventually(Duration::from_secs(5), || async {
        let t = gate.admin_req("GET", "/metrics").await.text();
        (metric(&t, r#"sessiongate_websockets_open{route="chat"}"#) == Some(0.0)).then_some(())
    })
    .await;
    assert!(closed.is_some(), "gauge falls back when the tunnel closes");

    e.redis.kill();
    let not_ready = eventually(Duration::from_secs(5), || async {
        (gate.admin_req("GET", "/readyz").await.status == 503).then_some(())
    })
    .await;
    assert!(not_ready.is_some(), "readyz reports the store outage");
    assert_eq!(gate.admin_req("GET", "/healthz").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_needs_its_bearer_token() {
    let e = env().await;
    let gate = Gate::start(&e.setup).await;
    let r = http(
        gate.admin,
        "GET /admin/sessions?user=u-alice HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.error(), "missing_ticket");
    let r = http(gate.admin, "GET /admin/sessions?user=u-alice HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer wrong\r\n\r\n").await.unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.error(), "invalid_ticket");
    gate.login("alice", "wonderland").await;
    gate.login("alice", "wonderland").await;
    let r = gate.admin_req("GET", "/admin/sessions?user=u-alice").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["sessions"].as_array().unwrap().len(), 2);
    let r = gate.admin_req("POST", "/admin/users/u-alice/revoke").await;
    assert_eq!(r.json()["revoked"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_one_json_line_per_request_and_never_the_ticket() {
    let e = env().await;
    let gate = Gate::start_args(&e.setup, &["--log-format", "json"]).await;
    let (ticket, login) = gate.login("alice", "wonderland").await;
    let sid = login.json()["session"]["id"].as_str().unwrap().to_owned();
    gate.get("/controller/shop/items?secret=1", Some(&ticket))
        .await;
    gate.get(&format!("/public/x?ticket={ticket}"), None).await;
    gate.req(&format!(
        "GET /controller/shop/x HTTP/1.1\r\nHost: g\r\nCookie: sg_ticket={ticket}\r\n\r\n"
    ))
    .await;
    // A WebSocket's line is written when it opens, its ticket in the query.
    let _chat = open_chat(&gate, &ticket).await;
    let lines = eventually(Duration::from_secs(5), || async {
        let access: Vec<serde_json::Value> = gate
            .logs()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "access")
            .collect();
        (access.len() >= 5).then_some(access)
    })
    .await
    .expect("access lines");
    assert_eq!(lines.len(), 5, "{lines:?}");
    let chat = lines.iter().find(|v| v["route"] == "chat").unwrap();
    assert_eq!(
        (
            &chat["method"],
            &chat["path"],
            &chat["status"],
            &chat["sid"]
        ),
        (
            &serde_json::json!("GET"),
            &serde_json::json!("/gateway/chat"),
            &serde_json::json!(101),
            &serde_json::json!(sid)
        ),
        "{chat}"
    );
    let shop = lines
        .iter()
        .find(|v| v["path"] == "/controller/shop/items")
        .unwrap();
    assert_eq!(shop["route"], "shop");
    assert_eq!(shop["status"], 200);
    assert_eq!(shop["method"], "GET");
    assert_eq!(shop["sid"], sid.as_str());
    assert!(shop["latency_ms"].as_f64().is_some());
    assert!(
        shop["upstream"]
            .as_str()
            .unwrap()
            .contains(&e.http.addr.to_string())
    );
    let all = gate.logs();
    assert!(!all.contains(&ticket), "a ticket leaked into the log");
    assert!(
        !all.contains("secret=1"),
        "query strings stay out of the log"
    );
}

/// The test's config with `extra` routes after the standard ones.
fn with_route(e: &Env, extra: Value) -> Setup {
    let mut all = routes(e.http.addr, e.ws.addr);
    if let (Some(list), Value::Array(extra)) = (all.as_array_mut(), extra) {
        list.extend(extra);
    }
    e.setup.clone().routes(all)
}

fn rewrite(gate: &Gate, setup: &Setup) {
    let users = gate.dir.join("users.yaml");
    let yaml = setup.text(gate.addr.port(), gate.admin.port(), &users);
    // Write then rename, as editors and config managers do, so the watcher never reads half a file.
    let tmp = gate.dir.join("next.yaml");
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, &gate.config).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_file_changes_reload_routes_without_dropping_connections() {
    let e = env().await;
    let gate = Gate::start(&e.setup).await;
    let (ticket, _) = gate.login("alice", "wonderland").await;
    assert_eq!(gate.get("/extra/x", None).await.error(), "no_route");
    // A keep-alive connection and a WebSocket opened before the reload.
    let mut keep = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
    keep.write_all(b"GET /public/a HTTP/1.1\r\nHost: g\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut keep).await.unwrap().status, 200);
    let mut ws = open_chat(&gate, &ticket).await;

    // Traffic during reloads must see zero failures.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let traffic = {
        let (stop, failures, sent) = (stop.clone(), failures.clone(), sent.clone());
        let addr = gate.addr;
        let ticket = ticket.clone();
        tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            while !stop.load(Ordering::Relaxed) {
                let req = format!(
                    "GET /controller/shop/x HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {ticket}\r\n\r\n"
                );
                let ok = s.write_all(req.as_bytes()).await.is_ok()
                    && read_response(&mut s)
                        .await
                        .map(|r| r.status == 200)
                        .unwrap_or(false);
                sent.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    failures.fetch_add(1, Ordering::Relaxed);
                    s = tokio::net::TcpStream::connect(addr).await.unwrap();
                }
            }
        })
    };

    let extra = serde_json::json!([{"name": "extra", "kind": "controller", "path": "/extra", "upstreams": [e.http.addr.to_string()], "auth": "public"}]);
    rewrite(&gate, &with_route(&e, extra));
    gate.signal("HUP");
    let added = eventually(Duration::from_secs(5), || async {
        (gate.get("/extra/x", None).await.status == 200).then_some(())
    })
    .await;
    assert!(added.is_some(), "route added by reload:\n{}", gate.logs());
    // File watch alone (no signal): remove the route again.
    rewrite(&gate, &e.setup);
    let removed = eventually(Duration::from_secs(5), || async {
        (gate.get("/extra/x", None).await.status == 404).then_some(())
    })
    .await;
    assert!(removed.is_some(), "route removed by the file watcher");
    // Three more reloads under traffic, each one waited for in the metrics.
    for _ in 0..3 {
        let ok = r#"sessiongate_config_reloads_total{outcome="ok"}"#;
        let before = metric(&gate.admin_req("GET", "/metrics").await.text(), ok).unwrap_or(0.0);
        gate.signal("HUP");
        let reloaded = eventually(Duration::from_secs(5), || async {
            let now = metric(&gate.admin_req("GET", "/metrics").await.text(), ok)?;
            (now > before).then_some(())
        })
        .await;
        assert!(reloaded.is_some(), "SIGHUP reloaded:\n{}", gate.logs());
    }
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
    assert!(sent.load(Ordering::Relaxed) > 10);
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed during reload"
    );

    keep.write_all(b"GET /public/b HTTP/1.1\r\nHost: g\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_response(&mut keep).await.unwrap().status,
        200,
        "keep-alive survived"
    );
    ws.send(Message::Text("after".into())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Text("after".into())
    );
    let m = gate.admin_req("GET", "/metrics").await.text();
    assert!(metric(&m, r#"sessiongate_config_reloads_total{outcome="ok"}"#).unwrap() >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_config_is_logged_with_its_location_and_the_old_one_kept() {
    let e = env().await;
    let gate = Gate::start(&e.setup).await;
    std::fs::write(
        &gate.config,
        "listen: [\"127.0.0.1:1\"]\nstore:\n  kind: memory\n  bogus: 1\n",
    )
    .unwrap();
    gate.signal("HUP");
    let logged = eventually(Duration::from_secs(5), || async {
        gate.logs()
            .contains(&format!("{}:4:3:", gate.config.display()))
            .then_some(())
    })
    .await;
    assert!(logged.is_some(), "{}", gate.logs());
    assert_eq!(
        gate.get("/public/x", None).await.status,
        200,
        "old config still serves"
    );
    let m = gate.admin_req("GET", "/metrics").await.text();
    assert!(metric(&m, r#"sessiongate_config_reloads_total{outcome="error"}"#).unwrap() >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_signing_key_keeps_old_tickets_valid_while_listed() {
    let e = env().await;
    let gate = Gate::start(&e.setup).await;
    let (old, _) = gate.login("alice", "wonderland").await;
    let new_secret = sessiongate::ticket::new_secret();
    let users = gate.dir.join("users.yaml");
    let keys = |keys: Value| {
        e.setup
            .clone()
            .patch(json!({"tickets": {"keys": keys}}))
            .text(gate.addr.port(), gate.admin.port(), &users)
    };
    let k1 = json!({"id": "k1", "secret": SECRET});
    let k2 = json!({"id": "k2", "secret": new_secret});
    std::fs::write(&gate.config, keys(json!([k2, k1]))).unwrap();
    gate.signal("HUP");
    let (fresh, _) = eventually(Duration::from_secs(5), || async {
        let (t, r) = gate.login("alice", "wonderland").await;
        let (h, _) = sessiongate::ticket::decode_unverified(&t).unwrap();
        (h.kid.as_deref() == Some("k2")).then_some((t, r))
    })
    .await
    .expect("new tickets signed with k2");
    assert_eq!(
        gate.get("/controller/shop/x", Some(&old)).await.status,
        200,
        "k1 ticket still verifies"
    );
    assert_eq!(
        gate.get("/controller/shop/x", Some(&fresh)).await.status,
        200
    );
    // Drop k1: its tickets stop verifying.
    std::fs::write(&gate.config, keys(json!([k2]))).unwrap();
    gate.signal("HUP");
    let dropped = eventually(Duration::from_secs(5), || async {
        (gate.get("/controller/shop/x", Some(&old)).await.status == 401).then_some(())
    })
    .await;
    assert!(dropped.is_some());
    assert_eq!(
        gate.get("/controller/shop/x", Some(&old)).await.error(),
        "invalid_ticket"
    );
    assert_eq!(
        gate.get("/controller/shop/x", Some(&fresh)).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_closes_websockets_1001_and_exits_0() {
    let redis = Redis::spawn().await;
    let ws = Upstream::ws().await;
    // An upstream that signals when a request reaches it and answers only
    // when the test lets it, once the gate is shutting down: the request is
    // in flight when SIGTERM lands, and still is as the drain begins.
    let arrived = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let (signal, go) = (arrived.clone(), release.clone());
    let slow = Upstream::custom(move |mut s| {
        let (signal, go) = (signal.clone(), go.clone());
        async move {
            let mut buf = [0u8; 4096];
            use tokio::io::AsyncReadExt;
            // The gate's health probes connect and close without a byte.
            if !matches!(s.read(&mut buf).await, Ok(n) if n > 0) {
                return;
            }
            signal.notify_one();
            go.notified().await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nslow")
                .await;
        }
    })
    .await;
    let routes = serde_json::json!([{"name": "chat", "kind": "gateway", "path": "/gateway/chat", "upstreams": [ws.addr.to_string()], "auth": "required"}, {"name": "slow", "kind": "controller", "path": "/slow", "upstreams": [slow.addr.to_string()], "auth": "public"}]);
    let mut gate = Gate::start(&Setup::redis(&redis).routes(routes)).await;
    let (ticket, _) = gate.login("alice", "wonderland").await;
    let (mut client, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}/gateway/chat?ticket={ticket}",
        gate.addr
    ))
    .await
    .unwrap();
    let addr = gate.addr;
    let in_flight =
        tokio::spawn(async move { http(addr, "GET /slow/x HTTP/1.1\r\nHost: g\r\n\r\n").await });
    tokio::time::timeout(Duration::from_secs(5), arrived.notified())
        .await
        .expect("the request reaches the upstream");
    gate.signal("TERM");
    // The WebSocket's Close 1001 says the shutdown has begun.
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match client.next().await {
                Some(Ok(Message::Close(Some(f)))) => {
                    return Some((u16::from(f.code), f.reason.to_string()));
                }
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .expect("Close frame in time");
    assert_eq!(closed.map(|c| c.0), Some(1001));
    release.notify_one();
    let r = in_flight
        .await
        .unwrap()
        .expect("in-flight request completes");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "slow");
    // Exits once drained, well before the 5 s grace period runs out.
    assert_eq!(
        gate.wait_exit(Duration::from_secs(3)).await,
        Some(0),
        "{}",
        gate.logs()
    );
    // The log writer batches lines; the drain's last line, written just before the process
    // exits, must still reach stderr.
    let logs = gate.logs();
    assert!(logs.contains("drained; exiting"), "{logs}");
}
