//! The gate's shared state and the admission decision every request goes
//! through: find the ticket, verify it, and ask the store (or the
//! short-lived liveness cache) whether its session is still `active`.
//!
//! Concurrent checks of one session share one store round trip (single-flight); status
//! changes go through the gate, which writes them, publishes them and forgets its cached view
//! at once; store events from other nodes arrive here too. The [`Settings`] it serves come
//! from `crate::settings`, its caches from `crate::cache`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::broadcast;

use crate::cache::{Admitted, LivenessCache};
use crate::clock::{ms, now_ms};
use crate::config::OnUnavailable;
use crate::login::HashPool;
use crate::metrics::Metrics;
use crate::reject::Reject;
use crate::session::{Event, Liveness, Session, Status};
use crate::settings::Settings;
use crate::store::{Created, RateDecision, Rules, SessionStore, StoreError};
use crate::tunnel::Tunnels;

/// One store check shared by concurrent requests for the same session, with
/// the liveness cache's forget generation noted before it began.
type Flight = Arc<tokio::sync::OnceCell<(Result<Option<Liveness>, Reject>, u64)>>;

struct Retire<'a> {
    flights: &'a Mutex<HashMap<String, Flight>>,
    sid: &'a str,
    cell: &'a Flight,
}

impl Drop for Retire<'_> {
    fn drop(&mut self) {
        if let Ok(mut flights) = self.flights.lock()
            && flights
                .get(self.sid)
                .is_some_and(|c| Arc::ptr_eq(c, self.cell))
        {
            flights.remove(self.sid);
        }
    }
}

/// Everything the proxy, the session API and the admin listener share.
///
/// The store is private: every change of a session's status goes through
/// [`Gate::set_status`], [`Gate::revoke_user`] or [`Gate::create_session`],
/// which write it (the store publishes it to every node in the same atomic
/// step) and invalidate this node's view at once — the one place where
/// revocation happens. Reads go through thin methods of their own.
pub struct Gate {
    settings: ArcSwap<Settings>,
    store: Arc<dyn SessionStore>,
    cache: LivenessCache,
    /// Store checks in flight, by session id (see [`Gate::check`]).
    flights: Mutex<HashMap<String, Flight>>,
    pub tunnels: Tunnels,
    /// Set when events may have been lost: the tunnel sweeper then re-checks
    /// every open tunnel's session on its next pass, woken at once.
    resync: AtomicBool,
    resync_wake: tokio::sync::Notify,
    pub metrics: Metrics,
    /// Where login password checks run, bounded (sized at start).
    pub hashing: HashPool,
    pub config_path: std::path::PathBuf,
    /// Requests (tunnels included) being served, for a graceful stop that
    /// exits as soon as they are done.
    pub in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

impl Gate {
    pub fn new(
        settings: Settings,
        store: Arc<dyn SessionStore>,
        config_path: std::path::PathBuf,
    ) -> Arc<Gate> {
        let hashing = settings
            .config
            .login
            .as_ref()
            .map(|l| l.hashing)
            .unwrap_or_default();
        let store_cfg = &settings.config.store;
        let cache = LivenessCache::new(store_cfg.cache_max_bytes, store_cfg.grace);
        Arc::new(Gate {
            hashing: HashPool::new(hashing.workers, hashing.queue),
            settings: ArcSwap::from_pointee(settings),
            store,
            cache,
            flights: Mutex::default(),
            tunnels: Tunnels::default(),
            resync: AtomicBool::new(false),
            resync_wake: tokio::sync::Notify::new(),
            metrics: Metrics::new(),
            config_path,
            in_flight: Arc::default(),
        })
    }

    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// Requests (tunnels included) being served right now.
    pub fn requests_in_flight(&self) -> usize {
        self.in_flight.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn swap_settings(&self, s: Settings) {
        self.settings.store(Arc::new(s));
    }

    /// The liveness cache's entries and estimated bytes.
    pub fn liveness_cache_usage(&self) -> (u64, u64) {
        self.cache.usage()
    }

    /// The generation to note before admitting a request whose outcome
    /// outlives the admission (a WebSocket): see [`Gate::recheck`].
    pub fn generation(&self) -> u64 {
        self.cache.generation()
    }

    /// Verifies a ticket and its session's liveness: at most one store round
    /// trip, none when the cache vouches for the session.
    pub async fn admit(
        &self,
        s: &Settings,
        ticket: Option<&str>,
        now: u64,
    ) -> Result<Arc<Admitted>, Reject> {
        let ticket = ticket.ok_or(Reject::MissingTicket)?;
        // A ticket seen before in exactly these bytes skips the HMAC (`Settings::verified`).
        let admitted = s.verified(ticket, now / 1000).map_err(|e| {
            tracing::debug!(reason = %e, "ticket rejected");
            Reject::InvalidTicket
        })?;
        self.liveness(s, &admitted.claims.sid, now).await?;
        Ok(admitted)
    }

    /// Whether a session is live: from the cache when it vouches, else from
    /// the store (under `on_unavailable: grace`, from what this node saw).
    async fn liveness(&self, s: &Settings, sid: &str, now: u64) -> Result<(), Reject> {
        if self
            .cache
            .fresh(sid, now, s.rules, ms(s.config.store.cache))
        {
            return Ok(());
        }
        let (live, since) = self.check(sid, now, s.rules).await;
        let live = match live {
            Ok(live) => live,
            // `on_unavailable: grace`: a session this node saw active within
            // `grace` keeps working through a store outage.
            Err(_)
                if s.config.store.on_unavailable == OnUnavailable::Grace
                    && self
                        .cache
                        .seen_active_within(sid, now, ms(s.config.store.grace)) =>
            {
                tracing::debug!(sid, "store unavailable; admitted under grace");
                return Ok(());
            }
            Err(r) => return Err(r),
        };
        match live {
            Some(l) if l.status.is_active() => {
                self.cache.put(sid, l, now, since);
                Ok(())
            }
            Some(l) => {
                self.cache.forget(sid);
                Err(Reject::Session(l.status))
            }
            None => Err(Reject::InvalidTicket),
        }
    }

    /// Re-checks a session admitted when the generation was `since`, once its
    /// tunnel is registered: a status change that landed in between found no
    /// tunnel to end, but it forgot the session, which this sees. With no
    /// forget since, the admission stands without a round trip.
    pub async fn recheck(&self, s: &Settings, sid: &str, since: u64) -> Result<(), Reject> {
        if sid.is_empty() || self.cache.unchanged_since(sid, since) {
            return Ok(());
        }
        self.liveness(s, sid, now_ms()).await
    }

    /// `store.check` for one session, shared by every request that needs it
    /// at the same moment: when the cached answer lapses under a burst (a
    /// thousand WebSocket handshakes of one session, say), one round trip
    /// answers them all instead of a thousand queueing behind each other.
    /// Returns the answer and the generation noted before the check began.
    pub async fn check(
        &self,
        sid: &str,
        now: u64,
        rules: Rules,
    ) -> (Result<Option<Liveness>, Reject>, u64) {
        let cell = {
            let Ok(mut flights) = self.flights.lock() else {
                let since = self.generation();
                return (self.check_once(sid, now, rules).await, since);
            };
            // Look up before inserting: joining a flight must not allocate.
            match flights.get(sid) {
                Some(cell) => Arc::clone(cell),
                None => {
                    let cell = Flight::default();
                    flights.insert(sid.to_owned(), Arc::clone(&cell));
                    cell
                }
            }
        };
        // Whoever finishes (or is cancelled) first retires this flight, so a
        // finished answer is never served to a later request.
        let _retire = Retire {
            flights: &self.flights,
            sid,
            cell: &cell,
        };
        cell.get_or_init(|| async {
            let since = self.generation();
            (self.check_once(sid, now, rules).await, since)
        })
        .await
        .clone()
    }

    /// One timed `store.check`.
    async fn check_once(
        &self,
        sid: &str,
        now: u64,
        rules: Rules,
    ) -> Result<Option<Liveness>, Reject> {
        let started = std::time::Instant::now();
        let out = self.store.check(sid, now, rules).await;
        self.metrics
            .store_latency
            .with_label_values(&["check"])
            .observe(started.elapsed().as_secs_f64());
        out.map_err(store_reject)
    }

    /// The tunnel sweeper's batch check ([`SessionStore::check_many`]).
    pub async fn check_tunnels(
        &self,
        batch: &[(String, u64)],
        now: u64,
        rules: Rules,
    ) -> Result<Vec<Option<Liveness>>, StoreError> {
        let started = std::time::Instant::now();
        let out = self.store.check_many(batch, now, rules).await;
        self.metrics
            .store_latency
            .with_label_values(&["check_many"])
            .observe(started.elapsed().as_secs_f64());
        out
    }

    /// Drops this node's view of a session that changed: its cached
    /// liveness, any check in flight for it (later requests ask anew), and,
    /// when it left `active`, its tunnels.
    fn invalidate(&self, sid: &str, status: Option<Status>) {
        self.cache.forget(sid);
        if let Ok(mut flights) = self.flights.lock() {
            flights.remove(sid);
        }
        if let Some(st) = status.filter(|s| !s.is_active()) {
            self.tunnels.end_session(sid, st);
        }
    }

    /// A session found no longer active outside a status change of this
    /// node (the tunnel sweeper's check): dropped like one.
    pub fn ended(&self, sid: &str, status: Status) {
        self.invalidate(sid, Some(status));
    }

    /// Moves a session to `status` ([`SessionStore::set_status`]): written
    /// and published to every node by the store in one step, and this node's
    /// view dropped before it returns.
    pub async fn set_status(
        &self,
        sid: &str,
        status: Status,
        now: u64,
        rules: Rules,
    ) -> Result<Option<Session>, StoreError> {
        let out = self.store.set_status(sid, status, now, rules).await;
        // Even a failed call may have been applied (a timeout after the
        // write): the cache is dropped whatever the outcome (one round trip
        // at most), tunnels only for a status the store confirmed; if the
        // write did land, its event (or the sweeper) ends them.
        let seen = out.as_ref().ok().and_then(|s| s.as_ref().map(|s| s.status));
        self.invalidate(sid, seen);
        out
    }

    /// Revokes every active session of a user; returns their ids.
    pub async fn revoke_user(
        &self,
        user_id: &str,
        now: u64,
        rules: Rules,
    ) -> Result<Vec<String>, StoreError> {
        let revoked = self.store.revoke_user(user_id, now, rules).await?;
        for sid in &revoked {
            self.invalidate(sid, Some(Status::Revoked));
        }
        Ok(revoked)
    }

    /// Inserts a new session; the ones it pushed past `max_per_user` are
    /// `replaced`, and dropped here like any other status change.
    pub async fn create_session(
        &self,
        session: &Session,
        max_per_user: u32,
        rules: Rules,
    ) -> Result<Created, StoreError> {
        let created = self.store.create(session, max_per_user, rules).await?;
        for sid in &created.replaced {
            self.invalidate(sid, Some(Status::Replaced));
        }
        Ok(created)
    }

    /// The whole record, after applying the clock rules.
    pub async fn session(
        &self,
        sid: &str,
        now: u64,
        rules: Rules,
    ) -> Result<Option<Session>, StoreError> {
        self.store.get(sid, now, rules).await
    }

    /// Forces `lastActiveAt = now` on an active session.
    pub async fn touch(
        &self,
        sid: &str,
        now: u64,
        rules: Rules,
    ) -> Result<Option<Session>, StoreError> {
        let out = self.store.touch(sid, now, rules).await;
        self.invalidate(sid, None);
        out
    }

    /// Pushes an active session's `expireAt` (already capped by the caller).
    pub async fn refresh(
        &self,
        sid: &str,
        expire_at: u64,
        now: u64,
        rules: Rules,
    ) -> Result<Option<Session>, StoreError> {
        let out = self.store.refresh(sid, expire_at, now, rules).await;
        self.invalidate(sid, None);
        out
    }

    /// A user's sessions, newest first, `removed` left out.
    pub async fn sessions_of(
        &self,
        user_id: &str,
        now: u64,
        rules: Rules,
    ) -> Result<Vec<Session>, StoreError> {
        self.store.list(user_id, now, rules).await
    }

    /// One hit against a rate limit shared by every node.
    pub async fn hit_rate(
        &self,
        key: &str,
        limit: u32,
        window_ms: u64,
        now: u64,
    ) -> Result<RateDecision, StoreError> {
        self.store.hit_rate(key, limit, window_ms, now).await
    }

    /// Round trip to the store (readiness).
    pub async fn ping_store(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }

    /// The store's periodic cleanup ([`SessionStore::sweep`]).
    pub async fn sweep_store(&self, now: u64) -> Result<(), StoreError> {
        let rules = self.settings().rules;
        self.store.sweep(now, rules).await
    }

    /// Status changes from every node sharing the store.
    pub fn subscribe_events(&self) -> broadcast::Receiver<Event> {
        self.store.events()
    }

    /// Takes the request to re-check every open tunnel's session, if one
    /// was made since the last call.
    pub fn take_resync(&self) -> bool {
        self.resync.swap(false, Ordering::AcqRel)
    }

    /// Resolves when a resync is requested ([`Gate::take_resync`]).
    pub async fn resync_requested(&self) {
        self.resync_wake.notified().await;
    }

    /// Some status events may never arrive: nothing cached can be trusted,
    /// and every open tunnel's session must be asked again.
    pub fn events_lost(&self, why: &str) {
        tracing::warn!(
            why,
            "session events may be lost: clearing the liveness cache, re-checking every tunnel"
        );
        self.forget_everything();
    }

    fn forget_everything(&self) {
        self.cache.forget_everything();
        self.resync.store(true, Ordering::Release);
        self.resync_wake.notify_one();
    }

    /// Acts on status events from every node: drop cached liveness and end
    /// the session's WebSocket tunnels. Runs for the life of the gate.
    pub async fn follow_events(self: Arc<Self>) {
        let rx = self.store.events();
        let gaps = self.store.gaps();
        self.follow(rx, gaps).await;
    }

    /// [`Gate::follow_events`] on given channels.
    pub(crate) async fn follow(
        &self,
        mut rx: broadcast::Receiver<Event>,
        mut gaps: tokio::sync::watch::Receiver<u64>,
    ) {
        use tokio::sync::broadcast::error::RecvError;
        let mut gaps_open = true;
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Ok(ev) => self.invalidate(&ev.sid, Status::parse(&ev.status)),
                    Err(RecvError::Lagged(n)) => {
                        self.events_lost(&format!("the event follower lagged by {n}"));
                    }
                    Err(RecvError::Closed) => return,
                },
                changed = gaps.changed(), if gaps_open => match changed {
                    // The first subscription, at start: whatever was learnt
                    // before it is redone without a warning.
                    Ok(()) if *gaps.borrow_and_update() <= 1 => {
                        tracing::debug!("subscribed to session events");
                        self.forget_everything();
                    }
                    Ok(()) => self.events_lost("the event subscription was lost and made anew"),
                    Err(_) => gaps_open = false,
                },
            }
        }
    }
}

/// Store failures become 503 for the client and a log line for the operator.
pub fn store_reject(e: StoreError) -> Reject {
    tracing::warn!(error = %e, "session store unavailable");
    Reject::StoreUnavailable
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::session::{Event, Session};
    use crate::settings::tests::settings;
    use crate::store::{Created, RateDecision, SessionStore, memory::MemoryStore};
    use crate::ticket::Claims;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;
    use tokio::sync::Notify;

    /// The real memory store behind a wrapper that counts checks, can slow
    /// them, and can hold one open: with `hold` set, the next check reads the
    /// store, says so on `entered`, and returns what it read only once
    /// `release` is notified — an answer from before whatever happens
    /// meanwhile.
    pub(crate) struct Wrapped {
        pub(crate) inner: MemoryStore,
        pub(crate) checks: AtomicUsize,
        pub(crate) delay: Duration,
        pub(crate) hold: AtomicBool,
        pub(crate) entered: Notify,
        pub(crate) release: Notify,
        pub(crate) events: Mutex<Option<broadcast::Receiver<Event>>>,
        /// While set, `check_many` answers as an unreachable store does:
        /// after a timeout, an error.
        pub(crate) unreachable: AtomicBool,
        pub(crate) many_calls: AtomicUsize,
    }

    impl Wrapped {
        pub(crate) fn new(delay: Duration) -> Wrapped {
            Wrapped {
                inner: MemoryStore::new(),
                checks: AtomicUsize::new(0),
                delay,
                hold: AtomicBool::new(false),
                entered: Notify::new(),
                release: Notify::new(),
                events: Mutex::new(None),
                unreachable: AtomicBool::new(false),
                many_calls: AtomicUsize::new(0),
            }
        }
    }

    #[async_trait::async_trait]
    impl SessionStore for Wrapped {
        async fn create(&self, s: &Session, m: u32, r: Rules) -> Result<Created, StoreError> {
            self.inner.create(s, m, r).await
        }
        async fn check(
            &self,
            sid: &str,
            now: u64,
            r: Rules,
        ) -> Result<Option<Liveness>, StoreError> {
            self.checks.fetch_add(1, Ordering::SeqCst);
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            let read = self.inner.check(sid, now, r).await;
            if self.hold.swap(false, Ordering::SeqCst) {
                self.entered.notify_one();
                self.release.notified().await;
            }
            read
        }
        async fn check_many(
            &self,
            b: &[(String, u64)],
            now: u64,
            r: Rules,
        ) -> Result<Vec<Option<Liveness>>, StoreError> {
            self.many_calls.fetch_add(1, Ordering::SeqCst);
            if self.unreachable.load(Ordering::SeqCst) {
                let timeout = Duration::from_millis(50);
                tokio::time::sleep(timeout).await;
                return Err(StoreError::Timeout(timeout));
            }
            self.inner.check_many(b, now, r).await
        }
        async fn get(&self, sid: &str, now: u64, r: Rules) -> Result<Option<Session>, StoreError> {
            self.inner.get(sid, now, r).await
        }
        async fn touch(
            &self,
            sid: &str,
            now: u64,
            r: Rules,
        ) -> Result<Option<Session>, StoreError> {
            self.inner.touch(sid, now, r).await
        }
        async fn refresh(
            &self,
            sid: &str,
            e: u64,
            now: u64,
            r: Rules,
        ) -> Result<Option<Session>, StoreError> {
            self.inner.refresh(sid, e, now, r).await
        }
        async fn set_status(
            &self,
            sid: &str,
            st: Status,
            now: u64,
            r: Rules,
        ) -> Result<Option<Session>, StoreError> {
            self.inner.set_status(sid, st, now, r).await
        }
        async fn list(&self, u: &str, now: u64, r: Rules) -> Result<Vec<Session>, StoreError> {
            self.inner.list(u, now, r).await
        }
        async fn revoke_user(
            &self,
            u: &str,
            now: u64,
            r: Rules,
        ) -> Result<Vec<String>, StoreError> {
            self.inner.revoke_user(u, now, r).await
        }
        async fn hit_rate(
            &self,
            k: &str,
            l: u32,
            w: u64,
            now: u64,
        ) -> Result<RateDecision, StoreError> {
            self.inner.hit_rate(k, l, w, now).await
        }
        async fn ping(&self) -> Result<(), StoreError> {
            Ok(())
        }
        fn events(&self) -> broadcast::Receiver<Event> {
            match self.events.lock().ok().and_then(|mut e| e.take()) {
                Some(rx) => rx,
                None => self.inner.events(),
            }
        }
    }

    /// A gate over `store`, with an active session `sid` of user `u1` created
    /// at `now`, and a ticket for it.
    pub(crate) async fn gate_with_session(
        store: Arc<Wrapped>,
        sid: &str,
        now: u64,
    ) -> (Arc<Gate>, String) {
        let gate = Gate::new(settings(), store, "t.yaml".into());
        let s = gate.settings();
        let session = Session {
            id: sid.to_owned(),
            user_id: "u1".into(),
            name: "U".into(),
            roles: vec![],
            vars: Default::default(),
            status: Status::Active,
            created_at: now,
            last_active_at: now,
            expire_at: now + 3_600_000,
            max_expire_at: now + 3_600_000,
            updated_at: now,
        };
        gate.create_session(&session, 5, s.rules).await.unwrap();
        let claims = Claims {
            iss: s.config.tickets.issuer.clone(),
            sid: sid.to_owned(),
            sub: "u1".into(),
            name: "U".into(),
            roles: vec![],
            vars: Default::default(),
            iat: now / 1000,
            exp: now / 1000 + 3600,
        };
        let ticket = s.keys.sign(&claims).unwrap();
        (gate, ticket)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_checks_of_one_session_share_one_round_trip() {
        let store = Arc::new(Wrapped::new(Duration::from_millis(50)));
        let gate = Gate::new(settings(), store.clone(), "t.yaml".into());
        let rules = gate.settings().rules;
        let waiters: Vec<_> = (0..100)
            .map(|_| {
                let gate = Arc::clone(&gate);
                tokio::spawn(async move { gate.check("s1", 1_000, rules).await.0 })
            })
            .collect();
        for w in waiters {
            assert_eq!(w.await.unwrap(), Ok(None));
        }
        assert_eq!(store.checks.load(Ordering::SeqCst), 1);
        // The flight is retired: the next check asks the store again.
        assert_eq!(gate.check("s1", 2_000, rules).await.0, Ok(None));
        assert_eq!(store.checks.load(Ordering::SeqCst), 2);
    }

    /// Item 1 of the revocation issue: a check in flight across a revoke
    /// answers "active" late; that answer must not re-admit the session.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_check_in_flight_across_a_revoke_cannot_readmit_the_session() {
        let now = now_ms();
        let store = Arc::new(Wrapped::new(Duration::ZERO));
        let (gate, ticket) = gate_with_session(store.clone(), "sid-held", now).await;
        let s = gate.settings();

        // A request whose check has read "active" and is held there.
        store.hold.store(true, Ordering::SeqCst);
        let held = {
            let (gate, s, ticket) = (Arc::clone(&gate), Arc::clone(&s), ticket.clone());
            tokio::spawn(async move { gate.admit(&s, Some(&ticket), now).await.map(|_| ()) })
        };
        store.entered.notified().await;

        // Another node revokes: the store changes, the event forgets here.
        let revoked = store
            .inner
            .set_status("sid-held", Status::Revoked, now + 1, s.rules);
        assert!(revoked.await.unwrap().is_some());
        gate.invalidate("sid-held", Some(Status::Revoked));

        // The held check comes back with what it read before the revoke. It
        // was in flight when the revoke landed, so its own request may pass…
        store.release.notify_one();
        assert_eq!(held.await.unwrap(), Ok(()));
        // …but no request after the revoke may be admitted on its word.
        let checks = store.checks.load(Ordering::SeqCst);
        let after = gate.admit(&s, Some(&ticket), now + 2).await.map(|_| ());
        assert_eq!(after, Err(Reject::Session(Status::Revoked)));
        assert_eq!(
            store.checks.load(Ordering::SeqCst),
            checks + 1,
            "asked the store"
        );
    }

    /// Requests that arrive after a forget never join a check that began before it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_forget_detaches_the_check_in_flight_from_later_requests() {
        let now = now_ms();
        let store = Arc::new(Wrapped::new(Duration::ZERO));
        let (gate, ticket) = gate_with_session(store.clone(), "sid-flight", now).await;
        let s = gate.settings();
        store.hold.store(true, Ordering::SeqCst);
        let held = {
            let (gate, s, ticket) = (Arc::clone(&gate), Arc::clone(&s), ticket.clone());
            tokio::spawn(async move { gate.admit(&s, Some(&ticket), now).await.map(|_| ()) })
        };
        store.entered.notified().await;
        let (gate2, s2) = (Arc::clone(&gate), Arc::clone(&s));
        gate2
            .set_status("sid-flight", Status::Ended, now + 1, s2.rules)
            .await
            .unwrap();
        // The held flight is still open; this request must start its own.
        let after = gate.admit(&s, Some(&ticket), now + 2).await.map(|_| ());
        assert_eq!(after, Err(Reject::Session(Status::Ended)));
        store.release.notify_one();
        held.await.unwrap().unwrap();
    }

    /// Item 2: a WebSocket admitted, then revoked before its tunnel was
    /// registered, is refused by the re-check after registration.
    #[tokio::test]
    async fn a_revoke_between_admission_and_registration_is_caught_by_the_recheck() {
        let now = now_ms();
        let store = Arc::new(Wrapped::new(Duration::ZERO));
        let (gate, ticket) = gate_with_session(store.clone(), "sid-ws", now).await;
        let s = gate.settings();

        let since = gate.generation();
        gate.admit(&s, Some(&ticket), now).await.unwrap();
        // The revoke lands here: no tunnel is registered yet to end.
        gate.set_status("sid-ws", Status::Revoked, now + 1, s.rules)
            .await
            .unwrap();
        let reg = gate.tunnels.register("sid-ws", "chat");
        assert!(!reg.ctl().is_ending(), "nothing ended the late tunnel");
        assert_eq!(
            gate.recheck(&s, "sid-ws", since).await,
            Err(Reject::Session(Status::Revoked))
        );

        // Without a forget since the admission, the re-check costs no round trip.
        let (gate, ticket) = gate_with_session(store.clone(), "sid-ws2", now).await;
        let since = gate.generation();
        gate.admit(&s, Some(&ticket), now).await.unwrap();
        let checks = store.checks.load(Ordering::SeqCst);
        assert_eq!(gate.recheck(&s, "sid-ws2", since).await, Ok(()));
        assert_eq!(store.checks.load(Ordering::SeqCst), checks);
    }

    /// Issue 13: a cached ticket skips the HMAC only for its exact bytes. After the good
    /// ticket is cached, the same ticket with one byte of its signature changed (and one
    /// with its payload changed under the real signature) is still refused with SPEC's
    /// `invalid_ticket`, and neither displaces the good one.
    #[tokio::test]
    async fn a_tampered_ticket_is_refused_after_the_good_one_was_cached() {
        let now = now_ms();
        let store = Arc::new(Wrapped::new(Duration::ZERO));
        let (gate, ticket) = gate_with_session(store.clone(), "sid-tamper", now).await;
        let s = gate.settings();
        gate.admit(&s, Some(&ticket), now).await.unwrap();
        assert!(s.tickets.holds(&ticket), "the good ticket is cached");

        let flip = |at: usize| {
            let mut b = ticket.clone().into_bytes();
            b[at] = if b[at] == b'A' { b'B' } else { b'A' };
            String::from_utf8(b).unwrap()
        };
        let sig_at = ticket.rfind('.').unwrap() + 10;
        let payload_at = ticket.find('.').unwrap() + 5;
        for forged in [flip(sig_at), flip(payload_at)] {
            assert_ne!(forged, ticket);
            let r = gate.admit(&s, Some(&forged), now).await.map(|_| ());
            assert_eq!(r, Err(Reject::InvalidTicket), "{forged}");
            assert!(!s.tickets.holds(&forged));
            assert!(
                !s.is_gate_ticket(&forged, now / 1000),
                "not the gate's ticket"
            );
        }
        assert_eq!(
            Reject::InvalidTicket.status_and_code(),
            (401, "invalid_ticket")
        );
        // The good ticket still admits, from the cache.
        gate.admit(&s, Some(&ticket), now).await.unwrap();
        assert!(s.is_gate_ticket(&ticket, now / 1000));
    }

    /// Item 5: one method writes, publishes and invalidates.
    #[tokio::test]
    async fn set_status_writes_publishes_and_ends_this_nodes_tunnels_at_once() {
        let now = now_ms();
        let store = Arc::new(Wrapped::new(Duration::ZERO));
        let (gate, ticket) = gate_with_session(store.clone(), "sid-one", now).await;
        let s = gate.settings();
        let mut events = gate.subscribe_events();
        gate.admit(&s, Some(&ticket), now).await.unwrap();
        let reg = gate.tunnels.register("sid-one", "chat");
        let out = gate
            .set_status("sid-one", Status::Revoked, now + 1, s.rules)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(out.status, Status::Revoked);
        assert!(reg.ctl().is_ending());
        let ev = events.try_recv().unwrap();
        assert_eq!(
            (ev.sid.as_str(), ev.status.as_str()),
            ("sid-one", "revoked")
        );
        assert_eq!(
            gate.admit(&s, Some(&ticket), now + 2).await.map(|_| ()),
            Err(Reject::Session(Status::Revoked))
        );
        // A user's revoke ends each of the user's tunnels the same way.
        let (gate, _) = gate_with_session(store.clone(), "sid-two", now).await;
        let reg = gate.tunnels.register("sid-two", "chat");
        assert_eq!(
            gate.revoke_user("u1", now + 3, s.rules).await.unwrap(),
            vec!["sid-two".to_owned()]
        );
        assert!(reg.ctl().is_ending());
    }
}
