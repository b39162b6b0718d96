//! What the client's request head asks for, read before any route is chosen: whether it
//! fits the gate's limits, which server it names (an absolute-form target's authority, and
//! `Host`), what its `Upgrade` asks for, and a `Host` name fit for a redirect. Pure.

use http::header;
use pingora::prelude::*;

use crate::path::same_authority;
use crate::reject::Reject;

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

/// Longest request target (path and query) accepted: beyond it, 414.
pub const MAX_URI: usize = 8 * 1024;
/// Most header bytes accepted: beyond them, 431.
pub const MAX_HEADERS: usize = 64 * 1024;

/// The request head's size limits: 414 for a long target, 431 for large headers.
pub(super) fn within_limits(req: &RequestHeader) -> Result<(), Reject> {
    let uri_len = req.uri.path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len > MAX_URI {
        return Err(Reject::UriTooLong);
    }
    let header_bytes: usize = req
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > MAX_HEADERS {
        return Err(Reject::HeadersTooLarge);
    }
    Ok(())
}

/// Which server the request is for: an absolute-form target's authority (with its scheme),
/// which `Host` must agree with, else `Host`, which must be there (RFC 9112 section 3.2).
/// `None` when `Host` alone names it.
pub(super) fn request_authority(req: &RequestHeader) -> Result<Option<(String, String)>, Reject> {
    let bad = |why: &str| Reject::BadRequest(why.into());
    let authority = target_authority(req).map_err(bad)?;
    let host_problem = match (
        &authority,
        req.headers.get(header::HOST).map(|h| h.to_str()),
    ) {
        (_, Some(Err(_))) => Some("Host is not ASCII"),
        (Some((scheme, a)), Some(Ok(h))) if !same_authority(scheme, a, h) => {
            Some("Host differs from the request target's authority")
        }
        (None, None) => Some("no Host"),
        _ => None,
    };
    match host_problem {
        Some(why) => Err(bad(why)),
        None => Ok(authority),
    }
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
pub(super) mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A `GET /` with these headers.
    pub(in crate::proxy) fn request(pairs: &[(&str, &str)]) -> RequestHeader {
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

    // ---- what the upstream receives ------------------------------------------------------
}
