//! What the upstream receives: the client's request rewritten on its way up (forged
//! identity and forwarding headers stripped, the gate's ticket removed, the path normalized
//! and prefix-stripped, identity and `X-Forwarded-*` headers added), and a plain upgrade
//! taken off. A pure function of the request head and what the gate decided ([`Forward`]).

use std::borrow::Cow;

use http::header;
use pingora::prelude::*;

use crate::cache::Admitted;
use crate::credentials::{
    TicketFrom, bearer_token, cookies_without, has_cookie, join_cookies, query_without_ticket,
};
use crate::listeners::ClientAddr;
use crate::route::Route;
use crate::settings::Settings;

// Names as `&'static str`: Pingora keeps them for its case map without copying.
const X_FORWARDED_FOR: &str = "x-forwarded-for";
/// The same name for lookups, which a `&str` would make parse it again each time.
pub(super) const X_FORWARDED_FOR_NAME: http::HeaderName =
    http::HeaderName::from_static(X_FORWARDED_FOR);
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const X_FORWARDED_HOST: &str = "x-forwarded-host";

/// `X-Forwarded-Proto`'s value for a scheme, static for the two the gate has.
fn proto_value(scheme: &'static str) -> http::HeaderValue {
    match scheme {
        "https" => http::HeaderValue::from_static("https"),
        "http" => http::HeaderValue::from_static("http"),
        other => http::HeaderValue::from_str(other)
            .unwrap_or_else(|_| http::HeaderValue::from_static("http")),
    }
}

/// `x_forwarded_for`, `x-forwarded_proto`, …: a spelling of a forwarding
/// header the gate sets (SPEC 6) with `_` for `-`. A CGI/WSGI upstream reads
/// it as the header itself (`HTTP_X_FORWARDED_FOR`), beside or instead of
/// the gate's own, so it never goes on. Names are lowercase (`HeaderName`).
fn forwarding_alias(name: &http::HeaderName) -> bool {
    let n = name.as_str().as_bytes();
    n.contains(&b'_')
        && ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"]
            .iter()
            .any(|f| {
                f.len() == n.len()
                    && n.iter()
                        .zip(f.as_bytes())
                        .all(|(&a, &b)| a == b || (a == b'_' && b == b'-'))
            })
}

/// Takes a non-WebSocket upgrade off the client's request, `Upgrade` and the
/// `upgrade` token of `Connection` both, so that neither Pingora (which
/// tunnels any request with an `Upgrade` whose answer is 101) nor the
/// upstream sees one: the request is served as plain HTTP.
pub(super) fn drop_upgrade(req: &mut RequestHeader) -> pingora::Result<()> {
    req.remove_header(&header::UPGRADE);
    let connection: Vec<http::HeaderValue> = req
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .cloned()
        .collect();
    if connection.is_empty() {
        return Ok(());
    }
    req.remove_header(&header::CONNECTION);
    for value in connection {
        let kept: Vec<&[u8]> = value
            .as_bytes()
            .split(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
            .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case(b"upgrade"))
            .collect();
        if !kept.is_empty() {
            req.append_header(header::CONNECTION, kept.join(&b", "[..]))?;
        }
    }
    Ok(())
}

/// What the gate decided about a request that bears on what its upstream receives.
pub(super) struct Forward<'a> {
    pub settings: &'a Settings,
    pub route: &'a Route,
    /// The admitted identity, if any (never on a public route).
    pub admitted: Option<&'a Admitted>,
    /// Where the admitted ticket was found.
    pub ticket_from: Option<TicketFrom>,
    /// The normalized path, when it differs from the request's.
    pub path: Option<&'a str>,
    /// An absolute-form target's authority: the upstream's `Host`.
    pub authority: Option<&'a str>,
    /// The client the gate believes (SPEC 6).
    pub client: Option<&'a ClientAddr>,
    /// The listener's scheme, `http` or `https`.
    pub scheme: &'static str,
    /// The client spoke HTTP/2, so its `Cookie` may come in crumbs.
    pub http2: bool,
    /// Now, in seconds since the Unix epoch: a Bearer ticket first seen here is verified
    /// (and cached) as of then.
    pub now_secs: u64,
}

/// The gate's changes to a request on its way upstream, `up` being the copy of the
/// client's request (`client`) that goes there: forged identity headers, the ticket (cookie,
/// `Authorization`, `?ticket=`) and the path rewritten; identity and `X-Forwarded-*` headers
/// added. Pure: no session, no I/O.
pub(super) fn rewrite_request(
    client: &RequestHeader,
    up: &mut RequestHeader,
    f: &Forward<'_>,
) -> pingora::Result<()> {
    let (s, route) = (f.settings, f.route);
    // Identity headers come only from the gate; so do forwarding headers,
    // whose `_` spellings a CGI/WSGI upstream reads as the real ones.
    let forged: Vec<http::HeaderName> = up
        .headers
        .keys()
        .filter(|n| s.identity.is_identity(n) || forwarding_alias(n))
        .cloned()
        .collect();
    for name in &forged {
        up.remove_header(name);
    }
    // A ticket is the gate's credential, not the upstream's: an upstream
    // holding one could replay it. A Bearer value signed by one of the gate's
    // keys goes, expired or not, whatever the route and however admission
    // went; any other use of `Authorization` passes through. A ticket seen
    // before is known from the ticket cache, without an HMAC.
    if f.admitted.is_some() && f.ticket_from == Some(TicketFrom::Header) {
        up.remove_header(&header::AUTHORIZATION);
    }
    let is_ticket =
        |v: &http::HeaderValue| bearer_token(v).is_some_and(|t| s.is_gate_ticket(t, f.now_secs));
    let values = up.headers.get_all(header::AUTHORIZATION);
    // Each value is asked once: those before the first ticket are known not to be one.
    if let Some(first) = values.iter().position(is_ticket) {
        let kept: Vec<http::HeaderValue> = values
            .iter()
            .enumerate()
            .filter(|&(i, v)| i < first || (i > first && !is_ticket(v)))
            .map(|(_, v)| v.clone())
            .collect();
        up.remove_header(&header::AUTHORIZATION);
        for v in kept {
            up.append_header(header::AUTHORIZATION, v)?;
        }
    }
    // Ticket cookies never reach the upstream, whatever bytes sit beside them.
    // HTTP/2 clients may split `Cookie` into crumbs, one field per cookie;
    // they go to an HTTP/1.1 upstream as one field (RFC 9113 section 8.2.3),
    // which is all many servers read.
    let crumbs = f.http2 && up.headers.get_all(header::COOKIE).iter().nth(1).is_some();
    if crumbs || has_cookie(&up.headers, &s.strip_cookies) {
        let mut rest = cookies_without(&up.headers, &s.strip_cookies);
        if crumbs {
            rest = join_cookies(rest).into_iter().collect();
        }
        up.remove_header(&header::COOKIE);
        for value in rest {
            up.append_header(header::COOKIE, value)?;
        }
    }
    // An absolute-form target goes on in origin-form (below), with its
    // authority as `Host`.
    if let Some(a) = f.authority {
        up.insert_header(header::HOST, a)?;
    }
    // Path: normalized, prefix stripped, `ticket` query parameter removed.
    let path = f.path.unwrap_or(up.uri.path());
    let query = up.uri.query();
    let new_path = route.upstream_path(path);
    let strip_query = query.is_some_and(|q| q.contains("ticket"));
    if f.path.is_some() || route.config.strip_prefix || strip_query || f.authority.is_some() {
        let query = if strip_query {
            query.and_then(query_without_ticket).map(Cow::Owned)
        } else {
            query.map(Cow::Borrowed)
        };
        // One buffer of the right size, which the URI then keeps.
        let mut pq =
            String::with_capacity(new_path.len() + query.as_ref().map_or(0, |q| q.len() + 1));
        pq.push_str(&new_path);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(&q);
        }
        let uri = http::Uri::builder()
            .path_and_query(pq)
            .build()
            .map_err(|e| Error::because(ErrorType::InternalError, "rewriting uri", e))?;
        up.set_uri(uri);
    }
    // Names and values built when the ticket was verified: each insert
    // clones two reference counts.
    if let Some(a) = f.admitted {
        for (k, v) in &a.headers {
            up.insert_header(k.clone(), v.clone())?;
        }
    }
    // Only the gate's view of the client goes upstream: what the client sent
    // survives only as the believed client kept it (SPEC 6).
    // (An insert replaces every value the client sent.)
    match f.client {
        Some(c) => up.insert_header(X_FORWARDED_FOR, c.forwarded_for.clone())?,
        None => drop(up.remove_header(&X_FORWARDED_FOR_NAME)),
    }
    up.insert_header(X_FORWARDED_PROTO, proto_value(f.scheme))?;
    let req = client;
    // HTTP/2 carries the host as `:authority`, which lands in the URI.
    let host = match req.headers.get(header::HOST) {
        Some(h) => Some(h.clone()),
        None => req
            .uri
            .authority()
            .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok()),
    };
    if let Some(host) = host {
        up.insert_header(X_FORWARDED_HOST, host)?;
    }
    Ok(())
}
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::proxy::target::tests::request;
    use crate::proxy::target::{Upgrade, upgrade_of};

    #[test]
    fn underscore_spellings_of_forwarding_headers_are_aliases() {
        let alias =
            |n: &str| super::forwarding_alias(&http::HeaderName::from_bytes(n.as_bytes()).unwrap());
        for n in ["x_forwarded_for", "X_Forwarded-Proto", "x-forwarded_host"] {
            assert!(alias(n), "{n}");
        }
        // The gate's own spellings are replaced, not dropped; others are not its.
        for n in [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x_forwarded_fo",
            "x_forwarded_for_x",
            "x_real_ip",
        ] {
            assert!(!alias(n), "{n}");
        }
    }

    #[test]
    fn a_dropped_upgrade_takes_its_connection_token_along() {
        let mut req = request(&[
            ("upgrade", "h2c"),
            ("connection", "Upgrade, HTTP2-Settings"),
            ("connection", "upgrade"),
            ("connection", "keep-alive"),
        ]);
        drop_upgrade(&mut req).unwrap();
        assert!(req.headers.get(header::UPGRADE).is_none());
        let connection: Vec<&[u8]> = req
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        assert_eq!(connection, [&b"HTTP2-Settings"[..], b"keep-alive"]);
    }

    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use std::time::Duration;

    use crate::config::{AuthPolicy, RouteConfig, RouteKind};
    use crate::route::RouteTable;
    use crate::settings::tests::settings;
    use crate::ticket::Claims;

    fn table(kind: RouteKind, auth: AuthPolicy, strip_prefix: bool) -> RouteTable {
        RouteTable::new(&[RouteConfig {
            name: "app".to_owned(),
            kind,
            host: None,
            path: "/app".to_owned(),
            strip_prefix,
            upstreams: vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 7001))],
            auth,
            roles: Vec::new(),
            origins: None,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(1),
            tls: None,
        }])
    }

    fn claims(s: &Settings) -> Claims {
        Claims {
            iss: s.config.tickets.issuer.clone(),
            sid: "sid-1".into(),
            sub: "u1".into(),
            name: "Ann".into(),
            roles: vec!["player".into(), "admin".into()],
            vars: [("tier".to_owned(), "gold".to_owned())].into(),
            iat: 0,
            exp: u64::MAX / 2,
        }
    }

    /// What a request with no identity, path or authority of note on `route` brings.
    fn plain<'a>(s: &'a Settings, route: &'a Route) -> Forward<'a> {
        Forward {
            settings: s,
            route,
            admitted: None,
            ticket_from: None,
            path: None,
            authority: None,
            client: None,
            scheme: "http",
            http2: false,
            now_secs: 0,
        }
    }

    fn client_addr() -> ClientAddr {
        ClientAddr {
            ip: IpAddr::from([203, 0, 113, 7]),
            forwarded_for: http::HeaderValue::from_static("198.51.100.1, 203.0.113.7"),
        }
    }

    /// Every header of `r` as `name: value`, in order.
    fn lines(r: &RequestHeader) -> Vec<String> {
        r.headers
            .iter()
            .map(|(k, v)| format!("{}: {}", k, String::from_utf8_lossy(v.as_bytes())))
            .collect()
    }

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    /// For each route kind and auth mode, with and without an identity: forged identity
    /// headers (every spelling) and forwarding aliases stripped, the gate's ticket gone from
    /// `Authorization`, `Cookie` and the query, the gate's identity and `X-Forwarded-*` set,
    /// `Host` kept.
    #[test]
    fn the_upstream_gets_the_gates_view_for_every_kind_and_auth_mode() {
        let s = settings();
        let c = claims(&s);
        let ticket = s.keys.sign(&c).unwrap();
        let admitted = Admitted::new(c.clone(), s.identity.for_claims(&c), &ticket);
        let cookie = &s.strip_cookies[0];
        let client_at = client_addr();
        for kind in [RouteKind::Controller, RouteKind::Gateway] {
            for auth in [
                AuthPolicy::Public,
                AuthPolicy::Required,
                AuthPolicy::Optional,
            ] {
                for identity in [false, true] {
                    if auth == AuthPolicy::Public && identity {
                        continue; // a public route admits no one
                    }
                    let t = table(kind, auth, false);
                    let mut client =
                        RequestHeader::build("GET", b"/app/x?ticket=abc&q=1", None).unwrap();
                    for (k, v) in [
                        ("host", "gate.example"),
                        ("x-session-user", "mallory"),
                        ("X_Session_Roles", "admin"),
                        ("x-session_id", "sid-forged"),
                        ("X-SESSION-VAR-TIER", "platinum"),
                        ("x_forwarded_for", "6.6.6.6"),
                        ("X-Forwarded_Host", "evil.example"),
                        ("x-forwarded-for", "7.7.7.7"),
                        ("x-forwarded-proto", "ftp"),
                        ("authorization", &format!("Bearer {ticket}")),
                        ("cookie", &format!("{cookie}={ticket}; theme=dark")),
                        ("accept", "*/*"),
                    ] {
                        client.append_header(k.to_owned(), v).unwrap();
                    }
                    let mut up = client.clone();
                    let f = Forward {
                        admitted: identity.then_some(&admitted),
                        ticket_from: identity.then_some(TicketFrom::Header),
                        client: Some(&client_at),
                        scheme: "https",
                        ..plain(&s, &t.routes()[0])
                    };
                    rewrite_request(&client, &mut up, &f).unwrap();
                    let mut want = vec![
                        "host: gate.example".to_owned(),
                        "accept: */*".to_owned(),
                        "cookie: theme=dark".to_owned(),
                        "x-forwarded-for: 198.51.100.1, 203.0.113.7".to_owned(),
                        "x-forwarded-proto: https".to_owned(),
                        "x-forwarded-host: gate.example".to_owned(),
                    ];
                    if identity {
                        want.extend(
                            [
                                "x-session-id: sid-1",
                                "x-session-user: u1",
                                "x-session-name: Ann",
                                "x-session-roles: player,admin",
                                "x-session-var-tier: gold",
                            ]
                            .map(str::to_owned),
                        );
                    }
                    let case = format!("{kind:?} {auth:?} identity={identity}");
                    assert_eq!(sorted(lines(&up)), sorted(want), "{case}");
                    assert_eq!(up.uri.to_string(), "/app/x?q=1", "{case}");
                }
            }
        }
    }

    /// `Authorization` that is not the gate's ticket is the upstream's; a gate-signed Bearer
    /// goes even when no identity was admitted from it (expired, optional route).
    #[test]
    fn only_the_gates_own_bearer_ticket_is_taken_off() {
        let s = settings();
        let ticket = s.keys.sign(&claims(&s)).unwrap();
        let t = table(RouteKind::Controller, AuthPolicy::Optional, false);
        for (sent, kept) in [
            ("Basic dTpw", Some("Basic dTpw")),
            ("Bearer not-a-gate-ticket", Some("Bearer not-a-gate-ticket")),
            (&*format!("Bearer {ticket}"), None),
        ] {
            let mut client = RequestHeader::build("GET", b"/app", None).unwrap();
            client.append_header("host", "gate.example").unwrap();
            client.append_header("authorization", sent).unwrap();
            let mut up = client.clone();
            let f = plain(&s, &t.routes()[0]);
            rewrite_request(&client, &mut up, &f).unwrap();
            let got = up.headers.get("authorization").map(|v| v.to_str().unwrap());
            assert_eq!(got, kept, "{sent}");
            assert_eq!(up.headers.get("x-forwarded-for"), None);
            assert_eq!(up.headers.get("x-forwarded-proto").unwrap(), "http");
        }
    }

    /// The normalized path goes upstream with the route's prefix stripped; an absolute-form
    /// target's authority becomes `Host`, while `X-Forwarded-Host` keeps the client's.
    #[test]
    fn path_prefix_and_authority_are_rewritten() {
        let s = settings();
        let t = table(RouteKind::Gateway, AuthPolicy::Public, true);
        let mut client = RequestHeader::build("GET", b"/app/./a/../b;v=1?x=2", None).unwrap();
        client.append_header("host", "API.example.com:80").unwrap();
        let mut up = client.clone();
        let f = Forward {
            path: Some("/app/b;v=1"),
            authority: Some("api.example.com"),
            ..plain(&s, &t.routes()[0])
        };
        rewrite_request(&client, &mut up, &f).unwrap();
        assert_eq!(up.uri.to_string(), "/b;v=1?x=2");
        assert_eq!(
            sorted(lines(&up)),
            sorted(
                [
                    "host: api.example.com",
                    "x-forwarded-proto: http",
                    "x-forwarded-host: API.example.com:80",
                ]
                .map(str::to_owned)
                .to_vec()
            )
        );
    }

    /// HTTP/2 cookie crumbs go to the HTTP/1.1 upstream as one `Cookie`, the ticket left out.
    #[test]
    fn http2_cookie_crumbs_are_joined_without_the_ticket() {
        let s = settings();
        let t = table(RouteKind::Controller, AuthPolicy::Required, false);
        let mut client = RequestHeader::build("GET", b"/app", None).unwrap();
        for v in ["a=1", &format!("{}=t", s.strip_cookies[1]), "b=2"] {
            client.append_header("cookie", v).unwrap();
        }
        let mut up = client.clone();
        let f = Forward {
            scheme: "https",
            http2: true,
            ..plain(&s, &t.routes()[0])
        };
        rewrite_request(&client, &mut up, &f).unwrap();
        let cookies: Vec<&str> = up
            .headers
            .get_all("cookie")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(cookies, ["a=1; b=2"]);
    }

    /// A WebSocket handshake keeps its upgrade for the gate's own hand-off; any other
    /// upgrade is taken off before the request is rewritten, so no upstream sees it.
    #[test]
    fn only_a_websocket_upgrade_survives_on_its_way_upstream() {
        let s = settings();
        for (kind, upgrade, survives) in [
            (RouteKind::Gateway, "websocket", true),
            (RouteKind::Controller, "h2c", false),
            (RouteKind::Gateway, "h2c", false),
        ] {
            let t = table(kind, AuthPolicy::Public, false);
            let mut client = request(&[
                ("host", "gate.example"),
                ("upgrade", upgrade),
                ("connection", "Upgrade"),
            ]);
            if upgrade_of(&client.headers) == Upgrade::Other {
                drop_upgrade(&mut client).unwrap();
            }
            let mut up = client.clone();
            let f = plain(&s, &t.routes()[0]);
            rewrite_request(&client, &mut up, &f).unwrap();
            assert_eq!(up.headers.contains_key("upgrade"), survives, "{upgrade}");
            assert_eq!(up.headers.contains_key("connection"), survives, "{upgrade}");
        }
    }
}
