//! The `SessionStore` contract, one suite run against every store: each
//! rule below is an `async fn` taking a [`Fixture`], and `contract!` turns
//! each into a test in `mod memory` (the in-process store), `mod redis` (a
//! private `redis-server`) and `mod cluster` (a private three-node Redis
//! Cluster). Time is injected (`now`) everywhere except the rate-limit
//! window, which Redis keeps with its own clock.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{Redis, RedisCluster};
use sessiongate::session::{Event, Session, Status, rfc3339};
use sessiongate::store::memory::MemoryStore;
use sessiongate::store::redis::RedisStore;
use sessiongate::store::{Created, RateDecision, Rules, SessionStore, StoreError};
use tokio::sync::broadcast;

const IDLE_MS: u64 = 10_000;
const TOUCH_MS: u64 = 1_000;
const TTL_MS: u64 = 60_000;
const MAX_LIFE_MS: u64 = 120_000;

const RULES: Rules = Rules {
    idle_ms: IDLE_MS,
    touch_ms: TOUCH_MS,
    retain_ms: 60_000,
};

/// The store under test, its event receiver (subscribed before any call)
/// and, for Redis, the server behind it.
struct Fixture {
    store: Arc<dyn SessionStore>,
    events: broadcast::Receiver<Event>,
    redis: Option<Redis>,
    /// Held only to keep the cluster's servers alive as long as the fixture.
    _cluster: Option<RedisCluster>,
    /// A realistic "now" for injected times.
    t0: u64,
}

async fn memory_fixture() -> Fixture {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    Fixture {
        events: store.events(),
        store,
        redis: None,
        _cluster: None,
        t0: sessiongate::clock::now_ms(),
    }
}

async fn redis_fixture() -> Fixture {
    let redis = Redis::spawn().await;
    let store = RedisStore::new(&redis.url(), "sg:", Duration::from_millis(500)).unwrap();
    store.start_events();
    let mut events = store.events();
    subscribed(&redis, &mut events).await;
    Fixture {
        store,
        events,
        redis: Some(redis),
        _cluster: None,
        t0: sessiongate::clock::now_ms(),
    }
}

async fn cluster_fixture() -> Fixture {
    let cluster = RedisCluster::spawn().await;
    let inner =
        RedisStore::with_cluster(&cluster.urls(), None, "sg:", Duration::from_millis(500)).unwrap();
    inner.start_events();
    let store = Tagged::wrap(inner);
    let mut events = store.events();
    subscribed(&cluster.nodes[0], &mut events).await;
    Fixture {
        store,
        events,
        redis: None,
        _cluster: Some(cluster),
        t0: sessiongate::clock::now_ms(),
    }
}

/// The store's event relay subscribes in the background: publish probes on
/// the channel (through `node`) until one comes back, so no later event can
/// be missed.
async fn subscribed(node: &Redis, events: &mut broadcast::Receiver<Event>) {
    let mut con = node
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for n in 0.. {
        assert!(
            std::time::Instant::now() < deadline,
            "the event relay never subscribed"
        );
        let probe = serde_json::json!({"sid": format!("probe-{n}"), "userId": "probe", "status": "ended", "at": ""});
        let _: i64 = ::redis::cmd("PUBLISH")
            .arg("sg:events")
            .arg(probe.to_string())
            .query_async(&mut con)
            .await
            .unwrap();
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(100), events.recv()).await {
            break;
        }
    }
}

/// Redis Cluster keeps one user's records in one slot by the owner's tag that
/// ends every session id the gate mints. The rules below use short literal
/// ids, so for the cluster each is given the tag of the user it is created
/// for on the way in, and has it taken off again in everything that comes out.
struct Tagged {
    inner: Arc<dyn SessionStore>,
    /// literal -> tagged, and back.
    ids: Mutex<(HashMap<String, String>, HashMap<String, String>)>,
    events: broadcast::Sender<Event>,
}

impl Tagged {
    fn wrap(inner: Arc<dyn SessionStore>) -> Arc<Tagged> {
        let (events, _) = broadcast::channel(4096);
        let me = Arc::new(Tagged {
            inner: Arc::clone(&inner),
            ids: Mutex::default(),
            events,
        });
        // Subscribed before any call, so no event is missed.
        let mut rx = inner.events();
        let relay = Arc::downgrade(&me);
        tokio::spawn(async move {
            loop {
                let mut ev = match rx.recv().await {
                    Ok(ev) => ev,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let Some(me) = relay.upgrade() else { return };
                ev.sid = me.literal(&ev.sid);
                let _ = me.events.send(ev);
            }
        });
        me
    }

    fn tagged(&self, sid: &str) -> String {
        let ids = self.ids.lock().unwrap();
        ids.0.get(sid).cloned().unwrap_or_else(|| sid.to_owned())
    }

    fn literal(&self, sid: &str) -> String {
        let ids = self.ids.lock().unwrap();
        ids.1.get(sid).cloned().unwrap_or_else(|| sid.to_owned())
    }

    fn untag(&self, mut s: Session) -> Session {
        s.id = self.literal(&s.id);
        s
    }
}

#[async_trait::async_trait]
impl SessionStore for Tagged {
    async fn create(&self, s: &Session, max: u32, rules: Rules) -> Result<Created, StoreError> {
        assert!(s.id.len() <= 24, "literal id {} too long to tag", s.id);
        let tag = sessiongate::session::user_tag(&s.user_id);
        let tagged = format!("{:_<24}{tag}", s.id);
        {
            let mut ids = self.ids.lock().unwrap();
            ids.0.insert(s.id.clone(), tagged.clone());
            ids.1.insert(tagged.clone(), s.id.clone());
        }
        let mut inner = s.clone();
        inner.id = tagged;
        let mut created = self.inner.create(&inner, max, rules).await?;
        for id in &mut created.replaced {
            *id = self.literal(id);
        }
        Ok(created)
    }

    async fn check(
        &self,
        sid: &str,
        now: u64,
        rules: Rules,
    ) -> Result<Option<sessiongate::session::Liveness>, StoreError> {
        self.inner.check(&self.tagged(sid), now, rules).await
    }

    async fn get(&self, sid: &str, now: u64, rules: Rules) -> Result<Option<Session>, StoreError> {
        let s = self.inner.get(&self.tagged(sid), now, rules).await?;
        Ok(s.map(|s| self.untag(s)))
    }

    async fn touch(
        &self,
        sid: &str,
        now: u64,
        rules: Rules,
    ) -> Result<Option<Session>, StoreError> {
        let s = self.inner.touch(&self.tagged(sid), now, rules).await?;
        Ok(s.map(|s| self.untag(s)))
    }

    async fn refresh(
        &self,
        sid: &str,
        expire_at: u64,
        now: u64,
        rules: Rules,
    ) -> Result<Option<Session>, StoreError> {
        let s = self
            .inner
            .refresh(&self.tagged(sid), expire_at, now, rules)
            .await?;
        Ok(s.map(|s| self.untag(s)))
    }

    async fn set_status(
        &self,
        sid: &str,
        status: Status,
        now: u64,
        rules: Rules,
    ) -> Result<Option<Session>, StoreError> {
        let s = self
            .inner
            .set_status(&self.tagged(sid), status, now, rules)
            .await?;
        Ok(s.map(|s| self.untag(s)))
    }

    async fn list(&self, user: &str, now: u64, rules: Rules) -> Result<Vec<Session>, StoreError> {
        let list = self.inner.list(user, now, rules).await?;
        Ok(list.into_iter().map(|s| self.untag(s)).collect())
    }

    async fn check_many(
        &self,
        batch: &[(String, u64)],
        now: u64,
        rules: Rules,
    ) -> Result<Vec<Option<sessiongate::session::Liveness>>, StoreError> {
        let tagged: Vec<(String, u64)> = batch
            .iter()
            .map(|(sid, at)| (self.tagged(sid), *at))
            .collect();
        self.inner.check_many(&tagged, now, rules).await
    }

    async fn revoke_user(
        &self,
        user: &str,
        now: u64,
        rules: Rules,
    ) -> Result<Vec<String>, StoreError> {
        let ids = self.inner.revoke_user(user, now, rules).await?;
        Ok(ids.iter().map(|id| self.literal(id)).collect())
    }

    async fn hit_rate(
        &self,
        key: &str,
        limit: u32,
        window_ms: u64,
        now: u64,
    ) -> Result<RateDecision, StoreError> {
        self.inner.hit_rate(key, limit, window_ms, now).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }
}

impl Fixture {
    fn store(&self) -> &dyn SessionStore {
        self.store.as_ref()
    }

    /// Every event that arrives until none has come for `quiet`, probes left out.
    async fn drain(&mut self, quiet: Duration) -> Vec<Event> {
        let mut out = Vec::new();
        while let Ok(Ok(ev)) = tokio::time::timeout(quiet, self.events.recv()).await {
            if ev.user_id != "probe" {
                out.push(ev);
            }
        }
        out
    }

    async fn status(&self, sid: &str, now: u64) -> Status {
        self.store()
            .get(sid, now, RULES)
            .await
            .unwrap()
            .unwrap()
            .status
    }
}

fn session(id: &str, user: &str, now: u64) -> Session {
    Session {
        id: id.to_owned(),
        user_id: user.to_owned(),
        name: format!("{user} name"),
        roles: vec!["player".into(), "tester".into()],
        vars: BTreeMap::from([
            ("tier".to_owned(), "gold".to_owned()),
            ("lang".to_owned(), "fr – ünïcode".to_owned()),
        ]),
        status: Status::Active,
        created_at: now,
        last_active_at: now,
        expire_at: now + TTL_MS,
        max_expire_at: now + MAX_LIFE_MS,
        updated_at: now,
    }
}

async fn create(f: &Fixture, s: &Session, max: u32) -> Vec<String> {
    f.store().create(s, max, RULES).await.unwrap().replaced
}

fn ev(sid: &str, user: &str, status: Status, now: u64) -> Event {
    Event::new(sid, user, status, now)
}

// ---------------------------------------------------------------- the rules

async fn create_then_get_round_trips(f: Fixture) {
    let t = f.t0;
    let s = session("rt-1", "alice", t);
    assert_eq!(create(&f, &s, 5).await, Vec::<String>::new());
    assert_eq!(f.store().get("rt-1", t, RULES).await.unwrap(), Some(s));
    assert_eq!(f.store().get("nope", t, RULES).await.unwrap(), None);
    assert_eq!(f.store().check("nope", t, RULES).await.unwrap(), None);
    assert_eq!(f.store().touch("nope", t, RULES).await.unwrap(), None);
    assert_eq!(
        f.store().refresh("nope", t + 1, t, RULES).await.unwrap(),
        None
    );
    assert_eq!(
        f.store()
            .set_status("nope", Status::Ended, t, RULES)
            .await
            .unwrap(),
        None
    );
}

async fn check_applies_expiry_and_idle(f: Fixture) {
    let t = f.t0;
    let mut short = session("clock-exp", "alice", t);
    short.expire_at = t + 5_000;
    create(&f, &short, 5).await;
    create(&f, &session("clock-idle", "alice", t), 5).await;

    let l = f
        .store()
        .check("clock-exp", t + 4_999, RULES)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(l.status, Status::Active);
    // Expiry is checked against the injected now, and wins over idleness.
    let l = f
        .store()
        .check("clock-exp", t + IDLE_MS + 1, RULES)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(l.status, Status::Expired);
    assert_eq!(l.expire_at, t + 5_000);
    let s = f
        .store()
        .get("clock-exp", t + IDLE_MS + 2, RULES)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.status, Status::Expired);
    assert_eq!(s.updated_at, t + IDLE_MS + 1, "updatedAt is the change");

    // Idle: one millisecond short of idle_timeout is still active (and the
    // check, being activity, moves lastActiveAt); a full idle_timeout later
    // it is abandoned.
    let l = f
        .store()
        .check("clock-idle", t + IDLE_MS - 1, RULES)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(l.status, Status::Active);
    assert_eq!(l.last_active_at, t + IDLE_MS - 1);
    let l = f
        .store()
        .check("clock-idle", t + 2 * IDLE_MS - 1, RULES)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(l.status, Status::Abandoned);
    assert_eq!(
        f.status("clock-idle", t + 3 * IDLE_MS).await,
        Status::Abandoned
    );
}

async fn check_throttles_last_active_at(f: Fixture) {
    let t = f.t0;
    create(&f, &session("thr", "alice", t), 5).await;
    let last = |now: u64| {
        let st = f.store.clone();
        async move {
            st.check("thr", now, RULES)
                .await
                .unwrap()
                .unwrap()
                .last_active_at
        }
    };
    assert_eq!(last(t + TOUCH_MS - 1).await, t, "not yet due");
    assert_eq!(last(t + TOUCH_MS).await, t + TOUCH_MS, "due: written");
    assert_eq!(last(t + TOUCH_MS + 500).await, t + TOUCH_MS, "throttled");
    assert_eq!(last(t + 2 * TOUCH_MS).await, t + 2 * TOUCH_MS);
    let s = f
        .store()
        .get("thr", t + 2 * TOUCH_MS + 1, RULES)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.last_active_at, t + 2 * TOUCH_MS, "the write is stored");
    assert_eq!(s.updated_at, t + 2 * TOUCH_MS, "and is an update");
    // touch is not throttled.
    let s = f
        .store()
        .touch("thr", t + 2 * TOUCH_MS + 10, RULES)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.last_active_at, t + 2 * TOUCH_MS + 10);
    assert_eq!(s.status, Status::Active);
}

/// The tunnel sweeper's batch: answers in order, moves lastActiveAt to the
/// time of the client's last frame (never to the check's time), ages a
/// silent session to `abandoned` exactly at its deadline and publishes it.
/// On Redis it is one pipeline, which must survive the script cache being
/// flushed.
async fn check_many_records_frames_at_their_time(mut f: Fixture) {
    let t = f.t0;
    create(&f, &session("cm-talk", "alice", t), 5).await;
    create(&f, &session("cm-quiet", "alice", t + 1), 5).await;
    let frame = t + TOUCH_MS + 5;
    let batch = vec![
        ("cm-talk".to_owned(), frame),
        ("nope".to_owned(), 0),
        ("cm-quiet".to_owned(), 0),
    ];
    let got = f
        .store()
        .check_many(&batch, frame + 300, RULES)
        .await
        .unwrap();
    assert_eq!(got.len(), 3);
    let talk = got[0].unwrap();
    assert_eq!((talk.status, talk.last_active_at), (Status::Active, frame));
    assert_eq!(got[1], None);
    let quiet = got[2].unwrap();
    assert_eq!(quiet.last_active_at, t + 1, "silence is no activity");
    assert_eq!(
        f.store()
            .get("cm-talk", frame + 301, RULES)
            .await
            .unwrap()
            .unwrap()
            .last_active_at,
        frame,
        "stored"
    );
    if let Some(redis) = &f.redis {
        let mut con = redis
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let _: () = ::redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut con)
            .await
            .unwrap();
    }
    let before = [("cm-quiet".to_owned(), 0)];
    let l = f
        .store()
        .check_many(&before, t + IDLE_MS, RULES)
        .await
        .unwrap();
    assert_eq!(
        l[0].unwrap().status,
        Status::Active,
        "1 ms before the deadline"
    );
    let at = [("cm-quiet".to_owned(), 0), ("cm-talk".to_owned(), 0)];
    let l = f
        .store()
        .check_many(&at, t + 1 + IDLE_MS, RULES)
        .await
        .unwrap();
    assert_eq!(l[0].unwrap().status, Status::Abandoned);
    assert_eq!(
        l[1].unwrap().status,
        Status::Active,
        "its frame keeps it alive"
    );
    let got = tokio::time::timeout(Duration::from_secs(5), f.events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        got,
        ev("cm-quiet", "alice", Status::Abandoned, t + 1 + IDLE_MS)
    );
    assert!(
        f.store()
            .check_many(&[], t, RULES)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn no_status_returns_to_active(mut f: Fixture) {
    let t = f.t0;
    let user = "nsr";
    for (i, st) in Status::ALL
        .into_iter()
        .filter(|s| !s.is_active())
        .enumerate()
    {
        let sid = format!("nsr-{st}");
        let mut s = session(&sid, user, t + i as u64);
        s.expire_at = t + 50_000;
        create(&f, &s, 100).await;
        // Reach `st`: through the clock for expired/abandoned, set_status otherwise.
        let at = t + 1_000;
        match st {
            Status::Expired => {
                f.store().check(&sid, t + 50_000, RULES).await.unwrap();
            }
            Status::Abandoned => {
                f.store()
                    .check(&sid, t + i as u64 + IDLE_MS, RULES)
                    .await
                    .unwrap();
            }
            _ => {
                f.store().set_status(&sid, st, at, RULES).await.unwrap();
            }
        }
        let before = f.store().get(&sid, at, RULES).await.unwrap().unwrap();
        assert_eq!(before.status, st);
        if st == Status::Removed {
            // Removed is final: every further change finds nothing.
            for target in Status::ALL {
                assert_eq!(
                    f.store()
                        .set_status(&sid, target, at + 1, RULES)
                        .await
                        .unwrap(),
                    None,
                    "removed -> {target}"
                );
            }
        } else {
            for target in Status::ALL.into_iter().filter(|s| *s != Status::Removed) {
                let after = f
                    .store()
                    .set_status(&sid, target, at + 1, RULES)
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(after, before, "{st} -> {target} must change nothing");
            }
        }
        // Neither touch nor refresh revives it.
        let later = t + 60_000;
        if let Some(s) = f.store().touch(&sid, later, RULES).await.unwrap() {
            assert_eq!(s, before, "touch on {st}");
        }
        if let Some(s) = f
            .store()
            .refresh(&sid, later + TTL_MS, later, RULES)
            .await
            .unwrap()
        {
            assert_eq!(s, before, "refresh on {st}");
        }
        let l = f.store().check(&sid, later, RULES).await.unwrap().unwrap();
        assert_eq!(l.status, st);
    }
    // One event per status reached, none from the refused changes.
    let got: Vec<String> = f
        .drain(Duration::from_millis(300))
        .await
        .into_iter()
        .map(|e| e.status)
        .collect();
    assert_eq!(
        got,
        [
            "ended",
            "removed",
            "revoked",
            "expired",
            "abandoned",
            "replaced"
        ]
    );
}

async fn removed_leaves_the_list_and_ended_stays(f: Fixture) {
    let t = f.t0;
    for (i, sid) in ["rm-a", "rm-b", "rm-c"].into_iter().enumerate() {
        create(&f, &session(sid, "alice", t + i as u64), 5).await;
    }
    let removed = f
        .store()
        .set_status("rm-a", Status::Removed, t + 10, RULES)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(removed.status, Status::Removed);
    let ended = f
        .store()
        .set_status("rm-b", Status::Ended, t + 10, RULES)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ended.status, Status::Ended);
    // An ended session can still be removed by its user.
    let list = f.store().list("alice", t + 20, RULES).await.unwrap();
    let ids: Vec<(&str, Status)> = list.iter().map(|s| (s.id.as_str(), s.status)).collect();
    assert_eq!(ids, [("rm-c", Status::Active), ("rm-b", Status::Ended)]);
    // The record stays readable, so its ticket answers session_removed.
    assert_eq!(f.status("rm-a", t + 20).await, Status::Removed);
    let again = f
        .store()
        .set_status("rm-b", Status::Removed, t + 30, RULES)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.status, Status::Removed);
    let list = f.store().list("alice", t + 40, RULES).await.unwrap();
    assert_eq!(
        list.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["rm-c"]
    );
}

async fn list_is_newest_first_and_per_user(f: Fixture) {
    let t = f.t0;
    // Inserted out of order: the list orders by creation time, not insertion.
    for (sid, at) in [("l-2", t + 20), ("l-1", t + 10), ("l-3", t + 30)] {
        create(&f, &session(sid, "alice", at), 10).await;
    }
    create(&f, &session("l-bob", "bob", t + 25), 10).await;
    let list = f.store().list("alice", t + 40, RULES).await.unwrap();
    assert_eq!(
        list.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["l-3", "l-2", "l-1"]
    );
    assert_eq!(list[0], session("l-3", "alice", t + 30));
    // Created within one millisecond (ids out of lexical order): still
    // newest first, by creation.
    for sid in ["l-9", "l-4", "l-7"] {
        create(&f, &session(sid, "alice", t + 35), 10).await;
    }
    let list = f.store().list("alice", t + 40, RULES).await.unwrap();
    assert_eq!(
        list.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["l-7", "l-4", "l-9", "l-3", "l-2", "l-1"]
    );
    assert!(
        f.store()
            .list("nobody", t + 40, RULES)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn max_per_user_replaces_the_oldest_active(mut f: Fixture) {
    let t = f.t0;
    let u = "mpu";
    assert!(create(&f, &session("m-a", u, t), 2).await.is_empty());
    assert!(create(&f, &session("m-b", u, t + 1), 2).await.is_empty());
    assert_eq!(create(&f, &session("m-c", u, t + 2), 2).await, ["m-a"]);
    assert_eq!(f.status("m-a", t + 3).await, Status::Replaced);
    // A session already ended does not count against the limit.
    f.store()
        .set_status("m-b", Status::Ended, t + 3, RULES)
        .await
        .unwrap();
    assert!(create(&f, &session("m-d", u, t + 4), 2).await.is_empty());
    // Neither does one whose ttl has passed: it becomes expired, not replaced.
    let mut short = session("m-e", u, t + 5);
    short.expire_at = t + 100;
    assert_eq!(create(&f, &short, 3).await, Vec::<String>::new());
    assert_eq!(create(&f, &session("m-f", u, t + 200), 2).await, ["m-c"]);
    assert_eq!(f.status("m-e", t + 201).await, Status::Expired);
    // Lowering the limit replaces as many as needed, oldest first.
    assert_eq!(
        create(&f, &session("m-g", u, t + 300), 1).await,
        ["m-d", "m-f"]
    );
    let active: Vec<String> = f
        .store()
        .list(u, t + 301, RULES)
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.status.is_active())
        .map(|s| s.id)
        .collect();
    assert_eq!(active, ["m-g"]);
    let got: Vec<(String, String)> = f
        .drain(Duration::from_millis(300))
        .await
        .into_iter()
        .map(|e| (e.sid, e.status))
        .collect();
    let want: Vec<(String, String)> = [
        ("m-a", "replaced"),
        ("m-b", "ended"),
        ("m-e", "expired"),
        ("m-c", "replaced"),
        ("m-d", "replaced"),
        ("m-f", "replaced"),
    ]
    .iter()
    .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
    .collect();
    assert_eq!(got, want);
}

async fn revoke_user_counts_active_sessions_only(f: Fixture) {
    let t = f.t0;
    for (i, sid) in ["rv-1", "rv-2", "rv-3"].into_iter().enumerate() {
        create(&f, &session(sid, "alice", t + i as u64), 5).await;
    }
    create(&f, &session("rv-bob", "bob", t), 5).await;
    f.store()
        .set_status("rv-2", Status::Ended, t + 5, RULES)
        .await
        .unwrap();
    let mut revoked = f.store().revoke_user("alice", t + 6, RULES).await.unwrap();
    revoked.sort();
    assert_eq!(revoked, ["rv-1", "rv-3"]);
    assert_eq!(f.status("rv-1", t + 7).await, Status::Revoked);
    assert_eq!(f.status("rv-2", t + 7).await, Status::Ended);
    assert_eq!(f.status("rv-3", t + 7).await, Status::Revoked);
    assert_eq!(f.status("rv-bob", t + 7).await, Status::Active);
    assert!(
        f.store()
            .revoke_user("alice", t + 8, RULES)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        f.store()
            .revoke_user("nobody", t + 8, RULES)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn refresh_pushes_expiry_capped_at_max_expire_at(f: Fixture) {
    let t = f.t0;
    let mut s = session("rf", "alice", t);
    s.expire_at = t + 1_000;
    s.max_expire_at = t + 5_000;
    create(&f, &s, 5).await;
    let r = f
        .store()
        .refresh("rf", t + 3_000, t + 500, RULES)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, Status::Active);
    assert_eq!(r.expire_at, t + 3_000);
    assert_eq!(r.last_active_at, t + 500, "a refresh is activity");
    assert_eq!(r.max_expire_at, t + 5_000);
    let r = f
        .store()
        .refresh("rf", t + 9_000, t + 600, RULES)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.expire_at, t + 5_000, "capped at max_expire_at");
    // The pushed expiry is what the clock rules use afterwards.
    let l = f
        .store()
        .check("rf", t + 4_999, RULES)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(l.status, Status::Active);
    let l = f
        .store()
        .check("rf", t + 5_000, RULES)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(l.status, Status::Expired);
}

async fn hit_rate_is_a_fixed_window(f: Fixture) {
    // Redis keeps the window with its own clock, so real time is used here.
    let now = sessiongate::clock::now_ms;
    let window = 400;
    for _ in 0..3 {
        assert_eq!(
            f.store().hit_rate("k", 3, window, now()).await.unwrap(),
            RateDecision::Allow
        );
    }
    for _ in 0..2 {
        match f.store().hit_rate("k", 3, window, now()).await.unwrap() {
            RateDecision::Deny { retry_after_ms } => {
                assert!(
                    (1..=window).contains(&retry_after_ms),
                    "retry after {retry_after_ms} ms"
                );
            }
            RateDecision::Allow => panic!("the 4th and 5th hits must be denied"),
        }
    }
    assert_eq!(
        f.store().hit_rate("other", 3, window, now()).await.unwrap(),
        RateDecision::Allow,
        "keys are counted apart"
    );
    // Sleeping is the point here: the window has to pass.
    tokio::time::sleep(Duration::from_millis(window + 50)).await;
    assert_eq!(
        f.store().hit_rate("k", 3, window, now()).await.unwrap(),
        RateDecision::Allow,
        "a new window starts afresh"
    );
}

async fn every_status_change_emits_exactly_one_event(mut f: Fixture) {
    let t = f.t0;
    let u = "ev-user";
    let mut short = session("ev-exp", u, t);
    short.expire_at = t + 2_000;
    for s in [
        session("ev-end", u, t),
        session("ev-rm", u, t + 1),
        session("ev-rev", u, t + 2),
        session("ev-idle", u, t + 3),
        short,
        session("ev-ru1", "ev-other", t),
        session("ev-ru2", "ev-other", t + 1),
    ] {
        create(&f, &s, 10).await;
    }
    assert!(
        f.drain(Duration::from_millis(150)).await.is_empty(),
        "creating sessions changes no status"
    );
    let at = t + 1_000;
    // Ending and removing twice: the second call changes nothing.
    for (sid, status) in [
        ("ev-end", Status::Ended),
        ("ev-end", Status::Ended),
        ("ev-rm", Status::Removed),
        ("ev-rm", Status::Removed),
        ("ev-rev", Status::Revoked),
    ] {
        f.store().set_status(sid, status, at, RULES).await.unwrap();
    }
    // Expiry and idleness detected by check publish once, however often checked.
    for _ in 0..3 {
        f.store().check("ev-exp", t + 2_000, RULES).await.unwrap();
    }
    for _ in 0..3 {
        f.store()
            .check("ev-idle", t + 3 + IDLE_MS, RULES)
            .await
            .unwrap();
    }
    f.store()
        .get("ev-idle", t + 4 + IDLE_MS, RULES)
        .await
        .unwrap();
    f.store().list(u, t + 5 + IDLE_MS, RULES).await.unwrap();
    f.store()
        .revoke_user("ev-other", t + 7_000, RULES)
        .await
        .unwrap();
    f.store()
        .revoke_user("ev-other", t + 7_001, RULES)
        .await
        .unwrap();
    let got = f.drain(Duration::from_millis(300)).await;
    // Order holds per user (one user's records share one Redis Cluster node;
    // across nodes the cluster relays events in no set order). The other
    // user's revocation walks the index newest first in Redis and oldest
    // first in memory: compare those two as a set.
    let (head, mut tail): (Vec<Event>, Vec<Event>) = got.into_iter().partition(|e| e.user_id == u);
    assert_eq!(
        head,
        [
            ev("ev-end", u, Status::Ended, at),
            ev("ev-rm", u, Status::Removed, at),
            ev("ev-rev", u, Status::Revoked, at),
            ev("ev-exp", u, Status::Expired, t + 2_000),
            ev("ev-idle", u, Status::Abandoned, t + 3 + IDLE_MS),
        ]
    );
    tail.sort_by(|a, b| a.sid.cmp(&b.sid));
    assert_eq!(
        tail,
        [
            ev("ev-ru1", "ev-other", Status::Revoked, t + 7_000),
            ev("ev-ru2", "ev-other", Status::Revoked, t + 7_000),
        ]
    );
    assert_eq!(head[0].at, rfc3339(at), "`at` is the change's time");
}

/// A session's record is kept `retain_ms` past its `max_expire_at`, so its
/// ticket keeps answering with its status, and then forgotten, removed
/// sessions included. (The memory store forgets lazily, on the user's next
/// list or login; Redis keys expire by themselves.)
async fn sessions_are_forgotten_after_retention(f: Fixture) {
    // Redis expires keys with its own clock, so real time is used here.
    let rules = Rules {
        retain_ms: 300,
        ..RULES
    };
    let t = sessiongate::clock::now_ms();
    for sid in ["ret-ended", "ret-removed", "ret-active"] {
        let mut s = session(sid, "ret", t);
        s.expire_at = t + 100;
        s.max_expire_at = t + 100;
        f.store().create(&s, 5, rules).await.unwrap();
    }
    f.store()
        .set_status("ret-ended", Status::Ended, t, rules)
        .await
        .unwrap();
    f.store()
        .set_status("ret-removed", Status::Removed, t, rules)
        .await
        .unwrap();
    for (sid, st) in [
        ("ret-ended", Status::Ended),
        ("ret-removed", Status::Removed),
        ("ret-active", Status::Expired),
    ] {
        let s = f.store().get(sid, t + 150, rules).await.unwrap();
        assert_eq!(s.map(|s| s.status), Some(st), "{sid} within retention");
    }
    // Sleeping is the point: the retention has to pass.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let now = sessiongate::clock::now_ms();
    assert_eq!(f.store().list("ret", now, rules).await.unwrap(), []);
    for sid in ["ret-ended", "ret-removed", "ret-active"] {
        assert_eq!(
            f.store().get(sid, now, rules).await.unwrap(),
            None,
            "{sid} after retention"
        );
    }
}

/// 10,000 logins and logouts of one user leave a bounded index and, in
/// Redis, a bounded key space where every key expires by itself.
async fn dead_sessions_are_bounded_and_expire(f: Fixture) {
    use sessiongate::store::memory::MAX_DEAD_PER_USER as MEM_MAX_DEAD;
    use sessiongate::store::redis::MAX_DEAD_PER_USER as REDIS_MAX_DEAD;
    let max_dead = if f.redis.is_some() {
        REDIS_MAX_DEAD
    } else {
        MEM_MAX_DEAD
    };
    let t = f.t0;
    let n: u64 = 10_000;
    for i in 0..n {
        let sid = format!("hyg-{i}");
        create(&f, &session(&sid, "hyg", t + i), 5).await;
        f.store()
            .set_status(&sid, Status::Ended, t + i, RULES)
            .await
            .unwrap();
    }
    let list = f.store().list("hyg", t + n, RULES).await.unwrap();
    // The cap is applied at each login, so the last logout may add one more.
    assert!(
        list.len() <= max_dead + 1,
        "{} dead sessions listed",
        list.len()
    );
    assert_eq!(list[0].id, format!("hyg-{}", n - 1), "the newest are kept");
    let Some(redis) = &f.redis else { return };
    let mut con = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let size: usize = ::redis::cmd("DBSIZE").query_async(&mut con).await.unwrap();
    // Sessions, the user's index, nothing else.
    assert!(size <= max_dead + 2, "{size} keys after {n} logins");
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut con)
        .await
        .unwrap();
    for k in keys {
        let ttl: i64 = ::redis::cmd("PTTL")
            .arg(&k)
            .query_async(&mut con)
            .await
            .unwrap();
        assert!(ttl > 0, "key {k} has no expiry ({ttl})");
    }
}

async fn concurrent_creates_keep_exactly_max_per_user(f: Fixture) {
    let t = f.t0;
    let tasks: Vec<_> = (0..200u64)
        .map(|i| {
            let store = f.store.clone();
            tokio::spawn(async move {
                store
                    .create(&session(&format!("cc-{i}"), "crowd", t + i), 5, RULES)
                    .await
                    .unwrap()
                    .replaced
            })
        })
        .collect();
    let mut replaced = Vec::new();
    for task in tasks {
        replaced.extend(task.await.unwrap());
    }
    let distinct: HashSet<&String> = replaced.iter().collect();
    assert_eq!(replaced.len(), 195, "each replaced once");
    assert_eq!(distinct.len(), 195);
    let list = f.store().list("crowd", t + 300, RULES).await.unwrap();
    let active: Vec<&Session> = list.iter().filter(|s| s.status.is_active()).collect();
    assert_eq!(active.len(), 5);
    assert!(active.iter().all(|s| !distinct.contains(&s.id)));
}

/// A user who never comes back is forgotten too: Redis by key TTLs, the
/// memory store by its periodic sweep.
async fn sweep_forgets_users_who_never_return(f: Fixture) {
    let rules = Rules {
        retain_ms: 300,
        ..RULES
    };
    let t = sessiongate::clock::now_ms();
    let mut s = session("gone-1", "gone", t);
    s.expire_at = t + 100;
    s.max_expire_at = t + 100;
    f.store().create(&s, 5, rules).await.unwrap();
    // Sleeping is the point: the retention has to pass.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let now = sessiongate::clock::now_ms();
    f.store().sweep(now, rules).await.unwrap();
    assert_eq!(f.store().get("gone-1", now, rules).await.unwrap(), None);
}

// ------------------------------------------------------ both stores, same tests

macro_rules! contract {
    ($($rule:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $rule() {
                    super::$rule(super::memory_fixture().await).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $rule() {
                    super::$rule(super::redis_fixture().await).await;
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $rule() {
                    super::$rule(super::cluster_fixture().await).await;
                }
            )*
        }
    };
}

contract!(
    create_then_get_round_trips,
    check_applies_expiry_and_idle,
    check_throttles_last_active_at,
    check_many_records_frames_at_their_time,
    no_status_returns_to_active,
    removed_leaves_the_list_and_ended_stays,
    list_is_newest_first_and_per_user,
    max_per_user_replaces_the_oldest_active,
    revoke_user_counts_active_sessions_only,
    refresh_pushes_expiry_capped_at_max_expire_at,
    hit_rate_is_a_fixed_window,
    every_status_change_emits_exactly_one_event,
    sessions_are_forgotten_after_retention,
    dead_sessions_are_bounded_and_expire,
    concurrent_creates_keep_exactly_max_per_user,
    sweep_forgets_users_who_never_return,
);

/// Redis only: a removed session leaves its user's index, so its record must
/// not wait out `max_lifetime`; it lives as long as its newest ticket can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_removed_sessions_expire_with_their_ticket() {
    let f = redis_fixture().await;
    let t = sessiongate::clock::now_ms();
    let mut s = session("rm-ttl", "rm-user", t);
    s.expire_at = t + 10_000;
    s.max_expire_at = t + 30 * 24 * 3600 * 1000;
    create(&f, &s, 5).await;
    f.store()
        .set_status("rm-ttl", Status::Removed, t, RULES)
        .await
        .unwrap();
    let mut con = f
        .redis
        .as_ref()
        .unwrap()
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let ttl: i64 = ::redis::cmd("PTTL")
        .arg("sg:s:{rm-ttl}:rm-ttl")
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(
        ttl > 0 && ttl <= 10_000 + 60_000,
        "removed record lives {ttl} ms"
    );
}
