//! What the upstream receives: the client's request rewritten on its way up (forged
//! identity and forwarding headers stripped, the gate's ticket removed, the path normalized
//! and prefix-stripped, identity and `X-Forwarded-*` headers added), and the reading of the
//! request's target and `Upgrade` the hooks decide on.

use http::header;
use pingora::prelude::*;
use pingora::proxy::Session;

use super::Ctx;
use crate::credentials::{
    TicketFrom, bearer_token, cookies_without, has_cookie, join_cookies, query_without_ticket,
};
use crate::route::Route;
use crate::settings::Settings;

pub(super) const X_FORWARDED_FOR: &str = "x-forwarded-for";

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

/// What a request's `Upgrade` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Upgrade {
    None,
    /// `websocket` is one of its tokens (any case, any `Upgrade` header).
    WebSocket,
    /// Something else (`h2c`, `foo`): never tunnelled.
    Other,
}

pub(super) fn upgrade_of(headers: &http::HeaderMap) -> Upgrade {
    let mut values = headers.get_all(header::UPGRADE).iter().peekable();
    if values.peek().is_none() {
        return Upgrade::None;
    }
    let websocket = values.any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"websocket"))
    });
    if websocket {
        Upgrade::WebSocket
    } else {
        Upgrade::Other
    }
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

/// The authority an absolute-form target (`GET http://api.example.com/x`)
/// names, with its scheme. Pingora keeps it off the request's `Uri` (which
/// holds only the path), so it is read from the raw target, with Pingora's
/// own classifier. `Err` for a target that is ambiguous or not http(s).
pub(super) fn target_authority(
    req: &RequestHeader,
) -> Result<Option<(String, String)>, &'static str> {
    use pingora::http::authority::{RawTargetAuthority, raw_target_authority};
    if let Some(a) = req.uri.authority() {
        // An HTTP/2 request's `:authority`.
        let scheme = req.uri.scheme_str().unwrap_or("https");
        return Ok(Some((scheme.to_owned(), a.as_str().to_owned())));
    }
    match raw_target_authority(req.raw_path()) {
        RawTargetAuthority::None if req.raw_path().first() == Some(&b'/') => Ok(None),
        RawTargetAuthority::None => Err("request target is neither a path nor an http(s) URL"),
        RawTargetAuthority::AmbiguousAuthority => Err("ambiguous request target"),
        RawTargetAuthority::Absolute {
            scheme, authority, ..
        } => {
            let (Ok(scheme), Ok(authority)) =
                (std::str::from_utf8(scheme), std::str::from_utf8(authority))
            else {
                return Err("request target's authority is not ASCII");
            };
            let web = ["http", "https", "ws", "wss"]
                .iter()
                .any(|w| scheme.eq_ignore_ascii_case(w));
            if !web || authority.is_empty() || authority.contains('@') {
                return Err("request target is not an http(s) URL with a host");
            }
            Ok(Some((scheme.to_owned(), authority.to_owned())))
        }
    }
}

/// The gate's changes to a request on its way upstream: forged identity
/// headers, the ticket (cookie, `Authorization`, `?ticket=`) and the path
/// rewritten; identity and `X-Forwarded-*` headers added.
pub(super) fn rewrite_request(
    session: &Session,
    up: &mut RequestHeader,
    ctx: &Ctx,
    s: &Settings,
    route: &Route,
) -> pingora::Result<()> {
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
    // went; any other use of `Authorization` passes through.
    if ctx.claims.is_some() && ctx.ticket_from == Some(TicketFrom::Header) {
        up.remove_header(&header::AUTHORIZATION);
    }
    let is_ticket = |v: &http::HeaderValue| bearer_token(v).is_some_and(|t| s.keys.is_signed(t));
    if up
        .headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .any(is_ticket)
    {
        let kept: Vec<http::HeaderValue> = up
            .headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter(|v| !is_ticket(v))
            .cloned()
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
    let crumbs = session.is_http2() && up.headers.get_all(header::COOKIE).iter().nth(1).is_some();
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
    if let Some(a) = &ctx.authority {
        up.insert_header(header::HOST, a.as_str())?;
    }
    // Path: normalized, prefix stripped, `ticket` query parameter removed.
    let path = ctx.path.as_deref().unwrap_or(up.uri.path());
    let query = up.uri.query();
    let new_path = route.upstream_path(path);
    let strip_query = query.is_some_and(|q| q.contains("ticket"));
    if ctx.path.is_some() || route.config.strip_prefix || strip_query || ctx.authority.is_some() {
        let query = if strip_query {
            query.and_then(query_without_ticket)
        } else {
            query.map(str::to_owned)
        };
        let pq = match query {
            Some(q) => format!("{new_path}?{q}"),
            None => new_path.into_owned(),
        };
        let uri = http::Uri::builder()
            .path_and_query(pq)
            .build()
            .map_err(|e| Error::because(ErrorType::InternalError, "rewriting uri", e))?;
        up.set_uri(uri);
    }
    if let Some(a) = &ctx.claims {
        for (k, v) in &a.headers {
            up.insert_header(k.clone(), v.clone())?;
        }
    }
    // Only the gate's view of the client goes upstream: what the client sent
    // survives only as `ctx.client` kept it (SPEC 6).
    up.remove_header(X_FORWARDED_FOR);
    if let Some(c) = &ctx.client {
        up.insert_header(X_FORWARDED_FOR, c.forwarded_for.as_str())?;
    }
    up.insert_header("x-forwarded-proto", ctx.scheme())?;
    let req = session.req_header();
    // HTTP/2 carries the host as `:authority`, which lands in the URI.
    let host = match req.headers.get(header::HOST) {
        Some(h) => Some(h.clone()),
        None => req
            .uri
            .authority()
            .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok()),
    };
    if let Some(host) = host {
        up.insert_header("x-forwarded-host", host)?;
    }
    Ok(())
}

/// The name part of a `Host` value (`name`, `name:port`, `[v6]:port`), when
/// it is a plain host name or address that can go into a redirect.
pub(super) fn host_name(host: &str) -> Option<&str> {
    if host.starts_with('[') {
        let end = host.find(']')?;
        let (v6, rest) = host.split_at(end + 1);
        let ok = v6[1..end].parse::<std::net::Ipv6Addr>().is_ok()
            && (rest.is_empty() || rest[1..].bytes().all(|b| b.is_ascii_digit()));
        return ok.then_some(v6);
    }
    let name = host.split_once(':').map_or(host, |(n, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            n
        } else {
            ""
        }
    });
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    valid.then_some(name)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

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

    fn request(pairs: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in pairs {
            req.append_header(k.to_string(), *v).unwrap();
        }
        req
    }

    #[test]
    fn websocket_is_one_token_of_any_upgrade_header() {
        for pairs in [
            &[("upgrade", "websocket")][..],
            &[("upgrade", "WebSocket")],
            &[("upgrade", "foo, websocket")],
            &[("upgrade", "foo"), ("upgrade", " websocket ")],
        ] {
            assert_eq!(
                upgrade_of(&request(pairs).headers),
                Upgrade::WebSocket,
                "{pairs:?}"
            );
        }
        for pairs in [
            &[("upgrade", "h2c")][..],
            &[("upgrade", "websocketx")],
            &[("upgrade", "web socket")],
        ] {
            assert_eq!(
                upgrade_of(&request(pairs).headers),
                Upgrade::Other,
                "{pairs:?}"
            );
        }
        assert_eq!(
            upgrade_of(&request(&[("connection", "upgrade")]).headers),
            Upgrade::None
        );
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

    #[test]
    fn absolute_form_authority_comes_from_the_raw_target() {
        let req = RequestHeader::build("GET", b"http://api.example.com/x?q=1", None).unwrap();
        assert_eq!(
            target_authority(&req),
            Ok(Some(("http".to_owned(), "api.example.com".to_owned())))
        );
        assert_eq!(
            req.uri.path(),
            "/x",
            "Pingora keeps only the path in the Uri"
        );
        let req = RequestHeader::build("GET", b"/x", None).unwrap();
        assert_eq!(target_authority(&req), Ok(None));
        for target in [
            &b"*"[..],
            b"ftp://api.example.com/x",
            b"http://u@api.example.com/x",
        ] {
            let Ok(req) = RequestHeader::build("GET", target, None) else {
                continue;
            };
            assert!(
                target_authority(&req).is_err(),
                "{:?}",
                target.escape_ascii().to_string()
            );
        }
    }
}
