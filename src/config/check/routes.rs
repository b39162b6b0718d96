//! Checks of routes: hosts, path prefixes, upstreams (resolved once, at load), upstream TLS and
//! allowed origins.

use super::*;

impl Ctx<'_> {
    pub(super) fn routes(&mut self, raw: Vec<RawRoute>) -> Vec<RouteConfig> {
        if raw.is_empty() {
            self.err("routes", "at least one route is required");
        }
        let mut first_by_name: HashMap<String, usize> = HashMap::new();
        let mut first_by_place: HashMap<(Option<String>, String), usize> = HashMap::new();
        let mut out = Vec::with_capacity(raw.len());
        for (i, r) in raw.into_iter().enumerate() {
            let route = self.route(i, r);
            if let Some(&first) = first_by_name.get(&route.name) {
                let there = self.where_is(&format!("routes[{first}].name"));
                self.err(
                    &format!("routes[{i}].name"),
                    format!(
                        "duplicate route name `{}` (first used at {there})",
                        route.name
                    ),
                );
            } else {
                first_by_name.insert(route.name.clone(), i);
            }
            let prefix = normalize_prefix(&route.path).unwrap_or_else(|_| route.path.clone());
            let place = (route.host.clone(), prefix);
            if let Some(&first) = first_by_place.get(&place) {
                let there = self.where_is(&format!("routes[{first}].path"));
                self.err(
                    &format!("routes[{i}].path"),
                    format!("another route has the same host and path (at {there})"),
                );
            } else {
                first_by_place.insert(place, i);
            }
            out.push(route);
        }
        out
    }

    pub(super) fn route(&mut self, i: usize, r: RawRoute) -> RouteConfig {
        let p = |field: &str| format!("routes[{i}].{field}");
        self.nonempty(&p("name"), &r.name);
        let kind = self.choice(
            &p("kind"),
            Some(&r.kind),
            &[
                ("gateway", RouteKind::Gateway),
                ("controller", RouteKind::Controller),
            ],
            RouteKind::Controller,
        );
        let host = r.host.map(|h| self.host(&p("host"), &h));
        self.route_path(&p("path"), &r.path);
        if r.upstreams.is_empty() {
            self.err(&p("upstreams"), "at least one upstream is required");
        }
        let upstreams = r
            .upstreams
            .iter()
            .enumerate()
            .filter_map(|(j, u)| self.upstream(&format!("routes[{i}].upstreams[{j}]"), u))
            .collect();
        let auth = self.choice(
            &p("auth"),
            r.auth.as_deref(),
            &[
                ("required", AuthPolicy::Required),
                ("optional", AuthPolicy::Optional),
                ("public", AuthPolicy::Public),
            ],
            AuthPolicy::Required,
        );
        let roles = r.roles.unwrap_or_default();
        if !roles.is_empty() && auth != AuthPolicy::Required {
            self.err(&p("roles"), "roles apply only with `auth: required`");
        }
        for (j, role) in roles.iter().enumerate() {
            self.role(&format!("routes[{i}].roles[{j}]"), role);
        }
        let origins = r.origins.map(|list| {
            if kind != RouteKind::Gateway {
                self.err(
                    &p("origins"),
                    "applies only to `kind: gateway` routes (WebSocket handshakes)",
                );
            }
            if list.is_empty() {
                self.err(
                    &p("origins"),
                    "an empty list refuses every handshake; remove the key to allow any origin",
                );
            }
            list.iter()
                .enumerate()
                .filter_map(|(j, o)| self.origin(&format!("routes[{i}].origins[{j}]"), o))
                .collect()
        });
        let tls = r.tls.map(|tls| self.route_tls(i, &r.upstreams, tls));
        RouteConfig {
            name: r.name,
            kind,
            host,
            path: r.path,
            strip_prefix: r.strip_prefix.unwrap_or(false),
            upstreams,
            auth,
            roles,
            origins,
            timeout: self.positive_duration(
                &p("timeout"),
                r.timeout.as_deref(),
                DEFAULT_ROUTE_TIMEOUT,
            ),
            connect_timeout: self.positive_duration(
                &p("connect_timeout"),
                r.connect_timeout.as_deref(),
                DEFAULT_CONNECT_TIMEOUT,
            ),
            tls,
        }
    }

    pub(super) fn route_tls(
        &mut self,
        i: usize,
        upstreams: &[String],
        raw: RawRouteTls,
    ) -> RouteTls {
        let p = |field: &str| format!("routes[{i}].tls{field}");
        // By default the name verified is the first upstream's host as written.
        let sni = raw.sni.unwrap_or_else(|| {
            let first = upstreams.first().map_or("", String::as_str);
            let host = first.rsplit_once(':').map_or(first, |(h, _)| h);
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned()
        });
        if sni.is_empty() {
            self.err(&p(".sni"), "must not be empty");
        }
        let ca = raw.ca_file.and_then(|file| match load_ca(&file) {
            Ok(ders) => Some(std::sync::Arc::new(ders)),
            Err(why) => {
                self.err(&p(".ca_file"), format!("{file}: {why}"));
                None
            }
        });
        RouteTls { sni, ca }
    }

    pub(super) fn host(&mut self, path: &str, raw: &str) -> String {
        let host = raw.to_ascii_lowercase();
        if !is_host(&host) {
            self.err(
                path,
                format!("`{raw}` is not a host name or IP address (give it without scheme, port or path)"),
            );
        }
        host
    }

    pub(super) fn route_path(&mut self, path: &str, raw: &str) {
        if !raw.starts_with('/') {
            self.err(path, format!("`{raw}` must start with `/`"));
        } else if raw.contains(['?', '#'])
            || raw.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            self.err(
                path,
                format!("`{raw}` must be a plain path, without query, fragment or spaces"),
            );
        } else {
            // The route table's own normalization, so what is refused here is exactly what
            // could never match there.
            match normalize_prefix(raw) {
                Err(e) => self.err(path, format!("`{raw}`: {e}")),
                Ok(prefix) if is_session_api(&prefix) => self.err(
                    path,
                    format!(
                        "`{raw}` is under `{SESSION_API_PREFIX}`, which the gate serves itself"
                    ),
                ),
                Ok(_) => {}
            }
        }
    }

    /// Resolved once, at load. A name with both IPv4 and IPv6 addresses takes the IPv4 one:
    /// upstreams on loopback listen on `127.0.0.1` far more often than on `::1`.
    pub(super) fn upstream(&mut self, path: &str, raw: &str) -> Option<SocketAddr> {
        if let Ok(addr) = raw.parse::<SocketAddr>() {
            return Some(addr);
        }
        match raw.to_socket_addrs() {
            Ok(addrs) => {
                let addrs: Vec<SocketAddr> = addrs.collect();
                let pick = addrs
                    .iter()
                    .find(|a| a.is_ipv4())
                    .or(addrs.first())
                    .copied();
                if pick.is_none() {
                    self.err(path, format!("`{raw}` resolves to no address"));
                }
                pick
            }
            Err(e) => {
                self.err(path, format!("cannot resolve `{raw}` as HOST:PORT: {e}"));
                None
            }
        }
    }

    /// Lowercases scheme and host and drops a default port, as browsers send them.
    pub(super) fn origin(&mut self, path: &str, raw: &str) -> Option<String> {
        let normalized = normalize_origin(raw);
        if normalized.is_none() {
            let why = if raw == "null" {
                "`null` (an opaque origin) cannot be allowed".to_owned()
            } else {
                format!("`{raw}` is not an origin: expected `scheme://host[:port]`, no path")
            };
            self.err(path, why);
        }
        normalized
    }
}

pub(super) fn is_session_api(prefix: &str) -> bool {
    prefix
        .strip_prefix(SESSION_API_PREFIX)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Why a route's `ca_file` cannot be used.
#[derive(Debug, thiserror::Error)]
pub(super) enum CaError {
    #[error("cannot read: {0}")]
    Read(#[source] std::io::Error),
    #[error("not PEM: {0}")]
    NotPem(#[source] x509_parser::error::PEMError),
    #[error("a certificate that does not parse: {0}")]
    Parse(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
    #[error("holds no PEM certificate")]
    Empty,
}

/// The certificates of a PEM file, as DER, each one checked to parse.
pub(super) fn load_ca(file: &str) -> Result<Vec<Vec<u8>>, CaError> {
    let pem = std::fs::read(file).map_err(CaError::Read)?;
    let mut ders = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(&pem) {
        let block = block.map_err(CaError::NotPem)?;
        if block.label != "CERTIFICATE" {
            continue;
        }
        block.parse_x509().map_err(CaError::Parse)?;
        ders.push(block.contents);
    }
    if ders.is_empty() {
        return Err(CaError::Empty);
    }
    Ok(ders)
}

pub(super) fn is_host(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<Ipv6Addr>().is_ok();
    }
    if host.parse::<IpAddr>().is_ok() {
        return true;
    }
    host.len() <= 253
        && host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// `scheme://host[:port]` lowercased, without a default port; `None` for
/// anything else (a path, userinfo, the opaque `null`).
pub fn normalize_origin(raw: &str) -> Option<String> {
    let (scheme, rest) = raw.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !scheme_ok || rest.contains(['/', '?', '#', '@']) {
        return None;
    }
    let rest = rest.to_ascii_lowercase();
    let (host, port) = match rest.rfind(':') {
        // `]` after the last `:` means a bare IPv6 literal without port.
        Some(i) if !rest[i..].contains(']') => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest.as_str(), None),
    };
    if !is_host(host) {
        return None;
    }
    match port {
        None => Some(format!("{scheme}://{host}")),
        Some(port) => {
            let port: u16 = port.parse().ok()?;
            let default = matches!((scheme.as_str(), port), ("http", 80) | ("https", 443));
            Some(if default {
                format!("{scheme}://{host}")
            } else {
                format!("{scheme}://{host}:{port}")
            })
        }
    }
}
