//! Checks of tickets (keys, sources, cookie) and of session lifetimes and identity headers.

use super::*;

impl Ctx<'_> {
    pub(super) fn tickets(&mut self, raw: RawTickets) -> TicketsConfig {
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

    /// Never echoes the secret: error lines end up in logs and CI output.
    pub(super) fn secret(&mut self, path: &str, raw: Option<&str>) -> Vec<u8> {
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

    pub(super) fn ticket_sources(&mut self, raw: Option<Vec<String>>) -> Vec<TicketSource> {
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

    pub(super) fn cookie(&mut self, raw: Option<RawCookie>) -> CookieConfig {
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

    pub(super) fn sessions(&mut self, raw: Option<RawSessions>) -> SessionsConfig {
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

    pub(super) fn identity(&mut self, raw: Option<RawIdentity>) -> IdentityConfig {
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
}

/// A duration the way it would be written in the file.
pub(super) fn show(d: Duration) -> String {
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
