//! Where a request's ticket comes from (`Authorization: Bearer`, the ticket
//! cookie, `?ticket=` on WebSocket handshakes) and how the ticket cookie and
//! query parameter are taken out before forwarding. Pure header and string
//! work: no I/O, no Pingora.

use http::{HeaderMap, HeaderValue};

use crate::config::TicketSource;
use crate::settings::Settings;

/// Where the request's ticket came from; the gate removes cookie and query
/// tickets before forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketFrom {
    Header,
    Cookie,
    Query,
}

/// Finds the ticket in the configured places, in the configured order.
/// `?ticket=` is only honoured on WebSocket handshakes: browsers cannot set
/// headers there, and tickets in ordinary URLs leak into logs and referrers.
pub fn find_ticket<'a>(
    s: &Settings,
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    websocket: bool,
) -> Option<(&'a str, TicketFrom)> {
    for from in &s.config.tickets.from {
        let found = match from {
            TicketSource::Header => bearer(headers).map(|t| (t, TicketFrom::Header)),
            TicketSource::Cookie => {
                cookie(headers, &s.cookie_name).map(|t| (t, TicketFrom::Cookie))
            }
            TicketSource::Query if websocket => {
                query.and_then(query_ticket).map(|t| (t, TicketFrom::Query))
            }
            TicketSource::Query => None,
        };
        if found.is_some() {
            return found;
        }
    }
    None
}

/// `Authorization: Bearer <token>` (scheme case-insensitive).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    bearer_token(headers.get(http::header::AUTHORIZATION)?)
}

/// The token of one `Authorization` value, when its scheme is `Bearer`.
pub fn bearer_token(value: &HeaderValue) -> Option<&str> {
    let v = value.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The `name=value` pairs of one `Cookie` header, as bytes: a cookie may hold
/// any octet (non-ASCII, not UTF-8), and one odd cookie must not hide the rest.
fn pairs(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b';')
        .map(<[u8]>::trim_ascii)
        .filter(|p| !p.is_empty())
}

/// Whether a `name=value` pair is named `name`.
fn named(pair: &[u8], name: &[u8]) -> bool {
    pair.strip_prefix(name)
        .is_some_and(|rest| rest.first() == Some(&b'='))
}

/// A cookie's value, looked up across every `Cookie` header. A value that is
/// not UTF-8 is not a ticket, so it is skipped.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| pairs(v.as_bytes()))
        .find_map(|pair| {
            let v = pair
                .get(name.len() + 1..)
                .filter(|_| named(pair, name.as_bytes()))?;
            let v = std::str::from_utf8(v).ok()?.trim_matches('"');
            (!v.is_empty()).then_some(v)
        })
}

/// Whether any `Cookie` header holds a cookie with one of `names`.
pub fn has_cookie<S: AsRef<str>>(headers: &HeaderMap, names: &[S]) -> bool {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| pairs(v.as_bytes()))
        .any(|pair| names.iter().any(|n| named(pair, n.as_ref().as_bytes())))
}

/// Every `Cookie` header without the cookies named `names`, each header kept
/// as it was when it held none of them; a header left empty is dropped. The
/// rest of a rewritten header keeps its bytes, joined by `; `.
pub fn cookies_without<S: AsRef<str>>(headers: &HeaderMap, names: &[S]) -> Vec<HeaderValue> {
    let is_named = |pair: &[u8]| names.iter().any(|n| named(pair, n.as_ref().as_bytes()));
    let mut out = Vec::new();
    for value in headers.get_all(http::header::COOKIE) {
        if !pairs(value.as_bytes()).any(is_named) {
            out.push(value.clone());
            continue;
        }
        let mut kept: Vec<u8> = Vec::with_capacity(value.len());
        for pair in pairs(value.as_bytes()).filter(|p| !is_named(p)) {
            if !kept.is_empty() {
                kept.extend_from_slice(b"; ");
            }
            kept.extend_from_slice(pair);
        }
        // The bytes came from a valid header value, less separators, so they
        // still make one; a failure would only drop the header.
        if let Ok(v) = HeaderValue::from_bytes(&kept)
            && !kept.is_empty()
        {
            out.push(v);
        }
    }
    out
}

/// `Cookie` values as one, joined by `; ` (RFC 9113 section 8.2.3); `None`
/// when there are none.
pub fn join_cookies(values: Vec<HeaderValue>) -> Option<HeaderValue> {
    if values.len() < 2 {
        return values.into_iter().next();
    }
    let mut joined: Vec<u8> = Vec::new();
    for v in &values {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    // Valid header values joined by `; ` are a valid header value.
    HeaderValue::from_bytes(&joined).ok()
}

fn query_ticket(query: &str) -> Option<&str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("ticket="))
        .filter(|t| !t.is_empty())
}

/// The query string without its `ticket` parameter (`None` if nothing is left).
pub fn query_without_ticket(query: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| !kv.is_empty() && *kv != "ticket" && !kv.starts_with("ticket="))
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn cookie_crumbs_join_into_one_value_bytes_and_all() {
        let v = |b: &[u8]| HeaderValue::from_bytes(b).unwrap();
        assert_eq!(super::join_cookies(vec![]), None);
        assert_eq!(super::join_cookies(vec![v(b"a=1")]), Some(v(b"a=1")));
        assert_eq!(
            super::join_cookies(vec![v(b"pref=caf\xe9"), v(b"b=2"), v(b"lang=\xc3\xa9")]),
            Some(v(b"pref=caf\xe9; b=2; lang=\xc3\xa9"))
        );
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_needs_a_token() {
        assert_eq!(
            bearer(&headers(&[("authorization", "Bearer abc")])),
            Some("abc")
        );
        assert_eq!(
            bearer(&headers(&[("authorization", "bearer  abc ")])),
            Some("abc")
        );
        assert_eq!(bearer(&headers(&[("authorization", "Basic abc")])), None);
        assert_eq!(bearer(&headers(&[("authorization", "Bearer ")])), None);
        assert_eq!(bearer(&headers(&[])), None);
    }

    #[test]
    fn cookies_are_read_across_every_cookie_header() {
        let h = headers(&[("cookie", "a=1; b=2"), ("cookie", "sg=T; c=3")]);
        assert_eq!(cookie(&h, "sg"), Some("T"));
        assert_eq!(cookie(&h, "s"), None, "names match whole");
        let rest = cookies_without(&h, &["sg"]);
        assert_eq!(
            rest,
            [
                HeaderValue::from_static("a=1; b=2"),
                HeaderValue::from_static("c=3")
            ]
        );
        assert!(cookies_without(&headers(&[("cookie", "sg=T")]), &["sg"]).is_empty());
    }

    #[test]
    fn ticket_cookie_is_found_and_removed_beside_non_utf8_bytes() {
        let mut h = HeaderMap::new();
        let odd = HeaderValue::from_bytes(b"pref=caf\xe9; __Host-sg=T; x=\xff\xfe").unwrap();
        h.append(http::header::COOKIE, odd);
        h.append(
            http::header::COOKIE,
            HeaderValue::from_bytes(b"b=\xc3\xa9").unwrap(),
        );
        assert_eq!(cookie(&h, "__Host-sg"), Some("T"));
        assert!(has_cookie(&h, &["sg", "__Host-sg"]));
        let rest = cookies_without(&h, &["sg", "__Host-sg"]);
        assert_eq!(rest.len(), 2);
        assert_eq!(rest[0].as_bytes(), b"pref=caf\xe9; x=\xff\xfe");
        assert_eq!(
            rest[1].as_bytes(),
            b"b=\xc3\xa9",
            "a header without the ticket is kept as it was"
        );
    }

    #[test]
    fn cookie_names_match_whole_and_exactly() {
        let h = headers(&[("cookie", "xsg=1; sg_=2; SG=3; sg=T")]);
        assert_eq!(cookie(&h, "sg"), Some("T"));
        assert_eq!(
            cookies_without(&h, &["sg"]),
            [HeaderValue::from_static("xsg=1; sg_=2; SG=3")]
        );
        assert!(!has_cookie(&headers(&[("cookie", "xsg=1; sg")]), &["sg"]));
    }

    #[test]
    fn ticket_query_parameter_is_removed_and_others_kept() {
        assert_eq!(query_ticket("a=1&ticket=T&b=2"), Some("T"));
        assert_eq!(query_ticket("xticket=T"), None);
        assert_eq!(
            query_without_ticket("a=1&ticket=T&b=2").as_deref(),
            Some("a=1&b=2")
        );
        assert_eq!(query_without_ticket("ticket=T"), None);
        assert_eq!(query_without_ticket("ticket&x=1").as_deref(), Some("x=1"));
    }
}
