//! Everything built from one config file ([`Settings`]): the route table, the key ring, the
//! store rules, the identity header names, the users and the ticket cache. A reload builds a
//! new one and the gate swaps it in atomically, so a request sees one config from start to end.

use std::collections::HashMap;

use http::{HeaderName, HeaderValue};

use crate::cache::TicketCache;
use crate::clock::ms;
use crate::config::{Config, UserEntry};
use crate::route::RouteTable;
use crate::store::Rules;
use crate::ticket::{Claims, Key, KeyRing};

/// How long a dead session stays readable (and listed) after its
/// `max_lifetime`, before its keys expire.
pub const RETAIN_MS: u64 = 24 * 3600 * 1000;

/// Identity header names, built once per config.
pub struct IdentityHeaders {
    /// The prefix lowercased with `_` read as `-`, for the strip: a WSGI or
    /// CGI upstream reads `X_Session_User` as `HTTP_X_SESSION_USER`, the same
    /// variable as `X-Session-User`.
    pub prefix_lower: String,
    pub id: HeaderName,
    pub user: HeaderName,
    pub name: HeaderName,
    pub roles: HeaderName,
    /// `<prefix>Var-`, to which a var's key is appended.
    pub var_prefix: String,
}

impl IdentityHeaders {
    fn new(prefix: &str) -> Result<IdentityHeaders, String> {
        let h = |suffix: &str| {
            HeaderName::from_bytes(format!("{prefix}{suffix}").as_bytes())
                .map_err(|e| format!("identity.header_prefix: {e}"))
        };
        Ok(IdentityHeaders {
            prefix_lower: prefix.to_ascii_lowercase().replace('_', "-"),
            id: h("Id")?,
            user: h("User")?,
            name: h("Name")?,
            roles: h("Roles")?,
            var_prefix: format!("{prefix}Var-"),
        })
    }

    /// Whether a client-sent header must be removed before forwarding.
    pub fn is_identity(&self, name: &HeaderName) -> bool {
        // HeaderName is always lowercase; `_` and `-` are one character here.
        let (name, prefix) = (name.as_str().as_bytes(), self.prefix_lower.as_bytes());
        name.len() >= prefix.len()
            && name
                .iter()
                .zip(prefix)
                .all(|(&n, &p)| n == p || (n == b'_' && p == b'-'))
    }

    /// The headers an admitted request carries upstream.
    pub fn for_claims(&self, c: &Claims) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::with_capacity(4 + c.vars.len());
        let mut push = |name: HeaderName, value: &str| {
            if let Ok(v) = HeaderValue::from_str(value) {
                out.push((name, v));
            }
        };
        push(self.id.clone(), &c.sid);
        push(self.user.clone(), &c.sub);
        push(self.name.clone(), &c.name);
        push(self.roles.clone(), &c.roles.join(","));
        for (k, v) in &c.vars {
            if let Ok(name) = HeaderName::from_bytes(format!("{}{k}", self.var_prefix).as_bytes()) {
                push(name, v);
            }
        }
        out
    }
}

/// Everything derived from one config file.
pub struct Settings {
    pub config: Config,
    pub routes: RouteTable,
    pub keys: KeyRing,
    pub rules: Rules,
    pub identity: IdentityHeaders,
    /// users file entries by username
    pub users: HashMap<String, UserEntry>,
    /// The ticket cookie's name (`__Host-<name>` when secure).
    pub cookie_name: String,
    /// Cookies never forwarded: the ticket cookie under both its names, so a
    /// ticket sent under the spelling this config does not read still stays
    /// at the gate.
    pub strip_cookies: [String; 2],
    pub tickets: TicketCache,
}

impl Settings {
    pub fn new(config: Config, users: Vec<UserEntry>) -> Result<Settings, String> {
        let keys = KeyRing::new(
            config
                .tickets
                .keys
                .iter()
                .map(|k| Key::new(k.id.clone(), k.secret.clone()))
                .collect(),
            config.tickets.issuer.clone(),
            config.tickets.leeway.as_secs(),
        );
        let rules = Rules {
            idle_ms: ms(config.sessions.idle_timeout),
            touch_ms: ms(config.sessions.touch_interval),
            retain_ms: RETAIN_MS,
        };
        let identity = IdentityHeaders::new(&config.identity.header_prefix)?;
        let cookie = &config.tickets.cookie;
        let cookie_name = if cookie.secure {
            format!("__Host-{}", cookie.name)
        } else {
            cookie.name.clone()
        };
        let strip_cookies = [cookie.name.clone(), format!("__Host-{}", cookie.name)];
        Ok(Settings {
            strip_cookies,
            routes: RouteTable::new(&config.routes),
            keys,
            rules,
            identity,
            users: users.into_iter().map(|u| (u.username.clone(), u)).collect(),
            cookie_name,
            tickets: TicketCache::new(config.tickets.cache_max_bytes),
            config,
        })
    }

    pub fn ttl_ms(&self) -> u64 {
        ms(self.config.sessions.ttl)
    }

    pub fn max_lifetime_ms(&self) -> u64 {
        ms(self.config.sessions.max_lifetime)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Settings from a minimal memory-store config, for unit tests across
    /// modules; `tickets_extra` is YAML added under `tickets:`.
    pub(crate) fn settings_with(tickets_extra: &str) -> Settings {
        let yaml = format!(
            "listen: [\"127.0.0.1:1\"]\nstore:\n  kind: memory\ntickets:\n  keys:\n    - id: k1\n      secret: c2Vzc2lvbmdhdGUtdGVzdC1zZWNyZXQtMzItYnl0ZXMhIQ\n{tickets_extra}routes:\n  - name: r\n    kind: controller\n    path: /r\n    upstreams: [\"127.0.0.1:9\"]\n"
        );
        let cfg = crate::config::parse(&yaml, std::path::Path::new("t.yaml"), &|_| None).unwrap();
        Settings::new(cfg, Vec::new()).unwrap()
    }

    pub(crate) fn settings() -> Settings {
        settings_with("")
    }

    #[test]
    fn identity_prefix_is_stripped_with_underscores_read_as_dashes() {
        let s = settings();
        let is = |name: &str| {
            s.identity
                .is_identity(&HeaderName::from_bytes(name.as_bytes()).unwrap())
        };
        for name in [
            "x-session-user",
            "X_Session_User",
            "x_session-roles",
            "X-SESSION_VAR_TIER",
            "x-session-",
        ] {
            assert!(is(name), "{name}");
        }
        for name in [
            "x-sessionuser",
            "x-sessio",
            "xx-session-user",
            "x.session.user",
            "session-user",
        ] {
            assert!(!is(name), "{name}");
        }
    }
}
