//! The gate as the edge: its own TLS listeners (SNI, versions, ALPN h2 and
//! http/1.1, HSTS, plain-to-https redirect, certificate reload), the client
//! address it believes (PROXY v1/v2, trusted proxies, forged
//! X-Forwarded-For) and what the upstream is told about it.

use std::time::Duration;

use crate::support::edge::{Ca, Client, Issued, exchange, get, served_cn, tls_config, tls11_hello};
use crate::support::*;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

struct Edge {
    _redis: Redis,
    _http: Upstream,
    _ws: Upstream,
    ca: Ca,
    tls: std::net::SocketAddr,
    gate: Gate,
}

/// A gate with one plain and one TLS listener; `certs` (the first the
/// default), its config changed by the merge patch `patch`.
async fn edge_with(certs: &[(&str, &str)], patch: Value) -> Edge {
    edge_on(0, certs, patch).await
}

/// [`edge_with`] with the TLS listener on `port` (0: the gate picks one).
async fn edge_on(port: u16, certs: &[(&str, &str)], patch: Value) -> Edge {
    let redis = Redis::spawn().await;
    let http = Upstream::http().await;
    let ws = Upstream::ws().await;
    let dir = scratch_dir("edge-ca");
    let ca = Ca::new(&dir);
    let issued: Vec<Issued> = certs
        .iter()
        .map(|(tag, sans)| ca.issue(tag, sans, 2))
        .collect();
    let refs: Vec<&Issued> = issued.iter().collect();
    let gate = Gate::start(
        &Setup::redis(&redis)
            .patch(json!({"tls": tls_config(port, &refs)}))
            .patch(patch)
            .routes(routes(http.addr, ws.addr)),
    )
    .await;
    Edge {
        _redis: redis,
        _http: http,
        _ws: ws,
        ca,
        tls: gate.tls[0],
        gate,
    }
}

const DEFAULT_CERT: (&str, &str) = ("default.test", "DNS:default.test,IP:127.0.0.1");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_chooses_the_certificate_and_no_sni_gets_the_first() {
    let e = edge_with(
        &[DEFAULT_CERT, ("b.test", "DNS:b.test,DNS:*.wild.test")],
        json!({}),
    )
    .await;
    let any = Client::any();
    for (sni, want) in [
        ("b.test", "b.test"),
        ("x.wild.test", "b.test"),
        ("default.test", "default.test"),
        ("unknown.test", "default.test"),
        // An IP address sends no SNI.
        ("127.0.0.1", "default.test"),
    ] {
        let tls = any.connect(e.tls, sni).await.unwrap();
        assert_eq!(served_cn(&tls), want, "SNI {sni}");
    }
    // The chain verifies against the CA, by name and by IP.
    let verified = Client::verified(&e.ca.cert);
    let mut tls = verified.connect(e.tls, "b.test").await.unwrap();
    let r = exchange(&mut tls, &get("/public/x", None, ""))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    verified.connect(e.tls, "127.0.0.1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listeners_say_https_upstream_and_add_hsts() {
    let e = edge_with(
        &[DEFAULT_CERT],
        json!({"tls": {"hsts": "max-age=63072000; includeSubDomains"}}),
    )
    .await;
    let (ticket, _) = e.gate.login("alice", "wonderland").await;
    let mut tls = Client::any().connect(e.tls, "default.test").await.unwrap();
    let forged = "X-Forwarded-Proto: http\r\nX-Forwarded-Host: evil.test\r\n";
    let r = exchange(&mut tls, &get("/controller/shop/x", Some(&ticket), forged))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let up = r.upstream_headers();
    assert_eq!(
        up.get("x-forwarded-proto").map(String::as_str),
        Some("https")
    );
    assert_eq!(
        up.get("x-forwarded-host").map(String::as_str),
        Some("gate.test")
    );
    assert_eq!(
        up.get("x-session-user").map(String::as_str),
        Some("u-alice")
    );
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=63072000; includeSubDomains")
    );
    // The gate's own answers carry it too, on the same kept-alive connection.
    let r = exchange(&mut tls, &get("/controller/shop/x", None, ""))
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    assert!(r.header("strict-transport-security").is_some());
    // The plain listener says http, whatever the client claims, and no HSTS.
    let r = e
        .gate
        .req("GET /public/x HTTP/1.1\r\nHost: gate.test\r\nX-Forwarded-Proto: https\r\n\r\n")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_headers()
            .get("x-forwarded-proto")
            .map(String::as_str),
        Some("http")
    );
    assert_eq!(r.header("strict-transport-security"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_tls_versions_are_refused() {
    let e = edge_with(&[DEFAULT_CERT], json!({})).await;
    // An alert (21: handshake_failure 40 or protocol_version 70), never a
    // ServerHello, for a client that offers only TLS 1.1.
    let (record, alert) = tls11_hello(e.tls).await;
    assert!(
        record == 21 && [40, 70].contains(&alert),
        "{record} {alert}"
    );
    // TLS 1.2 is accepted by default.
    Client::any()
        .tls12_only()
        .connect(e.tls, "default.test")
        .await
        .unwrap();
    drop(e);

    let e = edge_with(&[DEFAULT_CERT], json!({"tls": {"min_version": "1.3"}})).await;
    assert!(
        Client::any()
            .tls12_only()
            .connect(e.tls, "default.test")
            .await
            .is_err(),
        "TLS 1.2 accepted with min_version 1.3"
    );
    let mut tls = Client::any().connect(e.tls, "default.test").await.unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(tokio_rustls::rustls::ProtocolVersion::TLSv1_3)
    );
    let r = exchange(&mut tls, &get("/public/x", None, ""))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_plain_answers_308_to_the_same_url_on_https() {
    // The redirect names the configured TLS port: a real one, not 0.
    let e = edge_on(
        free_port(),
        &[DEFAULT_CERT],
        json!({"tls": {"redirect_plain": true}}),
    )
    .await;
    let r = e
        .gate
        .req("GET /controller/shop/a%20b?x=1&y=2 HTTP/1.1\r\nHost: Gate.Test:6090\r\n\r\n")
        .await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location").map(str::to_owned),
        Some(format!(
            "https://Gate.Test:{}/controller/shop/a%20b?x=1&y=2",
            e.tls.port()
        ))
    );
    // /_session too: nothing is served in the clear.
    let r = e
        .gate
        .req("POST /_session/login HTTP/1.1\r\nHost: [::1]:80\r\nContent-Length: 0\r\n\r\n")
        .await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location").map(str::to_owned),
        Some(format!("https://[::1]:{}/_session/login", e.tls.port()))
    );
    let r = e.gate.req("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n").await;
    assert_eq!((r.status, r.error().as_str()), (400, "bad_request"));
    // The TLS listener serves as usual.
    let mut tls = Client::any().connect(e.tls, "default.test").await.unwrap();
    let r = exchange(&mut tls, &get("/public/x", None, ""))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_from_an_untrusted_peer_is_dropped() {
    let e = edge_with(&[DEFAULT_CERT], json!({})).await;
    let r = e
        .gate
        .req("GET /public/x HTTP/1.1\r\nHost: gate.test\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 7.7.7.7\r\n\r\n")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_headers()
            .get("x-forwarded-for")
            .map(String::as_str),
        Some("127.0.0.1")
    );
    // The access log names the same client.
    let logged = eventually(Duration::from_secs(5), || async {
        e.gate
            .logs()
            .lines()
            .any(|l| l.contains("/x") && l.contains("client=127.0.0.1 "))
            .then_some(())
    })
    .await;
    assert!(logged.is_some(), "{}", e.gate.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_gives_the_rightmost_untrusted_address() {
    let e = edge_with(
        &[DEFAULT_CERT],
        json!({"clients": {"trusted_proxies": ["127.0.0.0/8", "10.0.0.0/8"]}}),
    )
    .await;
    let r = e
        .gate
        .req("GET /public/x HTTP/1.1\r\nHost: gate.test\r\nX-Forwarded-For: 6.6.6.6, 203.0.113.5\r\nX-Forwarded-For: 10.1.2.3\r\n\r\n")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_headers()
            .get("x-forwarded-for")
            .map(String::as_str),
        Some("6.6.6.6, 203.0.113.5")
    );
    let r = e
        .gate
        .req("GET /public/x HTTP/1.1\r\nHost: gate.test\r\n\r\n")
        .await;
    assert_eq!(
        r.upstream_headers()
            .get("x-forwarded-for")
            .map(String::as_str),
        Some("127.0.0.1")
    );
}

/// Sends `header` then a request on a fresh connection to `addr`; the
/// upstream's X-Forwarded-For, or `None` when the gate closed instead.
async fn via_proxy_header(addr: std::net::SocketAddr, header: &[u8]) -> Option<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(header).await.ok()?;
    let r = exchange(
        &mut s,
        &get("/public/x", None, "X-Forwarded-For: 6.6.6.6\r\n"),
    )
    .await
    .ok()?;
    r.upstream_headers().get("x-forwarded-for").cloned()
}

fn proxy_v2(src: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend([0x21, 0x11, 0x00, 12]);
    h.extend(src);
    h.extend([127, 0, 0, 1]);
    h.extend(port.to_be_bytes());
    h.extend(443u16.to_be_bytes());
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v1_and_v2_give_the_client_address() {
    let e = edge_with(
        &[DEFAULT_CERT],
        json!({"clients": {"proxy_protocol": true}}),
    )
    .await;
    let addr = e.gate.addr;
    assert_eq!(
        via_proxy_header(addr, b"PROXY TCP4 192.0.2.10 127.0.0.1 40000 6090\r\n").await,
        Some("192.0.2.10".into())
    );
    assert_eq!(
        via_proxy_header(addr, b"PROXY TCP6 2001:db8::7 ::1 40000 6090\r\n").await,
        Some("2001:db8::7".into())
    );
    assert_eq!(
        via_proxy_header(addr, &proxy_v2([198, 51, 100, 4], 5555)).await,
        Some("198.51.100.4".into())
    );
    // A balancer's health check (v1 UNKNOWN) is the connecting peer.
    assert_eq!(
        via_proxy_header(addr, b"PROXY UNKNOWN\r\n").await,
        Some("127.0.0.1".into())
    );
    // No header, or a broken one: closed without an answer.
    assert_eq!(via_proxy_header(addr, b"").await, None);
    assert_eq!(via_proxy_header(addr, b"PROXY TCP4 nope\r\n").await, None);

    // On the TLS listener the header comes before the handshake.
    let mut tcp = tokio::net::TcpStream::connect(e.tls).await.unwrap();
    tcp.write_all(&proxy_v2([192, 0, 2, 99], 7)).await.unwrap();
    let mut tls = Client::any().wrap(tcp, "default.test").await.unwrap();
    let r = exchange(&mut tls, &get("/public/x", None, ""))
        .await
        .unwrap();
    assert_eq!(
        r.upstream_headers()
            .get("x-forwarded-for")
            .map(String::as_str),
        Some("192.0.2.99")
    );
    assert!(Client::any().connect(e.tls, "default.test").await.is_err());
    // The gate still serves after all of that.
    assert_eq!(
        via_proxy_header(addr, b"PROXY TCP4 192.0.2.11 127.0.0.1 1 2\r\n").await,
        Some("192.0.2.11".into())
    );

    // Every listener, the admin one too (SPEC 3): without a header the
    // connection is closed unanswered; behind one (a balancer's UNKNOWN
    // health check included) it serves.
    let healthz = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    assert!(http(e.gate.admin, healthz).await.is_err());
    for header in [
        "PROXY TCP4 192.0.2.12 127.0.0.1 1 2\r\n",
        "PROXY UNKNOWN\r\n",
    ] {
        let r = http(e.gate.admin, &format!("{header}{healthz}"))
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{header}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_reaches_new_connections_and_a_bad_one_is_refused() {
    let e = edge_with(&[("first.test", "DNS:first.test,IP:127.0.0.1")], json!({})).await;
    let cert_file = e.ca.dir.join("first.test.pem");
    let key_file = e.ca.dir.join("first.test.key");
    let (ticket, _) = e.gate.login("alice", "wonderland").await;
    let any = Client::any();
    let mut old = any.connect(e.tls, "first.test").await.unwrap();
    assert_eq!(served_cn(&old), "first.test");
    let r = exchange(&mut old, &get("/controller/shop/a", Some(&ticket), ""))
        .await
        .unwrap();
    assert_eq!(r.status, 200);

    // Renewal: a new key and certificate written over the same files.
    let renewed = e.ca.issue("renewed.test", "DNS:first.test,IP:127.0.0.1", 2);
    std::fs::copy(&renewed.key, &key_file).unwrap();
    std::fs::copy(&renewed.cert, &cert_file).unwrap();
    let seen = eventually(Duration::from_secs(10), || async {
        let tls = any.connect(e.tls, "first.test").await.ok()?;
        (served_cn(&tls) == "renewed.test").then_some(())
    })
    .await;
    assert!(
        seen.is_some(),
        "renewed certificate not served: {}",
        e.gate.logs()
    );
    // The connection opened before the renewal keeps going, session and all.
    let r = exchange(&mut old, &get("/controller/shop/b", Some(&ticket), ""))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_headers()
            .get("x-session-user")
            .map(String::as_str),
        Some("u-alice")
    );

    // A key that does not match its certificate is refused with its file
    // named, and the renewed certificate stays. (The renewal itself may have
    // logged one mismatch, between its two copies: count from here.)
    let mismatches = || {
        e.gate
            .logs()
            .lines()
            .filter(|l| l.contains(key_file.to_str().unwrap()) && l.contains("does not match"))
            .count()
    };
    let before = mismatches();
    let other = e.ca.issue("other.test", "DNS:other.test", 2);
    std::fs::copy(&other.key, &key_file).unwrap();
    let refused = eventually(Duration::from_secs(10), || async {
        (mismatches() > before).then_some(())
    })
    .await;
    assert!(refused.is_some(), "{}", e.gate.logs());
    let tls = any.connect(e.tls, "first.test").await.unwrap();
    assert_eq!(served_cn(&tls), "renewed.test");
    // Garbage in the certificate file: refused too.
    std::fs::write(&cert_file, "not a certificate").unwrap();
    refused_reload(&e.gate, &cert_file, "no PEM certificate").await;
    let tls = any.connect(e.tls, "first.test").await.unwrap();
    assert_eq!(served_cn(&tls), "renewed.test");

    // An expired certificate (valid for 0 days) with its own key: refused.
    let expired = e.ca.issue("expired.test", "DNS:first.test", 0);
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    // Its notAfter is the second it was made: wait for that second to pass.
    eventually(Duration::from_secs(3), || async {
        matches!(
            sessiongate::tls::load(&expired.cert, &expired.key, now()),
            Err(sessiongate::tls::TlsError::Expired { .. })
        )
        .then_some(())
    })
    .await
    .unwrap();
    std::fs::copy(&expired.key, &key_file).unwrap();
    std::fs::copy(&expired.cert, &cert_file).unwrap();
    refused_reload(&e.gate, &cert_file, "certificate expired").await;
    let tls = any.connect(e.tls, "first.test").await.unwrap();
    assert_eq!(served_cn(&tls), "renewed.test");

    // The expiry of the certificate in force is on /metrics.
    let m = e.gate.admin_req("GET", "/metrics").await.text();
    let line = m
        .lines()
        .find(|l| l.starts_with("sessiongate_tls_certificate_expiry_timestamp_seconds{"))
        .unwrap_or_else(|| panic!("no expiry metric:\n{m}"));
    assert!(line.contains(cert_file.to_str().unwrap()), "{line}");
    let at: i64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(at > now + 86_400 && at < now + 3 * 86_400, "{line}");
}

/// One HTTP/2 request on a shared connection: status, body.
/// Waits for the gate to log that it refused `file` on reload for `why`.
async fn refused_reload(gate: &Gate, file: &std::path::Path, why: &str) {
    let file = file.to_str().unwrap();
    let refused = eventually(Duration::from_secs(10), || async {
        gate.logs()
            .lines()
            .any(|l| l.contains(file) && l.contains(why))
            .then_some(())
    })
    .await;
    assert!(refused.is_some(), "{}", gate.logs());
}

async fn h2_get(
    client: h2::client::SendRequest<bytes::Bytes>,
    path: &str,
    ticket: Option<&str>,
) -> (u16, Vec<u8>) {
    let mut req = http::Request::get(format!("https://gate.test{path}"));
    if let Some(t) = ticket {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let mut client = client.ready().await.unwrap();
    let (resp, _) = client.send_request(req.body(()).unwrap(), true).unwrap();
    let resp = resp.await.unwrap();
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    (status, out)
}

fn identity_of(body: &[u8]) -> Vec<(String, String)> {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    let h: std::collections::BTreeMap<String, String> =
        serde_json::from_value(v["headers"].clone()).unwrap_or_default();
    h.into_iter()
        .filter(|(k, _)| k.starts_with("x-session-") || k.starts_with("x-forwarded-"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streams_of_one_connection_follow_their_own_sessions() {
    let e = edge_with(&[DEFAULT_CERT], json!({})).await;
    let (alice, _) = e.gate.login("alice", "wonderland").await;
    let (bob, _) = e.gate.login("bob", "builder").await;

    // HTTP/1.1 over TLS on the same port: the reference for identity headers.
    let mut h1 = Client::any().connect(e.tls, "default.test").await.unwrap();
    assert_eq!(h1.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let r = exchange(&mut h1, &get("/controller/shop/same", Some(&alice), ""))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let over_h1 = identity_of(&r.body);
    assert!(
        over_h1
            .iter()
            .any(|(k, v)| k == "x-session-user" && v == "u-alice")
    );

    let tls = Client::any()
        .alpn(&[b"h2", b"http/1.1"])
        .connect(e.tls, "default.test")
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (client, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);

    let same = h2_get(client.clone(), "/controller/shop/same", Some(&alice)).await;
    assert_eq!(same.0, 200);
    assert_eq!(
        identity_of(&same.1),
        over_h1,
        "identity headers differ over h2"
    );

    let mut streams = Vec::new();
    for i in 0..48 {
        let (who, ticket, path) = match i % 4 {
            0 => ("u-alice", Some(alice.as_str()), "/controller/shop/i"),
            1 => ("u-bob", Some(bob.as_str()), "/controller/shop/i"),
            2 => ("-", None, "/controller/shop/i"),
            _ => ("admin", Some(alice.as_str()), "/admin/x"),
        };
        let c = client.clone();
        let ticket = ticket.map(str::to_owned);
        streams.push(tokio::spawn(async move {
            (who, h2_get(c, path, ticket.as_deref()).await)
        }));
    }
    for s in streams {
        let (who, (status, body)) = s.await.unwrap();
        match who {
            "-" => {
                assert_eq!(status, 401);
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(v["error"], "missing_ticket");
            }
            // alice is a player, not an admin.
            "admin" => assert_eq!(status, 403),
            user => {
                assert_eq!(status, 200);
                let id = identity_of(&body);
                assert!(
                    id.iter().any(|(k, v)| k == "x-session-user" && v == user),
                    "{user}: {id:?}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wss_tunnel_through_the_gate_ends_with_4401_on_logout() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let e = edge_with(&[DEFAULT_CERT], json!({})).await;
    let (ticket, _) = e.gate.login("alice", "wonderland").await;
    // A WebSocket goes over an http/1.1 connection (ALPN), as browsers open
    // one for it: the gate does not offer RFC 8441 WebSockets over h2.
    let tls = Client::verified(&e.ca.cert)
        .connect(e.tls, "default.test")
        .await
        .unwrap();
    let mut req = format!("wss://default.test/gateway/chat?ticket={ticket}")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("origin", "https://app.example.com".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tls).await.unwrap();
    assert_eq!(resp.status().as_u16(), 101);
    ws.send(Message::Text("over tls".into())).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap();
    assert_eq!(echoed.unwrap().unwrap(), Message::Text("over tls".into()));
    assert_eq!(
        e.gate
            .post("/_session/logout", Some(&ticket), "")
            .await
            .status,
        204
    );
    let closed = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(f)))) => {
                    return (u16::from(f.code), f.reason.to_string());
                }
                Some(Ok(_)) => continue,
                other => panic!("no Close frame: {other:?}"),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(closed, (4401, "session ended".to_owned()));
}

fn check(cfg: &std::path::Path) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sessiongate"))
        .args(["check", "-c"])
        .arg(cfg)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tls_only_config(
    dir: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> std::path::PathBuf {
    let p = dir.join("tls-only.yaml");
    std::fs::write(
        &p,
        format!(
            "listen: []\ntls:\n  listen: [\"127.0.0.1:1\"]\n  certificates:\n    - {{cert_file: {}, key_file: {}}}\nstore:\n  kind: memory\ntickets:\n  keys:\n    - id: k1\n      secret: {SECRET}\nroutes:\n  - name: r\n    kind: controller\n    path: /r\n    upstreams: [\"127.0.0.1:9\"]\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    p
}

#[test]
fn check_validates_certificate_files() {
    let dir = scratch_dir("edge-check");
    let ca = Ca::new(&dir);
    let good = ca.issue("good.test", "DNS:good.test", 30);
    let soon = ca.issue("soon.test", "DNS:soon.test", 3);
    let other = ca.issue("other.test", "DNS:other.test", 30);

    let (code, out, err) = check(&tls_only_config(&dir, &good.cert, &good.key));
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains("warning"), "{err}");

    // Within 14 days of expiry: still valid, with a warning naming the file.
    let (code, _, err) = check(&tls_only_config(&dir, &soon.cert, &soon.key));
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning")
            && err.contains(soon.cert.to_str().unwrap())
            && err.contains("soon.test"),
        "{err}"
    );

    // A key of another certificate: FILE:LINE:COL and the key file named.
    let cfg = tls_only_config(&dir, &good.cert, &other.key);
    let (code, _, err) = check(&cfg);
    assert_eq!(code, 1);
    let want = format!(
        "{}:5:7: tls.certificates[0]: {}: the key does not match",
        cfg.display(),
        other.key.display()
    );
    assert!(err.contains(&want), "{err}");

    // Unreadable and not PEM.
    let (code, _, err) = check(&tls_only_config(&dir, &dir.join("missing.pem"), &good.key));
    assert_eq!(code, 1);
    assert!(err.contains("missing.pem: cannot read"), "{err}");
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "junk").unwrap();
    let (code, _, err) = check(&tls_only_config(&dir, &junk, &good.key));
    assert_eq!(code, 1);
    assert!(err.contains("junk.pem: holds no PEM certificate"), "{err}");

    // Expired: the same certificate judged 31 days from now.
    let later = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + 31 * 86_400;
    let e = sessiongate::tls::load(&good.cert, &good.key, later).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("{}: certificate expired", good.cert.display())),
        "{e}"
    );
    let names = sessiongate::tls::load(&good.cert, &good.key, later - 31 * 86_400)
        .unwrap()
        .names;
    assert_eq!(names, vec!["good.test".to_owned()]);
}

/// A controller upstream serving one HTML page whose script logs in with
/// `fetch`, then reads `/_session` with the cookie alone, and writes what it
/// saw into the DOM.
async fn page_upstream() -> Upstream {
    use tokio::io::AsyncReadExt;
    const PAGE: &str = r#"<!doctype html><html><body><pre id="out">pending</pre><script>
(async () => {
  const out = document.getElementById('out');
  try {
    const l = await fetch('/_session/login', {method: 'POST', headers: {'content-type': 'application/json'},
      body: JSON.stringify({username: 'alice', password: 'wonderland'})});
    const s = await fetch('/_session');
    const j = await s.json();
    out.textContent = 'login=' + l.status + ' session=' + s.status + ' user=' + (j.user && j.user.id) +
      ' visible=[' + document.cookie + ']';
  } catch (e) { out.textContent = 'error ' + e; }
})();
</script></body></html>"#;
    Upstream::custom(|mut tcp| async move {
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            head.clear();
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{PAGE}",
                PAGE.len()
            );
            if tcp.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_cookie_flow_works_in_headless_chromium_over_https() {
    let chromium = std::path::Path::new("/usr/bin/chromium");
    assert!(
        chromium.exists(),
        "chromium is needed (make deps installs it)"
    );
    let redis = Redis::spawn().await;
    let page = page_upstream().await;
    let dir = scratch_dir("edge-chromium");
    let ca = Ca::new(&dir);
    let cert = ca.issue("localhost", "DNS:localhost,IP:127.0.0.1", 2);
    let routes = serde_json::json!([{"name": "app", "kind": "controller", "path": "/app", "upstreams": [page.addr.to_string()], "auth": "public"}]);
    let users = users_file(&dir);
    let config = Setup::redis(&redis)
        .patch(json!({"tls": tls_config(0, &[&cert])}))
        .routes(routes)
        .patch(json!({"tickets": {"cookie": {"secure": true}}}))
        .text(0, 0, &users);
    let gate = Gate::start_yaml(dir.clone(), &config, &[]).await;

    let profile = dir.join("chromium-profile");
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--ignore-certificate-errors",
                "--virtual-time-budget=5000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("--dump-dom")
            .arg(format!("https://{}/app/", gate.tls[0]))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chromium finished")
    .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    // `/_session` was read with the __Host- cookie alone (fetch sends no
    // Authorization), and HttpOnly kept the ticket from the script.
    assert!(
        dom.contains("login=201 session=200 user=u-alice visible=[]"),
        "DOM:\n{dom}\nstderr:\n{}\ngate:\n{}",
        String::from_utf8_lossy(&out.stderr),
        gate.logs()
    );
}

/// Fresh-connection GETs in a loop until `stop`: (answered 200, failed).
async fn load(
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    served: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> (usize, Vec<String>) {
    let (mut ok, mut failed) = (0, Vec::new());
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        match http(
            addr,
            "GET /public/x HTTP/1.1\r\nHost: gate.test\r\nConnection: close\r\n\r\n",
        )
        .await
        {
            Ok(r) if r.status == 200 => {
                ok += 1;
                served.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            }
            Ok(r) => failed.push(format!("status {}", r.status)),
            Err(e) => failed.push(e.to_string()),
        }
    }
    (ok, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_upgrade_takes_over_the_sockets_under_load_without_a_failed_request() {
    use futures_util::StreamExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let redis = Redis::spawn().await;
    let http_up = Upstream::http().await;
    let ws_up = Upstream::ws().await;
    let dir = scratch_dir("edge-upgrade");
    let (pid_file, sock) = (dir.join("gate.pid"), dir.join("upgrade.sock"));
    let setup = Setup::redis(&redis)
        .server(json!({"pid_file": pid_file, "upgrade_sock": sock, "grace_period": "3s"}))
        .routes(routes(http_up.addr, ws_up.addr));
    let users = users_file(&dir);
    let yaml = |listen: u16, admin: u16| setup.text(listen, admin, &users);
    let mut old = Gate::start_yaml(dir.clone(), &yaml(0, 0), &[]).await;
    // `--upgrade` finds the old sockets by address: from now on the config
    // names the ports the old gate was given.
    std::fs::write(&old.config, yaml(old.addr.port(), old.admin.port())).unwrap();
    let written = eventually(Duration::from_secs(5), || async {
        let p = std::fs::read_to_string(&pid_file).ok()?;
        (p.trim() == old.pid().to_string()).then_some(())
    })
    .await;
    assert!(written.is_some(), "no pid file");

    // A WebSocket on the old process: it must end with 1001, not be cut.
    let (ticket, _) = old.login("alice", "wonderland").await;
    let mut req = format!("ws://{}/gateway/chat?ticket={ticket}", old.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("origin", "https://app.example.com".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| tokio::spawn(load(old.addr, Arc::clone(&stop), Arc::clone(&served))))
        .collect();
    let served_past = |n: usize| {
        let served = Arc::clone(&served);
        async move {
            eventually(Duration::from_secs(10), || async {
                (served.load(Ordering::Acquire) >= n).then_some(())
            })
            .await
            .is_some()
        }
    };
    assert!(served_past(20).await, "no load on the old gate");

    let new_log = dir.join("new.log");
    let mut new = tokio::process::Command::new(env!("CARGO_BIN_EXE_sessiongate"))
        .args(["run", "--upgrade", "-c"])
        .arg(&old.config)
        .env("SESSIONGATE_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&new_log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let new_pid = new.id().unwrap();
    let took_over = eventually(Duration::from_secs(15), || async {
        let p = std::fs::read_to_string(&pid_file).ok()?;
        (p.trim() == new_pid.to_string()).then_some(())
    })
    .await;
    assert!(
        took_over.is_some(),
        "new gate did not take over:\n{}",
        std::fs::read_to_string(&new_log).unwrap_or_default()
    );
    let code = old.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(code, Some(0), "old gate:\n{}", old.logs());
    // The open WebSocket got a Close 1001 before the old process left.
    let closed = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(f)))) => return u16::from(f.code),
                Some(Ok(_)) => continue,
                _ => return 0,
            }
        }
    })
    .await
    .unwrap_or(0);
    assert_eq!(closed, 1001);
    // Requests keep being served, by the new process alone now.
    let after = served.load(Ordering::Acquire);
    assert!(
        served_past(after + 50).await,
        "no load served after the old gate left"
    );
    stop.store(true, Ordering::Release);
    let mut ok = 0;
    for w in workers {
        let (n, failed) = w.await.unwrap();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        ok += n;
    }
    assert!(ok > 50, "only {ok} requests");
    // The admin listener moved too.
    let r = http(old.admin, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(new.try_wait().unwrap().is_none(), "new gate exited");
    let _ = new.start_kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_with_only_tls_listeners_serves() {
    let redis = Redis::spawn().await;
    let http_up = Upstream::http().await;
    let dir = scratch_dir("edge-tls-only");
    let ca = Ca::new(&dir);
    let cert = ca.issue("only.test", "DNS:only.test,IP:127.0.0.1", 2);
    let users = users_file(&dir);
    let yaml = Setup::redis(&redis)
        .patch(json!({"listen": [], "tls": tls_config(0, &[&cert])}))
        .routes(routes(http_up.addr, http_up.addr))
        .text(0, 0, &users);
    let config: Value = serde_json::from_str(&yaml).unwrap();
    assert_eq!(config["listen"], json!([]), "{yaml}");
    // With no plain listener, the harness's `gate.addr` is the TLS one.
    let gate = Gate::start_yaml(dir, &yaml, &[]).await;
    let mut tls = Client::verified(&ca.cert)
        .connect(gate.addr, "only.test")
        .await
        .unwrap();
    let r = exchange(&mut tls, &get("/public/x", None, ""))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_headers()
            .get("x-forwarded-proto")
            .map(String::as_str),
        Some("https")
    );
}
