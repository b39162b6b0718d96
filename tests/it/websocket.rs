//! WebSocket gateways through the real gate: handshake auth, Origin
//! allowlist, frames passing unchanged, idle survival, and tunnels ending
//! with Close 4401 when their session leaves `active`.

use std::time::{Duration, Instant};

use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(
    gate: &Gate,
    query_ticket: Option<&str>,
    origin: Option<&str>,
) -> Result<Ws, WsError> {
    let url = match query_ticket {
        Some(t) => format!("ws://{}/gateway/chat?ticket={t}", gate.addr),
        None => format!("ws://{}/gateway/chat", gate.addr),
    };
    let mut req = url.into_client_request()?;
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    let (ws, resp) =
        tokio_tungstenite::connect_async_with_config(req, Some(big_config()), false).await?;
    assert_eq!(resp.status(), 101);
    Ok(ws)
}

fn big_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
        max_message_size: Some(64 << 20),
        max_frame_size: Some(64 << 20),
        ..Default::default()
    }
}

const APP: Option<&str> = Some("https://app.example.com");

fn http_status(e: WsError) -> (u16, String) {
    match e {
        WsError::Http(resp) => {
            let body = resp
                .body()
                .clone()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            (resp.status().as_u16(), body)
        }
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }
}

fn refused(r: Result<Ws, WsError>, what: &str) -> WsError {
    match r {
        Ok(_) => panic!("handshake should have been refused: {what}"),
        Err(e) => e,
    }
}

/// Reads until a Close frame; returns its code and reason.
async fn closed_with(ws: &mut Ws, within: Duration) -> (u16, String) {
    let deadline = tokio::time::sleep(within);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => panic!("no Close frame within {within:?}"),
            m = ws.next() => match m {
                Some(Ok(Message::Close(Some(f)))) => return (u16::from(f.code), f.reason.to_string()),
                Some(Ok(Message::Close(None))) => return (1005, String::new()),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("error before Close: {e}"),
                None => panic!("stream ended without a Close frame"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_needs_a_ticket_and_the_right_origin() {
    let (_r, _h, _w, gate) = standard_gate(json!({})).await;
    let (status, body) = http_status(refused(connect(&gate, None, APP).await, "refused"));
    assert_eq!(status, 401);
    assert!(body.contains("missing_ticket"), "{body}");
    let (ticket, _) = gate.login("alice", "wonderland").await;
    for bad in [
        "null",
        "https://app.example.com.evil.com",
        "http://app.example.com",
        "https://evil.com",
    ] {
        let (status, body) = http_status(refused(
            connect(&gate, Some(&ticket), Some(bad)).await,
            "refused",
        ));
        assert_eq!(status, 403, "{bad}");
        assert!(body.contains("origin_not_allowed"), "{body}");
    }
    let (status, _) = http_status(refused(
        connect(&gate, Some(&ticket), None).await,
        "no origin refused",
    ));
    assert_eq!(status, 403);
    // bob lacks the player role
    let (bob, _) = gate.login("bob", "builder").await;
    let (status, body) = http_status(refused(connect(&gate, Some(&bob), APP).await, "refused"));
    assert_eq!(status, 403);
    assert!(body.contains("forbidden"));
    assert!(connect(&gate, Some(&ticket), APP).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticket_from_header_or_cookie_also_opens_a_tunnel() {
    let (_r, _h, _w, gate) = standard_gate(json!({})).await;
    let (ticket, _) = gate.login("alice", "wonderland").await;
    for (name, value) in [
        ("authorization", format!("Bearer {ticket}")),
        ("cookie", format!("sg_ticket={ticket}")),
    ] {
        let mut req = format!("ws://{}/gateway/chat", gate.addr)
            .into_client_request()
            .unwrap();
        req.headers_mut().insert(name, value.parse().unwrap());
        req.headers_mut()
            .insert("origin", "https://app.example.com".parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect(name);
        ws.send(Message::Text("hi".into())).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::Text("hi".into())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_pass_both_ways_unchanged() {
    let (_r, _h, _w, gate) = standard_gate(json!({})).await;
    let (ticket, _) = gate.login("alice", "wonderland").await;
    let mut ws = connect(&gate, Some(&ticket), APP).await.unwrap();
    ws.send(Message::Text("héllo ✓".into())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Text("héllo ✓".into())
    );
    let bin: Vec<u8> = (0..=255u8).collect();
    ws.send(Message::Binary(bin.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::Binary(bin));
    let big: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
    ws.send(Message::Binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::Binary(big));
    // Fragmented message: three frames, reassembled by the echo upstream and sent back.
    for (fin, opcode, data) in [
        (
            false,
            tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode::Data(
                tokio_tungstenite::tungstenite::protocol::frame::coding::Data::Text,
            ),
            "frag",
        ),
        (
            false,
            tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode::Data(
                tokio_tungstenite::tungstenite::protocol::frame::coding::Data::Continue,
            ),
            "ment",
        ),
        (
            true,
            tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode::Data(
                tokio_tungstenite::tungstenite::protocol::frame::coding::Data::Continue,
            ),
            "ed",
        ),
    ] {
        let header = FrameHeader {
            is_final: fin,
            opcode,
            ..FrameHeader::default()
        };
        ws.send(Message::Frame(Frame::from_payload(
            header,
            data.as_bytes().to_vec(),
        )))
        .await
        .unwrap();
    }
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Text("fragmented".into())
    );
    ws.send(Message::Ping(b"p1".to_vec())).await.unwrap();
    let pong = ws.next().await.unwrap().unwrap();
    assert_eq!(pong, Message::Pong(b"p1".to_vec()));
    ws.send(Message::Close(Some(
        tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: CloseCode::Library(4000),
            reason: "bye".into(),
        },
    )))
    .await
    .unwrap();
    let (code, reason) = closed_with(&mut ws, Duration::from_secs(5)).await;
    assert_eq!((code, reason.as_str()), (4000, "bye"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_first_message_right_after_101_keeps_the_tunnel_open() {
    // Pingora issue 946: an upstream 101 read before the request's empty body
    // could end the tunnel at once. This upstream speaks first, immediately.
    let redis = Redis::spawn().await;
    let eager = Upstream::custom(|s| async move {
        let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
            return;
        };
        let _ = ws.send(Message::Text("welcome".into())).await;
        while let Some(Ok(m)) = ws.next().await {
            if m.is_text() && ws.send(m).await.is_err() {
                return;
            }
        }
    })
    .await;
    let routes = serde_json::json!([{"name": "chat", "kind": "gateway", "path": "/gateway/chat", "upstreams": [eager.addr.to_string()], "auth": "required"}]);
    let gate = Gate::start(&Setup::redis(&redis).routes(routes)).await;
    let (ticket, _) = gate.login("alice", "wonderland").await;
    for _ in 0..20 {
        let mut ws = connect(&gate, Some(&ticket), None).await.unwrap();
        let first = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("welcome in time");
        assert_eq!(first.unwrap().unwrap(), Message::Text("welcome".into()));
        ws.send(Message::Text("still there?".into())).await.unwrap();
        let echo = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("echo in time");
        assert_eq!(echo.unwrap().unwrap(), Message::Text("still there?".into()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_ends_open_tunnels_with_4401() {
    let (_r, _h, _w, gate) = standard_gate(json!({})).await;
    let (ticket, _) = gate.login("alice", "wonderland").await;
    let mut ws = connect(&gate, Some(&ticket), APP).await.unwrap();
    ws.send(Message::Text("x".into())).await.unwrap();
    ws.next().await.unwrap().unwrap();
    let started = Instant::now();
    assert_eq!(
        gate.post("/_session/logout", Some(&ticket), "")
            .await
            .status,
        204
    );
    let (code, reason) = closed_with(&mut ws, Duration::from_secs(2)).await;
    assert_eq!((code, reason.as_str()), (4401, "session ended"));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "closed in {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_revoke_ends_an_idle_tunnel_with_4401() {
    let (_r, _h, _w, gate) = standard_gate(json!({})).await;
    let (ticket, login) = gate.login("alice", "wonderland").await;
    let sid = login.json()["session"]["id"].as_str().unwrap().to_owned();
    let mut ws = connect(&gate, Some(&ticket), APP).await.unwrap();
    let started = Instant::now();
    let r = gate
        .admin_req("POST", &format!("/admin/sessions/{sid}/revoke"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (code, reason) = closed_with(&mut ws, Duration::from_secs(2)).await;
    assert_eq!((code, reason.as_str()), (4401, "session revoked"));
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_ends_a_tunnel_within_a_second() {
    let (_r, _h, _w, gate) =
        standard_gate(json!({"ttl": "2s", "touch_interval": "1s", "idle_timeout": "1m"})).await;
    let (ticket, _) = gate.login("alice", "wonderland").await;
    let mut ws = connect(&gate, Some(&ticket), APP).await.unwrap();
    let (code, reason) = closed_with(&mut ws, Duration::from_secs(4)).await;
    assert_eq!((code, reason.as_str()), (4401, "session expired"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chatting_keeps_a_session_alive_and_silence_abandons_it() {
    let (_r, _h, _w, gate) =
        standard_gate(json!({"idle_timeout": "2s", "touch_interval": "500ms"})).await;
    let (ticket, _) = gate.login("alice", "wonderland").await;
    let mut ws = connect(&gate, Some(&ticket), APP).await.unwrap();
    // Talk for 4 s, twice the idle timeout: client frames count as activity.
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        ws.send(Message::Text("tick".into())).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::Text("tick".into())
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(gate.get("/_session", Some(&ticket)).await.status, 200);
    // Then fall silent: abandoned after the idle timeout, tunnel closed.
    let (code, reason) = closed_with(&mut ws, Duration::from_secs(5)).await;
    assert_eq!((code, reason.as_str()), (4401, "session abandoned"));
    let r = gate.get("/_session", Some(&ticket)).await;
    assert_eq!(r.error(), "session_abandoned");
}

/// Opening a tunnel is no activity, and a frame counts from when it came,
/// not from when the sweeper noticed it: with `idle_timeout: 3s` and
/// `touch_interval: 1s`, a tunnel that never speaks closes 3 s after login,
/// and one that spoke closes 3 s after its last frame — not a touch interval
/// later (it used to be 1.1–2.0 s late).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_abandons_exactly_idle_timeout_after_the_last_activity() {
    let (_r, _h, _w, gate) =
        standard_gate(json!({"idle_timeout": "3s", "touch_interval": "1s"})).await;
    let idle = Duration::from_secs(3);
    // Slack: one sweep (250 ms) and loopback round trips.
    let slack = Duration::from_millis(600);

    let before_login = Instant::now();
    let (ticket, _) = gate.login("alice", "wonderland").await;
    let after_login = Instant::now();
    let mut silent = connect(&gate, Some(&ticket), APP).await.unwrap();
    let (code, reason) = closed_with(&mut silent, Duration::from_secs(6)).await;
    assert_eq!((code, reason.as_str()), (4401, "session abandoned"));
    let late = after_login.elapsed();
    assert!(before_login.elapsed() >= idle, "closed early: {late:?}");
    assert!(
        late < idle + slack,
        "closed {:?} late",
        late.saturating_sub(idle)
    );

    let (ticket, _) = gate.login("alice", "wonderland").await;
    let mut ws = connect(&gate, Some(&ticket), APP).await.unwrap();
    // Speak for a while (more than one touch interval), then fall silent.
    let mut last = Instant::now();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        last = Instant::now();
        ws.send(Message::Text("tick".into())).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::Text("tick".into())
        );
    }
    let (code, reason) = closed_with(&mut ws, Duration::from_secs(6)).await;
    assert_eq!((code, reason.as_str()), (4401, "session abandoned"));
    let after_frame = last.elapsed();
    assert!(
        after_frame >= idle - Duration::from_millis(50),
        "closed {after_frame:?} after the last frame"
    );
    assert!(
        after_frame < idle + slack,
        "closed {:?} late",
        after_frame.saturating_sub(idle)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_tunnel_outlives_the_routes_timeout_and_still_echoes() {
    // Once open, a tunnel is the gate's own relay's, which times out no silence:
    // `tunnel::tests::a_silent_tunnel_is_never_cut` holds one silent past Pingora's
    // 60 s read timeout and for a day on a paused clock. This is the real-process
    // check that an open tunnel is in that relay: silent for three times the
    // route's upstream `timeout`, it is not cut and still echoes.
    let redis = Redis::spawn().await;
    let ws = Upstream::ws().await;
    let route = serde_json::json!([{"name": "chat", "kind": "gateway", "path": "/gateway/chat", "upstreams": [ws.addr.to_string()], "auth": "required", "timeout": "1s"}]);
    let gate = Gate::start(
        &Setup::redis(&redis)
            .sessions(json!({"idle_timeout": "1h"}))
            .routes(route),
    )
    .await;
    let (ticket, _) = gate.login("alice", "wonderland").await;
    let mut ws = connect(&gate, Some(&ticket), APP).await.unwrap();
    let quiet = tokio::time::timeout(Duration::from_secs(3), ws.next()).await;
    assert!(quiet.is_err(), "tunnel ended while silent: {quiet:?}");
    ws.send(Message::Text("still here".into())).await.unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("echo in time");
    assert_eq!(echo.unwrap().unwrap(), Message::Text("still here".into()));
}

/// A refusal leaves nothing open upstream, and the client's connection goes
/// on speaking HTTP with the gate: a tunnel left behind would hold the
/// upstream socket and carry the next request to the upstream instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_refusing_the_upgrade_leaves_no_tunnel_behind() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let redis = Redis::spawn().await;
    let open = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&open);
    let refuser = Upstream::custom(move |mut s| {
        let open = std::sync::Arc::clone(&counted);
        async move {
            open.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            // Answer every request on the connection, and keep it open until
            // the gate closes it.
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let _ = s
                    .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope")
                    .await;
            }
            open.fetch_sub(1, Ordering::SeqCst);
        }
    })
    .await;
    let routes = serde_json::json!([{"name": "chat", "kind": "gateway", "path": "/gateway/chat", "upstreams": [refuser.addr.to_string()], "auth": "required"}]);
    let gate = Gate::start(&Setup::redis(&redis).routes(routes)).await;
    let (ticket, _) = gate.login("alice", "wonderland").await;
    let mut s = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
    s.write_all(format!(
        "GET /gateway/chat HTTP/1.1\r\nHost: gate.test\r\nAuthorization: Bearer {ticket}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).as_bytes()).await.unwrap();
    let r = read_response(&mut s).await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (403, "nope"));
    let closed = eventually(Duration::from_secs(5), || async {
        (open.load(Ordering::SeqCst) == 0).then_some(())
    })
    .await;
    assert!(
        closed.is_some(),
        "the refused handshake's upstream connection lingers"
    );
    // The same client connection is the gate's again: `/_session` is answered
    // by the gate, not carried to the upstream.
    s.write_all(
        format!(
            "GET /_session HTTP/1.1\r\nHost: gate.test\r\nAuthorization: Bearer {ticket}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let r = read_response(&mut s).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["user"]["id"], "u-alice");
}

/// A WebSocket upstream that answers each handshake, then sends the request
/// line and headers it received as its first message.
#[allow(clippy::result_large_err)] // tungstenite's callback signature
async fn header_reporting_upstream() -> Upstream {
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
    Upstream::custom(|s| async move {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(serde_json::Value::Null));
        let record = std::sync::Arc::clone(&seen);
        let cb = move |req: &Request, resp: Response| {
            let headers: serde_json::Map<String, serde_json::Value> = req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        serde_json::Value::from(v.to_str().unwrap_or("?")),
                    )
                })
                .collect();
            *record.lock().unwrap() =
                serde_json::json!({"uri": req.uri().to_string(), "headers": headers});
            Ok(resp)
        };
        let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(s, cb).await else {
            return;
        };
        let report = seen.lock().unwrap().to_string();
        let _ = ws.send(Message::Text(report)).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_handshake_carries_identity_and_never_the_ticket() {
    let redis = Redis::spawn().await;
    let up = header_reporting_upstream().await;
    let routes = serde_json::json!([{"name": "chat", "kind": "gateway", "path": "/gateway/chat", "upstreams": [up.addr.to_string()], "auth": "required", "strip_prefix": true}]);
    let gate = Gate::start(&Setup::redis(&redis).routes(routes)).await;
    let (ticket, login) = gate.login("alice", "wonderland").await;
    let sid = login.json()["session"]["id"].as_str().unwrap().to_owned();
    let url = format!(
        "ws://{}/gateway/chat/room?ticket={ticket}&lang=en",
        gate.addr
    );
    let mut req = url.into_client_request().unwrap();
    for (k, v) in [
        ("x-session-id", "forged".to_owned()),
        ("x-session-var-tier", "platinum".to_owned()),
        ("connection", "Upgrade, X-Private".to_owned()),
        ("x-private", "secret".to_owned()),
        ("cookie", format!("theme=dark; sg_ticket={ticket}")),
    ] {
        req.headers_mut().insert(k, v.parse().unwrap());
    }
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    let Some(Ok(Message::Text(report))) = ws.next().await else {
        panic!("no report from the upstream");
    };
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    let h = &report["headers"];
    assert_eq!(report["uri"], "/room?lang=en", "{report}");
    assert_eq!(h["x-session-id"], sid.as_str(), "{report}");
    assert_eq!(h["x-session-user"], "u-alice");
    assert_eq!(h["x-session-roles"], "player");
    assert_eq!(h["x-session-var-tier"], "gold");
    assert_eq!(h["cookie"], "theme=dark");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["upgrade"], "websocket");
    assert_eq!(h["connection"], "Upgrade");
    assert!(h.get("x-private").is_none(), "{report}");
    assert!(
        !report.to_string().contains(&ticket),
        "ticket reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_failures_answer_502_or_504_and_a_live_upstream_is_tried_next() {
    let redis = Redis::spawn().await;
    let hang = Upstream::hanging().await;
    let ws = Upstream::ws().await;
    let dead = free_port();
    let chunked = Upstream::custom(|mut s| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = [0u8; 4096];
        if let Ok(n) = s.read(&mut buf).await
            && n > 0
        {
            let _ = s
                .write_all(b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\nX-Reason: test\r\n\r\n2\r\nno\r\n2\r\npe\r\n0\r\n\r\n")
                .await;
        }
        let _ = s.read(&mut buf).await;
    })
    .await;
    let route = |name: &str, ups: Vec<String>| {
        json!({
            "name": name, "kind": "gateway", "path": format!("/{name}"),
            "upstreams": ups, "auth": "required", "timeout": "500ms",
        })
    };
    let dead = format!("127.0.0.1:{dead}");
    let routes = json!([
        route("dead", vec![dead.clone()]),
        route("slow", vec![hang.addr.to_string()]),
        route("retry", vec![dead, ws.addr.to_string()]),
        route("refusing", vec![chunked.addr.to_string()]),
    ]);
    let gate = Gate::start(&Setup::redis(&redis).routes(routes)).await;
    let (ticket, _) = gate.login("alice", "wonderland").await;
    let open = |path: &'static str| {
        let url = format!("ws://{}/{path}?ticket={ticket}", gate.addr);
        async move {
            tokio_tungstenite::connect_async(url)
                .await
                .map(|(ws, _)| ws)
        }
    };
    let (status, body) = http_status(refused(open("dead").await, "dead upstream"));
    assert_eq!(status, 502);
    assert!(body.contains("upstream_unavailable"), "{body}");
    let started = Instant::now();
    let (status, body) = http_status(refused(open("slow").await, "hanging upstream"));
    assert_eq!(status, 504);
    assert!(body.contains("upstream_timeout"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // Every attempt on `retry` opens, whichever upstream round robin starts on.
    for _ in 0..3 {
        let mut ws = open("retry")
            .await
            .expect("retry opens on the live upstream");
        ws.send(Message::Text("hi".into())).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::Text("hi".into())
        );
    }
    match open("refusing").await {
        Err(WsError::Http(resp)) => {
            assert_eq!(resp.status(), 401);
            assert_eq!(resp.headers()["x-reason"], "test");
            assert_eq!(resp.body().as_deref(), Some(&b"nope"[..]));
        }
        other => panic!("expected the upstream's 401, got {other:?}"),
    }
    let m = gate.admin_req("GET", "/metrics").await.text();
    for line in [
        r#"sessiongate_upstream_errors_total{kind="upstream_unavailable",route="dead"} 1"#,
        r#"sessiongate_upstream_errors_total{kind="upstream_timeout",route="slow"} 1"#,
    ] {
        assert!(m.lines().any(|l| l == line), "missing {line} in\n{m}");
    }
}

/// `routes[].tls` on a gateway: the handshake and the frames go over TLS,
/// verified with the route's CA; trusting only the system's roots, the same
/// upstream is refused with 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_reaches_a_tls_upstream_verified_by_its_ca() {
    let redis = Redis::spawn().await;
    let dir = scratch_dir("wss");
    let certs = TestCerts::make(&dir);
    let up = Upstream::wss(&certs).await;
    let routes = {
        let a = up.addr;
        let ca = certs.ca.display();
        serde_json::json!([{"name": "secure", "kind": "gateway", "path": "/secure", "upstreams": [a.to_string()], "auth": "required", "tls": {"ca_file": ca.to_string()}}, {"name": "untrusted", "kind": "gateway", "path": "/untrusted", "upstreams": [a.to_string()], "auth": "required", "tls": {}}])
    };
    let gate = Gate::start(&Setup::redis(&redis).routes(routes)).await;
    let (ticket, _) = gate.login("alice", "wonderland").await;
    let url = |path: &str| format!("ws://{}/{path}?ticket={ticket}", gate.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url("secure"))
        .await
        .expect("TLS gateway opens");
    ws.send(Message::Text("over tls".into())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Text("over tls".into())
    );
    let (status, body) = http_status(refused(
        tokio_tungstenite::connect_async(url("untrusted"))
            .await
            .map(|(ws, _)| ws),
        "untrusted upstream",
    ));
    assert_eq!(status, 502);
    assert!(body.contains("upstream_unavailable"), "{body}");
    let _ = std::fs::remove_dir_all(&dir);
}
