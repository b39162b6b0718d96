//! Redis session store, shared by every gate node.
//!
//! Layout under `key_prefix` (default `sg:`), where `T` is the user's tag
//! ([`crate::session::user_tag`], which every session id ends with):
//! - `sg:s:{T}:<sid>`: one hash per session (status, timestamps in ms, identity);
//! - `sg:u:{T}:<userId>`: a sorted set of the user's session ids by creation time;
//! - `sg:rl:<key>`: fixed-window login rate counters;
//! - channel `sg:events`: every change of status, as JSON.
//!
//! The `{T}` hash tag puts a user's index and all their sessions in one Redis
//! Cluster slot, so each script, which reads the index and the sessions it
//! names, stays on one node; and a session's key is still found from its id
//! alone (an admin revoke knows nothing else).
//!
//! Every operation is one Lua script (one round trip, atomic), sent as
//! EVALSHA. Every call is bounded by `store.timeout`: redis-rs's
//! `ConnectionManager` waits without limit while it reconnects, and a
//! request must get its 503 instead. Keys carry TTLs so dead sessions vanish
//! after `max_lifetime` plus a retention margin. Three topologies: a URL
//! (standalone), Sentinel (the master is looked up at the first call and
//! again after any error, so a failover is followed within a request or two)
//! and Cluster (redis-rs follows slots and failovers; session events are
//! read from any one node, as a cluster's PUBLISH reaches every node).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::Sentinel;
use redis::{Client, RedisResult, Script, ScriptInvocation};
use tokio::sync::broadcast;

use super::{Created, RateDecision, Rules, SessionStore, StoreError};
use crate::session::{Event, Liveness, Session, Status, rfc3339, sid_tag, user_tag};

/// How often an idle event subscription is checked for a live server.
const EVENTS_PING_EVERY: Duration = Duration::from_secs(1);

/// Dead sessions kept per user in the index beyond the active ones.
pub const MAX_DEAD_PER_USER: usize = 50;

/// Shared by the scripts: apply the clock rules to one session hash and
/// publish the change. ARGV layout every script starts with:
/// 1 now (ms), 2 idle (ms), 3 events channel, 4 `at` (RFC 3339 of now).
const CLOCK: &str = r#"
local now = tonumber(ARGV[1])
local idle = tonumber(ARGV[2])
-- Mirrors RedisStore::session_key: a minted id ends with its owner's tag.
local function skey(prefix, id)
  local tag = id
  if #id == 32 and not string.find(id, '[\128-\255]') then tag = string.sub(id, 25) end
  return prefix .. 's:{' .. tag .. '}:' .. id
end
local function clock(key, sid)
  local h = redis.call('HMGET', key, 'status', 'expireAt', 'lastActiveAt', 'userId')
  if not h[1] then return nil end
  local st = h[1]
  local exp = tonumber(h[2])
  local last = tonumber(h[3])
  if st == 'active' then
    local nst = nil
    if now >= exp then nst = 'expired' elseif now >= last + idle then nst = 'abandoned' end
    if nst then
      st = nst
      redis.call('HSET', key, 'status', st, 'updatedAt', now)
      redis.call('PUBLISH', ARGV[3], cjson.encode({sid = sid, userId = h[4], status = st, at = ARGV[4]}))
    end
  end
  return {st, exp, last, h[4]}
end
local function setstatus(key, sid, uid, st)
  redis.call('HSET', key, 'status', st, 'updatedAt', now)
  redis.call('PUBLISH', ARGV[3], cjson.encode({sid = sid, userId = uid, status = st, at = ARGV[4]}))
end
"#;

/// KEYS: session. ARGV: 5 touch (ms), 6 sid. -> nil | {status, expireAt, lastActiveAt}
const CHECK: &str = r#"
local c = clock(KEYS[1], ARGV[6])
if not c then return nil end
if c[1] == 'active' and now - c[3] >= tonumber(ARGV[5]) then
  redis.call('HSET', KEYS[1], 'lastActiveAt', now, 'updatedAt', now)
  c[3] = now
end
return {c[1], c[2], c[3]}
"#;

/// The tunnel sweeper's check. KEYS: session. ARGV: 5 touch (ms), 6 sid,
/// 7 activity (ms of the tunnel's last client frame; 0: none).
/// -> nil | {status, expireAt, lastActiveAt}. Mirrors
/// `Liveness::record_activity`: lastActiveAt becomes the frame's time, not
/// now, and only a frame that came while the session was alive counts.
const CHECK_TUNNEL: &str = r#"
local act = tonumber(ARGV[7])
if act > 0 then
  local h = redis.call('HMGET', KEYS[1], 'status', 'expireAt', 'lastActiveAt')
  if h[1] == 'active' then
    local exp = tonumber(h[2])
    local last = tonumber(h[3])
    local dl = last + idle
    if act > last and act < dl and act < exp and (now - last >= tonumber(ARGV[5]) or now >= dl) then
      redis.call('HSET', KEYS[1], 'lastActiveAt', act, 'updatedAt', now)
    end
  end
end
local c = clock(KEYS[1], ARGV[6])
if not c then return nil end
return {c[1], c[2], c[3]}
"#;

/// KEYS: session. ARGV: 5 op (get|touch|refresh), 6 sid, 7 expireAt (refresh). -> nil | HGETALL
const ONE: &str = r#"
local c = clock(KEYS[1], ARGV[6])
if not c then return nil end
if c[1] == 'active' then
  if ARGV[5] == 'touch' then
    redis.call('HSET', KEYS[1], 'lastActiveAt', now, 'updatedAt', now)
  elseif ARGV[5] == 'refresh' then
    local cap = tonumber(redis.call('HGET', KEYS[1], 'maxExpireAt'))
    local e = tonumber(ARGV[7])
    if cap and e > cap then e = cap end
    redis.call('HSET', KEYS[1], 'expireAt', e, 'lastActiveAt', now, 'updatedAt', now)
  end
end
return redis.call('HGETALL', KEYS[1])
"#;

/// KEYS: session. ARGV: 5 target status, 6 sid. -> nil | HGETALL
const SET_STATUS: &str = r#"
local c = clock(KEYS[1], ARGV[6])
if not c or c[1] == 'removed' then return nil end
local target = ARGV[5]
if c[1] == 'active' or target == 'removed' then
  setstatus(KEYS[1], ARGV[6], c[4], target)
end
if target == 'removed' then
  -- The session names its user's index (same slot).
  local idx = redis.call('HGET', KEYS[1], 'idx')
  if idx then redis.call('ZREM', idx, ARGV[6]) end
  -- Out of the index, nothing caps removed sessions: keep the record only
  -- while its newest ticket can still be presented (expireAt + a minute).
  local at = c[2] + 60000
  local left = redis.call('PTTL', KEYS[1])
  if left < 0 or now + left > at then redis.call('PEXPIREAT', KEYS[1], at) end
end
return redis.call('HGETALL', KEYS[1])
"#;

/// KEYS: user index. ARGV: 5 key prefix, 6 op (list|revoke).
/// -> list of HGETALL | revoked ids
const USER: &str = r#"
local ids = redis.call('ZREVRANGE', KEYS[1], 0, -1)
local out = {}
for _, id in ipairs(ids) do
  local key = skey(ARGV[5], id)
  local c = clock(key, id)
  if not c then
    redis.call('ZREM', KEYS[1], id)
  elseif ARGV[6] == 'revoke' then
    if c[1] == 'active' then setstatus(key, id, c[4], 'revoked'); table.insert(out, id) end
  elseif c[1] ~= 'removed' then
    table.insert(out, redis.call('HGETALL', key))
  end
end
return out
"#;

/// KEYS: user index, new session. ARGV: 5 key prefix, 6 max per user, 7 sid,
/// 8 key ttl (ms), 9 max dead kept, 10.. field/value pairs. -> replaced ids
const CREATE: &str = r#"
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
local active = {}
local dead = {}
for _, id in ipairs(ids) do
  local key = skey(ARGV[5], id)
  local c = clock(key, id)
  if not c then
    redis.call('ZREM', KEYS[1], id)
  elseif c[1] == 'active' then
    table.insert(active, id)
  else
    table.insert(dead, id)
  end
end
local replaced = {}
local keep = tonumber(ARGV[6]) - 1
while #active > keep do
  local id = table.remove(active, 1)
  local key = skey(ARGV[5], id)
  setstatus(key, id, redis.call('HGET', key, 'userId'), 'replaced')
  table.insert(replaced, id)
end
local maxdead = tonumber(ARGV[9])
while #dead > maxdead do
  local id = table.remove(dead, 1)
  redis.call('DEL', skey(ARGV[5], id))
  redis.call('ZREM', KEYS[1], id)
end
local fields = {}
for i = 10, #ARGV do table.insert(fields, ARGV[i]) end
redis.call('HSET', KEYS[2], unpack(fields))
redis.call('PEXPIRE', KEYS[2], ARGV[8])
-- The index orders a user's sessions (newest first, oldest replaced
-- first); logins within one millisecond still get distinct, increasing
-- scores, so that order is the order of creation.
local score = now
local top = redis.call('ZREVRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if top[2] and tonumber(top[2]) >= score then score = tonumber(top[2]) + 1 end
redis.call('ZADD', KEYS[1], score, ARGV[7])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < tonumber(ARGV[8]) then redis.call('PEXPIRE', KEYS[1], ARGV[8]) end
return replaced
"#;

/// KEYS: counter. ARGV: 1 limit, 2 window (ms). -> -1 allow | ms to wait
const RATE: &str = r#"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if n > tonumber(ARGV[1]) then
  local t = redis.call('PTTL', KEYS[1])
  if t < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]); t = tonumber(ARGV[2]) end
  return t
end
return -1
"#;

struct Scripts {
    check: Script,
    check_tunnel: Script,
    one: Script,
    set_status: Script,
    user: Script,
    create: Script,
    rate: Script,
}

impl Scripts {
    fn new() -> Scripts {
        let with_clock = |body: &str| Script::new(&format!("{CLOCK}{body}"));
        Scripts {
            check: with_clock(CHECK),
            check_tunnel: with_clock(CHECK_TUNNEL),
            one: with_clock(ONE),
            set_status: with_clock(SET_STATUS),
            user: with_clock(USER),
            create: with_clock(CREATE),
            rate: Script::new(RATE),
        }
    }
}

/// Where the master is: a fixed URL, whatever the Sentinels say now, or a
/// cluster's nodes.
enum Source {
    Direct(Client),
    Sentinel {
        sentinel: tokio::sync::Mutex<Sentinel>,
        master: String,
    },
    Cluster {
        client: Box<ClusterClient>,
        /// One client per seed node, for the event subscription.
        nodes: Vec<Client>,
        /// The seed node the subscription tries next.
        next: std::sync::atomic::AtomicUsize,
    },
}

/// The multiplexed connection every call shares.
#[derive(Clone)]
enum Con {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Con {
    async fn invoke<T: redis::FromRedisValue>(
        &mut self,
        inv: &ScriptInvocation<'_>,
    ) -> RedisResult<T> {
        match self {
            Con::Single(c) => inv.invoke_async(c).await,
            Con::Cluster(c) => inv.invoke_async(c).await,
        }
    }

    async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> RedisResult<T> {
        match self {
            Con::Single(c) => cmd.query_async(c).await,
            Con::Cluster(c) => cmd.query_async(c).await,
        }
    }
}

pub struct RedisStore {
    source: Source,
    /// Emptied (Sentinel only) when the master stops answering, so the next
    /// call resolves it anew.
    con: ArcSwapOption<Con>,
    resolving: tokio::sync::Mutex<()>,
    prefix: String,
    channel: String,
    timeout: Duration,
    scripts: Scripts,
    events: broadcast::Sender<Event>,
    /// Bumped on every subscription to the events channel: events published
    /// while none was open are lost.
    gaps: tokio::sync::watch::Sender<u64>,
    subscribed: std::sync::Once,
}

impl RedisStore {
    /// Connects lazily: the gate starts (and answers 503) while Redis is down.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Arc<RedisStore>, StoreError> {
        Self::with_ca(url, None, prefix, timeout)
    }

    /// Like [`RedisStore::new`]; a `rediss://` server is verified with `ca`
    /// (PEM) when given, else with the system's roots.
    pub fn with_ca(
        url: &str,
        ca: Option<&[u8]>,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Arc<RedisStore>, StoreError> {
        let client = match ca {
            Some(ca) => Client::build_with_tls(url, tls(ca)),
            None => Client::open(url),
        }?;
        Ok(Self::with_source(Source::Direct(client), prefix, timeout))
    }

    /// A store whose master is found through Redis Sentinel, and found again
    /// after a failover: redis-rs does not follow one by itself.
    pub fn with_sentinel(
        nodes: &[String],
        master: &str,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Arc<RedisStore>, StoreError> {
        let sentinel = Sentinel::build(nodes.to_vec())?;
        let source = Source::Sentinel {
            sentinel: tokio::sync::Mutex::new(sentinel),
            master: master.to_owned(),
        };
        Ok(Self::with_source(source, prefix, timeout))
    }

    /// A store on a Redis Cluster, found through any of its `nodes`
    /// (`rediss://` ones verified with `ca` when given).
    pub fn with_cluster(
        nodes: &[String],
        ca: Option<&[u8]>,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Arc<RedisStore>, StoreError> {
        let mut builder = ClusterClient::builder(nodes.to_vec())
            .connection_timeout(timeout.max(Duration::from_millis(200)))
            .response_timeout(timeout)
            .retries(2);
        if let Some(ca) = ca {
            builder = builder.certs(tls(ca));
        }
        let client = builder.build()?;
        let nodes = nodes
            .iter()
            .map(|n| match ca {
                Some(ca) => Client::build_with_tls(n.as_str(), tls(ca)),
                None => Client::open(n.as_str()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let source = Source::Cluster {
            client: Box::new(client),
            nodes,
            next: std::sync::atomic::AtomicUsize::new(0),
        };
        Ok(Self::with_source(source, prefix, timeout))
    }

    fn with_source(source: Source, prefix: &str, timeout: Duration) -> Arc<RedisStore> {
        let (events, _) = broadcast::channel(4096);
        Arc::new(RedisStore {
            source,
            con: ArcSwapOption::empty(),
            resolving: tokio::sync::Mutex::new(()),
            prefix: prefix.to_owned(),
            channel: format!("{prefix}events"),
            timeout,
            scripts: Scripts::new(),
            events,
            gaps: tokio::sync::watch::channel(0).0,
            subscribed: std::sync::Once::new(),
        })
    }

    /// A client for the current master (with Cluster: for the next seed
    /// node, which is all the event subscription needs).
    async fn client(&self) -> Result<Client, StoreError> {
        match &self.source {
            Source::Direct(client) => Ok(client.clone()),
            Source::Cluster { nodes, next, .. } => {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                nodes
                    .get(i % nodes.len().max(1))
                    .cloned()
                    .ok_or(StoreError::NoClusterNodes)
            }
            Source::Sentinel { sentinel, master } => {
                let mut sentinel = sentinel.lock().await;
                let wait = self.timeout.max(Duration::from_millis(500));
                match tokio::time::timeout(wait, sentinel.async_master_for(master, None)).await {
                    Ok(Ok(client)) => Ok(client),
                    Ok(Err(source)) => Err(StoreError::NoMaster {
                        master: master.clone(),
                        source,
                    }),
                    Err(_) => Err(StoreError::Timeout(wait)),
                }
            }
        }
    }

    /// After an error, a Sentinel-found master may have been demoted or be
    /// gone: drop the connection so the next call asks the Sentinels again.
    /// A fixed URL keeps its connection, which reconnects by itself.
    fn forget_master(&self) {
        if matches!(self.source, Source::Sentinel { .. }) {
            self.con.store(None);
        }
    }

    /// Starts the task that relays `<prefix>events` from Redis to
    /// [`SessionStore::events`] receivers, reconnecting forever. Call it from
    /// a runtime that lives as long as the gate.
    pub fn start_events(self: &Arc<Self>) {
        let me = Arc::clone(self);
        self.subscribed.call_once(|| {
            tokio::spawn(async move { me.relay_events().await });
        });
    }

    async fn relay_events(self: Arc<Self>) {
        // Capped low: while no subscription is open, events are lost, and a
        // node that resubscribes late re-checks everything it knows.
        const MAX_BACKOFF: Duration = Duration::from_millis(500);
        let mut backoff = Duration::from_millis(50);
        loop {
            let client = match self.client().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot find the master for session events");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            // Bounded: a frozen server (SIGSTOP) accepts the TCP connection and
            // then answers nothing, and would hold this task forever.
            let wait = self.timeout.max(Duration::from_millis(500));
            let subscribed = tokio::time::timeout(wait, async {
                let mut ps = client.get_async_pubsub().await?;
                ps.subscribe(&self.channel).await?;
                Ok::<_, redis::RedisError>(ps)
            })
            .await;
            match subscribed {
                Ok(Ok(ps)) => {
                    backoff = Duration::from_millis(50);
                    tracing::debug!(channel = %self.channel, "subscribed to session events");
                    // Whatever was published before this subscription
                    // (since the last one ended, or since the start) is
                    // not coming: followers must re-check what they know.
                    self.gaps.send_modify(|g| *g += 1);
                    self.follow_subscription(ps, wait).await;
                    tracing::warn!("session event subscription lost; resubscribing");
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "cannot subscribe to session events"),
                Err(_) => tracing::debug!("subscribing to session events timed out"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Relays one subscription's events until it fails. A subscription gets
    /// no traffic of its own while no one publishes, so a server that froze
    /// or was failed away from (Sentinel) would look merely quiet: it is
    /// pinged every [`EVENTS_PING_EVERY`], and one that does not answer
    /// within `wait` is given up for a new subscription, found anew.
    async fn follow_subscription(&self, ps: redis::aio::PubSub, wait: Duration) {
        let (mut sink, mut stream) = ps.split();
        let mut ping = tokio::time::interval(EVENTS_PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { return };
                    match serde_json::from_slice::<Event>(msg.get_payload_bytes()) {
                        Ok(ev) => {
                            let _ = self.events.send(ev);
                        }
                        Err(e) => tracing::warn!(error = %e, "malformed session event ignored"),
                    }
                }
                _ = ping.tick() => {
                    match tokio::time::timeout(wait, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "session event subscription failed its ping");
                            return;
                        }
                        Err(_) => {
                            tracing::warn!("session event subscription unanswered; resubscribing");
                            return;
                        }
                    }
                }
            }
        }
    }

    async fn con(&self) -> Result<Con, StoreError> {
        if let Some(con) = self.con.load().as_deref() {
            return Ok(con.clone());
        }
        let _one_at_a_time = self.resolving.lock().await;
        if let Some(con) = self.con.load().as_deref() {
            return Ok(con.clone());
        }
        if let Source::Cluster { client, .. } = &self.source {
            // Connects to every node and learns the slots: bounded like any call.
            let con = match tokio::time::timeout(self.timeout, client.get_async_connection()).await
            {
                Ok(Ok(con)) => Con::Cluster(con),
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(StoreError::Timeout(self.timeout)),
            };
            self.con.store(Some(Arc::new(con.clone())));
            return Ok(con);
        }
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(200))))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let con = ConnectionManager::new_lazy_with_config(self.client().await?, cfg)?;
        let con = Con::Single(con);
        self.con.store(Some(Arc::new(con.clone())));
        Ok(con)
    }

    /// Runs one script invocation within `store.timeout`.
    async fn run<T: redis::FromRedisValue>(
        &self,
        inv: redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut con = self.con().await?;
        match tokio::time::timeout(self.timeout, con.invoke(&inv)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.forget_master();
                Err(e.into())
            }
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }

    /// Sends a sweeper batch. On one server it is one pipeline of EVALSHA
    /// calls: one write, one round trip (the script is loaded and the
    /// pipeline sent again if the server lost it). On a cluster the checks go
    /// out together on the multiplexed connection, which writes each node's
    /// share at once: one round trip per node.
    async fn pipeline(
        &self,
        con: Con,
        batch: &[(String, u64)],
        now: u64,
        rules: Rules,
    ) -> RedisResult<Vec<Option<CheckAnswer>>> {
        let script = &self.scripts.check_tunnel;
        let at = rfc3339(now);
        match con {
            Con::Single(mut c) => {
                let mut pipe = redis::pipe();
                for (sid, activity) in batch {
                    pipe.cmd("EVALSHA")
                        .arg(script.get_hash())
                        .arg(1)
                        .arg(self.session_key(sid))
                        .arg(now)
                        .arg(rules.idle_ms)
                        .arg(&self.channel)
                        .arg(&at)
                        .arg(rules.touch_ms)
                        .arg(sid)
                        .arg(*activity);
                }
                match pipe.query_async(&mut c).await {
                    Err(e)
                        if e.kind()
                            == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                    {
                        script.load_async(&mut c).await?;
                        pipe.query_async(&mut c).await
                    }
                    other => other,
                }
            }
            Con::Cluster(c) => {
                let checks = batch.iter().map(|(sid, activity)| {
                    let mut c = c.clone();
                    let mut inv = self.base(script, now, rules);
                    inv.key(self.session_key(sid))
                        .arg(rules.touch_ms)
                        .arg(sid.as_str())
                        .arg(*activity);
                    async move { inv.invoke_async(&mut c).await }
                });
                futures_util::future::try_join_all(checks).await
            }
        }
    }

    /// Mirrored by `skey` in the scripts.
    fn session_key(&self, sid: &str) -> String {
        format!("{}s:{{{}}}:{sid}", self.prefix, sid_tag(sid))
    }

    fn user_key(&self, uid: &str) -> String {
        format!("{}u:{{{}}}:{uid}", self.prefix, user_tag(uid))
    }

    fn base<'a>(&self, script: &'a Script, now: u64, rules: Rules) -> redis::ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        inv.arg(now)
            .arg(rules.idle_ms)
            .arg(&self.channel)
            .arg(rfc3339(now));
        inv
    }
}

/// A check script's answer: status, expireAt, lastActiveAt.
type CheckAnswer = (String, u64, u64);

fn liveness((st, expire_at, last_active_at): CheckAnswer) -> Result<Liveness, StoreError> {
    Ok(Liveness {
        status: Status::parse(&st)
            .ok_or_else(|| StoreError::Corrupt("unknown session status".into()))?,
        expire_at,
        last_active_at,
    })
}

fn tls(ca: &[u8]) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(ca.to_vec()),
    }
}

/// A JSON-encoded field of a session hash, `default` when it is absent.
fn json_field<T: serde::de::DeserializeOwned>(
    map: &HashMap<String, String>,
    field: &'static str,
    default: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(map.get(field).map_or(default, String::as_str))
        .map_err(|source| StoreError::BadJson { field, source })
}

fn parse_session(map: HashMap<String, String>) -> Result<Session, StoreError> {
    let field = |k: &str| {
        map.get(k)
            .ok_or_else(|| StoreError::Corrupt(format!("session hash lacks {k}")))
    };
    let num = |k: &str| {
        field(k)?
            .parse::<u64>()
            .map_err(|_| StoreError::Corrupt(format!("session field {k} is not a number")))
    };
    let status = Status::parse(field("status")?)
        .ok_or_else(|| StoreError::Corrupt("unknown session status".into()))?;
    Ok(Session {
        id: field("id")?.clone(),
        user_id: field("userId")?.clone(),
        name: map.get("name").cloned().unwrap_or_default(),
        roles: json_field(&map, "roles", "[]")?,
        vars: json_field(&map, "vars", "{}")?,
        status,
        created_at: num("createdAt")?,
        last_active_at: num("lastActiveAt")?,
        expire_at: num("expireAt")?,
        max_expire_at: num("maxExpireAt")?,
        updated_at: num("updatedAt")?,
    })
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn create(
        &self,
        s: &Session,
        max_per_user: u32,
        rules: Rules,
    ) -> Result<Created, StoreError> {
        let now = s.created_at;
        let ttl = s
            .max_expire_at
            .saturating_sub(now)
            .saturating_add(rules.retain_ms)
            .max(1);
        let mut inv = self.base(&self.scripts.create, now, rules);
        let index = self.user_key(&s.user_id);
        inv.key(&index)
            .key(self.session_key(&s.id))
            .arg(&self.prefix)
            .arg(max_per_user.max(1))
            .arg(&s.id)
            .arg(ttl)
            .arg(MAX_DEAD_PER_USER);
        let fields: [(&str, String); 12] = [
            ("id", s.id.clone()),
            ("userId", s.user_id.clone()),
            ("name", s.name.clone()),
            ("roles", to_json(&s.roles)),
            ("vars", to_json(&s.vars)),
            ("status", s.status.as_str().to_owned()),
            ("createdAt", s.created_at.to_string()),
            ("lastActiveAt", s.last_active_at.to_string()),
            ("expireAt", s.expire_at.to_string()),
            ("maxExpireAt", s.max_expire_at.to_string()),
            ("updatedAt", s.updated_at.to_string()),
            ("idx", index.clone()),
        ];
        for (k, v) in &fields {
            inv.arg(*k).arg(v);
        }
        let replaced: Vec<String> = self.run(inv).await?;
        Ok(Created { replaced })
    }

    async fn check(
        &self,
        sid: &str,
        now: u64,
        rules: Rules,
    ) -> Result<Option<Liveness>, StoreError> {
        let mut inv = self.base(&self.scripts.check, now, rules);
        inv.key(self.session_key(sid)).arg(rules.touch_ms).arg(sid);
        let out: Option<CheckAnswer> = self.run(inv).await?;
        out.map(liveness).transpose()
    }

    async fn check_many(
        &self,
        batch: &[(String, u64)],
        now: u64,
        rules: Rules,
    ) -> Result<Vec<Option<Liveness>>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let con = self.con().await?;
        let answers =
            match tokio::time::timeout(self.timeout, self.pipeline(con, batch, now, rules)).await {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    self.forget_master();
                    return Err(e.into());
                }
                Err(_) => return Err(StoreError::Timeout(self.timeout)),
            };
        if answers.len() != batch.len() {
            return Err(StoreError::Corrupt(format!(
                "{} answers to {} checks",
                answers.len(),
                batch.len()
            )));
        }
        answers
            .into_iter()
            .map(|a| a.map(liveness).transpose())
            .collect()
    }

    async fn get(&self, sid: &str, now: u64, rules: Rules) -> Result<Option<Session>, StoreError> {
        let mut inv = self.base(&self.scripts.one, now, rules);
        inv.key(self.session_key(sid)).arg("get").arg(sid).arg(0);
        let out: Option<HashMap<String, String>> = self.run(inv).await?;
        out.map(parse_session).transpose()
    }

    async fn touch(
        &self,
        sid: &str,
        now: u64,
        rules: Rules,
    ) -> Result<Option<Session>, StoreError> {
        let mut inv = self.base(&self.scripts.one, now, rules);
        inv.key(self.session_key(sid)).arg("touch").arg(sid).arg(0);
        let out: Option<HashMap<String, String>> = self.run(inv).await?;
        out.map(parse_session).transpose()
    }

    async fn refresh(
        &self,
        sid: &str,
        expire_at: u64,
        now: u64,
        rules: Rules,
    ) -> Result<Option<Session>, StoreError> {
        let mut inv = self.base(&self.scripts.one, now, rules);
        inv.key(self.session_key(sid))
            .arg("refresh")
            .arg(sid)
            .arg(expire_at);
        let out: Option<HashMap<String, String>> = self.run(inv).await?;
        out.map(parse_session).transpose()
    }

    async fn set_status(
        &self,
        sid: &str,
        status: Status,
        now: u64,
        rules: Rules,
    ) -> Result<Option<Session>, StoreError> {
        let mut inv = self.base(&self.scripts.set_status, now, rules);
        inv.key(self.session_key(sid)).arg(status.as_str()).arg(sid);
        let out: Option<HashMap<String, String>> = self.run(inv).await?;
        out.map(parse_session).transpose()
    }

    async fn list(
        &self,
        user_id: &str,
        now: u64,
        rules: Rules,
    ) -> Result<Vec<Session>, StoreError> {
        let mut inv = self.base(&self.scripts.user, now, rules);
        inv.key(self.user_key(user_id))
            .arg(&self.prefix)
            .arg("list");
        let out: Vec<HashMap<String, String>> = self.run(inv).await?;
        let mut sessions = out
            .into_iter()
            .map(parse_session)
            .collect::<Result<Vec<_>, _>>()?;
        sessions.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        Ok(sessions)
    }

    async fn revoke_user(
        &self,
        user_id: &str,
        now: u64,
        rules: Rules,
    ) -> Result<Vec<String>, StoreError> {
        let mut inv = self.base(&self.scripts.user, now, rules);
        inv.key(self.user_key(user_id))
            .arg(&self.prefix)
            .arg("revoke");
        self.run(inv).await
    }

    async fn hit_rate(
        &self,
        key: &str,
        limit: u32,
        window_ms: u64,
        _now: u64,
    ) -> Result<RateDecision, StoreError> {
        let mut inv = self.scripts.rate.prepare_invoke();
        inv.key(format!("{}rl:{key}", self.prefix))
            .arg(limit)
            .arg(window_ms.max(1));
        let out: i64 = self.run(inv).await?;
        Ok(if out < 0 {
            RateDecision::Allow
        } else {
            RateDecision::Deny {
                retry_after_ms: out.unsigned_abs(),
            }
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut con = self.con().await?;
        let ping = redis::cmd("PING");
        match tokio::time::timeout(self.timeout, con.query::<String>(&ping)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                self.forget_master();
                Err(e.into())
            }
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }

    fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn gaps(&self) -> tokio::sync::watch::Receiver<u64> {
        self.gaps.subscribe()
    }
}
