//! Where a request's ticket comes from (`Authorization: Bearer`, the ticket
//! cookie, `?ticket=` on WebSocket handshakes) and how the ticket cookie and
//! query parameter are taken out before forwarding. Pure header and string
//! work: no I/O, no Pingora.

use http::HeaderMap;

use crate::config::TicketSource;
use crate::gate::Settings;

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
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// A cookie's value, looked up across every `Cookie` header.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name)
                .then_some(v.trim_matches('"'))
                .filter(|v| !v.is_empty())
        })
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

/// The `Cookie` header value without the ticket cookie (`None` if nothing is left).
pub fn cookies_without(headers: &HeaderMap, name: &str) -> Option<String> {
    let kept: Vec<&str> = headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|p| !p.is_empty() && p.split_once('=').is_none_or(|(k, _)| k != name))
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

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
        assert_eq!(cookies_without(&h, "sg").as_deref(), Some("a=1; b=2; c=3"));
        assert_eq!(cookies_without(&headers(&[("cookie", "sg=T")]), "sg"), None);
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
