//! Configuration: the YAML file and the users file, turned into typed values.
//!
//! Owns `${NAME}` substitution, every default of SPEC section 3 and all validation, so the rest
//! of the gate only sees parsed values (`Duration`, `SocketAddr`, key bytes). Every error is
//! located in the file as the operator wrote it, as `FILE:LINE:COL: message`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

mod check;
pub use check::normalize_origin;
mod raw;
mod source;
#[cfg(test)]
mod tests;
mod yaml;

use check::Ctx;
use raw::{RawConfig, RawUsersFile};
use source::{SourceMap, substitute};
use yaml::deserialize;

/// Where listening sockets are handed over during `run --upgrade` by default.
pub const DEFAULT_UPGRADE_SOCK: &str = "/tmp/sessiongate_upgrade.sock";

// ---------------------------------------------------------------------------------------------
// The typed configuration.

/// The whole gate configuration, after substitution, defaults and validation.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    /// `None`: no admin listener.
    pub admin: Option<AdminConfig>,
    pub store: StoreConfig,
    pub tickets: TicketsConfig,
    pub sessions: SessionsConfig,
    pub identity: IdentityConfig,
    /// `None`: no login endpoint.
    pub login: Option<LoginConfig>,
    pub routes: Vec<RouteConfig>,
    /// Extension beyond the SPEC: process-level knobs (`server:` block).
    pub server: ServerConfig,
    /// `None`: no TLS listener.
    pub tls: Option<TlsConfig>,
    pub clients: ClientsConfig,
}

/// The gate's own TLS listeners (`tls:`).
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub listen: Vec<SocketAddr>,
    /// Never empty; each file checked (parses, key matches, not expired) at load.
    pub certificates: Arc<crate::tls::CertSet>,
    pub http2: bool,
    pub min_version: crate::tls::MinVersion,
    pub redirect_plain: bool,
    /// The `Strict-Transport-Security` value, already a valid header value.
    pub hsts: Option<http::HeaderValue>,
}

impl TlsConfig {
    /// The port a plain-listener redirect names: the first TLS listener's.
    pub fn redirect_port(&self) -> u16 {
        self.listen.first().map_or(443, SocketAddr::port)
    }
}

/// Who the clients are (`clients:`).
#[derive(Debug, Clone, Default)]
pub struct ClientsConfig {
    pub proxy_protocol: bool,
    pub trusted_proxies: Vec<Cidr>,
}

/// An address block such as `10.0.0.0/8` or `fd00::/8`; a bare address is a
/// block of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4-mapped IPv6 peer (`::ffff:a.b.c.d`) is its IPv4 address.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Why a string is not a [`Cidr`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("`{text}` is not an address or CIDR block (like `10.0.0.0/8`)")]
    Address {
        text: String,
        #[source]
        source: std::net::AddrParseError,
    },
    #[error("`{text}`: the prefix length must be 0 to {max}")]
    Prefix { text: String, max: u8 },
}

impl std::str::FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|source| CidrError::Address {
            text: s.to_owned(),
            source,
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => {
                p.parse::<u8>()
                    .ok()
                    .filter(|p| *p <= max)
                    .ok_or_else(|| CidrError::Prefix {
                        text: s.to_owned(),
                        max,
                    })?
            }
        };
        Ok(Cidr { addr, prefix })
    }
}

#[derive(Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// `None` when absent or empty: the admin API then refuses every request.
    pub token: Option<String>,
}

// Hand-written so the token never reaches a log line through `{:?}`.
impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Redis,
    Memory,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUnavailable {
    /// Answer 503 `store_unavailable`.
    Deny,
    /// Admit sessions seen active within `grace`.
    Grace,
}

#[derive(Debug, Clone)]
pub struct SentinelConfig {
    pub master: String,
    pub nodes: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub kind: StoreKind,
    /// Exactly one of `url`, `cluster`, `sentinel` is set for `Redis`; none for `Memory`.
    pub url: Option<String>,
    pub cluster: Option<Vec<String>>,
    pub sentinel: Option<SentinelConfig>,
    pub key_prefix: String,
    pub timeout: Duration,
    pub on_unavailable: OnUnavailable,
    pub grace: Duration,
    /// Extension: how long a node trusts a session's liveness without asking
    /// the store again (status changes also reach it over pub/sub at once).
    /// `0s` sends every request to the store.
    pub cache: Duration,
    /// Extension: the most memory (bytes, estimated) the per-node liveness
    /// cache holds; least used entries go first. Read once, at start.
    pub cache_max_bytes: u64,
    /// Extension: the CA (PEM, read from `store.tls.ca_file` when the config
    /// loads) that `rediss://` servers are verified with, instead of the
    /// system's roots.
    pub tls_ca: Option<Vec<u8>>,
}

impl StoreConfig {
    /// An in-process store with every other field at its default (`sessiongate demo`).
    pub fn memory() -> Self {
        StoreConfig {
            kind: StoreKind::Memory,
            url: None,
            cluster: None,
            sentinel: None,
            tls_ca: None,
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            timeout: DEFAULT_STORE_TIMEOUT,
            on_unavailable: OnUnavailable::Deny,
            grace: DEFAULT_STORE_GRACE,
            cache: DEFAULT_STORE_CACHE,
            cache_max_bytes: DEFAULT_STORE_CACHE_MAX_BYTES,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketSource {
    /// `Authorization: Bearer`.
    Header,
    Cookie,
    /// `?ticket=` (WebSocket handshakes).
    Query,
}

#[derive(Debug, Clone)]
pub struct TicketsConfig {
    /// Never empty: the first signs, all verify.
    pub keys: Vec<KeyConfig>,
    pub issuer: String,
    pub leeway: Duration,
    /// Never empty, no duplicates, in the order to look.
    pub from: Vec<TicketSource>,
    pub cookie: CookieConfig,
    /// Extension: the most memory (bytes, estimated) the per-node cache of
    /// verified tickets holds; least used entries go first.
    pub cache_max_bytes: u64,
}

#[derive(Clone)]
pub struct KeyConfig {
    pub id: String,
    /// At least 32 bytes.
    pub secret: Vec<u8>,
}

// Hand-written so key bytes never reach a log line through `{:?}`.
impl fmt::Debug for KeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyConfig")
            .field("id", &self.id)
            .field("secret", &format_args!("<{} bytes>", self.secret.len()))
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Lax,
    Strict,
    None,
}

#[derive(Debug, Clone)]
pub struct CookieConfig {
    /// A valid cookie-name token, without the `__Host-` prefix that `secure` adds.
    pub name: String,
    pub secure: bool,
    pub same_site: SameSite,
    /// Only with `secure: false` (a `__Host-` cookie may not carry `Domain`).
    pub domain: Option<String>,
}

impl Default for CookieConfig {
    fn default() -> Self {
        CookieConfig {
            name: DEFAULT_COOKIE_NAME.to_owned(),
            secure: true,
            same_site: SameSite::Lax,
            domain: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SessionsConfig {
    pub ttl: Duration,
    pub idle_timeout: Duration,
    /// At most `idle_timeout`.
    pub touch_interval: Duration,
    /// At least `ttl`.
    pub max_lifetime: Duration,
    /// At least 1.
    pub max_per_user: u32,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            ttl: DEFAULT_TTL,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            touch_interval: DEFAULT_TOUCH_INTERVAL,
            max_lifetime: DEFAULT_MAX_LIFETIME,
            max_per_user: DEFAULT_MAX_PER_USER,
        }
    }
}

#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// Valid header-name characters, as written (e.g. `X-Session-`).
    pub header_prefix: String,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            header_prefix: DEFAULT_HEADER_PREFIX.to_owned(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct LoginConfig {
    /// Exactly one of `users_file` and `delegate` is set. The path is kept as written
    /// (relative paths resolve against the working directory, like the `-c` argument).
    pub users_file: Option<PathBuf>,
    pub delegate: Option<DelegateConfig>,
    /// Origins allowed, besides the request's own, for cookie-authenticated
    /// POST/DELETE `/_session` calls; normalized like route origins.
    pub origins: Vec<String>,
    pub rate_limit: RateLimitConfig,
    pub hashing: HashingConfig,
}

/// The bounded pool users-file password checks run on (read at start only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashingConfig {
    /// argon2 verifications running at once.
    pub workers: usize,
    /// Verifications that may wait for a worker; a login beyond them gets 429.
    pub queue: usize,
}

impl Default for HashingConfig {
    fn default() -> Self {
        HashingConfig {
            workers: 2,
            queue: 32,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DelegateConfig {
    /// An absolute `http://` URL: the delegate is called over plain HTTP
    /// (`login.rs`), so `check.rs` refuses `https://` at load.
    pub url: String,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    pub per_ip: Rate,
    pub per_user: Rate,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            per_ip: Rate {
                count: 10,
                per: MINUTE,
            },
            per_user: Rate {
                count: 5,
                per: MINUTE,
            },
        }
    }
}

/// `count` events per `per` (both non-zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// The upstream speaks WebSocket.
    Gateway,
    /// The upstream speaks plain HTTP.
    Controller,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthPolicy {
    Required,
    Optional,
    Public,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Unique among routes.
    pub name: String,
    pub kind: RouteKind,
    /// Lowercase host name or IP literal, without a port.
    pub host: Option<String>,
    /// Starts with `/`; not under `/_session`.
    pub path: String,
    pub strip_prefix: bool,
    /// Never empty; resolved at load.
    pub upstreams: Vec<SocketAddr>,
    pub auth: AuthPolicy,
    /// Any of these admits; only with `auth: required`.
    pub roles: Vec<String>,
    /// Gateway routes only: exact, lowercase `scheme://host[:port]` allowlist. `None`: any.
    pub origins: Option<Vec<String>>,
    /// Extension: upstream response timeout.
    pub timeout: Duration,
    /// Extension: upstream connect timeout.
    pub connect_timeout: Duration,
    /// Extension: TLS to the upstreams.
    pub tls: Option<RouteTls>,
}

/// Extension: TLS from the gate to a route's upstreams.
#[derive(Debug, Clone)]
pub struct RouteTls {
    /// The server name sent and verified.
    pub sni: String,
    /// The CA's certificates (DER) to verify with, instead of the system's roots.
    pub ca: Option<std::sync::Arc<Vec<Vec<u8>>>>,
}

/// Extension beyond the SPEC: the `server:` block.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Worker threads, at least 1.
    pub threads: usize,
    /// After SIGTERM, how long the gate keeps accepting while the balancer notices.
    pub grace_period: Duration,
    /// After the grace period, how long in-flight requests get to finish.
    pub shutdown_timeout: Duration,
    /// The whole request head must arrive within this (SPEC section 3).
    pub header_timeout: Duration,
    /// An idle keep-alive client connection is closed after this (SPEC section 3).
    pub keepalive_timeout: Duration,
    /// Where the running gate writes its process id, so that
    /// `sessiongate run --upgrade` finds the process to take over from.
    pub pid_file: Option<PathBuf>,
    /// The Unix socket a graceful upgrade passes the listening sockets over.
    pub upgrade_sock: PathBuf,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            threads: 1,
            grace_period: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(5),
            header_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            pid_file: None,
            upgrade_sock: PathBuf::from(DEFAULT_UPGRADE_SOCK),
        }
    }
}

/// One entry of the users file.
#[derive(Clone)]
pub struct UserEntry {
    pub username: String,
    /// An argon2id PHC string.
    pub password_hash: String,
    /// Defaults to `username`.
    pub id: String,
    /// Defaults to `""`.
    pub name: String,
    pub roles: Vec<String>,
    pub vars: BTreeMap<String, String>,
}

// Hand-written so hashes stay out of logs.
impl fmt::Debug for UserEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserEntry")
            .field("username", &self.username)
            .field("password_hash", &"<redacted>")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("roles", &self.roles)
            .field("vars", &self.vars)
            .finish()
    }
}

const MINUTE: Duration = Duration::from_secs(60);
const DEFAULT_KEY_PREFIX: &str = "sg:";
const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(50);
const DEFAULT_STORE_GRACE: Duration = Duration::from_secs(30);
const DEFAULT_STORE_CACHE: Duration = Duration::from_secs(1);
const DEFAULT_STORE_CACHE_MAX_BYTES: u64 = 32 << 20;
const DEFAULT_TICKET_CACHE_MAX_BYTES: u64 = 32 << 20;
/// The smallest cache budget a config may set.
pub const MIN_CACHE_BYTES: u64 = 64 << 10;
const DEFAULT_ISSUER: &str = "sessiongate";
const DEFAULT_LEEWAY: Duration = Duration::from_secs(5);
const DEFAULT_FROM: [TicketSource; 3] = [
    TicketSource::Header,
    TicketSource::Cookie,
    TicketSource::Query,
];
const DEFAULT_COOKIE_NAME: &str = "sg_ticket";
const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const DEFAULT_TOUCH_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
const DEFAULT_MAX_PER_USER: u32 = 5;
const DEFAULT_HEADER_PREFIX: &str = "X-Session-";
const DEFAULT_DELEGATE_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const MIN_SECRET_BYTES: usize = 32;
/// The gate's own API; a route there would never be reached.
const SESSION_API_PREFIX: &str = "/_session";
/// Session-var limits of SPEC section 5.
const MAX_VARS: usize = 32;
const MAX_VAR_KEY: usize = 64;
const MAX_VAR_VALUE: usize = 512;

/// base64url, padded or not.
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

// ---------------------------------------------------------------------------------------------
// Errors and entry points.

/// One problem in a file, located where the operator wrote it (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}:{col}: {message}", file.display())]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl ConfigError {
    fn at_start(file: &Path, message: String) -> Self {
        ConfigError {
            file: file.to_owned(),
            line: 1,
            col: 1,
            message,
        }
    }
}

/// Reads and parses the gate configuration, taking `${NAME}` values from the process environment.
pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
    let text = read(path)?;
    parse(&text, path, &|name| std::env::var(name).ok())
}

/// Parses the gate configuration; `file` only names the source in errors.
pub fn parse(
    text: &str,
    file: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<ConfigError>> {
    let (text, map) = substitute(text, env).map_err(|errors| {
        errors
            .into_iter()
            .map(|(line, col, e)| ConfigError {
                file: file.to_owned(),
                line,
                col,
                message: e.to_string(),
            })
            .collect::<Vec<_>>()
    })?;
    let (raw, marks): (RawConfig, _) = deserialize(&text, &map, file)?;
    let mut cx = Ctx::new(file, &map, marks);
    let config = cx.config(raw);
    cx.finish(config)
}

/// Reads and parses a users file (`login.users_file`). No `${NAME}` substitution: PHC strings
/// are full of `$`.
pub fn load_users(path: &Path) -> Result<Vec<UserEntry>, Vec<ConfigError>> {
    let text = read(path)?;
    parse_users(&text, path)
}

/// Parses a users file; `file` only names the source in errors.
pub fn parse_users(text: &str, file: &Path) -> Result<Vec<UserEntry>, Vec<ConfigError>> {
    let map = SourceMap::identity(text);
    let (raw, marks): (RawUsersFile, _) = deserialize(text, &map, file)?;
    let mut cx = Ctx::new(file, &map, marks);
    let users = cx.users(raw);
    cx.finish(users)
}

fn read(path: &Path) -> Result<String, Vec<ConfigError>> {
    std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError::at_start(
            path,
            format!("cannot read file: {e}"),
        )]
    })
}

/// Parses `250ms`, `30s`, `15m`, `24h`, `30d`, and sums like `1h30m`; `0` alone is zero.
pub fn parse_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit_ms: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add(Duration::from_millis(n.checked_mul(unit_ms)?))?;
    }
    Some(total)
}

/// Parses a size: `1048576`, `512KiB`, `64MiB`, `1GiB` (also `kB`, `MB`,
/// `GB` as powers of 1000, and a bare `B`).
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let n: u64 = s[..digits].parse().ok()?;
    let unit: u64 = match s[digits..].trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(unit)
}

/// Parses `N/unit` (`10/min`, `5/s`, `100/hour`, `2/day`) or `N/duration` (`3/10s`).
pub fn parse_rate(s: &str) -> Option<Rate> {
    let (count, unit) = s.split_once('/')?;
    let count: u32 = count.trim().parse().ok()?;
    let unit = unit.trim();
    let per = match unit {
        "s" | "sec" | "secs" | "second" | "seconds" => Duration::from_secs(1),
        "m" | "min" | "mins" | "minute" | "minutes" => MINUTE,
        "h" | "hour" | "hours" => Duration::from_secs(3600),
        "d" | "day" | "days" => Duration::from_secs(86_400),
        other => parse_duration(other)?,
    };
    (count > 0 && !per.is_zero()).then_some(Rate { count, per })
}
