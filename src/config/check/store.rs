//! Checks of the store section: which backend, its Redis URLs and topology, timeouts.

use super::*;

impl Ctx<'_> {
    /// Only the scheme is checked here; the Redis client parses the rest when it connects.
    pub(super) fn redis_url(&mut self, path: &str, url: &str, unix_ok: bool) {
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

    pub(super) fn store(&mut self, raw: RawStore) -> StoreConfig {
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
}
