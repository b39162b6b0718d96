//! The rules of `attacks` (issue 9) on the other spellings the edge
//! accepts: HTTP/2 and HTTP/1.1 on a TLS listener, with PROXY protocol on.
//! Each test asserts what a recording upstream did or did not receive.
//!
//! Requests HTTP/2 forbids (connection-specific headers, `:protocol`, no
//! `:authority`) cannot be built with the `h2` client, so [`raw`] writes
//! those frames by hand.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::edge::{Ca, Client, exchange, tls_config};
use crate::support::recording::*;
use crate::support::*;
use serde_json::{Value, json};

/// Every route kind and auth policy on the recording upstream, host routes,
/// and a public root beside a protected `/admin`.
fn all_routes(rec: SocketAddr) -> Value {
    let mut all = Vec::new();
    for (name, kind, path, auth, host) in [
        ("rec", "controller", "/rec", "required", ""),
        ("rec-public", "controller", "/rec-public", "public", ""),
        (
            "rec-optional",
            "controller",
            "/rec-optional",
            "optional",
            "",
        ),
        ("gw-public", "gateway", "/gw-public", "public", ""),
        ("gw-required", "gateway", "/gw-required", "required", ""),
        (
            "hostonly",
            "controller",
            "/hostonly",
            "public",
            "api.example.com",
        ),
        ("anyhost", "controller", "/hostonly", "required", ""),
        ("admin", "controller", "/admin", "required", ""),
        ("root", "controller", "/", "public", ""),
    ] {
        let mut route = json!({
            "name": name, "kind": kind, "path": path,
            "upstreams": [rec.to_string()], "auth": auth,
        });
        if !host.is_empty() {
            route["host"] = host.into();
        }
        all.push(route);
    }
    Value::Array(all)
}

struct Edge {
    _redis: Redis,
    _rec: Upstream,
    seen: Seen,
    tls: SocketAddr,
    gate: Gate,
}

/// A gate with a plain and a TLS listener in front of [`all_routes`], its
/// config changed by the merge patch `patch`.
async fn edge(patch: Value) -> Edge {
    let redis = Redis::spawn().await;
    let (rec, seen) = recording(OK).await;
    let ca = Ca::new(&scratch_dir("attacks-h2-ca"));
    let cert = ca.issue("default.test", "DNS:default.test,IP:127.0.0.1", 2);
    let gate = Gate::start(
        &Setup::redis(&redis)
            .patch(json!({"tls": tls_config(0, &[&cert])}))
            .patch(patch)
            .routes(all_routes(rec.addr)),
    )
    .await;
    Edge {
        _redis: redis,
        _rec: rec,
        seen,
        tls: gate.tls[0],
        gate,
    }
}

type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

async fn tls_h1(addr: SocketAddr) -> TlsStream {
    let s = Client::any().connect(addr, "default.test").await.unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    s
}

/// An HTTP/2 connection over TLS (ALPN h2).
async fn h2_over(tls: TlsStream) -> h2::client::SendRequest<Bytes> {
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (client, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    client
}

async fn tls_h2_stream(addr: SocketAddr) -> TlsStream {
    Client::any()
        .alpn(&[b"h2"])
        .connect(addr, "default.test")
        .await
        .unwrap()
}

async fn h2(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    h2_over(tls_h2_stream(addr).await).await
}

/// A GET of `https://<authority><path>` with `headers` (appended, so a
/// name may repeat): status and body.
async fn h2_get(
    client: &h2::client::SendRequest<Bytes>,
    authority: &str,
    path: &str,
    headers: &[(&str, &[u8])],
) -> (u16, Vec<u8>) {
    let mut req = http::Request::get(format!("https://{authority}{path}"))
        .body(())
        .unwrap();
    for (k, v) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_bytes(v).unwrap(),
        );
    }
    let mut client = client.clone().ready().await.unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
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

fn error_of(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(body)))["error"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

// ---- identity headers -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_in_any_spelling_are_stripped_over_h2_and_tls() {
    let e = edge(json!({})).await;
    let (ticket, _) = e.gate.login("bob", "builder").await;
    let bearer = format!("Bearer {ticket}");
    let forged: &[(&str, &[u8])] = &[
        ("x_session_user", b"u-admin"),
        ("X-SESSION-ROLES", b"admin"),
        ("x-session_id", b"forged"),
        ("x_session_var_tier", b"platinum"),
        ("x-session-name", b"Admin"),
        ("x-sessionx", b"kept"),
    ];
    let c = h2(e.tls).await;
    let mut with_ticket = forged.to_vec();
    with_ticket.push(("authorization", bearer.as_bytes()));
    assert_eq!(h2_get(&c, "gate.test", "/rec/x", &with_ticket).await.0, 200);
    assert_eq!(
        h2_get(&c, "gate.test", "/rec-public/x", forged).await.0,
        200
    );
    // HTTP/1.1 on the TLS listener, names in mixed case.
    let mut h1 = tls_h1(e.tls).await;
    let raw = "X_Session_User: u-admin\r\nX-SESSION_ROLES: admin\r\nx_SESSION_var_tier: platinum\r\nX-Sessionx: kept\r\n";
    for (path, auth) in [
        ("/rec/x", format!("Authorization: {bearer}\r\n")),
        ("/rec-public/x", String::new()),
    ] {
        let r = exchange(
            &mut h1,
            &format!("GET {path} HTTP/1.1\r\nHost: gate.test\r\n{auth}{raw}\r\n"),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{path}");
    }
    let heads = take(&e.seen);
    assert_eq!(heads.len(), 4);
    for (i, head) in heads.iter().enumerate() {
        let (_, lines) = parse_head(head);
        let session: Vec<String> = names(&lines)
            .into_iter()
            .filter(|n| n.replace('_', "-").starts_with("x-session"))
            .collect();
        if i % 2 == 0 {
            assert_eq!(
                session,
                [
                    "x-session-id",
                    "x-session-name",
                    "x-session-roles",
                    "x-session-user",
                    "x-sessionx"
                ],
                "{}",
                String::from_utf8_lossy(head)
            );
            assert_eq!(values(&lines, "x-session-user"), [&b"u-bob"[..]]);
            assert_eq!(values(&lines, "x-session-roles"), [&b""[..]]);
            assert_eq!(values(&lines, "x-session-name"), [&b"Bob"[..]]);
            assert!(values(&lines, "authorization").is_empty());
        } else {
            assert_eq!(session, ["x-sessionx"], "{}", String::from_utf8_lossy(head));
        }
    }
}

// ---- ticket cookies ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ticket_cookie_is_removed_over_h2_in_one_header_or_in_crumbs() {
    let e = edge(json!({})).await;
    let (ticket, _) = e.gate.login("alice", "wonderland").await;
    let t = ticket.as_bytes();
    let one = [b"pref=caf\xe9; sg_ticket=", t, b"; x=\xff\xfe"].concat();
    let crumb = [b"sg_ticket=", t].concat();
    let c = h2(e.tls).await;
    for path in ["/rec/x", "/rec-public/x", "/rec-optional/x"] {
        let (status, body) = h2_get(&c, "gate.test", path, &[("cookie", &one)]).await;
        assert_eq!((status, body.as_slice()), (200, &b"ok"[..]), "{path}");
        // RFC 9113 8.2.3: a browser may split Cookie into one field per pair.
        let crumbs: &[(&str, &[u8])] = &[
            ("cookie", b"pref=caf\xe9"),
            ("cookie", &crumb),
            ("cookie", b"lang=\xc3\xa9"),
            ("cookie", b"theme=dark"),
        ];
        let (status, body) = h2_get(&c, "gate.test", path, crumbs).await;
        assert_eq!(
            (status, body.as_slice()),
            (200, &b"ok"[..]),
            "{path} crumbs"
        );
    }
    let heads = take(&e.seen);
    assert_eq!(heads.len(), 6);
    for (i, head) in heads.iter().enumerate() {
        let (_, lines) = parse_head(head);
        let want: &[u8] = if i % 2 == 0 {
            b"pref=caf\xe9; x=\xff\xfe"
        } else {
            // Crumbs reach an HTTP/1.1 upstream as one field (RFC 9113 8.2.3).
            b"pref=caf\xe9; lang=\xc3\xa9; theme=dark"
        };
        assert_eq!(
            values(&lines, "cookie"),
            [want],
            "{}",
            String::from_utf8_lossy(head)
        );
        assert!(!head.windows(t.len()).any(|w| w == t));
    }
}

// ---- Bearer tickets -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_bearer_ticket_is_never_forwarded_over_h2() {
    let e = edge(json!({})).await;
    let (live, _) = e.gate.login("alice", "wonderland").await;
    let (ended, _) = e.gate.login("bob", "builder").await;
    assert_eq!(
        e.gate
            .post("/_session/logout", Some(&ended), "")
            .await
            .status,
        204
    );
    let c = h2(e.tls).await;
    let bearer = |t: &str| format!("Bearer {t}").into_bytes();
    for (path, auth) in [
        ("/rec-public/x", bearer(&live)),
        ("/rec-public/x", format!("bearer {live}").into_bytes()),
        ("/rec-optional/x", bearer(&ended)),
        ("/rec-optional/x", bearer("not-a-ticket")),
    ] {
        let (status, _) = h2_get(&c, "gate.test", path, &[("authorization", &auth)]).await;
        assert_eq!(status, 200, "{path}");
    }
    // A gate ticket beside a foreign credential: only the foreign one goes on.
    let two: &[(&str, &[u8])] = &[
        ("authorization", b"Basic dXNlcjpwYXNz"),
        ("authorization", &bearer(&live)),
    ];
    assert_eq!(h2_get(&c, "gate.test", "/rec-public/x", two).await.0, 200);
    let heads = take(&e.seen);
    let auths: Vec<Vec<Vec<u8>>> = heads
        .iter()
        .map(|h| {
            let (_, lines) = parse_head(h);
            values(&lines, "authorization")
                .into_iter()
                .map(<[u8]>::to_vec)
                .collect()
        })
        .collect();
    let none: Vec<Vec<u8>> = Vec::new();
    assert_eq!(
        auths,
        [
            none.clone(),
            none.clone(),
            none.clone(),
            vec![b"Bearer not-a-ticket".to_vec()],
            vec![b"Basic dXNlcjpwYXNz".to_vec()],
        ]
    );
}

// ---- raw HTTP/2 frames --------------------------------------------------------------------

/// Hand-written HTTP/2: requests the `h2` client refuses to build.
mod raw {
    use super::*;

    pub const HEADERS: u8 = 1;
    pub const RST_STREAM: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const GOAWAY: u8 = 7;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend(stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// An HPACK integer with a 7-bit prefix (RFC 7541 5.1), H bit clear.
    fn length(b: &mut Vec<u8>, mut n: usize) {
        if n < 127 {
            b.push(n as u8);
            return;
        }
        b.push(127);
        n -= 127;
        while n >= 128 {
            b.push((n % 128 + 128) as u8);
            n /= 128;
        }
        b.push(n as u8);
    }

    /// An HPACK literal field without indexing, no Huffman coding.
    pub fn field(name: &str, value: &str) -> Vec<u8> {
        let mut b = vec![0x00];
        length(&mut b, name.len());
        b.extend_from_slice(name.as_bytes());
        length(&mut b, value.len());
        b.extend_from_slice(value.as_bytes());
        b
    }

    pub async fn read_frame(s: &mut TlsStream) -> Option<(u8, u8, u32, Vec<u8>)> {
        let mut head = [0u8; 9];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut head))
            .await
            .ok()?
            .ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut payload))
            .await
            .ok()?
            .ok()?;
        Some((head[3], head[4], stream, payload))
    }

    /// The connection preface and an empty SETTINGS; returns the server's
    /// SETTINGS parameters.
    pub async fn open(s: &mut TlsStream) -> Vec<(u16, u32)> {
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        s.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
        loop {
            let (kind, flags, _, payload) = read_frame(s).await.expect("server SETTINGS");
            if kind == SETTINGS && flags & 1 == 0 {
                s.write_all(&frame(SETTINGS, 1, 0, &[])).await.unwrap();
                return payload
                    .chunks(6)
                    .map(|p| {
                        (
                            u16::from_be_bytes([p[0], p[1]]),
                            u32::from_be_bytes([p[2], p[3], p[4], p[5]]),
                        )
                    })
                    .collect();
            }
        }
    }

    #[derive(Debug, PartialEq, Eq)]
    pub enum Answer {
        Status(u16),
        Reset(u32),
        GoAway(u32),
        Closed,
    }

    /// Decodes digits of a Huffman-coded `:status` value (RFC 7541 appendix
    /// B: `0`-`2` are 5-bit codes, `3`-`9` 6-bit ones).
    fn huffman_digits(bytes: &[u8]) -> Option<u16> {
        let bits: Vec<u8> = bytes
            .iter()
            .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
            .collect();
        let (mut i, mut n, mut digits) = (0, 0u16, 0);
        while digits < 3 {
            let take = |k: usize| -> Option<u8> {
                bits.get(i..i + k)
                    .map(|s| s.iter().fold(0u8, |a, b| (a << 1) | b))
            };
            let five = take(5)?;
            let d = if five <= 2 {
                i += 5;
                five
            } else {
                let six = take(6)?;
                i += 6;
                six.checked_sub(0b011001 - 3)
                    .filter(|d| (3..=9).contains(d))?
            };
            n = n * 10 + u16::from(d);
            digits += 1;
        }
        Some(n)
    }

    /// The `:status` of a response header block, which the server's encoder
    /// puts first.
    fn status_of(block: &[u8]) -> Option<u16> {
        let b = *block.first()?;
        if b & 0x80 != 0 {
            return [200, 204, 206, 304, 400, 404, 500]
                .get(usize::from(b & 0x7f).checked_sub(8)?)
                .copied();
        }
        let name = if b & 0xc0 == 0x40 { b & 0x3f } else { b & 0x0f };
        assert_eq!(name, 8, "the first field is not :status: {block:?}");
        let v = *block.get(1)?;
        let value = block.get(2..2 + usize::from(v & 0x7f))?;
        if v & 0x80 != 0 {
            huffman_digits(value)
        } else {
            std::str::from_utf8(value).ok()?.parse().ok()
        }
    }

    /// Sends one request (HEADERS with END_STREAM) on stream 1 of a fresh
    /// connection and reads what the server makes of it.
    pub async fn request(addr: SocketAddr, fields: &[(&str, &str)]) -> Answer {
        let mut s = tls_h2_stream(addr).await;
        open(&mut s).await;
        let block: Vec<u8> = fields.iter().flat_map(|(n, v)| field(n, v)).collect();
        s.write_all(&frame(HEADERS, 0x5, 1, &block)).await.unwrap();
        loop {
            let Some((kind, _, stream, payload)) = read_frame(&mut s).await else {
                return Answer::Closed;
            };
            match kind {
                HEADERS if stream == 1 => {
                    return Answer::Status(status_of(&payload).expect(":status"));
                }
                RST_STREAM if stream == 1 => {
                    return Answer::Reset(u32::from_be_bytes(payload[..4].try_into().unwrap()));
                }
                GOAWAY => {
                    return Answer::GoAway(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
                }
                _ => {}
            }
        }
    }

    #[test]
    fn status_codes_decode() {
        assert_eq!(status_of(&[0x88]), Some(200));
        assert_eq!(status_of(&[0x8c]), Some(400));
        assert_eq!(status_of(&[0x08, 0x03, b'4', b'0', b'1']), Some(401));
        // "401" Huffman-coded: 011010 00000 00001, padded with ones.
        assert_eq!(status_of(&[0x48, 0x82, 0x68, 0x01]), Some(401));
    }
}

use raw::Answer;

// ---- authority and Host -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_routes_by_its_authority_never_by_a_conflicting_host() {
    let e = edge(json!({})).await;
    let c = h2(e.tls).await;
    // The host route is public, the host-less one with the same path is not.
    let (status, _) = h2_get(&c, "api.example.com", "/hostonly/s?q=1", &[]).await;
    assert_eq!(status, 200);
    let (status, _) = h2_get(&c, "API.example.com:443", "/hostonly/s", &[]).await;
    assert_eq!(status, 200, "the same server in other bytes");
    let (status, body) = h2_get(&c, "other.example.com", "/hostonly/s", &[]).await;
    assert_eq!((status, error_of(&body).as_str()), (401, "missing_ticket"));
    // `host` and `:authority` disagree, either way round: 400, nothing forwarded.
    let heads = take(&e.seen);
    for (authority, host) in [
        ("other.example.com", "api.example.com"),
        ("api.example.com", "other.example.com"),
    ] {
        let (status, body) =
            h2_get(&c, authority, "/hostonly/s", &[("host", host.as_bytes())]).await;
        // Pingora's h2 server answers this one itself (RFC 9113 8.3.1), with
        // a bare 400 before the gate sees the request.
        assert_eq!(
            (status, body.as_slice()),
            (400, &b""[..]),
            "{authority} vs {host}"
        );
    }
    // No `:authority` and no `host`: 400. With only `host`, it routes by it.
    let base = [
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/hostonly/s"),
    ];
    assert_eq!(raw::request(e.tls, &base).await, Answer::Status(400));
    let mut only_host = base.to_vec();
    only_host.push(("host", "api.example.com"));
    assert_eq!(raw::request(e.tls, &only_host).await, Answer::Status(200));
    assert_eq!(take(&e.seen).len(), 1, "only the agreeing request went on");

    // The upstream is told the authority the route was chosen for.
    let hosts: Vec<Vec<u8>> = heads
        .iter()
        .map(|h| {
            let (line, lines) = parse_head(h);
            assert!(line.starts_with("GET /hostonly/s"), "{line}");
            assert_eq!(values(&lines, "host"), values(&lines, "x-forwarded-host"));
            values(&lines, "host").concat()
        })
        .collect();
    assert_eq!(hosts, [&b"api.example.com"[..], b"API.example.com:443"]);
}

// ---- paths --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_paths_with_params_dot_segments_or_encoded_separators_do_not_dodge_a_route() {
    let e = edge(json!({})).await;
    let c = h2(e.tls).await;
    for path in [
        "/admin;jsessionid=x/secret",
        "/admin;/secret",
        "/admin%3Bx/secret",
        "/;x/admin/secret",
        "/admin;x",
        "/rec-public/../admin/secret",
        "/rec-public/%2e%2e/admin/secret",
        "//rec-public/..//admin/secret",
        "/rec-public;x/../admin",
    ] {
        let (status, body) = h2_get(&c, "gate.test", path, &[]).await;
        assert_eq!(
            (status, error_of(&body).as_str()),
            (401, "missing_ticket"),
            "{path}"
        );
    }
    for path in [
        "/rec-public/..%2fadmin/secret",
        "/rec-public;x/..%3Bx/admin",
    ] {
        let (status, body) = h2_get(&c, "gate.test", path, &[]).await;
        assert_eq!(
            (status, error_of(&body).as_str()),
            (400, "bad_request"),
            "{path}"
        );
    }
    assert!(take(&e.seen).is_empty(), "nothing reached the upstream");
    let (ticket, _) = e.gate.login("alice", "wonderland").await;
    let auth = format!("Bearer {ticket}");
    let (status, _) = h2_get(
        &c,
        "gate.test",
        "/admin;jsessionid=x/secret",
        &[("authorization", auth.as_bytes())],
    )
    .await;
    assert_eq!(status, 200);
    let heads = take(&e.seen);
    assert_eq!(parse_head(&heads[0]).0, "GET /admin;jsessionid=x/secret");
}

// ---- upgrades -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_h2_request_opens_a_tunnel_on_any_route_kind() {
    let e = edge(json!({})).await;
    // RFC 8441 is not offered: no SETTINGS_ENABLE_CONNECT_PROTOCOL (8).
    let mut s = tls_h2_stream(e.tls).await;
    let settings = raw::open(&mut s).await;
    assert!(
        !settings.iter().any(|&(id, v)| id == 8 && v == 1),
        "{settings:?}"
    );
    drop(s);
    let (ticket, _) = e.gate.login("alice", "wonderland").await;
    let auth = format!("Bearer {ticket}");
    for path in [
        "/gw-public/chat",
        "/gw-required/chat",
        "/rec/x",
        "/rec-public/x",
        "/_session",
    ] {
        let ws = [
            ("sec-websocket-version", "13"),
            ("authorization", auth.as_str()),
        ];
        // Extended CONNECT: `:protocol` is a malformed request when not offered.
        let mut connect = vec![
            (":method", "CONNECT"),
            (":protocol", "websocket"),
            (":scheme", "https"),
            (":path", path),
            (":authority", "gate.test"),
        ];
        connect.extend(ws);
        assert_eq!(
            raw::request(e.tls, &connect).await,
            Answer::Reset(1),
            "{path}"
        );
        // HTTP/1.1 upgrade headers are connection-specific, malformed in h2.
        for extra in [
            &[("upgrade", "websocket"), ("connection", "upgrade")][..],
            &[("upgrade", "websocket")],
            &[("connection", "upgrade")],
        ] {
            let mut get = vec![
                (":method", "GET"),
                (":scheme", "https"),
                (":path", path),
                (":authority", "gate.test"),
            ];
            get.extend(ws);
            get.extend_from_slice(extra);
            assert_eq!(
                raw::request(e.tls, &get).await,
                Answer::Reset(1),
                "{path} {extra:?}"
            );
        }
    }
    // A plain CONNECT (authority only): Pingora's proxy refuses the method
    // itself, 405 before any filter, on h2 as on HTTP/1.1.
    let connect = [(":method", "CONNECT"), (":authority", "gate.test:443")];
    assert_eq!(raw::request(e.tls, &connect).await, Answer::Status(405));
    let mut h1 = tls_h1(e.tls).await;
    let r = exchange(
        &mut h1,
        "CONNECT gate.test:443 HTTP/1.1\r\nHost: gate.test:443\r\n\r\n",
    )
    .await;
    assert_eq!(r.map(|r| r.status).unwrap_or(0), 405);
    // HTTP/1.1 on the TLS listener: a WebSocket handshake off a gateway route
    // is 400; another upgrade is dropped and served as plain HTTP.
    for path in ["/rec/x", "/rec-public/x", "/_session"] {
        let r = exchange(
            &mut tls_h1(e.tls).await,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: gate.test\r\nAuthorization: {auth}\r\nUpgrade: foo, WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ),
        )
        .await
        .unwrap();
        assert_eq!(
            (r.status, r.error()),
            (400, "bad_request".to_owned()),
            "{path}"
        );
    }
    assert!(take(&e.seen).is_empty(), "no upstream heard any of it");
    let r = exchange(
        &mut tls_h1(e.tls).await,
        "GET /rec-public/x HTTP/1.1\r\nHost: gate.test\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let (_, lines) = parse_head(&take(&e.seen)[0]);
    assert!(values(&lines, "upgrade").is_empty(), "{lines:?}");
    assert!(values(&lines, "http2-settings").is_empty(), "{lines:?}");
    // The same connection kind still serves a plain GET on a gateway route.
    let c = h2(e.tls).await;
    assert_eq!(h2_get(&c, "gate.test", "/gw-public/chat", &[]).await.0, 200);
    let heads = take(&e.seen);
    let (line, lines) = parse_head(&heads[0]);
    assert_eq!(line, "GET /gw-public/chat");
    assert!(values(&lines, "upgrade").is_empty());
}

// ---- forwarding headers ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_replaced_over_h2_and_tls() {
    let e = edge(json!({})).await;
    let forged: &[(&str, &[u8])] = &[
        ("x-forwarded-for", b"6.6.6.6"),
        ("x-forwarded-for", b"7.7.7.7, 8.8.8.8"),
        ("x-forwarded-proto", b"http"),
        ("x-forwarded-host", b"evil.example"),
        ("x_forwarded_for", b"9.9.9.9"),
    ];
    let c = h2(e.tls).await;
    assert_eq!(
        h2_get(&c, "gate.test", "/rec-public/x", forged).await.0,
        200
    );
    let mut h1 = tls_h1(e.tls).await;
    let r = exchange(
        &mut h1,
        "GET /rec-public/x HTTP/1.1\r\nHost: gate.test\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: evil.example\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let heads = take(&e.seen);
    assert_eq!(heads.len(), 2);
    for head in &heads {
        let (_, lines) = parse_head(head);
        let fwd: Vec<(String, Vec<u8>)> = lines
            .iter()
            .filter(|(n, _)| n.starts_with("x-forwarded") || n.starts_with("x_forwarded"))
            .cloned()
            .collect();
        let mut fwd = fwd;
        fwd.sort();
        // `x_forwarded_for` is the same field to a CGI/WSGI upstream
        // (HTTP_X_FORWARDED_FOR): it goes too.
        let mut want = vec![
            ("x-forwarded-for".to_owned(), b"127.0.0.1".to_vec()),
            ("x-forwarded-host".to_owned(), b"gate.test".to_vec()),
            ("x-forwarded-proto".to_owned(), b"https".to_vec()),
        ];
        want.sort();
        assert_eq!(fwd, want, "{}", String::from_utf8_lossy(head));
    }
}

// ---- slow clients on TLS listeners ------------------------------------------------------------

/// Reads until the gate closes `s`; the bytes it sent first.
async fn until_closed<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    bound: Duration,
) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(bound, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()?;
    Some(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_on_a_tls_listener_are_cut_by_their_deadlines() {
    const HEADER: Duration = Duration::from_secs(2);
    const KEEPALIVE: Duration = Duration::from_secs(3);
    // sessiongate::listeners::HANDSHAKE_TIMEOUT
    const HANDSHAKE: Duration = Duration::from_secs(10);
    const SLACK: Duration = Duration::from_secs(3);
    let e = edge(json!({"server": {"header_timeout": "2s", "keepalive_timeout": "3s"}})).await;
    let tls = e.tls;

    // 1. TCP only, no ClientHello; 2. half a ClientHello record.
    let silent = tokio::spawn(async move {
        let mut s = TcpStream::connect(tls).await.unwrap();
        let t = Instant::now();
        let got = until_closed(&mut s, HANDSHAKE + SLACK).await;
        (got, t.elapsed())
    });
    let partial = tokio::spawn(async move {
        let mut s = TcpStream::connect(tls).await.unwrap();
        s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
            .await
            .unwrap();
        let t = Instant::now();
        let got = until_closed(&mut s, HANDSHAKE + SLACK).await;
        (got, t.elapsed())
    });
    // 3. TLS with ALPN h2, then not even the connection preface.
    let no_preface = tokio::spawn(async move {
        let mut s = tls_h2_stream(tls).await;
        let t = Instant::now();
        let got = until_closed(&mut s, HEADER + SLACK).await;
        (got.map(|_| Vec::new()), t.elapsed())
    });
    // 4. A full HTTP/2 connection that never sends a request.
    let no_request = tokio::spawn(async move {
        let mut s = tls_h2_stream(tls).await;
        raw::open(&mut s).await;
        let t = Instant::now();
        let got = until_closed(&mut s, KEEPALIVE + SLACK).await;
        (got.map(|_| Vec::new()), t.elapsed())
    });
    // 5. HTTP/1.1 over TLS: a head trickled a byte every 500 ms.
    let trickle = tokio::spawn(async move {
        let mut s = tls_h1(tls).await;
        s.write_all(b"GET /rec-public/x HTTP/1.1\r\nHost: gate.test\r\nX-Slow: ")
            .await
            .unwrap();
        let t = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let done = tokio::time::timeout(HEADER + SLACK, async {
            loop {
                tokio::select! {
                    n = s.read(&mut buf) => match n {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    },
                    _ = tick.tick() => {
                        if s.write_all(b"a").await.is_err() {
                            let _ = s.read_to_end(&mut got).await;
                            break;
                        }
                    }
                }
            }
        })
        .await;
        (done.ok().map(|_| got), t.elapsed())
    });

    // Meanwhile a normal client is served over h2 and over HTTP/1.1.
    let c = h2(tls).await;
    let mut h1 = tls_h1(tls).await;
    for _ in 0..3 {
        assert_eq!(h2_get(&c, "gate.test", "/rec-public/x", &[]).await.0, 200);
        let r = exchange(
            &mut h1,
            "GET /rec-public/x HTTP/1.1\r\nHost: gate.test\r\n\r\n",
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200);
    }

    for (what, task, deadline) in [
        ("no ClientHello", silent, HANDSHAKE),
        ("half a ClientHello", partial, HANDSHAKE),
        ("no h2 preface", no_preface, HEADER),
        ("no h2 request", no_request, KEEPALIVE),
        ("trickled h1 head", trickle, HEADER),
    ] {
        let (got, after) = task.await.unwrap();
        let got = got.unwrap_or_else(|| panic!("{what}: still open after {after:?}"));
        assert!(
            after + Duration::from_millis(500) >= deadline && after <= deadline + SLACK,
            "{what}: cut after {after:?}, deadline {deadline:?}"
        );
        if what == "trickled h1 head" {
            assert!(
                got.starts_with(b"HTTP/1.1 408 "),
                "{:?}",
                String::from_utf8_lossy(&got)
            );
        }
    }
    // The served requests were the only ones upstream.
    assert_eq!(take(&e.seen).len(), 6);
}

// ---- PROXY protocol -----------------------------------------------------------------------

fn proxy_v2(src: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend([0x21, 0x11, 0x00, 12]);
    h.extend(src);
    h.extend([127, 0, 0, 1]);
    h.extend(port.to_be_bytes());
    h.extend(443u16.to_be_bytes());
    h
}

async fn proxy_checks(e: &Edge) {
    // No PROXY header: closed without an answer, on both listeners.
    let mut s = TcpStream::connect(e.gate.addr).await.unwrap();
    s.write_all(b"GET /rec-public/x HTTP/1.1\r\nHost: gate.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        until_closed(&mut s, Duration::from_secs(15)).await,
        Some(Vec::new())
    );
    assert!(Client::any().connect(e.tls, "default.test").await.is_err());
    assert!(
        Client::any()
            .alpn(&[b"h2"])
            .connect(e.tls, "default.test")
            .await
            .is_err()
    );
    assert!(take(&e.seen).is_empty());

    // A forged X-Forwarded-For behind a PROXY header: plain HTTP/1.1, TLS
    // HTTP/1.1, TLS h2.
    let forged = "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: http\r\n";
    let mut s = TcpStream::connect(e.gate.addr).await.unwrap();
    s.write_all(b"PROXY TCP4 192.0.2.10 127.0.0.1 40000 6090\r\n")
        .await
        .unwrap();
    let r = exchange(
        &mut s,
        &format!("GET /rec-public/x HTTP/1.1\r\nHost: gate.test\r\n{forged}\r\n"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let mut tcp = TcpStream::connect(e.tls).await.unwrap();
    tcp.write_all(&proxy_v2([192, 0, 2, 11], 7)).await.unwrap();
    let mut tls = Client::any().wrap(tcp, "default.test").await.unwrap();
    let r = exchange(
        &mut tls,
        &format!("GET /rec-public/x HTTP/1.1\r\nHost: gate.test\r\n{forged}\r\n"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let mut tcp = TcpStream::connect(e.tls).await.unwrap();
    tcp.write_all(&proxy_v2([192, 0, 2, 12], 8)).await.unwrap();
    let c = h2_over(
        Client::any()
            .alpn(&[b"h2"])
            .wrap(tcp, "default.test")
            .await
            .unwrap(),
    )
    .await;
    let h: &[(&str, &[u8])] = &[
        ("x-forwarded-for", b"6.6.6.6"),
        ("x-forwarded-proto", b"http"),
    ];
    assert_eq!(h2_get(&c, "gate.test", "/rec-public/x", h).await.0, 200);

    let heads = take(&e.seen);
    let owned = |v: Vec<&[u8]>| v.into_iter().map(<[u8]>::to_vec).collect::<Vec<_>>();
    type Values = Vec<Vec<u8>>;
    let got: Vec<(Values, Values)> = heads
        .iter()
        .map(|h| {
            let (_, l) = parse_head(h);
            (
                owned(values(&l, "x-forwarded-for")),
                owned(values(&l, "x-forwarded-proto")),
            )
        })
        .collect();
    let one = |s: &str| vec![s.as_bytes().to_vec()];
    assert_eq!(
        got,
        [
            (one("192.0.2.10"), one("http")),
            (one("192.0.2.11"), one("https")),
            (one("192.0.2.12"), one("https")),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_proxy_protocol_only_the_proxy_source_is_believed() {
    let e = edge(json!({"clients": {"proxy_protocol": true}})).await;
    proxy_checks(&e).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_proxy_protocol_a_trusted_proxy_source_still_names_the_client() {
    // SPEC 6: the PROXY header's source is the client when one is used,
    // whatever `trusted_proxies` holds (the balancer saw the client itself).
    let e = edge(json!({"clients": {
        "proxy_protocol": true,
        "trusted_proxies": ["127.0.0.0/8", "192.0.2.0/24"],
    }}))
    .await;
    proxy_checks(&e).await;
}
