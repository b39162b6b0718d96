//! In-process session store: one mutex-guarded map, lost on exit.
//!
//! For `sessiongate demo` and single-node use. It applies the same rules and
//! publishes the same events as the Redis store, and passes the same
//! contract tests.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::{Created, RateDecision, Rules, SessionStore, StoreError};
use crate::session::{Event, Liveness, Session, Status};

/// Dead sessions kept per user beyond the active ones, so a user who logs in
/// and out all day does not grow the index without bound.
pub const MAX_DEAD_PER_USER: usize = 50;

#[derive(Default)]
struct Inner {
    sessions: HashMap<String, Session>,
    /// user id -> session ids, oldest first. Removed sessions stay here
    /// (left out of lists) until their retention ends: with no key TTLs,
    /// this index is how the store finds what to forget.
    by_user: HashMap<String, Vec<String>>,
    /// key -> (window start, hits)
    rates: HashMap<String, (u64, u32)>,
    /// How many rate counters were left by the last prune.
    rates_pruned_at: usize,
}

/// Below twice this many rate counters, none are pruned on a hit.
const RATES_PRUNE_FLOOR: usize = 50_000;

pub struct MemoryStore {
    inner: Mutex<Inner>,
    events: broadcast::Sender<Event>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        let (events, _) = broadcast::channel(1024);
        MemoryStore {
            inner: Mutex::new(Inner::default()),
            events,
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>, StoreError> {
        self.inner.lock().map_err(|_| StoreError::Poisoned)
    }

    fn publish(&self, s: &Session, now: u64) {
        // No receiver is not an error: nobody is listening yet.
        let _ = self
            .events
            .send(Event::new(&s.id, &s.user_id, s.status, now));
    }

    /// Activity on a session (a touch, a refresh): the clock rules first,
    /// then, if it is still active, `change` and the new activity time.
    fn activity(
        &self,
        sid: &str,
        now: u64,
        rules: Rules,
        change: impl FnOnce(&mut Session),
    ) -> Result<Option<Session>, StoreError> {
        let mut inner = self.lock()?;
        Ok(inner.sessions.get_mut(sid).map(|s| {
            self.clock(s, now, rules);
            if s.status.is_active() {
                change(s);
                s.last_active_at = now;
                s.updated_at = now;
            }
            s.clone()
        }))
    }

    /// Applies clock rules to one record, publishing a change.
    fn clock(&self, s: &mut Session, now: u64, rules: Rules) {
        if s.apply_clock(now, rules.idle_ms).is_some() {
            self.publish(s, now);
        }
    }
}

impl Inner {
    /// Drops sessions past retention and trims dead ones beyond the cap.
    fn prune_user(&mut self, user_id: &str, now: u64, rules: Rules) {
        let Some(ids) = self.by_user.get_mut(user_id) else {
            return;
        };
        let sessions = &mut self.sessions;
        ids.retain(|id| match sessions.get(id) {
            Some(s) if now < s.max_expire_at.saturating_add(rules.retain_ms) => true,
            _ => {
                sessions.remove(id);
                false
            }
        });
        // Removed sessions do not count against the cap, as in the Redis
        // store (where they leave the index and expire by TTL).
        let dead: Vec<String> = ids
            .iter()
            .filter(|id| {
                sessions
                    .get(*id)
                    .is_some_and(|s| !s.status.is_active() && s.status != Status::Removed)
            })
            .cloned()
            .collect();
        if dead.len() > MAX_DEAD_PER_USER {
            let drop: std::collections::HashSet<&String> =
                dead[..dead.len() - MAX_DEAD_PER_USER].iter().collect();
            for id in &drop {
                sessions.remove(*id);
            }
            ids.retain(|id| !drop.contains(id));
        }
        if ids.is_empty() {
            self.by_user.remove(user_id);
        }
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn create(
        &self,
        session: &Session,
        max_per_user: u32,
        rules: Rules,
    ) -> Result<Created, StoreError> {
        let now = session.created_at;
        let mut inner = self.lock()?;
        inner.prune_user(&session.user_id, now, rules);
        let ids = inner
            .by_user
            .get(&session.user_id)
            .cloned()
            .unwrap_or_default();
        let mut active = Vec::new();
        for id in &ids {
            if let Some(s) = inner.sessions.get_mut(id) {
                self.clock(s, now, rules);
                if s.status.is_active() {
                    active.push(id.clone());
                }
            }
        }
        let mut replaced = Vec::new();
        let keep = (max_per_user as usize).saturating_sub(1);
        while active.len() > keep {
            let id = active.remove(0);
            if let Some(s) = inner.sessions.get_mut(&id) {
                s.status = Status::Replaced;
                s.updated_at = now;
                self.publish(s, now);
            }
            replaced.push(id);
        }
        inner.sessions.insert(session.id.clone(), session.clone());
        inner
            .by_user
            .entry(session.user_id.clone())
            .or_default()
            .push(session.id.clone());
        Ok(Created { replaced })
    }

    async fn check(
        &self,
        sid: &str,
        now: u64,
        rules: Rules,
    ) -> Result<Option<Liveness>, StoreError> {
        let mut inner = self.lock()?;
        let Some(s) = inner.sessions.get_mut(sid) else {
            return Ok(None);
        };
        self.clock(s, now, rules);
        if s.status.is_active() && s.liveness().touch_due(now, rules.touch_ms) {
            s.last_active_at = now;
            s.updated_at = now;
        }
        Ok(Some(s.liveness()))
    }

    async fn check_many(
        &self,
        batch: &[(String, u64)],
        now: u64,
        rules: Rules,
    ) -> Result<Vec<Option<Liveness>>, StoreError> {
        let mut inner = self.lock()?;
        Ok(batch
            .iter()
            .map(|(sid, activity)| {
                let s = inner.sessions.get_mut(sid)?;
                let mut l = s.liveness();
                if l.record_activity(*activity, now, rules.idle_ms, rules.touch_ms) {
                    s.last_active_at = l.last_active_at;
                    s.updated_at = now;
                }
                self.clock(s, now, rules);
                Some(s.liveness())
            })
            .collect())
    }

    async fn get(&self, sid: &str, now: u64, rules: Rules) -> Result<Option<Session>, StoreError> {
        let mut inner = self.lock()?;
        Ok(inner.sessions.get_mut(sid).map(|s| {
            self.clock(s, now, rules);
            s.clone()
        }))
    }

    async fn touch(
        &self,
        sid: &str,
        now: u64,
        rules: Rules,
    ) -> Result<Option<Session>, StoreError> {
        self.activity(sid, now, rules, |_| {})
    }

    async fn refresh(
        &self,
        sid: &str,
        expire_at: u64,
        now: u64,
        rules: Rules,
    ) -> Result<Option<Session>, StoreError> {
        self.activity(sid, now, rules, |s| {
            s.expire_at = expire_at.min(s.max_expire_at);
        })
    }

    async fn set_status(
        &self,
        sid: &str,
        status: Status,
        now: u64,
        rules: Rules,
    ) -> Result<Option<Session>, StoreError> {
        let mut inner = self.lock()?;
        let Some(s) = inner.sessions.get_mut(sid) else {
            return Ok(None);
        };
        if s.status == Status::Removed {
            return Ok(None);
        }
        self.clock(s, now, rules);
        if s.status.is_active() || status == Status::Removed {
            s.status = status;
            s.updated_at = now;
            self.publish(s, now);
        }
        Ok(Some(s.clone()))
    }

    async fn list(
        &self,
        user_id: &str,
        now: u64,
        rules: Rules,
    ) -> Result<Vec<Session>, StoreError> {
        let mut inner = self.lock()?;
        inner.prune_user(user_id, now, rules);
        let ids = inner.by_user.get(user_id).cloned().unwrap_or_default();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids.iter().rev() {
            if let Some(s) = inner.sessions.get_mut(id) {
                self.clock(s, now, rules);
                if s.status != Status::Removed {
                    out.push(s.clone());
                }
            }
        }
        out.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        Ok(out)
    }

    async fn revoke_user(
        &self,
        user_id: &str,
        now: u64,
        rules: Rules,
    ) -> Result<Vec<String>, StoreError> {
        let mut inner = self.lock()?;
        let ids = inner.by_user.get(user_id).cloned().unwrap_or_default();
        let mut revoked = Vec::new();
        for id in ids {
            if let Some(s) = inner.sessions.get_mut(&id) {
                self.clock(s, now, rules);
                if s.status.is_active() {
                    s.status = Status::Revoked;
                    s.updated_at = now;
                    self.publish(s, now);
                    revoked.push(id);
                }
            }
        }
        Ok(revoked)
    }

    async fn hit_rate(
        &self,
        key: &str,
        limit: u32,
        window_ms: u64,
        now: u64,
    ) -> Result<RateDecision, StoreError> {
        let mut inner = self.lock()?;
        // Pruned only once the map has doubled since the last prune: a map
        // full of live windows must not be scanned on every hit.
        if inner.rates.len() > inner.rates_pruned_at.max(RATES_PRUNE_FLOOR) * 2 {
            inner.rates.retain(|_, (start, _)| now < *start + window_ms);
            inner.rates_pruned_at = inner.rates.len();
        }
        let entry = inner.rates.entry(key.to_owned()).or_insert((now, 0));
        if now >= entry.0 + window_ms {
            *entry = (now, 0);
        }
        entry.1 += 1;
        if entry.1 > limit {
            Ok(RateDecision::Deny {
                retry_after_ms: (entry.0 + window_ms).saturating_sub(now),
            })
        } else {
            Ok(RateDecision::Allow)
        }
    }

    async fn sweep(&self, now: u64, rules: Rules) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        let users: Vec<String> = inner.by_user.keys().cloned().collect();
        for user in users {
            inner.prune_user(&user, now, rules);
        }
        if inner.rates.len() > 10_000 {
            // Windows are at most an hour or a day long; older counters are spent.
            inner
                .rates
                .retain(|_, (start, _)| now.saturating_sub(*start) < 24 * 3600 * 1000);
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.lock().map(|_| ())
    }

    fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }
}
