//! The route table — which configured route a request belongs to — and the path
//! normalization that runs before matching, so a request's policy is decided on the same path
//! the upstream resolves: `/public/../admin` is `/admin`, never something under `/public`.
//!
//! Routes match the path as the most lenient upstream reads it: [`match_path`] drops each
//! segment's `;parameters` (`/admin;jsessionid=x/secret` is under `/admin`, as Tomcat and
//! Spring read it), and [`same_authority`] decides whether an absolute-form target and `Host`
//! name the same server.
//!
//! Pure: no I/O, no clock. `find`, `normalize_path` and `match_path` do not allocate on the
//! common path.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::RouteConfig;

/// One configured route, ready for matching: its config, plus the host and
/// prefix in the form requests are compared with.
#[derive(Debug)]
pub struct Route {
    pub config: RouteConfig,
    /// Lowercase, without a port or trailing dot; `None` matches any host.
    pub host: Option<String>,
    /// Normalized like a request path, without a trailing slash except for `/` itself.
    pub prefix: String,
    /// False when the configured path does not normalize (config should have refused it):
    /// the route is still listed but never matches, so a bad path fails closed.
    matchable: bool,
    /// Round-robin cursor over `upstreams`.
    next: AtomicUsize,
}

impl Route {
    fn from_config(cfg: &RouteConfig) -> Route {
        let (prefix, matchable) = match normalize_prefix(&cfg.path) {
            // Requests match without `;parameters`, so the prefix is held so too.
            Ok(prefix) => (match_path(&prefix).into_owned(), true),
            Err(_) => (cfg.path.clone(), false),
        };
        Route {
            config: cfg.clone(),
            host: cfg
                .host
                .as_deref()
                .map(|h| host_without_port(h).to_ascii_lowercase()),
            prefix,
            matchable,
            next: AtomicUsize::new(0),
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Round robin over `upstreams`, skipping those `is_up` reports down. `None` when every
    /// upstream is down (or there are none): the caller answers 502 `upstream_unavailable`.
    pub fn pick_upstream(&self, is_up: impl Fn(&SocketAddr) -> bool) -> Option<SocketAddr> {
        let upstreams = &self.config.upstreams;
        let n = upstreams.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..n)
            .map(|i| upstreams[(start + i) % n])
            .find(|addr| is_up(addr))
    }

    /// The path to forward, given the normalized request path this route matched (the query
    /// string is the caller's to append). With `strip_prefix`, `/controller/shop/items`
    /// becomes `/items` and `/controller/shop` becomes `/`; otherwise the path is unchanged.
    ///
    /// `path` keeps its `;parameters` (they are the upstream's: `jsessionid`, matrix
    /// variables); the prefix's segments are counted as [`match_path`] reads them, so
    /// `/controller;a/shop;b/items;c` becomes `/items;c`.
    pub fn upstream_path<'a>(&self, path: &'a str) -> Cow<'a, str> {
        if !self.config.strip_prefix || self.prefix == "/" {
            return Cow::Borrowed(path);
        }
        if has_params(path) {
            let segments = self.prefix.split('/').skip(1).count();
            return match strip_segments(path, segments) {
                "" => Cow::Borrowed("/"),
                rest => Cow::Borrowed(rest),
            };
        }
        match path.strip_prefix(self.prefix.as_str()) {
            Some("") => Cow::Borrowed("/"),
            Some(rest) if rest.starts_with('/') => Cow::Borrowed(rest),
            // Not a path this route matched; forward it untouched rather than guess.
            _ => Cow::Borrowed(path),
        }
    }

    /// Whether a session holding `roles` may use this route: an empty route list admits
    /// anyone, otherwise any one shared role is enough (exact, case-sensitive).
    pub fn role_allowed(&self, roles: &[String]) -> bool {
        let allowed = &self.config.roles;
        allowed.is_empty() || roles.iter().any(|r| allowed.contains(r))
    }

    /// Whether a WebSocket handshake's `Origin` is allowed. No allowlist admits any origin;
    /// with one, the origin must equal an entry (ASCII case-insensitive, as an origin is only
    /// scheme, host and port). A missing `Origin` and the opaque `null` origin are refused.
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        let Some(allowed) = &self.config.origins else {
            return true;
        };
        match origin {
            None => false,
            Some(o) if o.eq_ignore_ascii_case("null") => false,
            Some(o) => allowed.iter().any(|a| a.eq_ignore_ascii_case(o)),
        }
    }

    fn matches(&self, host: Option<&str>, path: &str) -> bool {
        let host_ok = match (&self.host, host) {
            (None, _) => true,
            (Some(want), Some(got)) => got.eq_ignore_ascii_case(want),
            (Some(_), None) => false,
        };
        self.matchable && host_ok && prefix_matches(&self.prefix, path)
    }
}

/// The routes, kept in match order: longest prefix first, then host-specific before any-host,
/// then config order.
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    pub fn new(routes: &[RouteConfig]) -> RouteTable {
        let mut routes: Vec<Route> = routes.iter().map(Route::from_config).collect();
        // Stable, so equal keys keep config order and the first configured route wins.
        routes.sort_by_key(|r| std::cmp::Reverse((r.prefix.len(), r.host.is_some())));
        RouteTable { routes }
    }

    /// The route for a request. `host` is the request's `Host` (or `:authority`), with or
    /// without a port, in any case; `path` is already normalized (see [`normalize_path`]).
    ///
    /// A route with a `host` matches only that host. Prefixes match whole segments (`/api`
    /// matches `/api` and `/api/x`, never `/apix`; `/` matches everything). Among matches
    /// the longest prefix wins, and a host-specific route beats an any-host one of equal length.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        let host = host.map(host_without_port);
        self.routes.iter().find(|r| r.matches(host, path))
    }

    /// Every route, in match order (not config order).
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The path routes are matched on, given a normalized path: each segment without its
/// `;parameters` (`%3B` counts as `;`, for an upstream that decodes before it splits), and a
/// segment left empty by that dropped, as a servlet container reads the path:
/// `/admin;jsessionid=x/secret` is `/admin/secret`, `/;x/admin` is `/admin`, `/admin;x/` is
/// `/admin/`. A path without parameters comes back borrowed.
///
/// What is forwarded upstream keeps its parameters ([`Route::upstream_path`]);
/// [`normalize_path`] has already refused a dot segment carrying them.
pub fn match_path(path: &str) -> Cow<'_, str> {
    if !has_params(path) {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    let mut trailing_slash = false;
    for seg in path.split('/').skip(1) {
        let head = segment_head(seg);
        trailing_slash = head.is_empty();
        if !trailing_slash {
            out.push('/');
            out.push_str(head);
        }
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    Cow::Owned(out)
}

fn has_params(path: &str) -> bool {
    path.contains(';') || path.contains("%3B") || path.contains("%3b")
}

/// A segment up to its first `;` (raw or `%3B`).
fn segment_head(seg: &str) -> &str {
    let bytes = seg.as_bytes();
    let end = (0..bytes.len())
        .find(|&i| {
            bytes[i] == b';'
                || (bytes[i] == b'%'
                    && bytes.get(i + 1) == Some(&b'3')
                    && matches!(bytes.get(i + 2), Some(b'B' | b'b')))
        })
        .unwrap_or(bytes.len());
    &seg[..end]
}

/// `path` after its first `n` segments that are not empty in [`match_path`]'s reading
/// (empty when nothing follows).
fn strip_segments(path: &str, n: usize) -> &str {
    let mut seen = 0;
    let mut at = 0;
    while seen < n && at < path.len() {
        let rest = &path[at + 1..];
        let len = rest.find('/').unwrap_or(rest.len());
        if !segment_head(&rest[..len]).is_empty() {
            seen += 1;
        }
        at += 1 + len;
    }
    &path[at.min(path.len())..]
}

/// Whether an absolute-form target's authority and a `Host` name the same server: hosts
/// compared without case (and without a trailing dot), ports after the scheme's default is
/// filled in (`http://a.example/` and `Host: A.example:80` agree). `scheme` is the target's,
/// e.g. `http`.
pub fn same_authority(scheme: &str, authority: &str, host: &str) -> bool {
    let default_port = if scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("wss")
    {
        443
    } else {
        80
    };
    let port = |a: &str| -> Option<u16> {
        match port_of(a) {
            None | Some("") => Some(default_port),
            Some(p) => p.parse().ok(),
        }
    };
    host_without_port(authority).eq_ignore_ascii_case(host_without_port(host))
        && port(authority).is_some()
        && port(authority) == port(host)
}

/// The port of an authority, `None` when it has none (`[::1]` has none, `[::1]:80` has `80`).
fn port_of(authority: &str) -> Option<&str> {
    if authority.starts_with('[') {
        let end = authority.find(']')?;
        authority[end + 1..].strip_prefix(':')
    } else {
        authority.rsplit_once(':').map(|(_, port)| port)
    }
}

/// `api.example.com:443` -> `api.example.com`, `[::1]:8080` -> `[::1]`; a trailing dot
/// (the fully qualified spelling of the same name) is dropped too.
fn host_without_port(authority: &str) -> &str {
    let host = if authority.starts_with('[') {
        match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        }
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _port)| h)
    };
    host.strip_suffix('.').unwrap_or(host)
}

/// Why a request path was refused; the caller answers 400 `bad_request`.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("path does not start with '/'")]
    NotAbsolute,
    #[error("path contains an encoded '/' or '\\' (%2F, %5C)")]
    EncodedSlash,
    #[error("path climbs above the root with '..'")]
    EscapesRoot,
    #[error(
        "path contains an invalid percent-escape, a NUL, a backslash, a space or a control character"
    )]
    BadEncoding,
    /// `..;x` is `..` to servlet containers (Tomcat, Jetty): refused rather than guessed at.
    #[error("path has a '.' or '..' segment carrying ';' parameters")]
    DotSegmentParams,
}

/// Normalize a request path (the part before `?`), so that `/public/../admin` can never reach
/// a protected route under a public route's policy. The result is what the caller matches
/// routes against and forwards upstream.
///
/// - Percent-encoded unreserved characters (`ALPHA DIGIT - . _ ~`, notably `%2e`) are decoded;
///   other escapes are kept, with uppercase hex.
/// - Encoded `/` or `\` (`%2F`, `%5C`) is refused ([`PathError::EncodedSlash`]); so are raw
///   `\`, NUL (raw or `%00`), space, control characters and malformed escapes
///   ([`PathError::BadEncoding`]).
/// - Runs of `/` collapse; `.` and `..` segments are resolved, and `..` above the root is
///   refused ([`PathError::EscapesRoot`]); a trailing slash is kept (`/a/b/` stays `/a/b/`,
///   and `/a/b/..` is `/a/`).
///
/// An already normal path comes back borrowed, without allocating.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if needs_rewrite(path.as_bytes())? {
        rewrite(path).map(Cow::Owned)
    } else {
        Ok(Cow::Borrowed(path))
    }
}

/// A configured route path in the form [`Route::prefix`] holds: normalized like a request
/// path, without a trailing slash (except `/`). Config can call this to refuse bad paths at load.
pub fn normalize_prefix(path: &str) -> Result<String, PathError> {
    let normal = normalize_path(path)?;
    let prefix = match normal.strip_suffix('/') {
        Some(trimmed) if !trimmed.is_empty() => trimmed,
        _ => &normal,
    };
    Ok(prefix.to_owned())
}

/// One pass over an absolute path: every byte-level refusal, and whether anything needs
/// rewriting. Dot segments are only flagged; [`rewrite`] resolves or refuses them.
fn needs_rewrite(path: &[u8]) -> Result<bool, PathError> {
    let mut rewrite = false;
    let mut seg_start = 1;
    let mut i = 1;
    loop {
        match path.get(i).copied() {
            end @ (None | Some(b'/')) => {
                let seg = path.get(seg_start..i).unwrap_or_default();
                // An empty segment is fine only as the last one: a trailing slash, or "/".
                if (seg.is_empty() && end.is_some()) || is_dot_head(seg) {
                    rewrite = true;
                }
                if end.is_none() {
                    return Ok(rewrite);
                }
                seg_start = i + 1;
                i += 1;
            }
            Some(b'%') => {
                let (byte, lowercase) = escape_at(path, i)?;
                if lowercase || is_unreserved(byte) {
                    rewrite = true;
                }
                i += 3;
            }
            Some(b) => {
                check_raw(b)?;
                i += 1;
            }
        }
    }
}

/// The slow path: decode, then resolve segments into a fresh string.
fn rewrite(path: &str) -> Result<String, PathError> {
    // Decoding never yields '/', so segment boundaries are the same before and after.
    let mut decoded = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(pos) = rest.find('%') {
        let (head, tail) = rest.split_at(pos);
        decoded.push_str(head);
        let (byte, _) = escape_at(tail.as_bytes(), 0)?;
        if is_unreserved(byte) {
            decoded.push(char::from(byte));
        } else {
            push_escape(&mut decoded, byte);
        }
        rest = tail.get(3..).unwrap_or_default();
    }
    decoded.push_str(rest);

    let mut out = String::with_capacity(decoded.len());
    let mut trailing_slash = false;
    for seg in decoded.split('/').skip(1) {
        trailing_slash = false;
        match seg {
            "" | "." => trailing_slash = true,
            ".." => {
                let parent = out.rfind('/').ok_or(PathError::EscapesRoot)?;
                out.truncate(parent);
                trailing_slash = true;
            }
            _ if is_dot_head(seg.as_bytes()) => return Err(PathError::DotSegmentParams),
            _ => {
                out.push('/');
                out.push_str(seg);
            }
        }
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Whether a segment is `.` or `..`, with or without `;` parameters.
fn is_dot_head(seg: &[u8]) -> bool {
    // `%3B` counts as `;`: `..%3Bx` is `..` to an upstream that decodes, then splits.
    let head = std::str::from_utf8(seg).map_or(seg, |s| segment_head(s).as_bytes());
    let head = head.split(|&b| b == b';').next().unwrap_or_default();
    head == b"." || head == b".."
}

/// Decode the escape at `path[pos] == '%'`: its byte, and whether its hex had lowercase letters.
fn escape_at(path: &[u8], pos: usize) -> Result<(u8, bool), PathError> {
    let digit = |at: usize| path.get(at).copied().and_then(hex_value);
    let (Some((hi, hi_lower)), Some((lo, lo_lower))) = (digit(pos + 1), digit(pos + 2)) else {
        return Err(PathError::BadEncoding);
    };
    let byte = (hi << 4) | lo;
    match byte {
        b'/' | b'\\' => Err(PathError::EncodedSlash),
        0 => Err(PathError::BadEncoding),
        _ => Ok((byte, hi_lower || lo_lower)),
    }
}

fn hex_value(b: u8) -> Option<(u8, bool)> {
    match b {
        b'0'..=b'9' => Some((b - b'0', false)),
        b'A'..=b'F' => Some((b - b'A' + 10, false)),
        b'a'..=b'f' => Some((b - b'a' + 10, true)),
        _ => None,
    }
}

fn push_escape(out: &mut String, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(byte >> 4)]));
    out.push(char::from(HEX[usize::from(byte & 0x0f)]));
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// A raw backslash is a separator to some upstreams; NUL, space and controls are never valid.
fn check_raw(b: u8) -> Result<(), PathError> {
    if b == b'\\' || b <= b' ' || b == 0x7f {
        Err(PathError::BadEncoding)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AuthPolicy, RouteKind};
    use std::net::{Ipv4Addr, SocketAddr};
    use std::time::Duration;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    }

    fn route(name: &str, host: Option<&str>, path: &str) -> RouteConfig {
        RouteConfig {
            name: name.to_owned(),
            kind: RouteKind::Controller,
            host: host.map(str::to_owned),
            path: path.to_owned(),
            strip_prefix: false,
            upstreams: vec![addr(7001)],
            auth: AuthPolicy::Required,
            roles: Vec::new(),
            origins: None,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(1),
            tls: None,
        }
    }

    fn table(routes: &[RouteConfig]) -> RouteTable {
        RouteTable::new(routes)
    }

    fn found<'a>(t: &'a RouteTable, host: Option<&str>, path: &str) -> Option<&'a str> {
        t.find(host, path).map(Route::name)
    }

    /// Normalize, then route: what the proxy does for every request.
    fn route_for<'a>(t: &'a RouteTable, path: &str) -> Result<Option<&'a Route>, PathError> {
        let path = normalize_path(path)?;
        Ok(t.find(None, &path))
    }

    fn single(cfg: RouteConfig) -> Route {
        Route::from_config(&cfg)
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    // ---- matching -------------------------------------------------------------------------

    #[test]
    fn segment_prefix_does_not_match_partial_segment() {
        let t = table(&[route("api", None, "/api")]);
        assert_eq!(found(&t, None, "/api"), Some("api"));
        assert_eq!(found(&t, None, "/api/"), Some("api"));
        assert_eq!(found(&t, None, "/api/x"), Some("api"));
        assert_eq!(found(&t, None, "/apix"), None);
        assert_eq!(found(&t, None, "/ap"), None);
        assert_eq!(found(&t, None, "/"), None);
    }

    #[test]
    fn root_prefix_matches_everything() {
        let t = table(&[route("root", None, "/")]);
        for path in ["/", "/a", "/a/b/", "/apix"] {
            assert_eq!(found(&t, None, path), Some("root"), "{path}");
        }
    }

    #[test]
    fn longest_prefix_wins() {
        let t = table(&[
            route("root", None, "/"),
            route("api", None, "/api"),
            route("api-v2", None, "/api/v2"),
        ]);
        assert_eq!(found(&t, None, "/api/v2/items"), Some("api-v2"));
        assert_eq!(found(&t, None, "/api/v2"), Some("api-v2"));
        assert_eq!(found(&t, None, "/api/v3"), Some("api"));
        assert_eq!(found(&t, None, "/api/v2x"), Some("api"));
        assert_eq!(found(&t, None, "/other"), Some("root"));
    }

    #[test]
    fn host_specific_beats_wildcard() {
        let t = table(&[
            route("any", None, "/shop"),
            route("api-host", Some("api.example.com"), "/shop"),
        ]);
        assert_eq!(
            found(&t, Some("api.example.com"), "/shop/x"),
            Some("api-host")
        );
        assert_eq!(found(&t, Some("www.example.com"), "/shop/x"), Some("any"));
        assert_eq!(found(&t, None, "/shop/x"), Some("any"));
    }

    #[test]
    fn longer_prefix_beats_host_specific() {
        let t = table(&[
            route("host-root", Some("api.example.com"), "/"),
            route("any-shop", None, "/shop"),
        ]);
        assert_eq!(
            found(&t, Some("api.example.com"), "/shop"),
            Some("any-shop")
        );
        assert_eq!(
            found(&t, Some("api.example.com"), "/cart"),
            Some("host-root")
        );
    }

    #[test]
    fn host_match_ignores_port_and_case() {
        let t = table(&[
            route("api", Some("api.example.com"), "/"),
            route("v6", Some("[::1]"), "/"),
        ]);
        for host in [
            "api.example.com",
            "API.Example.COM",
            "api.example.com:443",
            "Api.Example.Com:8443",
            "api.example.com.",
            "api.example.com.:443",
        ] {
            assert_eq!(found(&t, Some(host), "/x"), Some("api"), "{host}");
        }
        assert_eq!(found(&t, Some("[::1]:8080"), "/x"), Some("v6"));
        assert_eq!(found(&t, Some("[::1]"), "/x"), Some("v6"));
    }

    #[test]
    fn host_route_needs_its_host() {
        let t = table(&[route("api", Some("api.example.com"), "/")]);
        assert_eq!(found(&t, None, "/x"), None);
        assert_eq!(found(&t, Some("api.example.com.evil.com"), "/x"), None);
        assert_eq!(found(&t, Some("evil.com"), "/x"), None);
        assert_eq!(found(&t, Some("xapi.example.com"), "/x"), None);
    }

    #[test]
    fn configured_host_is_lowercased_and_trimmed() {
        let t = table(&[route("api", Some("API.example.com."), "/")]);
        assert_eq!(t.routes()[0].host.as_deref(), Some("api.example.com"));
        assert_eq!(found(&t, Some("api.example.com"), "/"), Some("api"));
    }

    #[test]
    fn first_configured_route_wins_a_tie() {
        let t = table(&[route("first", None, "/a"), route("second", None, "/a/")]);
        assert_eq!(found(&t, None, "/a/b"), Some("first"));
    }

    #[test]
    fn configured_prefix_is_normalized() {
        let t = table(&[
            route("trailing", None, "/api/"),
            route("messy", None, "//shop/./cart/"),
            route("escaped", None, "/caf%c3%a9"),
            route("root", None, "/"),
        ]);
        let prefixes: Vec<&str> = t.routes().iter().map(|r| r.prefix.as_str()).collect();
        // Equal lengths (10 bytes) keep config order.
        assert_eq!(prefixes, ["/shop/cart", "/caf%C3%A9", "/api", "/"]);
        assert_eq!(found(&t, None, "/api"), Some("trailing"));
        assert_eq!(found(&t, None, "/shop/cart/1"), Some("messy"));
    }

    #[test]
    fn unnormalizable_configured_prefix_never_matches() {
        for path in ["", "api", "/../x", "/a%2fb", "/a\\b"] {
            let t = table(&[route("bad", None, path)]);
            assert_eq!(t.routes().len(), 1);
            for req in ["/", "/api", "/x", "/a"] {
                assert_eq!(found(&t, None, req), None, "route {path:?}, request {req}");
            }
        }
    }

    // ---- normalization before matching ----------------------------------------------------

    fn public_and_admin() -> RouteTable {
        let mut public = route("public", None, "/public");
        public.auth = AuthPolicy::Public;
        table(&[public, route("admin", None, "/admin")])
    }

    #[test]
    fn dot_dot_cannot_escape_public_prefix() {
        let t = public_and_admin();
        assert_eq!(
            normalize_path("/public/../admin"),
            Ok(Cow::Borrowed("/admin"))
        );
        let r = route_for(&t, "/public/../admin").ok().flatten();
        assert_eq!(
            r.map(|r| (r.name(), r.config.auth)),
            Some(("admin", AuthPolicy::Required))
        );
        let r = route_for(&t, "/public/x/../../admin/users").ok().flatten();
        assert_eq!(r.map(Route::name), Some("admin"));
    }

    #[test]
    fn encoded_dots_are_decoded_before_matching() {
        let t = public_and_admin();
        for path in [
            "/public/%2e%2e/admin",
            "/public/%2E%2E/admin",
            "/public/.%2e/admin",
            "/public/%2e./admin",
            "/public/%2e/../admin",
        ] {
            assert_eq!(normalize_path(path).as_deref(), Ok("/admin"), "{path}");
            let r = route_for(&t, path).ok().flatten();
            assert_eq!(r.map(Route::name), Some("admin"), "{path}");
        }
    }

    #[test]
    fn encoded_slash_is_rejected() {
        for path in [
            "/public/..%2fadmin",
            "/public%2F..%2Fadmin",
            "/a%2f",
            "/%2F",
        ] {
            assert_eq!(normalize_path(path), Err(PathError::EncodedSlash), "{path}");
        }
    }

    #[test]
    fn backslash_raw_or_encoded_is_rejected() {
        assert_eq!(
            normalize_path("/public/..%5cadmin"),
            Err(PathError::EncodedSlash)
        );
        assert_eq!(
            normalize_path("/public/..%5Cadmin"),
            Err(PathError::EncodedSlash)
        );
        assert_eq!(
            normalize_path("/public/..\\admin"),
            Err(PathError::BadEncoding)
        );
    }

    #[test]
    fn nul_and_controls_are_rejected() {
        for path in [
            "/a%00", "/a\0b", "/a\nb", "/a\rb", "/a\tb", "/a b", "/a\x7fb",
        ] {
            assert_eq!(
                normalize_path(path),
                Err(PathError::BadEncoding),
                "{path:?}"
            );
        }
    }

    #[test]
    fn invalid_percent_escapes_are_rejected() {
        for path in ["/%", "/a%", "/a%2", "/a%g0", "/a%0g", "/%%41", "/a%-1"] {
            assert_eq!(normalize_path(path), Err(PathError::BadEncoding), "{path}");
        }
    }

    #[test]
    fn double_slashes_collapse() {
        assert_eq!(normalize_path("//admin").as_deref(), Ok("/admin"));
        assert_eq!(
            normalize_path("/public//..//admin").as_deref(),
            Ok("/admin")
        );
        assert_eq!(normalize_path("/a///b//").as_deref(), Ok("/a/b/"));
        assert_eq!(normalize_path("//").as_deref(), Ok("/"));
    }

    #[test]
    fn escape_above_root_rejected() {
        for path in [
            "/..",
            "/../",
            "/../admin",
            "/a/../..",
            "/a/b/../../../c",
            "/%2e%2e/x",
        ] {
            assert_eq!(normalize_path(path), Err(PathError::EscapesRoot), "{path}");
        }
    }

    #[test]
    fn dot_segment_with_params_rejected() {
        for path in [
            "/public/..;/admin",
            "/public/..;x=1/admin",
            "/a/.;/b",
            "/%2e%2e;/x",
        ] {
            assert_eq!(
                normalize_path(path),
                Err(PathError::DotSegmentParams),
                "{path}"
            );
        }
        // ';' elsewhere in a segment is ordinary.
        assert!(matches!(
            normalize_path("/a;b/..c;/;x"),
            Ok(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn relative_path_rejected() {
        for path in ["", "admin", "*", "./admin", "%2Fadmin"] {
            assert_eq!(normalize_path(path), Err(PathError::NotAbsolute), "{path}");
        }
    }

    #[test]
    fn normal_path_is_borrowed() {
        for path in [
            "/",
            "/a",
            "/a/b/",
            "/api/v2/items",
            "/caf%C3%A9",
            "/a;b=c",
            "/~u/.x/x./...",
            "/é",
        ] {
            assert!(
                matches!(normalize_path(path), Ok(Cow::Borrowed(p)) if p == path),
                "{path}"
            );
        }
    }

    /// Input -> expected normal form or refusal.
    #[test]
    fn normalization_table() {
        use PathError::*;
        let cases: &[(&str, Result<&str, PathError>)] = &[
            ("/", Ok("/")),
            ("/a/b", Ok("/a/b")),
            ("/a/b/", Ok("/a/b/")),
            ("/a/./b", Ok("/a/b")),
            ("/a/b/.", Ok("/a/b/")),
            ("/a/b/..", Ok("/a/")),
            ("/a/b/../", Ok("/a/")),
            ("/a/b/../c", Ok("/a/c")),
            ("/a/..", Ok("/")),
            ("/.", Ok("/")),
            ("/./", Ok("/")),
            ("/./a", Ok("/a")),
            ("///a//b///", Ok("/a/b/")),
            ("/...", Ok("/...")),
            ("/a/.../b", Ok("/a/.../b")),
            ("/.a/a./..a", Ok("/.a/a./..a")),
            ("/%41%62%63", Ok("/Abc")),
            ("/%7e%5F%2D%2e", Ok("/~_-.")),
            ("/%3a%3A", Ok("/%3A%3A")),
            ("/%c3%a9", Ok("/%C3%A9")),
            ("/%25", Ok("/%25")),
            ("/%2541", Ok("/%2541")),
            ("/a%20b", Ok("/a%20b")),
            ("/a?b", Ok("/a?b")),
            ("/a/%2e", Ok("/a/")),
            ("/a/%2e%2e", Ok("/")),
            ("/a/b/%2E%2E/%2e/c/", Ok("/a/c/")),
            ("/a/..%2e", Ok("/a/...")),
            ("", Err(NotAbsolute)),
            ("a/b", Err(NotAbsolute)),
            ("/..", Err(EscapesRoot)),
            ("/a/../../b", Err(EscapesRoot)),
            ("/%2f", Err(EncodedSlash)),
            ("/%5c", Err(EncodedSlash)),
            ("/\\", Err(BadEncoding)),
            ("/%00", Err(BadEncoding)),
            ("/%zz", Err(BadEncoding)),
            ("/%2", Err(BadEncoding)),
            ("/..;", Err(DotSegmentParams)),
        ];
        for &(input, expected) in cases {
            let got = normalize_path(input);
            assert_eq!(got.as_deref().map_err(|e| *e), expected, "input {input:?}");
            if let Ok(out) = &got {
                assert_eq!(matches!(out, Cow::Borrowed(_)), *out == input, "{input:?}");
                assert!(
                    matches!(normalize_path(out), Ok(Cow::Borrowed(_))),
                    "{input:?}"
                );
            }
        }
    }

    /// Every short path over a hostile alphabet: no panic, every result is its own normal
    /// form (borrowed), with no empty or dot segment left for an upstream to reinterpret.
    #[test]
    fn normalized_paths_are_fixed_points() {
        const ALPHABET: &[char] = &['/', '.', 'a', '%', '2', 'e', 'f', ';', 'E'];
        let mut paths = vec![String::from("/")];
        let mut frontier = paths.clone();
        for _ in 0..5 {
            let next: Vec<String> = frontier
                .iter()
                .flat_map(|p| ALPHABET.iter().map(move |c| format!("{p}{c}")))
                .collect();
            paths.extend(next.iter().cloned());
            frontier = next;
        }
        for input in &paths {
            let Ok(out) = normalize_path(input) else {
                continue;
            };
            assert!(out.starts_with('/'), "{input:?} -> {out:?}");
            assert_eq!(
                matches!(out, Cow::Borrowed(_)),
                out == input.as_str(),
                "{input:?}"
            );
            assert!(
                matches!(normalize_path(&out), Ok(Cow::Borrowed(_))),
                "{input:?}"
            );
            let segments: Vec<&str> = out.split('/').skip(1).collect();
            let last = segments.len() - 1;
            for (i, seg) in segments.iter().enumerate() {
                assert!(!seg.is_empty() || i == last, "{input:?} -> {out:?}");
                assert!(!is_dot_head(seg.as_bytes()), "{input:?} -> {out:?}");
                assert!(
                    !seg.contains("%2e") && !seg.contains("%2E"),
                    "{input:?} -> {out:?}"
                );
            }
        }
    }

    // ---- path parameters ------------------------------------------------------------------

    #[test]
    fn path_params_are_ignored_for_matching() {
        let t = public_and_admin();
        let mut root = route("root", None, "/");
        root.auth = AuthPolicy::Public;
        let t2 = table(&[root, route("admin", None, "/admin")]);
        for path in [
            "/admin;jsessionid=x/secret",
            "/admin;/secret",
            "/admin;a=1;b=2",
            "/admin%3Bx/secret",
            "/admin%3bx/secret",
            "/;x/admin/secret",
            "//admin;x//secret",
        ] {
            let normal = normalize_path(path).unwrap();
            let matched = match_path(&normal);
            assert_eq!(found(&t, None, &matched), Some("admin"), "{path}");
            assert_eq!(found(&t2, None, &matched), Some("admin"), "{path}");
        }
    }

    #[test]
    fn path_params_are_removed_from_each_segment() {
        let cases = [
            ("/admin;jsessionid=x/secret", "/admin/secret"),
            ("/a;x/b;y/c;z", "/a/b/c"),
            ("/a;x/", "/a/"),
            ("/a/;x", "/a/"),
            ("/;x/a", "/a"),
            ("/;x", "/"),
            ("/a%3Bb/c", "/a/c"),
            ("/a;b%3Bc/d", "/a/d"),
        ];
        for (input, expected) in cases {
            assert_eq!(match_path(input), expected, "{input}");
        }
    }

    #[test]
    fn path_without_params_is_matched_as_is() {
        for path in ["/", "/admin/secret", "/a/b/", "/caf%C3%A9", "/a%3Ab"] {
            assert!(
                matches!(match_path(path), Cow::Borrowed(p) if p == path),
                "{path}"
            );
        }
    }

    #[test]
    fn dot_segment_with_encoded_params_rejected() {
        for path in ["/public/..%3Bx/admin", "/public/..%3b/admin", "/a/.%3Bx/b"] {
            assert_eq!(
                normalize_path(path),
                Err(PathError::DotSegmentParams),
                "{path}"
            );
        }
    }

    #[test]
    fn configured_prefix_with_params_matches_without_them() {
        let t = table(&[route("admin", None, "/admin;x")]);
        assert_eq!(t.routes()[0].prefix, "/admin");
        assert_eq!(found(&t, None, "/admin/y"), Some("admin"));
    }

    #[test]
    fn strip_prefix_counts_segments_without_params() {
        let r = shop(true);
        assert_eq!(r.upstream_path("/controller;a/shop;b/items;c"), "/items;c");
        assert_eq!(r.upstream_path("/controller/shop;b"), "/");
        assert_eq!(r.upstream_path("/controller/shop;b/"), "/");
        assert_eq!(r.upstream_path("/controller/;x/shop/items"), "/items");
        assert_eq!(
            shop(false).upstream_path("/controller;a/shop/items;c"),
            "/controller;a/shop/items;c",
            "without strip_prefix the parameters travel on"
        );
    }

    // ---- authority --------------------------------------------------------------------------

    #[test]
    fn same_authority_ignores_case_and_default_port() {
        for (scheme, authority, host) in [
            ("http", "api.example.com", "api.example.com"),
            ("http", "api.example.com", "API.Example.com"),
            ("http", "api.example.com:80", "api.example.com"),
            ("http", "api.example.com", "api.example.com:80"),
            ("HTTP", "api.example.com:", "api.example.com"),
            ("https", "api.example.com", "api.example.com:443"),
            ("http", "api.example.com:8080", "api.example.com:8080"),
            ("http", "[::1]", "[::1]:80"),
        ] {
            assert!(
                same_authority(scheme, authority, host),
                "{scheme} {authority} {host}"
            );
        }
    }

    #[test]
    fn different_authority_is_refused() {
        for (scheme, authority, host) in [
            ("http", "api.example.com", "other.example.com"),
            ("http", "api.example.com:8080", "api.example.com"),
            ("https", "api.example.com", "api.example.com:80"),
            ("http", "api.example.com:x", "api.example.com:x"),
            ("http", "api.example.com", "api.example.com.evil"),
        ] {
            assert!(
                !same_authority(scheme, authority, host),
                "{scheme} {authority} {host}"
            );
        }
    }

    // ---- strip_prefix ---------------------------------------------------------------------

    fn shop(strip: bool) -> Route {
        let mut cfg = route("shop", None, "/controller/shop");
        cfg.strip_prefix = strip;
        single(cfg)
    }

    #[test]
    fn strip_prefix_removes_prefix_segments() {
        let r = shop(true);
        assert_eq!(r.upstream_path("/controller/shop/items"), "/items");
        assert_eq!(r.upstream_path("/controller/shop/items/"), "/items/");
        assert_eq!(r.upstream_path("/controller/shop/a/b"), "/a/b");
    }

    #[test]
    fn strip_prefix_of_bare_prefix_is_root() {
        let r = shop(true);
        assert_eq!(r.upstream_path("/controller/shop"), "/");
        assert_eq!(r.upstream_path("/controller/shop/"), "/");
    }

    #[test]
    fn strip_prefix_off_keeps_path() {
        let r = shop(false);
        assert_eq!(
            r.upstream_path("/controller/shop/items"),
            "/controller/shop/items"
        );
        assert_eq!(r.upstream_path("/controller/shop"), "/controller/shop");
    }

    #[test]
    fn strip_prefix_of_root_route_keeps_path() {
        let mut cfg = route("root", None, "/");
        cfg.strip_prefix = true;
        let r = single(cfg);
        assert_eq!(r.upstream_path("/items"), "/items");
        assert_eq!(r.upstream_path("/"), "/");
    }

    #[test]
    fn strip_prefix_never_allocates() {
        let r = shop(true);
        assert!(matches!(
            r.upstream_path("/controller/shop/items"),
            Cow::Borrowed(_)
        ));
        assert!(matches!(
            r.upstream_path("/controller/shop"),
            Cow::Borrowed(_)
        ));
        assert!(matches!(
            r.upstream_path("/controller/shopping"),
            Cow::Borrowed("/controller/shopping")
        ));
    }

    // ---- upstreams ------------------------------------------------------------------------

    fn three_upstreams() -> Route {
        let mut cfg = route("rr", None, "/");
        cfg.upstreams = vec![addr(1), addr(2), addr(3)];
        single(cfg)
    }

    #[test]
    fn round_robin_cycles_upstreams() {
        let r = three_upstreams();
        let picks: Vec<_> = (0..6).filter_map(|_| r.pick_upstream(|_| true)).collect();
        assert_eq!(
            picks,
            [addr(1), addr(2), addr(3), addr(1), addr(2), addr(3)]
        );
    }

    #[test]
    fn round_robin_skips_down_upstreams() {
        let r = three_upstreams();
        let down = addr(2);
        let picks: Vec<_> = (0..6)
            .filter_map(|_| r.pick_upstream(|a| *a != down))
            .collect();
        assert_eq!(picks.len(), 6);
        assert!(!picks.contains(&down));
        assert!(picks.contains(&addr(1)) && picks.contains(&addr(3)));
    }

    #[test]
    fn all_upstreams_down_yields_none() {
        let r = three_upstreams();
        assert_eq!(r.pick_upstream(|_| false), None);
        let mut cfg = route("empty", None, "/");
        cfg.upstreams.clear();
        assert_eq!(single(cfg).pick_upstream(|_| true), None);
    }

    // ---- roles and origins ----------------------------------------------------------------

    #[test]
    fn roles_are_any_of() {
        let mut cfg = route("chat", None, "/chat");
        cfg.roles = strings(&["player", "admin"]);
        let r = single(cfg);
        assert!(r.role_allowed(&strings(&["player"])));
        assert!(r.role_allowed(&strings(&["guest", "admin"])));
        assert!(!r.role_allowed(&strings(&["guest"])));
        assert!(!r.role_allowed(&strings(&["Player"])));
        assert!(!r.role_allowed(&[]));
    }

    #[test]
    fn empty_roles_admit_anyone() {
        let r = single(route("open", None, "/"));
        assert!(r.role_allowed(&[]));
        assert!(r.role_allowed(&strings(&["anything"])));
    }

    fn chat_with_origins() -> Route {
        let mut cfg = route("chat", None, "/gateway/chat");
        cfg.kind = RouteKind::Gateway;
        cfg.origins = Some(strings(&[
            "https://app.example.com",
            "https://app.example.com:8443",
        ]));
        single(cfg)
    }

    #[test]
    fn origin_exact_match_allowed() {
        let r = chat_with_origins();
        assert!(r.origin_allowed(Some("https://app.example.com")));
        assert!(r.origin_allowed(Some("HTTPS://App.Example.com")));
        assert!(r.origin_allowed(Some("https://app.example.com:8443")));
    }

    #[test]
    fn origin_must_match_scheme_host_and_port() {
        let r = chat_with_origins();
        for origin in [
            "http://app.example.com",
            "https://app.example.com:444",
            "https://example.com",
            "https://app.example.com/",
            "https://evil.com",
            "",
        ] {
            assert!(!r.origin_allowed(Some(origin)), "{origin}");
        }
    }

    #[test]
    fn origin_suffix_trick_refused() {
        let r = chat_with_origins();
        assert!(!r.origin_allowed(Some("https://app.example.com.evil.com")));
        assert!(!r.origin_allowed(Some("https://evilapp.example.com")));
        assert!(!r.origin_allowed(Some("https://app.example.com@evil.com")));
    }

    #[test]
    fn origin_null_refused() {
        let r = chat_with_origins();
        assert!(!r.origin_allowed(Some("null")));
        let mut cfg = route("listed-null", None, "/");
        cfg.origins = Some(strings(&["null"]));
        assert!(!single(cfg).origin_allowed(Some("null")));
    }

    #[test]
    fn origin_missing_refused_when_listed() {
        assert!(!chat_with_origins().origin_allowed(None));
    }

    #[test]
    fn origin_unlisted_route_allows_any() {
        let r = single(route("any", None, "/"));
        assert!(r.origin_allowed(None));
        assert!(r.origin_allowed(Some("null")));
        assert!(r.origin_allowed(Some("https://evil.com")));
    }
}
