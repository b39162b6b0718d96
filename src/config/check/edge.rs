//! Checks of what faces clients: plain and TLS listeners, the admin listener, client-address
//! rules and server timeouts (a socket taken twice is an error at its second use).

use super::*;

impl Ctx<'_> {
    pub(super) fn tls(&mut self, raw: RawTls, plain: &[SocketAddr]) -> TlsConfig {
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

    pub(super) fn clients(&mut self, raw: Option<RawClients>) -> ClientsConfig {
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

    pub(super) fn socket_addr(&mut self, path: &str, s: &str) -> Option<SocketAddr> {
        let parsed = s.parse().ok();
        if parsed.is_none() {
            self.err(
                path,
                format!("`{s}` is not an IP:PORT address (like `0.0.0.0:6090` or `[::]:6090`)"),
            );
        }
        parsed
    }

    pub(super) fn listen(&mut self, key: &str, raw: &Addrs) -> Vec<SocketAddr> {
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

    pub(super) fn admin(&mut self, raw: RawAdmin, listen: &[SocketAddr]) -> AdminConfig {
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

    pub(super) fn server(&mut self, raw: Option<RawServer>) -> ServerConfig {
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
}

/// Whether listening on `addr` would take a socket one of `others` takes.
/// Port 0 is never shared: each such listener gets a port of its own (see
/// `crate::bind`).
pub(super) fn shares_a_socket(addr: &SocketAddr, others: &[SocketAddr]) -> bool {
    addr.port() != 0 && others.contains(addr)
}
