//! Everything built from one config file ([`Settings`]): the route table, the key ring, the
//! store rules, the identity header names ([`IdentityHeaders`]), the users and the ticket cache. A reload builds a
//! new one and the gate swaps it in atomically, so a request sees one config from start to end.

use std::collections::HashMap;
use std::sync::Arc;

use crate::cache::{Admitted, TicketCache};
use crate::clock::ms;
use crate::config::{Config, UserEntry};
use crate::identity::{BadPrefix, IdentityHeaders};
use crate::route::RouteTable;
use crate::store::Rules;
use crate::ticket::{Key, KeyRing, TicketError};
use crate::upstream_tls::{UpstreamTls, UpstreamTlsError};

/// How long a dead session stays readable (and listed) after its
/// `max_lifetime`, before its keys expire.
pub const RETAIN_MS: u64 = 24 * 3600 * 1000;

/// Why a checked config still does not make [`Settings`].
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Identity(#[from] BadPrefix),
    #[error(transparent)]
    UpstreamTls(#[from] UpstreamTlsError),
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
    /// Each route's upstream TLS material, by its index in `routes.routes()` (match order;
    /// `None`: plain), built here so a request only clones an `Arc`.
    upstream_tls: Vec<Option<UpstreamTls>>,
}

impl Settings {
    pub fn new(config: Config, users: Vec<UserEntry>) -> Result<Settings, SettingsError> {
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
        let routes = RouteTable::new(&config.routes);
        let upstream_tls = routes
            .routes()
            .iter()
            .map(|r| UpstreamTls::for_route(&r.config))
            .collect::<Result<_, _>>()?;
        Ok(Settings {
            strip_cookies,
            upstream_tls,
            routes,
            keys,
            rules,
            identity,
            users: users.into_iter().map(|u| (u.username.clone(), u)).collect(),
            cookie_name,
            tickets: TicketCache::new(config.tickets.cache_max_bytes),
            config,
        })
    }

    /// The upstream TLS material of the route at `index` in `routes`.
    pub fn upstream_tls(&self, index: usize) -> Option<&UpstreamTls> {
        self.upstream_tls.get(index).and_then(Option::as_ref)
    }

    /// A ticket that admits at `now_secs` by this config's keys, with the identity headers
    /// it yields: from the ticket cache when this exact text was verified before (no HMAC,
    /// no JSON), else verified and kept there. The session's liveness is not checked here.
    pub fn verified(&self, ticket: &str, now_secs: u64) -> Result<Arc<Admitted>, TicketError> {
        if let Some(a) = self.tickets.get(ticket, now_secs, self.keys.leeway_secs()) {
            return Ok(a);
        }
        let claims = self.keys.verify(ticket, now_secs)?;
        let headers = self.identity.for_claims(&claims);
        let a = Arc::new(Admitted::new(claims, headers, ticket));
        self.tickets.put(ticket, Arc::clone(&a));
        Ok(a)
    }

    /// Whether `ticket` is signed by one of this config's keys, whatever its claims say
    /// ([`KeyRing::is_signed`]): such a ticket never travels upstream. Every request that
    /// carries one asks, on every route, so a ticket that would admit is verified once and
    /// cached ([`Settings::verified`]) and its repeats cost a cache lookup, not an HMAC.
    pub fn is_gate_ticket(&self, ticket: &str, now_secs: u64) -> bool {
        if self.tickets.holds(ticket) {
            return true;
        }
        match self.verified(ticket, now_secs) {
            Ok(_) => true,
            // Refused for its claims only: the signature held.
            Err(TicketError::Expired | TicketError::NotYetValid | TicketError::WrongIssuer) => true,
            // Perhaps a good signature over claims that do not parse: ask the signature alone.
            Err(TicketError::Malformed) => self.keys.is_signed(ticket),
            Err(_) => false,
        }
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
    use http::HeaderName;

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

    /// Each TLS route gets its material at load, found by the route's place in the table
    /// (match order, not config order): a gateway its client, a controller with no CA none.
    #[test]
    fn upstream_tls_is_built_at_load_for_each_route_by_its_table_index() {
        let yaml = "listen: [\"127.0.0.1:1\"]\nstore:\n  kind: memory\ntickets:\n  keys:\n    - id: k1\n      secret: c2Vzc2lvbmdhdGUtdGVzdC1zZWNyZXQtMzItYnl0ZXMhIQ\nroutes:\n  - name: plain\n    kind: controller\n    path: /a\n    upstreams: [\"127.0.0.1:9\"]\n  - name: chat\n    kind: gateway\n    path: /chat/room\n    upstreams: [\"127.0.0.1:9\"]\n    tls: {sni: chat.example}\n  - name: shop\n    kind: controller\n    path: /shop\n    upstreams: [\"127.0.0.1:9\"]\n    tls: {sni: shop.example}\n";
        let cfg = crate::config::parse(yaml, std::path::Path::new("t.yaml"), &|_| None).unwrap();
        let s = Settings::new(cfg, Vec::new()).unwrap();
        let built: Vec<(&str, bool, bool)> = s
            .routes
            .routes()
            .iter()
            .enumerate()
            .map(|(i, r)| match s.upstream_tls(i) {
                Some(t) => (r.name(), t.client.is_some(), t.ca.is_some()),
                None => (r.name(), false, false),
            })
            .collect();
        assert_eq!(
            built,
            [
                ("chat", true, false),
                ("shop", false, false),
                ("plain", false, false)
            ]
        );
        assert!(s.upstream_tls(2).is_none(), "a plain route has none");
        assert!(
            s.upstream_tls(1).is_some(),
            "a TLS controller has its entry"
        );
    }
}
