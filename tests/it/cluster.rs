//! The gate on a Redis Cluster: a private three-node cluster, the real
//! binary, and the whole session lifecycle through it — logins spread over
//! the nodes, replacement, lists, logout, removal, operator revokes, events
//! reaching a second gate and ending a WebSocket.

use std::time::Duration;

use crate::support::*;
use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn sid(login: &Resp) -> String {
    login.json()["session"]["id"].as_str().unwrap().to_owned()
}

async fn refused_with(gate: &Gate, ticket: &str, code: &str) {
    let r = gate.get("/controller/shop/x", Some(ticket)).await;
    assert_eq!((r.status, r.error()), (401, code.to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_lifecycle_runs_on_a_redis_cluster() {
    let cluster = RedisCluster::spawn().await;
    let http = Upstream::http().await;
    let ws = Upstream::ws().await;
    let setup = Setup::cluster(&cluster)
        .sessions(json!({"max_per_user": 2}))
        .routes(routes(http.addr, ws.addr));
    let gate = Gate::start(&setup).await;
    let other = Gate::start(&setup).await;

    // Logins, a request, replacement past max_per_user.
    let (first, r) = gate.login("alice", "wonderland").await;
    let first_id = sid(&r);
    let (second, _) = gate.login("alice", "wonderland").await;
    let (bob, r) = gate.login("bob", "builder").await;
    let bob_id = sid(&r);
    let r = gate.get("/controller/shop/x", Some(&second)).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_headers()
            .get("x-session-user")
            .map(String::as_str),
        Some("u-alice")
    );
    // The other gate shares the store.
    assert_eq!(
        other.get("/controller/shop/x", Some(&bob)).await.status,
        200
    );
    let (third, _) = gate.login("alice", "wonderland").await;
    refused_with(&gate, &first, "session_replaced").await;

    // Each user's index and sessions sit on one node, under the user's tag.
    let mut placed: Vec<(u16, String)> = Vec::new();
    for n in &cluster.nodes {
        let mut con = n.client().get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("sg:*")
            .query_async(&mut con)
            .await
            .unwrap();
        placed.extend(keys.into_iter().map(|k| (n.port, k)));
    }
    for (user, sessions) in [("u-alice", 3), ("u-bob", 1)] {
        let tag = sessiongate::session::user_tag(user);
        let mine: Vec<&(u16, String)> = placed
            .iter()
            .filter(|(_, k)| k.contains(&format!("{{{tag}}}")))
            .collect();
        assert_eq!(mine.len(), 1 + sessions, "{user}: {placed:?}");
        assert!(
            mine.iter().all(|(port, _)| *port == mine[0].0),
            "{user}: {mine:?}"
        );
        assert!(
            mine.iter()
                .any(|(_, k)| *k == format!("sg:u:{{{tag}}}:{user}"))
        );
    }
    let list = gate.get("/_session/list", Some(&third)).await.json();
    let statuses: Vec<&str> = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["active", "active", "replaced"]);

    // Removal leaves the list; refresh and touch answer.
    let r = gate
        .req(&format!(
            "DELETE /_session/{first_id} HTTP/1.1\r\nHost: gate\r\nAuthorization: Bearer {third}\r\n\r\n"
        ))
        .await;
    assert_eq!(r.status, 204);
    let list = gate.get("/_session/list", Some(&third)).await.json();
    assert_eq!(list["sessions"].as_array().unwrap().len(), 2);
    assert_eq!(
        gate.post("/_session/touch", Some(&third), "").await.status,
        200
    );
    assert_eq!(
        gate.post("/_session/refresh", Some(&third), "")
            .await
            .status,
        200
    );

    // Logout on one gate is seen by the other at once, cache or not.
    assert_eq!(
        other.get("/controller/shop/x", Some(&second)).await.status,
        200
    );
    assert_eq!(
        gate.post("/_session/logout", Some(&second), "")
            .await
            .status,
        204
    );
    let seen = eventually(Duration::from_secs(1), || async {
        let r = other.get("/controller/shop/x", Some(&second)).await;
        (r.status == 401).then(|| r.error())
    })
    .await;
    assert_eq!(seen.as_deref(), Some("session_ended"));

    // Operator revokes: bob's session by its id alone, then all of alice's,
    // which ends her WebSocket on the other gate with 4401.
    let mut req = format!("ws://{}/gateway/chat", other.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {third}").parse().unwrap());
    req.headers_mut()
        .insert("origin", "https://app.example.com".parse().unwrap());
    let (mut chat, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let r = gate
        .admin_req("POST", &format!("/admin/sessions/{bob_id}/revoke"))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["session"]["status"], "revoked");
    // The other gate may hold bob's liveness in its cache: the event, which
    // crosses the cluster's bus, must reach it within a second.
    let seen = eventually(Duration::from_secs(1), || async {
        let r = other.get("/controller/shop/x", Some(&bob)).await;
        (r.status == 401).then(|| r.error())
    })
    .await;
    assert_eq!(seen.as_deref(), Some("session_revoked"));
    let r = gate.admin_req("POST", "/admin/users/u-alice/revoke").await;
    assert_eq!(r.json()["revoked"], 1, "{}", r.text());
    let closed = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(m) = chat.next().await {
            if let Ok(Message::Close(Some(f))) = m {
                return (u16::from(f.code), f.reason.to_string());
            }
        }
        (0, String::new())
    })
    .await
    .expect("no Close within 2 s");
    assert_eq!(closed, (4401, "session revoked".to_owned()));
    refused_with(&gate, &third, "session_revoked").await;
    let r = gate.admin_req("GET", "/admin/sessions?user=u-alice").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["sessions"].as_array().unwrap().len(), 2);
}

/// With the cluster gone, session calls answer 503 `store_unavailable`; the
/// gate stays up, `readyz` tells, and once the cluster is back the gate
/// serves again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_cluster_is_a_503_and_its_return_recovers() {
    let mut cluster = RedisCluster::spawn().await;
    let http = Upstream::http().await;
    let ws = Upstream::ws().await;
    let gate = Gate::start(&Setup::cluster(&cluster).routes(routes(http.addr, ws.addr))).await;
    let (alice, _) = gate.login("alice", "wonderland").await;
    assert_eq!(
        gate.get("/controller/shop/x", Some(&alice)).await.status,
        200
    );
    for n in &mut cluster.nodes {
        n.kill();
    }
    let r = eventually(Duration::from_secs(5), || async {
        let r = gate.post("/_session/touch", Some(&alice), "").await;
        (r.status == 503).then_some(r)
    })
    .await
    .expect("no 503 with the cluster gone");
    assert_eq!(r.error(), "store_unavailable");
    assert!(r.header("retry-after").is_some());
    assert_eq!(gate.admin_req("GET", "/healthz").await.status, 200);
    assert_eq!(gate.admin_req("GET", "/readyz").await.status, 503);

    // Back, empty: the old session is unknown, a new login works.
    cluster.restart().await;
    let back = gate
        .login_within("alice", "wonderland", Duration::from_secs(15))
        .await
        .expect("no login within 15 s of the cluster's return");
    assert_eq!(
        gate.get("/controller/shop/x", Some(&back)).await.status,
        200
    );
    assert_eq!(gate.admin_req("GET", "/readyz").await.status, 200);
}

/// The node (index in `cluster.nodes`) serving `slot` as master, with its id.
async fn master_of(cluster: &RedisCluster, slot: i64) -> Option<(usize, String)> {
    let mut con = cluster.nodes[0]
        .client()
        .get_multiplexed_async_connection()
        .await
        .ok()?;
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut con)
        .await
        .ok()?;
    for line in nodes.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
            continue;
        }
        let serves = f[8..].iter().any(|range| {
            let mut ends = range.split('-').map(|n| n.parse::<i64>().unwrap_or(-1));
            let lo = ends.next().unwrap_or(-1);
            let hi = ends.next().unwrap_or(lo);
            (lo..=hi).contains(&slot)
        });
        let port: u16 = f[1].split(['@', ':']).nth(1)?.parse().ok()?;
        if serves {
            let i = cluster.nodes.iter().position(|n| n.port == port)?;
            return Some((i, f[0].to_owned()));
        }
    }
    None
}

/// Three masters with a replica each; the master holding a session is
/// killed. Its replica takes over: the session (replicated) still admits,
/// new logins land, and a revoke on one gate still reaches the other gate's
/// cache and its WebSocket — whichever node each gate's event subscription
/// was on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_is_replaced_by_its_replica_and_revokes_reach_every_gate() {
    let mut cluster = RedisCluster::spawn_shaped(3, 1).await;
    let http = Upstream::http().await;
    let ws = Upstream::ws().await;
    let setup = Setup::cluster(&cluster).routes(routes(http.addr, ws.addr));
    let gate = Gate::start(&setup).await;
    let other = Gate::start(&setup).await;
    let (alice, login) = gate.login("alice", "wonderland").await;
    let id = sid(&login);
    let key = format!("sg:s:{{{}}}:{id}", &id[24..]);

    let mut con = cluster.nodes[0]
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let slot: i64 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(&key)
        .query_async(&mut con)
        .await
        .unwrap();
    let (victim, _) = master_of(&cluster, slot)
        .await
        .expect("a master for the slot");
    // Replication is asynchronous: the session must be on the replica first.
    assert!(
        wait_replicated(&cluster.nodes[victim]).await,
        "the replica never caught up"
    );
    let mut chat = open_chat(&other, &alice).await;
    assert_eq!(
        other.get("/controller/shop/x", Some(&alice)).await.status,
        200
    );

    cluster.nodes[victim].kill();
    let promoted = eventually(Duration::from_secs(30), || async {
        let (i, _) = master_of(&cluster, slot).await?;
        (i != victim).then_some(())
    })
    .await;
    assert!(promoted.is_some(), "no replica took the slot over");
    // The session survived on the replica; both gates reach it.
    for g in [&gate, &other] {
        let last = std::sync::Mutex::new(String::new());
        let r = eventually(Duration::from_secs(15), || async {
            let r = g.post("/_session/touch", Some(&alice), "").await;
            *last.lock().unwrap() = format!("{} {}", r.status, r.text());
            (r.status == 200).then_some(())
        })
        .await;
        assert!(
            r.is_some(),
            "the session is not served after the failover: last answer {}",
            last.lock().unwrap()
        );
    }
    let bob = other
        .login_within("bob", "builder", Duration::from_secs(10))
        .await
        .expect("no login after the failover");
    assert_eq!(gate.get("/controller/shop/x", Some(&bob)).await.status, 200);
    // Every live node has both gates subscribed again (a gate whose node died
    // moved to another one).
    let live: Vec<usize> = (0..cluster.nodes.len()).filter(|i| *i != victim).collect();
    let subscribed = eventually(Duration::from_secs(10), || async {
        let mut n = 0;
        for i in &live {
            n += subscribers(&cluster.nodes[*i].client(), "sg:events")
                .await
                .unwrap_or(0);
        }
        (n >= 2).then_some(())
    })
    .await;
    assert!(subscribed.is_some(), "a gate lost its event subscription");

    let revoked = std::time::Instant::now();
    let r = gate.admin_req("POST", "/admin/users/u-alice/revoke").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["revoked"], 1);
    let closed = close_of(&mut chat, Duration::from_secs(2)).await;
    assert_eq!(closed, Some((4401, "session revoked".to_owned())));
    assert!(
        revoked.elapsed() < Duration::from_secs(1),
        "{:?}",
        revoked.elapsed()
    );
    refused_with(&other, &alice, "session_revoked").await;
}
