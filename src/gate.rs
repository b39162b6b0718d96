//! The gate's shared state and the admission decision every request goes
//! through: find the ticket, verify it, and ask the store (or the
//! short-lived liveness cache) whether its session is still `active`.
//!
//! [`Settings`] is everything derived from one config file; a reload builds a
//! new one and swaps it in atomically, so a request sees one consistent
//! config from start to end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use http::{HeaderName, HeaderValue};

use crate::config::{Config, OnUnavailable, UserEntry};
use crate::metrics::Metrics;
use crate::reject::Reject;
use crate::route::RouteTable;
use crate::session::{Liveness, Status};
use crate::store::{Rules, SessionStore, StoreError};
use crate::ticket::{Claims, Key, KeyRing};
use crate::tunnel::Tunnels;

/// How long a dead session stays readable (and listed) after its
/// `max_lifetime`, before its keys expire.
pub const RETAIN_MS: u64 = 24 * 3600 * 1000;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Identity header names, built once per config.
pub struct IdentityHeaders {
    /// Lowercased prefix, for the case-insensitive strip.
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
            prefix_lower: prefix.to_ascii_lowercase(),
            id: h("Id")?,
            user: h("User")?,
            name: h("Name")?,
            roles: h("Roles")?,
            var_prefix: format!("{prefix}Var-"),
        })
    }

    /// Whether a client-sent header must be removed before forwarding.
    pub fn is_identity(&self, name: &HeaderName) -> bool {
        // HeaderName is always lowercase.
        name.as_str().starts_with(&self.prefix_lower)
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

/// A ticket verified once, with the identity headers it yields. Shared by
/// every request presenting the same ticket.
pub struct Admitted {
    pub claims: Claims,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// Verified tickets by their exact text: a repeat of a ticket skips the HMAC,
/// the JSON decoding and the header building. Only the expiry is re-checked;
/// the session's liveness is checked on every request regardless. Lives in
/// [`Settings`], so a reload (new keys) starts it empty.
#[derive(Default)]
pub struct TicketCache {
    map: Mutex<HashMap<Box<str>, Arc<Admitted>>>,
}

const TICKET_CACHE_MAX: usize = 50_000;

impl TicketCache {
    fn get(&self, ticket: &str, now_secs: u64, leeway_secs: u64) -> Option<Arc<Admitted>> {
        let map = self.map.lock().ok()?;
        map.get(ticket)
            .filter(|a| a.claims.exp.saturating_add(leeway_secs) > now_secs)
            .cloned()
    }

    fn put(&self, ticket: &str, admitted: Arc<Admitted>) {
        if let Ok(mut map) = self.map.lock() {
            if map.len() >= TICKET_CACHE_MAX {
                map.clear();
            }
            map.insert(ticket.into(), admitted);
        }
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
        Ok(Settings {
            routes: RouteTable::new(&config.routes),
            keys,
            rules,
            identity,
            users: users.into_iter().map(|u| (u.username.clone(), u)).collect(),
            cookie_name,
            tickets: TicketCache::default(),
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

#[derive(Clone, Copy)]
struct CacheEntry {
    live: Liveness,
    checked_at: u64,
}

/// Per-node liveness cache: skips the store round trip for a session checked
/// within `store.cache` (default 1 s) whose `lastActiveAt` is not yet due a
/// write. Status changes are pushed over the events channel, which drops the
/// entry at once; the TTL bounds the delay if an event is lost.
#[derive(Default)]
pub struct LivenessCache {
    map: Mutex<HashMap<String, CacheEntry>>,
}

const CACHE_MAX: usize = 200_000;
/// Entries outlive their freshness so `on_unavailable: grace` can use them.
const CACHE_RETAIN_MS: u64 = 5 * 60 * 1000;

impl LivenessCache {
    /// Whether the session has an entry and `pred` holds for it.
    fn entry_is(&self, sid: &str, pred: impl FnOnce(&CacheEntry) -> bool) -> bool {
        self.map
            .lock()
            .is_ok_and(|map| map.get(sid).is_some_and(pred))
    }

    fn fresh(&self, sid: &str, now: u64, rules: Rules, ttl_ms: u64) -> bool {
        self.entry_is(sid, |e| {
            let mut l = e.live;
            now.saturating_sub(e.checked_at) < ttl_ms
                && l.apply_clock(now, rules.idle_ms).is_none()
                && l.status.is_active()
                && !l.touch_due(now, rules.touch_ms)
        })
    }

    /// Whether this node saw the session active within `grace_ms` (and the
    /// clock has not ended it since).
    fn seen_active_within(&self, sid: &str, now: u64, grace_ms: u64) -> bool {
        self.entry_is(sid, |e| {
            now.saturating_sub(e.checked_at) < grace_ms
                && e.live.status.is_active()
                && now < e.live.expire_at
        })
    }

    fn put(&self, sid: &str, live: Liveness, now: u64) {
        if let Ok(mut map) = self.map.lock() {
            if map.len() >= CACHE_MAX {
                map.retain(|_, e| now.saturating_sub(e.checked_at) < CACHE_RETAIN_MS);
            }
            match map.get_mut(sid) {
                Some(e) => {
                    *e = CacheEntry {
                        live,
                        checked_at: now,
                    }
                }
                None => {
                    map.insert(
                        sid.to_owned(),
                        CacheEntry {
                            live,
                            checked_at: now,
                        },
                    );
                }
            }
        }
    }

    pub fn forget(&self, sid: &str) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(sid);
        }
    }
}

/// One store check shared by concurrent requests for the same session.
type Flight = Arc<tokio::sync::OnceCell<Result<Option<Liveness>, Reject>>>;

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
pub struct Gate {
    settings: ArcSwap<Settings>,
    pub store: Arc<dyn SessionStore>,
    pub cache: LivenessCache,
    /// Store checks in flight, by session id (see [`Gate::check`]).
    flights: Mutex<HashMap<String, Flight>>,
    pub tunnels: Tunnels,
    pub metrics: Metrics,
    pub config_path: std::path::PathBuf,
    /// Requests (tunnels included) being served, for a graceful stop that
    /// exits as soon as they are done.
    pub in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

/// Counts one request as in flight for as long as it lives.
pub struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl InFlight {
    pub fn new(counter: &Arc<std::sync::atomic::AtomicUsize>) -> InFlight {
        counter.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        InFlight(Arc::clone(counter))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Gate {
    pub fn new(
        settings: Settings,
        store: Arc<dyn SessionStore>,
        config_path: std::path::PathBuf,
    ) -> Arc<Gate> {
        Arc::new(Gate {
            settings: ArcSwap::from_pointee(settings),
            store,
            cache: LivenessCache::default(),
            flights: Mutex::default(),
            tunnels: Tunnels::default(),
            metrics: Metrics::new(),
            config_path,
            in_flight: Arc::default(),
        })
    }

    /// Every status change the store publishes (from any node), for
    /// listeners outside the gate such as the admin event stream.
    pub fn subscribe_events(&self) -> tokio::sync::broadcast::Receiver<crate::session::Event> {
        self.store.events()
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

    /// Verifies a ticket and its session's liveness: at most one store round
    /// trip, none when the cache vouches for the session.
    pub async fn admit(
        &self,
        s: &Settings,
        ticket: Option<&str>,
        now: u64,
    ) -> Result<Arc<Admitted>, Reject> {
        let ticket = ticket.ok_or(Reject::MissingTicket)?;
        let now_secs = now / 1000;
        let admitted = match s.tickets.get(ticket, now_secs, s.keys.leeway_secs()) {
            Some(a) => a,
            None => {
                let claims = s.keys.verify(ticket, now_secs).map_err(|e| {
                    tracing::debug!(reason = %e, "ticket rejected");
                    Reject::InvalidTicket
                })?;
                let headers = s.identity.for_claims(&claims);
                let a = Arc::new(Admitted { claims, headers });
                s.tickets.put(ticket, Arc::clone(&a));
                a
            }
        };
        let sid = admitted.claims.sid.as_str();
        if self
            .cache
            .fresh(sid, now, s.rules, ms(s.config.store.cache))
        {
            return Ok(admitted);
        }
        let live = match self.check(sid, now, s.rules).await {
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
                return Ok(admitted);
            }
            Err(r) => return Err(r),
        };
        match live {
            Some(l) if l.status.is_active() => {
                self.cache.put(sid, l, now);
                Ok(admitted)
            }
            Some(l) => {
                self.cache.forget(sid);
                Err(Reject::Session(l.status))
            }
            None => Err(Reject::InvalidTicket),
        }
    }

    /// `store.check` for one session, shared by every request that needs it
    /// at the same moment: when the cached answer lapses under a burst (a
    /// thousand WebSocket handshakes of one session, say), one round trip
    /// answers them all instead of a thousand queueing behind each other.
    pub async fn check(
        &self,
        sid: &str,
        now: u64,
        rules: Rules,
    ) -> Result<Option<Liveness>, Reject> {
        let cell = {
            let Ok(mut flights) = self.flights.lock() else {
                return self.check_once(sid, now, rules).await;
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
        cell.get_or_init(|| self.check_once(sid, now, rules))
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

    /// Acts on status events from every node: drop cached liveness and end
    /// the session's WebSocket tunnels. Runs for the life of the gate.
    pub async fn follow_events(self: Arc<Self>) {
        let mut rx = self.store.events();
        loop {
            match rx.recv().await {
                Ok(ev) => {
                    self.cache.forget(&ev.sid);
                    if let Some(st) = Status::parse(&ev.status).filter(|s| !s.is_active()) {
                        self.tunnels.end_session(&ev.sid, st);
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "session events lagged; clearing liveness cache");
                    if let Ok(mut m) = self.cache.map.lock() {
                        m.clear();
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
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
    use crate::store::{Created, RateDecision, SessionStore, memory::MemoryStore};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A store whose `check` is slow and counted.
    struct Counting {
        inner: MemoryStore,
        checks: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl SessionStore for Counting {
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
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.inner.check(sid, now, r).await
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
        async fn revoke_user(&self, u: &str, now: u64, r: Rules) -> Result<u64, StoreError> {
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
        fn events(&self) -> tokio::sync::broadcast::Receiver<Event> {
            self.inner.events()
        }
    }

    /// Settings from a minimal memory-store config, for unit tests across
    /// modules; `tickets_extra` is YAML added under `tickets:`.
    pub(crate) fn settings_with(tickets_extra: &str) -> Settings {
        let yaml = format!(
            "listen: [\"127.0.0.1:1\"]\nstore:\n  kind: memory\ntickets:\n  keys:\n    - id: k1\n      secret: c2Vzc2lvbmdhdGUtdGVzdC1zZWNyZXQtMzItYnl0ZXMhIQ\n{tickets_extra}routes:\n  - name: r\n    kind: controller\n    path: /r\n    upstreams: [\"127.0.0.1:9\"]\n"
        );
        let cfg = crate::config::parse(&yaml, std::path::Path::new("t.yaml"), &|_| None).unwrap();
        Settings::new(cfg, Vec::new()).unwrap()
    }

    fn settings() -> Settings {
        settings_with("")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_checks_of_one_session_share_one_round_trip() {
        let store = Arc::new(Counting {
            inner: MemoryStore::new(),
            checks: AtomicUsize::new(0),
        });
        let gate = Gate::new(settings(), store.clone(), "t.yaml".into());
        let rules = gate.settings().rules;
        let waiters: Vec<_> = (0..100)
            .map(|_| {
                let gate = Arc::clone(&gate);
                tokio::spawn(async move { gate.check("s1", 1_000, rules).await })
            })
            .collect();
        for w in waiters {
            assert_eq!(w.await.unwrap(), Ok(None));
        }
        assert_eq!(store.checks.load(Ordering::SeqCst), 1);
        // The flight is retired: the next check asks the store again.
        assert_eq!(gate.check("s1", 2_000, rules).await, Ok(None));
        assert_eq!(store.checks.load(Ordering::SeqCst), 2);
    }
}
