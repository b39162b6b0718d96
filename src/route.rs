//! The route table: which configured route a request belongs to, matched on the path
//! [`crate::path`] normalized, so a request's policy is decided on the same path the upstream
//! resolves (`/public/../admin` is `/admin`, never something under `/public`), and read as the
//! most lenient upstream reads it (`;parameters` dropped, as Tomcat and Spring read it).
//!
//! Pure: no I/O, no clock. `find` does not allocate on the common path.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::RouteConfig;
use crate::path::{has_params, host_without_port, match_path, normalize_prefix, strip_segments};

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
    /// without a port, in any case; `path` is already normalized (see [`crate::path::normalize_path`]).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AuthPolicy, RouteKind};
    use crate::path::{PathError, normalize_path};
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
