//! The session store: one trait, two implementations.
//!
//! [`redis::RedisStore`] is the production store, shared by every gate node;
//! [`memory::MemoryStore`] serves `sessiongate demo` and single-process use.
//! Both apply the rules of [`crate::session`] atomically and publish every
//! change of status as an [`Event`], and both pass the same contract tests
//! (`tests/it/store_contract.rs`).

pub mod memory;
pub mod redis;

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::session::{Event, Liveness, Session, Status};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("store unavailable ({kind}): {source}")]
    Redis {
        kind: RedisFailure,
        #[source]
        source: ::redis::RedisError,
    },
    #[error("store unavailable: sentinel cannot name master {master}: {source}")]
    NoMaster {
        master: String,
        #[source]
        source: ::redis::RedisError,
    },
    #[error("store unavailable: no cluster nodes")]
    NoClusterNodes,
    #[error("store unavailable: memory store lock poisoned")]
    Poisoned,
    #[error("store returned malformed data: {0}")]
    Corrupt(String),
    #[error("store returned malformed data: {field}: {source}")]
    BadJson {
        field: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl From<::redis::RedisError> for StoreError {
    fn from(source: ::redis::RedisError) -> StoreError {
        StoreError::Redis {
            kind: RedisFailure::of(&source),
            source,
        }
    }
}

/// What went wrong with Redis, as far as the gate can tell cases apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RedisFailure {
    /// The client gave up waiting for a connection or an answer.
    #[error("timed out")]
    Timeout,
    /// The connection was refused, dropped, or never made.
    #[error("connection lost")]
    Connection,
    /// The node no longer takes writes or the cluster is resharding: a
    /// failover is under way (READONLY, MASTERDOWN, CLUSTERDOWN, …).
    #[error("failover")]
    Failover,
    /// The server refused a script or command.
    #[error("script error")]
    Script,
    #[error("other")]
    Other,
}

impl RedisFailure {
    pub fn of(e: &::redis::RedisError) -> RedisFailure {
        use ::redis::{ErrorKind, ServerErrorKind as S};
        if e.is_timeout() {
            return RedisFailure::Timeout;
        }
        if e.is_connection_refusal() || e.is_connection_dropped() {
            return RedisFailure::Connection;
        }
        match e.kind() {
            ErrorKind::Server(
                S::ReadOnly
                | S::MasterDown
                | S::ClusterDown
                | S::TryAgain
                | S::BusyLoading
                | S::Moved
                | S::Ask,
            ) => RedisFailure::Failover,
            ErrorKind::Server(S::ResponseError | S::ExecAbort | S::NoScript | S::CrossSlot)
            | ErrorKind::Extension => RedisFailure::Script,
            ErrorKind::Io | ErrorKind::ClusterConnectionNotFound => RedisFailure::Connection,
            _ => RedisFailure::Other,
        }
    }
}

/// The clock rules a call applies, from the current config (so a reload
/// takes effect on the next request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    pub idle_ms: u64,
    pub touch_ms: u64,
    /// How long a dead session stays readable (and listed) before its keys go.
    pub retain_ms: u64,
}

/// Outcome of a login's insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// Sessions of the same user pushed out by `max_per_user`, now `replaced`.
    pub replaced: Vec<String>,
}

/// Result of a fixed-window rate-limit hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    Allow,
    Deny { retry_after_ms: u64 },
}

#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Inserts a new active session; beyond `max_per_user` active sessions of
    /// that user, the oldest become `replaced`. Atomic per user.
    async fn create(
        &self,
        session: &Session,
        max_per_user: u32,
        rules: Rules,
    ) -> Result<Created, StoreError>;

    /// The per-request check, one round trip: applies expiry and idle rules
    /// (publishing a change), writes `lastActiveAt` if `touch_ms` has passed,
    /// and returns the session's liveness. `None`: no such session.
    async fn check(
        &self,
        sid: &str,
        now: u64,
        rules: Rules,
    ) -> Result<Option<Liveness>, StoreError>;

    /// The tunnel sweeper's check of many sessions in one round trip: each
    /// `(sid, activity)` is checked like [`SessionStore::check`], except that
    /// `lastActiveAt` moves only to `activity` (when the tunnel's client last
    /// sent a frame, ms; 0: no frame), never to `now`
    /// ([`Liveness::record_activity`]). Answers in the batch's order.
    async fn check_many(
        &self,
        batch: &[(String, u64)],
        now: u64,
        rules: Rules,
    ) -> Result<Vec<Option<Liveness>>, StoreError>;

    /// The whole record, after applying the clock rules.
    async fn get(&self, sid: &str, now: u64, rules: Rules) -> Result<Option<Session>, StoreError>;

    /// Forces `lastActiveAt = now` on an active session.
    async fn touch(&self, sid: &str, now: u64, rules: Rules)
    -> Result<Option<Session>, StoreError>;

    /// Sets `expire_at` (already capped by the caller) on an active session.
    async fn refresh(
        &self,
        sid: &str,
        expire_at: u64,
        now: u64,
        rules: Rules,
    ) -> Result<Option<Session>, StoreError>;

    /// Moves a session to `status`. From `active` any target is allowed; a
    /// session that already left `active` may only become `removed` (which
    /// takes it out of its user's list). Returns the record as it now stands,
    /// `None` when the session does not exist (or is already gone).
    async fn set_status(
        &self,
        sid: &str,
        status: Status,
        now: u64,
        rules: Rules,
    ) -> Result<Option<Session>, StoreError>;

    /// A user's sessions, newest first, `removed` left out.
    async fn list(&self, user_id: &str, now: u64, rules: Rules)
    -> Result<Vec<Session>, StoreError>;

    /// Revokes every active session of a user; returns their ids.
    async fn revoke_user(
        &self,
        user_id: &str,
        now: u64,
        rules: Rules,
    ) -> Result<Vec<String>, StoreError>;

    /// Counts one hit against `key` in a fixed window shared by all nodes.
    async fn hit_rate(
        &self,
        key: &str,
        limit: u32,
        window_ms: u64,
        now: u64,
    ) -> Result<RateDecision, StoreError>;

    /// Frees what the backend does not expire by itself; called about once a
    /// minute. Redis expires keys by TTL, so only the memory store works here.
    async fn sweep(&self, _now: u64, _rules: Rules) -> Result<(), StoreError> {
        Ok(())
    }

    /// Round trip to the backend (readiness).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Status changes from every node sharing this store.
    fn events(&self) -> broadcast::Receiver<Event>;

    /// Changes each time [`SessionStore::events`] may have missed events (a
    /// subscription to the backend made anew): whatever was learnt before
    /// cannot be trusted to be current. A store that never misses any
    /// (the memory store) returns a receiver that never changes.
    fn gaps(&self) -> tokio::sync::watch::Receiver<u64> {
        tokio::sync::watch::channel(0).1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply as the server sends it, parsed as redis-rs parses replies.
    fn reply_error(wire: &[u8]) -> ::redis::RedisError {
        match ::redis::parse_redis_value(wire).and_then(|v| v.extract_error()) {
            Err(e) => e,
            Ok(v) => panic!("{wire:?} is no error reply: {v:?}"),
        }
    }

    #[test]
    fn a_readonly_reply_and_a_timeout_are_told_apart() {
        let readonly = StoreError::from(reply_error(
            b"-READONLY You can't write against a read only replica.\r\n",
        ));
        let timeout = StoreError::from(::redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "response timed out",
        )));
        assert!(matches!(
            readonly,
            StoreError::Redis {
                kind: RedisFailure::Failover,
                ..
            }
        ));
        assert!(matches!(
            timeout,
            StoreError::Redis {
                kind: RedisFailure::Timeout,
                ..
            }
        ));
        // The log line keeps redis' own words, and the cause stays reachable.
        let text = readonly.to_string();
        assert!(text.starts_with("store unavailable (failover): "), "{text}");
        assert!(text.contains("read only replica"), "{text}");
        assert!(std::error::Error::source(&readonly).is_some());
    }

    #[test]
    fn other_failures_have_their_own_kinds() {
        let kind = |e: ::redis::RedisError| RedisFailure::of(&e);
        let io = |k| ::redis::RedisError::from(std::io::Error::new(k, "x"));
        assert_eq!(
            kind(io(std::io::ErrorKind::ConnectionRefused)),
            RedisFailure::Connection
        );
        assert_eq!(
            kind(io(std::io::ErrorKind::ConnectionReset)),
            RedisFailure::Connection
        );
        assert_eq!(
            kind(reply_error(
                b"-ERR user_script:1: Script attempted to access a non local key\r\n"
            )),
            RedisFailure::Script
        );
        assert_eq!(
            kind(reply_error(b"-MASTERDOWN Link with MASTER is down\r\n")),
            RedisFailure::Failover
        );
        assert_eq!(
            kind(::redis::RedisError::from((
                ::redis::ErrorKind::AuthenticationFailed,
                "bad password"
            ))),
            RedisFailure::Other
        );
    }
}
