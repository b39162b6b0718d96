//! Raw shapes, exactly as written. Values that need checking stay strings here and are parsed
//! in `check`, which reports every problem rather than the first.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) listen: Option<Addrs>,
    pub(super) tls: Option<RawTls>,
    pub(super) clients: Option<RawClients>,
    pub(super) admin: Option<RawAdmin>,
    pub(super) store: RawStore,
    pub(super) tickets: RawTickets,
    pub(super) sessions: Option<RawSessions>,
    pub(super) identity: Option<RawIdentity>,
    pub(super) login: Option<RawLogin>,
    pub(super) routes: Vec<RawRoute>,
    pub(super) server: Option<RawServer>,
}

/// `listen` takes one address or a list.
pub(super) enum Addrs {
    One(String),
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for Addrs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Addrs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an address or a list of addresses")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Addrs, E> {
                Ok(Addrs::One(v.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Addrs, A::Error> {
                let mut all = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    all.push(s);
                }
                Ok(Addrs::Many(all))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: String,
    pub(super) token: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    pub(super) kind: Option<String>,
    pub(super) url: Option<String>,
    pub(super) cluster: Option<Vec<String>>,
    pub(super) sentinel: Option<RawSentinel>,
    pub(super) key_prefix: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) on_unavailable: Option<String>,
    pub(super) grace: Option<String>,
    pub(super) cache: Option<String>,
    pub(super) cache_max_bytes: Option<RawBytes>,
    pub(super) tls: Option<RawStoreTls>,
}

/// A size: a plain number of bytes, or a string such as `64MiB`.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawBytes {
    Number(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStoreTls {
    pub(super) ca_file: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSentinel {
    pub(super) master: String,
    pub(super) nodes: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTickets {
    pub(super) keys: Vec<RawKey>,
    pub(super) issuer: Option<String>,
    pub(super) leeway: Option<String>,
    pub(super) from: Option<Vec<String>>,
    pub(super) cookie: Option<RawCookie>,
    pub(super) cache_max_bytes: Option<RawBytes>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKey {
    pub(super) id: String,
    /// Optional here so an empty `${VAR}` gets a located, specific message.
    pub(super) secret: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCookie {
    pub(super) name: Option<String>,
    pub(super) secure: Option<bool>,
    pub(super) same_site: Option<String>,
    pub(super) domain: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSessions {
    pub(super) ttl: Option<String>,
    pub(super) idle_timeout: Option<String>,
    pub(super) touch_interval: Option<String>,
    pub(super) max_lifetime: Option<String>,
    /// Signed so a negative count gets our message, not serde's `expected u32`.
    pub(super) max_per_user: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdentity {
    pub(super) header_prefix: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLogin {
    pub(super) users_file: Option<String>,
    pub(super) delegate: Option<RawDelegate>,
    pub(super) origins: Option<Vec<String>>,
    pub(super) rate_limit: Option<RawRateLimit>,
    pub(super) hashing: Option<RawHashing>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHashing {
    pub(super) workers: Option<i64>,
    pub(super) queue: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDelegate {
    pub(super) url: String,
    pub(super) timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    pub(super) per_ip: Option<String>,
    pub(super) per_user: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) name: String,
    pub(super) kind: String,
    pub(super) host: Option<String>,
    pub(super) path: String,
    pub(super) strip_prefix: Option<bool>,
    pub(super) upstreams: Vec<String>,
    pub(super) auth: Option<String>,
    pub(super) roles: Option<Vec<String>>,
    pub(super) origins: Option<Vec<String>>,
    pub(super) timeout: Option<String>,
    pub(super) connect_timeout: Option<String>,
    pub(super) tls: Option<RawRouteTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRouteTls {
    pub(super) sni: Option<String>,
    pub(super) ca_file: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) listen: Option<Addrs>,
    pub(super) certificates: Option<Vec<RawCertificate>>,
    pub(super) http2: Option<bool>,
    pub(super) min_version: Option<RawVersion>,
    pub(super) redirect_plain: Option<bool>,
    pub(super) hsts: Option<String>,
}

/// `"1.2"` as written, or `1.2` read by YAML as a number; kept as text for `check` to judge.
pub(super) struct RawVersion(pub(super) String);

impl<'de> Deserialize<'de> for RawVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawVersion;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a TLS version such as \"1.2\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawVersion, E> {
                Ok(RawVersion(v.to_owned()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawVersion, E> {
                Ok(RawVersion(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawVersion, E> {
                Ok(RawVersion(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawVersion, E> {
                Ok(RawVersion(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawVersion, E> {
                Ok(RawVersion(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCertificate {
    pub(super) cert_file: String,
    pub(super) key_file: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClients {
    pub(super) proxy_protocol: Option<bool>,
    pub(super) trusted_proxies: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) threads: Option<i64>,
    pub(super) grace_period: Option<String>,
    pub(super) shutdown_timeout: Option<String>,
    pub(super) header_timeout: Option<String>,
    pub(super) keepalive_timeout: Option<String>,
    pub(super) pid_file: Option<String>,
    pub(super) upgrade_sock: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUsersFile {
    pub(super) users: Vec<RawUser>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUser {
    pub(super) username: String,
    pub(super) password_hash: String,
    pub(super) id: Option<String>,
    pub(super) name: Option<String>,
    pub(super) roles: Option<Vec<String>>,
    pub(super) vars: Option<BTreeMap<String, String>>,
}
