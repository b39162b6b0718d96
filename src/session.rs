//! The session record, its statuses and the admit/reject decision.
//!
//! Pure: no I/O and no clock. Callers pass `now` (milliseconds since the Unix
//! epoch), so every rule here is tested without sleeping. Both stores apply
//! exactly these rules; the Redis store mirrors [`Liveness::apply_clock`] in Lua.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

/// Length of a session id the gate mints: 24 random characters, then the
/// owner's [`user_tag`] (all base64url).
pub const SID_LEN: usize = 32;
/// Length of a [`user_tag`].
pub const TAG_LEN: usize = 8;

/// A short, stable tag of a user id: 48 bits of its SHA-256, base64url.
///
/// Every session id ends with its owner's tag, so a store can place a session
/// beside its user's other sessions knowing only the session id (Redis
/// Cluster keys one user's records to one slot with it).
pub fn user_tag(user_id: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(user_id.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..6])
}

/// The owner's tag a session id carries; an id the gate did not mint
/// (another length, or not ASCII) is its own tag.
pub fn sid_tag(sid: &str) -> &str {
    if sid.len() == SID_LEN && sid.is_ascii() {
        &sid[SID_LEN - TAG_LEN..]
    } else {
        sid
    }
}

/// Where a session stands. Only `Active` admits requests, and no status ever
/// returns to `Active`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Active,
    Ended,
    Removed,
    Revoked,
    Expired,
    Abandoned,
    Replaced,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Active,
        Status::Ended,
        Status::Removed,
        Status::Revoked,
        Status::Expired,
        Status::Abandoned,
        Status::Replaced,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Ended => "ended",
            Status::Removed => "removed",
            Status::Revoked => "revoked",
            Status::Expired => "expired",
            Status::Abandoned => "abandoned",
            Status::Replaced => "replaced",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_active(self) -> bool {
        self == Status::Active
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Status {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The part of a session the request path needs: enough to admit or reject
/// and to decide whether `lastActiveAt` is due a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    pub status: Status,
    pub expire_at: u64,
    pub last_active_at: u64,
}

impl Liveness {
    /// The status the clock implies: an active session past `expire_at` is
    /// `Expired`, one idle for `idle_ms` is `Abandoned`. Returns the new status
    /// when it changed.
    pub fn apply_clock(&mut self, now: u64, idle_ms: u64) -> Option<Status> {
        if self.status != Status::Active {
            return None;
        }
        let next = if now >= self.expire_at {
            Status::Expired
        } else if now >= self.last_active_at.saturating_add(idle_ms) {
            Status::Abandoned
        } else {
            return None;
        };
        self.status = next;
        Some(next)
    }

    /// Whether a request at `now` should write `lastActiveAt` (throttled to
    /// once per `touch_ms`).
    pub fn touch_due(&self, now: u64, touch_ms: u64) -> bool {
        now.saturating_sub(self.last_active_at) >= touch_ms
    }

    /// Applies client activity seen at `at` (a tunnel's last client frame),
    /// looked at by a check at `now`: `lastActiveAt` moves to `at`, the time
    /// the frame arrived rather than the time of the check, so a silent
    /// tunnel ages from its last frame. Activity that came after the session
    /// had already expired or gone idle revives nothing. Writes are throttled
    /// to once per `touch_ms`, except when the idle deadline has come, where
    /// the frame is what keeps the session alive. Returns whether it moved.
    pub fn record_activity(&mut self, at: u64, now: u64, idle_ms: u64, touch_ms: u64) -> bool {
        let deadline = self.last_active_at.saturating_add(idle_ms);
        let counts = self.status.is_active()
            && at > self.last_active_at
            && at < deadline
            && at < self.expire_at
            && (self.touch_due(now, touch_ms) || now >= deadline);
        if counts {
            self.last_active_at = at;
        }
        counts
    }
}

/// A whole session record as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub roles: Vec<String>,
    pub vars: BTreeMap<String, String>,
    pub status: Status,
    pub created_at: u64,
    pub last_active_at: u64,
    pub expire_at: u64,
    /// `createdAt + max_lifetime`: refresh never pushes `expire_at` past it.
    pub max_expire_at: u64,
    pub updated_at: u64,
}

impl Session {
    pub fn liveness(&self) -> Liveness {
        Liveness {
            status: self.status,
            expire_at: self.expire_at,
            last_active_at: self.last_active_at,
        }
    }

    /// Applies the clock rules to the whole record; returns the new status
    /// when it changed.
    pub fn apply_clock(&mut self, now: u64, idle_ms: u64) -> Option<Status> {
        let mut l = self.liveness();
        let changed = l.apply_clock(now, idle_ms)?;
        self.status = changed;
        self.updated_at = now;
        Some(changed)
    }

    /// The client-facing JSON view (SPEC section 5).
    pub fn view(&self, idle_ms: u64) -> SessionView<'_> {
        SessionView {
            id: &self.id,
            user_id: &self.user_id,
            status: self.status,
            vars: &self.vars,
            created_at: rfc3339(self.created_at),
            last_active_at: rfc3339(self.last_active_at),
            expire_at: rfc3339(self.expire_at),
            abandon_at: rfc3339(self.last_active_at.saturating_add(idle_ms)),
            updated_at: rfc3339(self.updated_at),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionView<'a> {
    pub id: &'a str,
    pub user_id: &'a str,
    pub status: Status,
    pub vars: &'a BTreeMap<String, String>,
    pub created_at: String,
    pub last_active_at: String,
    pub expire_at: String,
    pub abandon_at: String,
    pub updated_at: String,
}

/// A change of status, as published on `<key_prefix>events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Event {
    pub sid: String,
    #[serde(rename = "userId")]
    pub user_id: String,
    pub status: String,
    pub at: String,
}

impl Event {
    pub fn new(sid: &str, user_id: &str, status: Status, now: u64) -> Event {
        Event {
            sid: sid.to_owned(),
            user_id: user_id.to_owned(),
            status: status.as_str().to_owned(),
            at: rfc3339(now),
        }
    }
}

/// Session vars rules (SPEC section 5).
pub const MAX_VARS: usize = 32;
pub const MAX_VAR_KEY: usize = 64;
pub const MAX_VAR_VALUE: usize = 512;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VarsError {
    #[error("at most {MAX_VARS} vars are allowed")]
    TooMany,
    #[error("var key {0:?} must match [A-Za-z0-9_-]{{1,64}}")]
    BadKey(String),
    #[error("var {0:?} is longer than {MAX_VAR_VALUE} bytes")]
    ValueTooLong(String),
    /// Keys become header names, which are case-insensitive: `orgId` and
    /// `orgid` would be two values for one header.
    #[error("var keys {0:?} and {1:?} differ only in case")]
    DuplicateKey(String, String),
}

pub fn validate_vars(vars: &BTreeMap<String, String>) -> Result<(), VarsError> {
    for (k, v) in vars {
        let key_ok = !k.is_empty()
            && k.len() <= MAX_VAR_KEY
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !key_ok {
            return Err(VarsError::BadKey(k.clone()));
        }
        if v.len() > MAX_VAR_VALUE {
            return Err(VarsError::ValueTooLong(k.clone()));
        }
    }
    if vars.len() > MAX_VARS {
        return Err(VarsError::TooMany);
    }
    // A BTreeMap orders `A` < `Z` < `a`, so case variants are not neighbours:
    // sort the folded keys instead (at most 32 of them).
    let mut folded: Vec<(String, &String)> =
        vars.keys().map(|k| (k.to_ascii_lowercase(), k)).collect();
    folded.sort();
    if let Some(w) = folded.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(VarsError::DuplicateKey(w[0].1.clone(), w[1].1.clone()));
    }
    Ok(())
}

/// The vars a login stores: the client's, then the credential check's on top.
/// A credential key replaces any client key equal to it ignoring case, and
/// keeps its own spelling, so a client cannot shadow `orgId` with `orgid`.
pub fn merge_vars(
    client: BTreeMap<String, String>,
    credential: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = client
        .into_iter()
        .filter(|(k, _)| !credential.keys().any(|c| c.eq_ignore_ascii_case(k)))
        .collect();
    out.extend(credential.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

/// Milliseconds since the epoch as an RFC 3339 UTC string with millisecond precision.
pub fn rfc3339(ms: u64) -> String {
    let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    let dt = time::OffsetDateTime::from_unix_timestamp(secs)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        + time::Duration::milliseconds((ms % 1000) as i64);
    let (y, mo, d) = (dt.year(), u8::from(dt.month()), dt.day());
    let (h, mi, s) = (dt.hour(), dt.minute(), dt.second());
    format!(
        "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:03}Z",
        dt.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(expire_at: u64, last: u64) -> Liveness {
        Liveness {
            status: Status::Active,
            expire_at,
            last_active_at: last,
        }
    }

    #[test]
    fn activity_moves_last_active_to_the_frame_not_the_check() {
        let mut l = live(100_000, 1_000);
        // Frame at 2_500, swept at 4_000, touch every 1_000, idle 3_000.
        assert!(l.record_activity(2_500, 4_000, 3_000, 1_000));
        assert_eq!(l.last_active_at, 2_500);
        assert_eq!(l.apply_clock(5_499, 3_000), None);
        assert_eq!(l.apply_clock(5_500, 3_000), Some(Status::Abandoned));
    }

    #[test]
    fn activity_is_throttled_to_the_touch_interval() {
        let mut l = live(100_000, 1_000);
        assert!(!l.record_activity(1_200, 1_500, 30_000, 1_000));
        assert_eq!(l.last_active_at, 1_000);
        assert!(l.record_activity(1_900, 2_000, 30_000, 1_000));
        assert_eq!(l.last_active_at, 1_900);
    }

    #[test]
    fn activity_at_the_idle_deadline_is_written_whatever_the_throttle() {
        let mut l = live(100_000, 1_000);
        // touch_interval longer than idle_timeout: the frame must still count.
        assert!(l.record_activity(3_500, 4_000, 3_000, 10_000));
        assert_eq!(l.apply_clock(4_000, 3_000), None);
    }

    #[test]
    fn activity_after_the_deadline_revives_nothing() {
        let mut l = live(100_000, 1_000);
        assert!(!l.record_activity(4_000, 4_100, 3_000, 1_000));
        assert_eq!(l.apply_clock(4_100, 3_000), Some(Status::Abandoned));
        let mut e = live(5_000, 4_000);
        assert!(!e.record_activity(5_000, 6_000, 3_000, 1_000));
        let mut r = live(100_000, 1_000);
        r.status = Status::Revoked;
        assert!(!r.record_activity(2_000, 3_000, 3_000, 0));
        // Older than what the store already holds: nothing moves back.
        let mut o = live(100_000, 2_000);
        assert!(!o.record_activity(1_500, 4_000, 3_000, 0));
    }

    #[test]
    fn active_within_ttl_and_idle_stays_active() {
        let mut l = live(10_000, 5_000);
        assert_eq!(l.apply_clock(6_000, 2_000), None);
        assert_eq!(l.status, Status::Active);
    }

    #[test]
    fn past_expire_at_is_expired_even_if_idle_too() {
        let mut l = live(10_000, 0);
        assert_eq!(l.apply_clock(10_000, 1_000), Some(Status::Expired));
    }

    #[test]
    fn idle_past_timeout_is_abandoned() {
        let mut l = live(100_000, 5_000);
        assert_eq!(l.apply_clock(7_000, 2_000), Some(Status::Abandoned));
    }

    #[test]
    fn non_active_never_changes() {
        for st in Status::ALL.into_iter().filter(|s| !s.is_active()) {
            let mut l = Liveness {
                status: st,
                expire_at: 0,
                last_active_at: 0,
            };
            assert_eq!(l.apply_clock(u64::MAX, 1), None);
            assert_eq!(l.status, st);
        }
    }

    #[test]
    fn touch_is_throttled_by_interval() {
        let l = live(100_000, 5_000);
        assert!(!l.touch_due(5_999, 1_000));
        assert!(l.touch_due(6_000, 1_000));
    }

    #[test]
    fn status_names_round_trip() {
        for st in Status::ALL {
            assert_eq!(Status::parse(st.as_str()), Some(st));
        }
        assert_eq!(Status::parse("Active"), None);
    }

    #[test]
    fn vars_rules() {
        let mut v = BTreeMap::new();
        v.insert("tier".to_owned(), "gold".to_owned());
        assert_eq!(validate_vars(&v), Ok(()));
        v.insert("bad key".to_owned(), "x".to_owned());
        assert_eq!(validate_vars(&v), Err(VarsError::BadKey("bad key".into())));
        let mut v = BTreeMap::new();
        v.insert("k".to_owned(), "x".repeat(513));
        assert_eq!(validate_vars(&v), Err(VarsError::ValueTooLong("k".into())));
        let v: BTreeMap<_, _> = (0..33).map(|i| (format!("k{i}"), String::new())).collect();
        assert_eq!(validate_vars(&v), Err(VarsError::TooMany));
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn var_keys_differing_only_in_case_are_refused() {
        assert_eq!(
            validate_vars(&map(&[("orgId", "1"), ("orgid", "2")])),
            Err(VarsError::DuplicateKey("orgId".into(), "orgid".into()))
        );
        // Not neighbours in the map's own order.
        assert!(matches!(
            validate_vars(&map(&[("A", "1"), ("Z", "2"), ("a", "3")])),
            Err(VarsError::DuplicateKey(..))
        ));
        assert_eq!(validate_vars(&map(&[("a-b", "1"), ("a_b", "2")])), Ok(()));
    }

    #[test]
    fn a_credential_key_overrides_client_keys_of_any_case() {
        let merged = merge_vars(
            map(&[("orgid", "1337"), ("ORGID", "7"), ("team", "red")]),
            &map(&[("orgId", "42")]),
        );
        assert_eq!(merged, map(&[("orgId", "42"), ("team", "red")]));
        assert_eq!(validate_vars(&merged), Ok(()));
    }

    #[test]
    fn rfc3339_formats_millis_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn a_minted_id_carries_its_owners_tag() {
        let tag = user_tag("u-alice");
        assert_eq!(tag.len(), TAG_LEN);
        assert_eq!(tag, user_tag("u-alice"), "stable");
        assert_ne!(tag, user_tag("u-bob"));
        assert!(
            tag.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        let sid = format!("{}{tag}", "x".repeat(SID_LEN - TAG_LEN));
        assert_eq!(sid_tag(&sid), tag);
        assert_eq!(sid_tag("short"), "short");
        assert_eq!(sid_tag(&"é".repeat(16)), "é".repeat(16));
    }
}
