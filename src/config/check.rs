//! Raw -> typed: defaults, parsing and every cross-field rule, each error located at the
//! offending node.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;

use super::raw::*;
use super::source::SourceMap;
use super::yaml::Marks;
use super::*;
use crate::path::normalize_prefix;

/// Turns raw shapes into typed values, collecting every error. Each helper returns a usable
/// value (the default) after recording an error, so checking goes on past the first problem.
pub(super) struct Ctx<'a> {
    file: &'a Path,
    map: &'a SourceMap,
    marks: Marks,
    errors: Vec<ConfigError>,
}

impl<'a> Ctx<'a> {
    pub(super) fn new(file: &'a Path, map: &'a SourceMap, marks: Marks) -> Self {
        Ctx {
            file,
            map,
            marks,
            errors: Vec::new(),
        }
    }

    pub(super) fn finish<T>(mut self, value: T) -> Result<T, Vec<ConfigError>> {
        if self.errors.is_empty() {
            return Ok(value);
        }
        self.errors.sort_by_key(|e| (e.line, e.col));
        self.errors.dedup();
        Err(self.errors)
    }

    fn locate(&self, path: &str) -> (usize, usize) {
        self.map.to_orig(self.marks.find(path))
    }

    /// `FILE:LINE:COL` of `path`, for messages that name a second place.
    fn where_is(&self, path: &str) -> String {
        let (line, col) = self.locate(path);
        format!("{}:{line}:{col}", self.file.display())
    }

    fn err(&mut self, path: &str, message: impl fmt::Display) {
        let pos = self.locate(path);
        self.err_at(pos, path, message);
    }

    /// For errors about a mapping key itself rather than its value.
    fn err_key(&mut self, path: &str, message: impl fmt::Display) {
        let pos = self.map.to_orig(self.marks.find_key(path));
        self.err_at(pos, path, message);
    }

    fn err_at(&mut self, (line, col): (usize, usize), path: &str, message: impl fmt::Display) {
        let message = if path.is_empty() {
            message.to_string()
        } else {
            format!("{path}: {message}")
        };
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            line,
            col,
            message,
        });
    }

    fn duration(&mut self, path: &str, raw: Option<&str>, default: Duration) -> Duration {
        let Some(s) = raw else { return default };
        match parse_duration(s) {
            Some(d) => d,
            None => {
                self.err(
                    path,
                    format!("invalid duration `{s}`: expected a number and a unit (ms, s, m, h, d), like `30s`"),
                );
                default
            }
        }
    }

    /// A cache budget: at least [`MIN_CACHE_BYTES`], so a typo cannot turn
    /// a cache into one that holds nothing.
    fn bytes(&mut self, path: &str, raw: Option<RawBytes>, default: u64) -> u64 {
        let (n, text) = match raw {
            None => return default,
            Some(RawBytes::Number(n)) => (Some(n), n.to_string()),
            Some(RawBytes::Text(t)) => (parse_bytes(&t), t),
        };
        match n {
            Some(n) if n >= MIN_CACHE_BYTES => n,
            Some(_) => {
                self.err(path, format!("`{text}` is too small: at least 64KiB"));
                default
            }
            None => {
                self.err(
                    path,
                    format!("invalid size `{text}`: expected bytes or a number and a unit (KiB, MiB, GiB), like `64MiB`"),
                );
                default
            }
        }
    }

    fn positive_duration(&mut self, path: &str, raw: Option<&str>, default: Duration) -> Duration {
        let d = self.duration(path, raw, default);
        if d.is_zero() {
            self.err(path, "must be greater than zero");
            return default;
        }
        d
    }

    fn choice<T: Copy>(
        &mut self,
        path: &str,
        raw: Option<&str>,
        options: &[(&str, T)],
        default: T,
    ) -> T {
        raw.and_then(|s| self.pick(path, s, options))
            .unwrap_or(default)
    }

    fn pick<T: Copy>(&mut self, path: &str, s: &str, options: &[(&str, T)]) -> Option<T> {
        if let Some(&(_, v)) = options.iter().find(|(name, _)| *name == s) {
            return Some(v);
        }
        let names: Vec<String> = options.iter().map(|(n, _)| format!("`{n}`")).collect();
        self.err(
            path,
            format!("unknown value `{s}`: expected one of {}", names.join(", ")),
        );
        None
    }

    fn rate(&mut self, path: &str, raw: Option<&str>, default: Rate) -> Rate {
        let Some(s) = raw else { return default };
        parse_rate(s).unwrap_or_else(|| {
            self.err(
                path,
                format!("invalid rate `{s}`: expected COUNT/UNIT with COUNT >= 1, like `10/min`, `5/s`, `100/hour` or `3/10s`"),
            );
            default
        })
    }

    /// A count of at least 1 that fits `T`.
    fn count<T: TryFrom<i64> + Copy>(&mut self, path: &str, raw: Option<i64>, default: T) -> T {
        let Some(n) = raw else { return default };
        match T::try_from(n) {
            Ok(v) if n >= 1 => v,
            _ => {
                self.err(
                    path,
                    format!("must be a whole number of at least 1, not {n}"),
                );
                default
            }
        }
    }

    fn nonempty(&mut self, path: &str, s: &str) {
        if s.trim().is_empty() {
            self.err(path, "must not be empty");
        }
    }

    /// Role names travel comma-separated in `X-Session-Roles`.
    fn role(&mut self, path: &str, role: &str) {
        if role.is_empty() || !role.chars().all(|c| c.is_ascii_graphic() && c != ',') {
            self.err(
                path,
                format!("invalid role `{role}`: use visible ASCII characters other than `,`"),
            );
        }
    }

    pub(super) fn config(&mut self, raw: RawConfig) -> Config {
        let listen = match &raw.listen {
            Some(l) => self.listen("listen", l),
            None => Vec::new(),
        };
        let tls = raw.tls.map(|t| self.tls(t, &listen));
        let tls_listen = tls.as_ref().map_or(0, |t| t.listen.len());
        if listen.is_empty() && tls_listen == 0 {
            let what = if raw.listen.is_some() {
                "`listen` is empty and there is no `tls.listen`"
            } else {
                "`listen` (or `tls.listen`) is required"
            };
            self.err(
                "listen",
                format!("at least one address is required: {what}"),
            );
        }
        let mut all = listen.clone();
        all.extend(tls.iter().flat_map(|t| t.listen.iter().copied()));
        let admin = raw.admin.map(|a| self.admin(a, &all));
        Config {
            listen,
            admin,
            store: self.store(raw.store),
            tickets: self.tickets(raw.tickets),
            sessions: self.sessions(raw.sessions),
            identity: self.identity(raw.identity),
            login: raw.login.map(|l| self.login(l)),
            routes: self.routes(raw.routes),
            server: self.server(raw.server),
            tls,
            clients: self.clients(raw.clients),
        }
    }

    fn tls(&mut self, raw: RawTls, plain: &[SocketAddr]) -> TlsConfig {
        let listen = match &raw.listen {
            Some(l) => self.listen("tls.listen", l),
            None => {
                self.err_key("tls", "`tls.listen` is required");
                Vec::new()
            }
        };
        for (i, a) in listen.iter().enumerate() {
            if shares_a_socket(a, plain) {
                self.err(
                    &format!("tls.listen[{i}]"),
                    format!("`{a}` is also a plain `listen` address"),
                );
            }
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut certs = Vec::new();
        match raw.certificates {
            None => self.err_key("tls", "`tls.certificates` is required"),
            Some(list) if list.is_empty() => {
                self.err("tls.certificates", "at least one certificate is required")
            }
            Some(list) => {
                for (i, c) in list.into_iter().enumerate() {
                    let loaded =
                        crate::tls::load(Path::new(&c.cert_file), Path::new(&c.key_file), now);
                    match loaded {
                        Ok(l) => certs.push(l),
                        Err(e) => self.err(&format!("tls.certificates[{i}]"), e),
                    }
                }
            }
        }
        let min_version = match raw.min_version.map(|v| v.0) {
            None => crate::tls::MinVersion::Tls12,
            Some(v) => self
                .pick(
                    "tls.min_version",
                    &v,
                    &[
                        ("1.2", crate::tls::MinVersion::Tls12),
                        ("1.3", crate::tls::MinVersion::Tls13),
                    ],
                )
                .unwrap_or(crate::tls::MinVersion::Tls12),
        };
        let hsts = raw
            .hsts
            .and_then(|v| match http::HeaderValue::from_str(&v) {
                Ok(h) if !v.trim().is_empty() => Some(h),
                _ => {
                    self.err("tls.hsts", "must be a non-empty header value");
                    None
                }
            });
        TlsConfig {
            listen,
            certificates: std::sync::Arc::new(crate::tls::CertSet { certs }),
            http2: raw.http2.unwrap_or(true),
            min_version,
            redirect_plain: raw.redirect_plain.unwrap_or(false),
            hsts,
        }
    }

    fn clients(&mut self, raw: Option<RawClients>) -> ClientsConfig {
        let Some(raw) = raw else {
            return ClientsConfig::default();
        };
        let mut trusted = Vec::new();
        for (i, c) in raw.trusted_proxies.unwrap_or_default().iter().enumerate() {
            match c.trim().parse::<Cidr>() {
                Ok(c) => trusted.push(c),
                Err(why) => self.err(&format!("clients.trusted_proxies[{i}]"), why),
            }
        }
        ClientsConfig {
            proxy_protocol: raw.proxy_protocol.unwrap_or(false),
            trusted_proxies: trusted,
        }
    }

    fn socket_addr(&mut self, path: &str, s: &str) -> Option<SocketAddr> {
        let parsed = s.parse().ok();
        if parsed.is_none() {
            self.err(
                path,
                format!("`{s}` is not an IP:PORT address (like `0.0.0.0:6090` or `[::]:6090`)"),
            );
        }
        parsed
    }

    fn listen(&mut self, key: &str, raw: &Addrs) -> Vec<SocketAddr> {
        let entries: Vec<(String, &str)> = match raw {
            Addrs::One(s) => vec![(key.to_owned(), s.as_str())],
            Addrs::Many(all) => all
                .iter()
                .enumerate()
                .map(|(i, s)| (format!("{key}[{i}]"), s.as_str()))
                .collect(),
        };
        let mut out: Vec<SocketAddr> = Vec::new();
        for (path, s) in entries {
            if let Some(addr) = self.socket_addr(&path, s) {
                if shares_a_socket(&addr, &out) {
                    self.err(&path, format!("`{addr}` is listed twice"));
                } else {
                    out.push(addr);
                }
            }
        }
        out
    }

    fn admin(&mut self, raw: RawAdmin, listen: &[SocketAddr]) -> AdminConfig {
        let addr = self.socket_addr("admin.listen", &raw.listen);
        if let Some(addr) = addr.filter(|a| shares_a_socket(a, listen)) {
            self.err(
                "admin.listen",
                format!("`{addr}` is also a proxy `listen` or `tls.listen` address"),
            );
        }
        AdminConfig {
            listen: addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            token: raw.token.filter(|t| !t.is_empty()),
        }
    }

    /// Only the scheme is checked here; the Redis client parses the rest when it connects.
    fn redis_url(&mut self, path: &str, url: &str, unix_ok: bool) {
        let schemes: &[&str] = if unix_ok {
            &["redis://", "rediss://", "redis+unix://", "unix://"]
        } else {
            &["redis://", "rediss://"]
        };
        let ok = schemes
            .iter()
            .any(|s| url.strip_prefix(s).is_some_and(|rest| !rest.is_empty()));
        if !ok {
            // Not echoed: a Redis URL may carry a password.
            let list: Vec<String> = schemes.iter().map(|s| format!("`{s}`")).collect();
            self.err(
                path,
                format!("not a Redis URL: expected {}", list.join(" or ")),
            );
        }
    }

    fn store(&mut self, raw: RawStore) -> StoreConfig {
        let kind = self.choice(
            "store.kind",
            raw.kind.as_deref(),
            &[("redis", StoreKind::Redis), ("memory", StoreKind::Memory)],
            StoreKind::Redis,
        );
        let given: Vec<&str> = [
            ("url", raw.url.is_some()),
            ("cluster", raw.cluster.is_some()),
            ("sentinel", raw.sentinel.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, present)| present.then_some(k))
        .collect();
        match kind {
            StoreKind::Redis if given.len() != 1 => {
                let found = if given.is_empty() {
                    "none".to_owned()
                } else {
                    given.join(" and ")
                };
                self.err(
                    "store",
                    format!("kind `redis` needs exactly one of `url`, `cluster` or `sentinel` (found {found})"),
                );
            }
            StoreKind::Memory => {
                for key in &given {
                    self.err(
                        &format!("store.{key}"),
                        "not used with kind `memory`; remove it",
                    );
                }
            }
            StoreKind::Redis => {}
        }
        if let Some(url) = &raw.url {
            self.redis_url("store.url", url, true);
        }
        if let Some(nodes) = &raw.cluster {
            if nodes.is_empty() {
                self.err("store.cluster", "needs at least one node URL");
            }
            for (i, url) in nodes.iter().enumerate() {
                self.redis_url(&format!("store.cluster[{i}]"), url, false);
            }
        }
        let tls_ca = raw.tls.and_then(|tls| {
            let path = "store.tls.ca_file";
            let urls: Vec<&String> = raw.url.iter().chain(raw.cluster.iter().flatten()).collect();
            if raw.sentinel.is_some() {
                self.err("store.tls", "not supported with `sentinel` (use `rediss://` sentinel URLs and the system's roots)");
            } else if urls.is_empty() || !urls.iter().all(|u| u.starts_with("rediss://")) {
                self.err("store.tls", "needs `rediss://` URLs: plain `redis://` does not use TLS");
            }
            match std::fs::read(&tls.ca_file) {
                Ok(pem) if pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") => Some(pem),
                Ok(_) => {
                    self.err(path, "holds no PEM certificate");
                    None
                }
                Err(e) => {
                    self.err(path, format!("cannot read {}: {e}", tls.ca_file));
                    None
                }
            }
        });
        let sentinel = raw.sentinel.map(|s| {
            self.nonempty("store.sentinel.master", &s.master);
            if s.nodes.is_empty() {
                self.err("store.sentinel.nodes", "needs at least one sentinel URL");
            }
            for (i, url) in s.nodes.iter().enumerate() {
                self.redis_url(&format!("store.sentinel.nodes[{i}]"), url, false);
            }
            SentinelConfig {
                master: s.master,
                nodes: s.nodes,
            }
        });
        StoreConfig {
            kind,
            url: raw.url,
            cluster: raw.cluster,
            sentinel,
            tls_ca,
            key_prefix: raw
                .key_prefix
                .unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_owned()),
            timeout: self.positive_duration(
                "store.timeout",
                raw.timeout.as_deref(),
                DEFAULT_STORE_TIMEOUT,
            ),
            on_unavailable: self.choice(
                "store.on_unavailable",
                raw.on_unavailable.as_deref(),
                &[
                    ("deny", OnUnavailable::Deny),
                    ("grace", OnUnavailable::Grace),
                ],
                OnUnavailable::Deny,
            ),
            grace: self.duration("store.grace", raw.grace.as_deref(), DEFAULT_STORE_GRACE),
            cache: self.duration("store.cache", raw.cache.as_deref(), DEFAULT_STORE_CACHE),
            cache_max_bytes: self.bytes(
                "store.cache_max_bytes",
                raw.cache_max_bytes,
                DEFAULT_STORE_CACHE_MAX_BYTES,
            ),
        }
    }

    fn tickets(&mut self, raw: RawTickets) -> TicketsConfig {
        if raw.keys.is_empty() {
            self.err(
                "tickets.keys",
                "at least one key is required (the first signs, all verify)",
            );
        }
        let mut keys: Vec<KeyConfig> = Vec::new();
        let mut first_by_id: HashMap<&str, usize> = HashMap::new();
        for (i, key) in raw.keys.iter().enumerate() {
            let path = format!("tickets.keys[{i}]");
            self.nonempty(&format!("{path}.id"), &key.id);
            if let Some(&first) = first_by_id.get(key.id.as_str()) {
                let there = self.where_is(&format!("tickets.keys[{first}].id"));
                self.err(
                    &format!("{path}.id"),
                    format!("duplicate key id `{}` (first used at {there})", key.id),
                );
            } else {
                first_by_id.insert(&key.id, i);
            }
            let secret = self.secret(&format!("{path}.secret"), key.secret.as_deref());
            keys.push(KeyConfig {
                id: key.id.clone(),
                secret,
            });
        }
        self.nonempty_opt("tickets.issuer", raw.issuer.as_deref());
        TicketsConfig {
            keys,
            issuer: raw.issuer.unwrap_or_else(|| DEFAULT_ISSUER.to_owned()),
            leeway: self.duration("tickets.leeway", raw.leeway.as_deref(), DEFAULT_LEEWAY),
            from: self.ticket_sources(raw.from),
            cookie: self.cookie(raw.cookie),
            cache_max_bytes: self.bytes(
                "tickets.cache_max_bytes",
                raw.cache_max_bytes,
                DEFAULT_TICKET_CACHE_MAX_BYTES,
            ),
        }
    }

    fn nonempty_opt(&mut self, path: &str, s: Option<&str>) {
        if let Some(s) = s {
            self.nonempty(path, s);
        }
    }

    /// Never echoes the secret: error lines end up in logs and CI output.
    fn secret(&mut self, path: &str, raw: Option<&str>) -> Vec<u8> {
        let Some(text) = raw.filter(|s| !s.is_empty()) else {
            self.err(path, "missing or empty (is its environment variable set?)");
            return Vec::new();
        };
        match BASE64URL.decode(text) {
            Ok(bytes) if bytes.len() >= MIN_SECRET_BYTES => bytes,
            Ok(bytes) => {
                self.err(
                    path,
                    format!(
                        "decodes to {} bytes; at least {MIN_SECRET_BYTES} are required (make one with `sessiongate keygen`)",
                        bytes.len()
                    ),
                );
                bytes
            }
            Err(_) => {
                self.err(
                    path,
                    "not valid base64url (alphabet `A-Z a-z 0-9 - _`, padding optional)",
                );
                Vec::new()
            }
        }
    }

    fn ticket_sources(&mut self, raw: Option<Vec<String>>) -> Vec<TicketSource> {
        let Some(raw) = raw else {
            return DEFAULT_FROM.to_vec();
        };
        if raw.is_empty() {
            self.err(
                "tickets.from",
                "at least one of `header`, `cookie`, `query` is required",
            );
        }
        let options = [
            ("header", TicketSource::Header),
            ("cookie", TicketSource::Cookie),
            ("query", TicketSource::Query),
        ];
        let mut out = Vec::new();
        for (i, s) in raw.iter().enumerate() {
            let path = format!("tickets.from[{i}]");
            match self.pick(&path, s, &options) {
                Some(source) if out.contains(&source) => {
                    self.err(&path, format!("`{s}` is listed twice"));
                }
                Some(source) => out.push(source),
                None => {}
            }
        }
        out
    }

    fn cookie(&mut self, raw: Option<RawCookie>) -> CookieConfig {
        let Some(raw) = raw else {
            return CookieConfig::default();
        };
        let name = raw.name.unwrap_or_else(|| DEFAULT_COOKIE_NAME.to_owned());
        if name.is_empty() || !name.bytes().all(is_tchar) {
            self.err(
                "tickets.cookie.name",
                format!(
                    "`{name}` is not a valid cookie name (letters, digits and !#$%&'*+-.^_`|~)"
                ),
            );
        } else if name.starts_with("__Host-") || name.starts_with("__Secure-") {
            self.err(
                "tickets.cookie.name",
                "leave out the `__Host-` prefix: the gate adds it when `secure: true`",
            );
        }
        let secure = raw.secure.unwrap_or(true);
        let same_site = self.choice(
            "tickets.cookie.same_site",
            raw.same_site.as_deref(),
            &[
                ("lax", SameSite::Lax),
                ("strict", SameSite::Strict),
                ("none", SameSite::None),
            ],
            SameSite::Lax,
        );
        if same_site == SameSite::None && !secure {
            self.err(
                "tickets.cookie.same_site",
                "`none` requires `secure: true` (browsers drop SameSite=None cookies without Secure)",
            );
        }
        let domain = raw.domain.filter(|d| !d.is_empty());
        if let Some(domain) = &domain {
            if secure {
                self.err(
                    "tickets.cookie.domain",
                    "cannot be set with `secure: true`: the `__Host-` cookie prefix forbids a Domain",
                );
            } else if !domain
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            {
                self.err(
                    "tickets.cookie.domain",
                    format!("`{domain}` is not a domain name"),
                );
            }
        }
        CookieConfig {
            name,
            secure,
            same_site,
            domain,
        }
    }

    fn sessions(&mut self, raw: Option<RawSessions>) -> SessionsConfig {
        let Some(raw) = raw else {
            return SessionsConfig::default();
        };
        let ttl = self.positive_duration("sessions.ttl", raw.ttl.as_deref(), DEFAULT_TTL);
        let idle_timeout = self.positive_duration(
            "sessions.idle_timeout",
            raw.idle_timeout.as_deref(),
            DEFAULT_IDLE_TIMEOUT,
        );
        let touch_interval = self.duration(
            "sessions.touch_interval",
            raw.touch_interval.as_deref(),
            DEFAULT_TOUCH_INTERVAL,
        );
        let max_lifetime = self.positive_duration(
            "sessions.max_lifetime",
            raw.max_lifetime.as_deref(),
            DEFAULT_MAX_LIFETIME,
        );
        let max_per_user = self.count(
            "sessions.max_per_user",
            raw.max_per_user,
            DEFAULT_MAX_PER_USER,
        );
        if touch_interval > idle_timeout {
            self.err(
                "sessions.touch_interval",
                format!(
                    "must not exceed idle_timeout ({}), or active sessions would be abandoned",
                    show(idle_timeout)
                ),
            );
        }
        if ttl > max_lifetime {
            self.err(
                "sessions.ttl",
                format!("must not exceed max_lifetime ({})", show(max_lifetime)),
            );
        }
        SessionsConfig {
            ttl,
            idle_timeout,
            touch_interval,
            max_lifetime,
            max_per_user,
        }
    }

    fn identity(&mut self, raw: Option<RawIdentity>) -> IdentityConfig {
        let Some(prefix) = raw.and_then(|r| r.header_prefix) else {
            return IdentityConfig::default();
        };
        if http::HeaderName::from_bytes(prefix.as_bytes()).is_err() {
            self.err(
                "identity.header_prefix",
                format!("`{prefix}` is not a valid header-name prefix (letters, digits and !#$%&'*+-.^_`|~)"),
            );
        }
        IdentityConfig {
            header_prefix: prefix,
        }
    }

    fn login(&mut self, raw: RawLogin) -> LoginConfig {
        if raw.users_file.is_some() == raw.delegate.is_some() {
            self.err("login", "needs exactly one of `users_file` or `delegate`");
        }
        self.nonempty_opt("login.users_file", raw.users_file.as_deref());
        let delegate = raw.delegate.map(|d| {
            // The delegate is called over plain HTTP (it is expected beside the
            // gate); https:// would fail every login, so it is refused here.
            let url_ok = d
                .url
                .parse::<http::Uri>()
                .is_ok_and(|u| u.scheme_str() == Some("http") && u.authority().is_some());
            if !url_ok {
                self.err(
                    "login.delegate.url",
                    format!(
                        "`{}` is not an absolute http:// URL (https delegates are not supported)",
                        d.url
                    ),
                );
            }
            DelegateConfig {
                url: d.url,
                timeout: self.positive_duration(
                    "login.delegate.timeout",
                    d.timeout.as_deref(),
                    DEFAULT_DELEGATE_TIMEOUT,
                ),
            }
        });
        let defaults = RateLimitConfig::default();
        let rate_limit = match raw.rate_limit {
            None => defaults,
            Some(r) => RateLimitConfig {
                per_ip: self.rate(
                    "login.rate_limit.per_ip",
                    r.per_ip.as_deref(),
                    defaults.per_ip,
                ),
                per_user: self.rate(
                    "login.rate_limit.per_user",
                    r.per_user.as_deref(),
                    defaults.per_user,
                ),
            },
        };
        let origins = raw
            .origins
            .unwrap_or_default()
            .iter()
            .enumerate()
            .filter_map(|(j, o)| self.origin(&format!("login.origins[{j}]"), o))
            .collect();
        let hashing = self.hashing(raw.hashing);
        LoginConfig {
            users_file: raw.users_file.map(PathBuf::from),
            delegate,
            origins,
            rate_limit,
            hashing,
        }
    }

    fn hashing(&mut self, raw: Option<RawHashing>) -> HashingConfig {
        let defaults = HashingConfig::default();
        let Some(raw) = raw else { return defaults };
        let queue = match raw.queue {
            None => defaults.queue,
            Some(n) => usize::try_from(n).unwrap_or_else(|_| {
                self.err(
                    "login.hashing.queue",
                    format!("must be a whole number of at least 0, not {n}"),
                );
                defaults.queue
            }),
        };
        HashingConfig {
            workers: self.count("login.hashing.workers", raw.workers, defaults.workers),
            queue,
        }
    }

    fn routes(&mut self, raw: Vec<RawRoute>) -> Vec<RouteConfig> {
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

    fn route(&mut self, i: usize, r: RawRoute) -> RouteConfig {
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

    fn route_tls(&mut self, i: usize, upstreams: &[String], raw: RawRouteTls) -> RouteTls {
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

    fn host(&mut self, path: &str, raw: &str) -> String {
        let host = raw.to_ascii_lowercase();
        if !is_host(&host) {
            self.err(
                path,
                format!("`{raw}` is not a host name or IP address (give it without scheme, port or path)"),
            );
        }
        host
    }

    fn route_path(&mut self, path: &str, raw: &str) {
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
    fn upstream(&mut self, path: &str, raw: &str) -> Option<SocketAddr> {
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
    fn origin(&mut self, path: &str, raw: &str) -> Option<String> {
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

    fn server(&mut self, raw: Option<RawServer>) -> ServerConfig {
        let defaults = ServerConfig::default();
        let Some(raw) = raw else { return defaults };
        let threads = self.count("server.threads", raw.threads, defaults.threads);
        ServerConfig {
            threads,
            grace_period: self.duration(
                "server.grace_period",
                raw.grace_period.as_deref(),
                defaults.grace_period,
            ),
            shutdown_timeout: self.duration(
                "server.shutdown_timeout",
                raw.shutdown_timeout.as_deref(),
                defaults.shutdown_timeout,
            ),
            header_timeout: self.positive_duration(
                "server.header_timeout",
                raw.header_timeout.as_deref(),
                defaults.header_timeout,
            ),
            keepalive_timeout: self.positive_duration(
                "server.keepalive_timeout",
                raw.keepalive_timeout.as_deref(),
                defaults.keepalive_timeout,
            ),
            pid_file: raw.pid_file.map(PathBuf::from),
            upgrade_sock: raw
                .upgrade_sock
                .map_or(defaults.upgrade_sock, PathBuf::from),
        }
    }

    pub(super) fn users(&mut self, raw: RawUsersFile) -> Vec<UserEntry> {
        let mut first_by_name: HashMap<String, usize> = HashMap::new();
        let mut out = Vec::with_capacity(raw.users.len());
        for (i, u) in raw.users.into_iter().enumerate() {
            let p = |field: &str| format!("users[{i}].{field}");
            self.nonempty(&p("username"), &u.username);
            if let Some(&first) = first_by_name.get(&u.username) {
                let there = self.where_is(&format!("users[{first}].username"));
                self.err(
                    &p("username"),
                    format!(
                        "duplicate username `{}` (first used at {there})",
                        u.username
                    ),
                );
            } else {
                first_by_name.insert(u.username.clone(), i);
            }
            if !is_argon2id_phc(&u.password_hash) {
                self.err(
                    &p("password_hash"),
                    "not an argon2id PHC string (`$argon2id$v=19$m=...,t=...,p=...$SALT$HASH`; make one with `sessiongate hash-password`)",
                );
            }
            if let Some(id) = &u.id {
                self.header_text(&p("id"), id, false);
            }
            if let Some(name) = &u.name {
                self.header_text(&p("name"), name, true);
            }
            let roles = u.roles.unwrap_or_default();
            for (j, role) in roles.iter().enumerate() {
                self.role(&format!("users[{i}].roles[{j}]"), role);
            }
            let vars = u.vars.unwrap_or_default();
            self.vars(&p("vars"), &vars);
            out.push(UserEntry {
                id: u.id.unwrap_or_else(|| u.username.clone()),
                name: u.name.unwrap_or_default(),
                username: u.username,
                password_hash: u.password_hash,
                roles,
                vars,
            });
        }
        out
    }

    /// Ids, names and vars become header values upstream: no control characters.
    fn header_text(&mut self, path: &str, s: &str, empty_ok: bool) {
        if !empty_ok && s.is_empty() {
            self.err(path, "must not be empty");
        } else if s.chars().any(char::is_control) {
            self.err(path, "must not contain control characters");
        }
    }

    fn vars(&mut self, path: &str, vars: &BTreeMap<String, String>) {
        if vars.len() > MAX_VARS {
            self.err(
                path,
                format!("{} vars; at most {MAX_VARS} are allowed", vars.len()),
            );
        }
        for (key, value) in vars {
            let at = format!("{path}.{key}");
            let key_ok = (1..=MAX_VAR_KEY).contains(&key.len())
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !key_ok {
                self.err_key(
                    &at,
                    format!("var name `{key}` must match [A-Za-z0-9_-]{{1,{MAX_VAR_KEY}}}"),
                );
            }
            if value.len() > MAX_VAR_VALUE {
                self.err(
                    &at,
                    format!("value is {} bytes; at most {MAX_VAR_VALUE}", value.len()),
                );
            }
            self.header_text(&at, value, true);
        }
        // Keys become header names (case-insensitive): two spellings of one
        // key would be two values for one header.
        let mut seen: HashMap<String, &str> = HashMap::new();
        for key in vars.keys() {
            if let Some(first) = seen.insert(key.to_ascii_lowercase(), key) {
                self.err_key(
                    &format!("{path}.{key}"),
                    format!("var name `{key}` differs from `{first}` only in case"),
                );
            }
        }
    }
}

fn is_session_api(prefix: &str) -> bool {
    prefix
        .strip_prefix(SESSION_API_PREFIX)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// RFC 9110 `tchar`: what a header name or cookie name may contain.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The certificates of a PEM file, as DER, each one checked to parse.
fn load_ca(file: &str) -> Result<Vec<Vec<u8>>, String> {
    let pem = std::fs::read(file).map_err(|e| format!("cannot read: {e}"))?;
    let mut ders = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(&pem) {
        let block = block.map_err(|e| format!("not PEM: {e}"))?;
        if block.label != "CERTIFICATE" {
            continue;
        }
        block
            .parse_x509()
            .map_err(|e| format!("a certificate that does not parse: {e}"))?;
        ders.push(block.contents);
    }
    if ders.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(ders)
}

fn is_host(host: &str) -> bool {
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

fn is_argon2id_phc(s: &str) -> bool {
    let parts: Vec<&str> = s.split('$').collect();
    matches!(
        parts.as_slice(),
        ["", "argon2id", version, params, salt, hash]
            if version.starts_with("v=")
                && params.contains("m=") && params.contains("t=") && params.contains("p=")
                && !salt.is_empty() && !hash.is_empty()
    )
}

/// A duration the way it would be written in the file.
fn show(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Whether listening on `addr` would take a socket one of `others` takes.
/// Port 0 is never shared: each such listener gets a port of its own (see
/// `crate::bind`).
fn shares_a_socket(addr: &SocketAddr, others: &[SocketAddr]) -> bool {
    addr.port() != 0 && others.contains(addr)
}
