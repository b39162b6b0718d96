//! Credential checks for `POST /_session/login`: the users file (argon2id
//! hashes) or a delegate HTTP service (SPEC section 3).
//!
//! A delegate's 4xx refuses with `bad_credentials`; its 5xx, a timeout or a
//! malformed answer refuses with `upstream_unavailable` and never admits.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::config::{DelegateConfig, UserEntry};
use crate::http1::{self, Limits};
use crate::reject::Reject;
use crate::session::validate_vars;
use crate::settings::Settings;

/// Who the credential check says the user is.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Identity {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
}

/// A hash verified when the username is unknown, so a miss costs as much
/// time as a wrong password and usernames cannot be probed by timing.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2Vzc2lvbmdhdGVkdW1teQ$0AvgVEWqTQ2ThlPHJtv/oBmT5D8Wq8Dm5N3ybgyobLQ";

/// A users-file login's place in the hashing pool, taken before any other
/// work so a login the pool has no room for costs nothing more (no rate-limit
/// round trip, no body of work queued). `None` with a delegate, which hashes
/// nothing here.
pub fn reserve(s: &Settings, pool: &HashPool) -> Result<Option<Slot>, Reject> {
    match s.config.login.as_ref() {
        Some(l) if l.delegate.is_none() => pool.reserve().map(Some).map_err(|Busy| busy()),
        _ => Ok(None),
    }
}

fn busy() -> Reject {
    Reject::RateLimited {
        retry_after_secs: BUSY_RETRY_AFTER_SECS,
    }
}

/// Checks the credentials; a users-file check runs in `slot` (see [`reserve`]).
pub async fn check(
    s: &Settings,
    slot: Option<Slot>,
    username: &str,
    password: &str,
    vars: &BTreeMap<String, String>,
) -> Result<Identity, Reject> {
    let Some(login) = &s.config.login else {
        return Err(Reject::NotFound);
    };
    if let Some(d) = &login.delegate {
        return delegate(d, username, password, vars).await;
    }
    // Only a reload from a delegate to a users file between `reserve` and
    // here leaves a users-file check without a place.
    let slot = slot.ok_or_else(busy)?;
    let entry = s.users.get(username).cloned();
    let hash = entry
        .as_ref()
        .map_or_else(|| DUMMY_HASH.to_owned(), |u| u.password_hash.clone());
    let ok = slot.verify(password.to_owned(), hash).await;
    match entry {
        Some(u) if ok => Ok(identity_of(&u)),
        _ => Err(Reject::BadCredentials),
    }
}

/// What a login refused for a full hashing queue is told to wait.
const BUSY_RETRY_AFTER_SECS: u64 = 1;

/// The hashing pool and its queue are full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("password hashing is at capacity")]
pub struct Busy;

/// A bounded pool for argon2 verifications. Each one holds ~19 MiB and a
/// core for tens of milliseconds, so a flood of logins on an unbounded
/// blocking pool could take the machine's memory and CPU: at most `workers`
/// run at once, at most `queue` more wait, and any beyond are refused at once.
pub struct HashPool {
    permits: Arc<Semaphore>,
    /// Verifications running or waiting.
    admitted: Arc<AtomicUsize>,
    limit: usize,
}

/// A place in a [`HashPool`] (running or queued); leaves the count when
/// dropped, which is when its hash is done (it moves into the blocking task)
/// or its caller gave up first.
pub struct Slot {
    admitted: Arc<AtomicUsize>,
    permits: Arc<Semaphore>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Slot {
    /// Waits for a worker, then verifies `password` against a PHC string.
    pub async fn verify(self, password: String, phc: String) -> bool {
        // The semaphore is never closed: acquiring fails only if it were.
        let Ok(permit) = Arc::clone(&self.permits).acquire_owned().await else {
            return false;
        };
        // The permit and the slot go with the hash, so a client that leaves
        // mid-hash does not free its place before the hash is done.
        let hashed = tokio::task::spawn_blocking(move || {
            let _held = (permit, self);
            verify_password(&password, &phc)
        });
        hashed.await.unwrap_or(false)
    }
}

impl HashPool {
    pub fn new(workers: usize, queue: usize) -> HashPool {
        let workers = workers.max(1);
        HashPool {
            permits: Arc::new(Semaphore::new(workers)),
            admitted: Arc::default(),
            limit: workers.saturating_add(queue),
        }
    }

    /// A place in the pool, or [`Busy`] at once when it and its queue are full.
    pub fn reserve(&self) -> Result<Slot, Busy> {
        if self.admitted.fetch_add(1, Ordering::AcqRel) >= self.limit {
            self.admitted.fetch_sub(1, Ordering::AcqRel);
            return Err(Busy);
        }
        Ok(Slot {
            admitted: Arc::clone(&self.admitted),
            permits: Arc::clone(&self.permits),
        })
    }

    /// [`HashPool::reserve`], then [`Slot::verify`].
    pub async fn verify(&self, password: String, phc: String) -> Result<bool, Busy> {
        Ok(self.reserve()?.verify(password, phc).await)
    }
}

/// The per-IP login rate-limit key: an IPv4 address, or the /64 of an IPv6
/// one (one subscriber's allocation, where a client can pick any of 2^64
/// addresses). IPv4-mapped IPv6 counts as the IPv4 address.
pub fn ip_rate_key(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => format!("login:ip:{v4}"),
        IpAddr::V6(v6) => {
            let net = Ipv6Addr::from(u128::from(v6) & !(u128::MAX >> 64));
            format!("login:ip:{net}/64")
        }
    }
}

/// The per-user login rate-limit key: the case-folded username, so `DCase`
/// and `dcase` share one budget whatever the credential check makes of case.
pub fn user_rate_key(username: &str) -> String {
    format!("login:user:{}", username.to_lowercase())
}

fn identity_of(u: &UserEntry) -> Identity {
    Identity {
        id: u.id.clone(),
        name: u.name.clone(),
        roles: u.roles.clone(),
        vars: u.vars.clone(),
    }
}

pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(e) => {
            tracing::warn!(error = %e, "malformed password hash in users file");
            false
        }
    }
}

/// argon2id PHC string with the crate's default (OWASP) parameters.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    use argon2::PasswordHasher;
    use argon2::password_hash::SaltString;
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

async fn delegate(
    d: &DelegateConfig,
    username: &str,
    password: &str,
    vars: &BTreeMap<String, String>,
) -> Result<Identity, Reject> {
    let body = serde_json::json!({"username": username, "password": password, "vars": vars});
    let body = serde_json::to_vec(&body).map_err(|_| Reject::UpstreamUnavailable)?;
    let answer = tokio::time::timeout(d.timeout, post_json(&d.url, &body)).await;
    let (status, resp) = match answer {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::warn!(url = %d.url, error = %e, "login delegate unreachable");
            return Err(Reject::UpstreamUnavailable);
        }
        Err(_) => {
            tracing::warn!(url = %d.url, timeout = ?d.timeout, "login delegate timed out");
            return Err(Reject::UpstreamUnavailable);
        }
    };
    match status {
        200 => serde_json::from_slice::<Identity>(&resp)
            .ok()
            .filter(well_formed)
            .ok_or_else(|| {
                tracing::warn!(url = %d.url, "login delegate answered 200 with a malformed body");
                Reject::UpstreamUnavailable
            }),
        400..=499 => Err(Reject::BadCredentials),
        other => {
            tracing::warn!(url = %d.url, status = other, "login delegate refused with an error");
            Err(Reject::UpstreamUnavailable)
        }
    }
}

/// Whether a delegate's identity obeys the rules a users file entry is held
/// to at load time: everything in it becomes an upstream header, so a role
/// with a comma would forge a second role and a control character would
/// silently drop the header. Anything else is a malformed answer.
fn well_formed(i: &Identity) -> bool {
    let text_ok = |s: &str| !s.chars().any(char::is_control);
    !i.id.is_empty()
        && text_ok(&i.id)
        && text_ok(&i.name)
        && i.roles
            .iter()
            .all(|r| !r.is_empty() && r.chars().all(|c| c.is_ascii_graphic() && c != ','))
        && validate_vars(&i.vars).is_ok()
        && i.vars.values().all(|v| text_ok(v))
}

/// What is read of a delegate's answer; the delegate's timeout bounds the time.
const DELEGATE_LIMITS: Limits = Limits {
    head: 64 * 1024,
    headers: 32,
    body: 64 * 1024,
    idle: None,
};

/// Why a delegate could not be asked.
#[derive(Debug, thiserror::Error)]
enum DelegateError {
    #[error("delegate url must be http://")]
    Url,
    #[error("connecting or sending: {0}")]
    Io(#[from] std::io::Error),
    #[error("reading the answer: {0}")]
    Read(#[from] http1::ReadError),
}

/// A minimal HTTP/1.1 POST over plain TCP (the delegate sits beside the
/// gate); answers (status, body).
async fn post_json(url: &str, body: &[u8]) -> Result<(u16, Vec<u8>), DelegateError> {
    let rest = url.strip_prefix("http://").ok_or(DelegateError::Url)?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut stream = TcpStream::connect(authority).await?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    // A delegate may keep the connection open despite `Connection: close`:
    // the reader stops as soon as the framing says the answer is whole,
    // rather than wait for an EOF that only the timeout would end.
    let answer = http1::read_response(&mut stream, &DELEGATE_LIMITS).await?;
    Ok((answer.head.status, answer.body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_then_verify() {
        let h = hash_password("wonderland").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("wonderland", &h));
        assert!(!verify_password("wrong", &h));
    }

    #[test]
    fn ipv4_keys_by_address_and_ipv6_by_its_64() {
        let key = |s: &str| ip_rate_key(s.parse().unwrap());
        assert_eq!(key("192.0.2.7"), "login:ip:192.0.2.7");
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
        assert_eq!(key("2001:db8:1:2:aaaa::1"), "login:ip:2001:db8:1:2::/64");
        assert_eq!(
            key("2001:db8:1:2:ffff:ffff:ffff:ffff"),
            key("2001:db8:1:2::")
        );
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.7"), key("192.0.2.7"));
        assert_eq!(key("::1"), "login:ip:::/64");
    }

    #[test]
    fn usernames_key_case_folded() {
        assert_eq!(user_rate_key("DCase"), user_rate_key("dcase"));
        assert_eq!(user_rate_key("ÉLODIE"), user_rate_key("élodie"));
        assert_ne!(user_rate_key("alice"), user_rate_key("alicf"));
    }

    #[tokio::test]
    async fn a_full_hash_pool_refuses_at_once_and_frees_its_places() {
        let pool = Arc::new(HashPool::new(1, 1));
        let phc = hash_password("pw").unwrap();
        let admitted = |n: usize| {
            let pool = Arc::clone(&pool);
            async move {
                for _ in 0..1000 {
                    if pool.admitted.load(Ordering::Acquire) == n {
                        return true;
                    }
                    tokio::task::yield_now().await;
                }
                false
            }
        };
        // Taking the only permit stands in for a hash already running.
        let running = Arc::clone(&pool.permits).acquire_owned().await.unwrap();
        let spawn = |pw: &str| {
            let (pool, pw, phc) = (Arc::clone(&pool), pw.to_owned(), phc.clone());
            tokio::spawn(async move { pool.verify(pw, phc).await })
        };
        let first = spawn("pw");
        let second = spawn("pw");
        assert!(admitted(2).await, "both wait for the permit");
        assert_eq!(pool.verify("pw".into(), phc.clone()).await, Err(Busy));
        // A caller that gives up while queued frees its place.
        second.abort();
        assert!(admitted(1).await);
        drop(running);
        assert_eq!(first.await.unwrap(), Ok(true));
        assert!(admitted(0).await);
        assert_eq!(pool.verify("nope".into(), phc).await, Ok(false));
    }

    #[test]
    fn dummy_hash_parses() {
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
    }
}
