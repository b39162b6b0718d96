//! Assembles and runs the gate: the Pingora server with the proxy service,
//! the admin listener and one background service for the lifecycle tasks
//! (session events, tunnel sweeping, health probes, config reload).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::listeners::ListenerConfig;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{BackgroundService, background_service};
use pingora::services::listening::Service;

use crate::config::{self, Config, ConfigError, StoreKind};
use crate::gate::{Gate, Settings, now_ms};
use crate::health::Health;
use crate::proxy::Proxy;
use crate::session::{Liveness, Status};
use crate::store::memory::MemoryStore;
use crate::store::redis::RedisStore;
use crate::store::{Rules, SessionStore};
use crate::tunnel::CLOSE_GOING_AWAY;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Config(Vec<ConfigError>),
    #[error("store: {0}")]
    Store(String),
    #[error("settings: {0}")]
    Settings(String),
}

/// Loads the config and its users file.
pub fn load(path: &Path) -> Result<(Config, Vec<config::UserEntry>), Vec<ConfigError>> {
    let cfg = config::load(path)?;
    let users = match cfg.login.as_ref().and_then(|l| l.users_file.as_ref()) {
        Some(f) => config::load_users(f)?,
        None => Vec::new(),
    };
    Ok((cfg, users))
}

/// The store behind the trait, and the Redis handle when there is one (its
/// event relay must be started inside a long-lived runtime).
type Stores = (Arc<dyn SessionStore>, Option<Arc<RedisStore>>);

fn build_store(cfg: &Config) -> Result<Stores, StartError> {
    match cfg.store.kind {
        StoreKind::Memory => Ok((Arc::new(MemoryStore::new()), None)),
        StoreKind::Redis => {
            let (prefix, timeout) = (&cfg.store.key_prefix, cfg.store.timeout);
            let ca = cfg.store.tls_ca.as_deref();
            let r = match (&cfg.store.url, &cfg.store.sentinel, &cfg.store.cluster) {
                (Some(url), _, _) => RedisStore::with_ca(url, ca, prefix, timeout),
                (None, Some(s), _) => {
                    RedisStore::with_sentinel(&s.nodes, &s.master, prefix, timeout)
                }
                (None, None, Some(nodes)) => RedisStore::with_cluster(nodes, ca, prefix, timeout),
                (None, None, None) => {
                    return Err(StartError::Store("store: no Redis to connect to".into()));
                }
            }
            .map_err(|e| StartError::Store(e.to_string()))?;
            Ok((r.clone(), Some(r)))
        }
    }
}

/// Extra in-process services `demo` runs beside the gate.
pub type Extra = Box<dyn FnOnce(&mut Server) + Send>;

/// Builds everything and serves until SIGTERM/SIGINT; never returns.
pub fn run(
    config_path: PathBuf,
    cfg: Config,
    users: Vec<config::UserEntry>,
    extra: Option<Extra>,
) -> Result<(), StartError> {
    let conf = ServerConf {
        threads: cfg.server.threads.max(1),
        work_stealing: false,
        grace_period_seconds: Some(cfg.server.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(cfg.server.shutdown_timeout.as_secs().max(1)),
        ..ServerConf::default()
    };
    let (store, redis) = build_store(&cfg)?;
    let grace = cfg.server.grace_period;
    let listen = cfg.listen.clone();
    let admin = cfg.admin.clone();
    let settings = Settings::new(cfg, users).map_err(StartError::Settings)?;
    let gate = Gate::new(settings, store, config_path);
    let health = Arc::new(Health::default());

    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Proxy::new(Arc::clone(&gate), Arc::clone(&health)),
        "sessiongate",
    );
    for addr in &listen {
        // No L4 read buffer in front of client sockets: Pingora reads headers and
        // bodies into its own buffers anyway, and the default 64 KiB buffer is
        // zero-filled per connection, which an idle WebSocket pays for in RSS.
        proxy.add_listener(
            ListenerConfig::tcp(addr.to_string()).l4_buffer(L4BufferSettings::default().read(0)),
        );
    }
    server.add_service(proxy);

    if let Some(a) = admin {
        let mut svc = Service::new(
            "admin".into(),
            AdminApp {
                gate: Arc::clone(&gate),
            },
        );
        svc.add_tcp(&a.listen.to_string());
        server.add_service(svc);
    }
    server.add_service(background_service(
        "lifecycle",
        Lifecycle {
            gate: Arc::clone(&gate),
            grace,
            health,
            redis,
        },
    ));
    if let Some(extra) = extra {
        extra(&mut server);
    }
    tracing::info!(listen = ?listen, "sessiongate starting");
    server.run_forever();
}

struct AdminApp {
    gate: Arc<Gate>,
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, http: &mut ServerSession) -> http::Response<Vec<u8>> {
        let req = http.req_header();
        let resp = crate::admin::handle(
            &self.gate,
            &req.method,
            req.uri.path(),
            req.uri.query(),
            &req.headers,
        )
        .await;
        let mut b = http::Response::builder().status(resp.status);
        for (k, v) in resp.headers {
            b = b.header(k, v);
        }
        let len = resp.body.len();
        b.header(http::header::CONTENT_LENGTH, len)
            .body(resp.body)
            .unwrap_or_else(|_| http::Response::new(Vec::new()))
    }
}

/// How often open tunnels' sessions are swept for expiry, idleness and activity.
const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// A tunnel's session is re-read at least this often even with no deadline due,
/// in case a status event was lost.
const RESYNC_MS: u64 = 5_000;
const WATCH_EVERY: Duration = Duration::from_secs(1);

struct Lifecycle {
    gate: Arc<Gate>,
    grace: Duration,
    health: Arc<Health>,
    redis: Option<Arc<RedisStore>>,
}

#[async_trait]
impl BackgroundService for Lifecycle {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if let Some(r) = &self.redis {
            r.start_events();
        }
        let tasks = [
            tokio::spawn(Arc::clone(&self.gate).follow_events()),
            tokio::spawn(Arc::clone(&self.health).run(Arc::clone(&self.gate))),
            tokio::spawn(sweep_tunnels(Arc::clone(&self.gate))),
            tokio::spawn(watch_config(Arc::clone(&self.gate))),
            tokio::spawn(sweep_store(Arc::clone(&self.gate))),
        ];
        let _ = shutdown.changed().await;
        tracing::info!("shutting down: closing WebSockets, draining requests");
        self.gate
            .tunnels
            .end_all(CLOSE_GOING_AWAY, "gate shutting down");
        for t in tasks {
            t.abort();
        }
        // Pingora sleeps out the whole grace period before stopping; exit as
        // soon as the last in-flight request is done instead.
        let deadline = std::time::Instant::now() + self.grace;
        while self.gate.requests_in_flight() > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!(
            in_flight = self.gate.requests_in_flight(),
            "drained; exiting"
        );
        // `exit` runs no destructor: write out the buffered log lines first.
        crate::logwriter::flush_process_log();
        std::process::exit(0);
    }
}

/// Keeps tunnels' sessions honest: touches sessions whose clients are
/// talking, and re-checks those whose expiry or idle deadline has come, so
/// a tunnel ends within a second of its session leaving `active`.
async fn sweep_tunnels(gate: Arc<Gate>) {
    let mut known: HashMap<String, (Liveness, u64)> = HashMap::new();
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let s = gate.settings();
        let now = now_ms();
        let open = gate.tunnels.sessions();
        let open_sids: std::collections::HashSet<&str> =
            open.iter().map(|(sid, _)| sid.as_str()).collect();
        known.retain(|sid, _| open_sids.contains(sid.as_str()));
        drop(open_sids);
        for (sid, activity) in open {
            if sid.is_empty() {
                continue;
            }
            let due = match known.get(&sid) {
                None => true,
                Some((l, checked)) => {
                    now.saturating_sub(*checked) >= RESYNC_MS
                        || now >= l.expire_at
                        || now >= l.last_active_at.saturating_add(s.rules.idle_ms)
                        || (activity > l.last_active_at && l.touch_due(now, s.rules.touch_ms))
                }
            };
            if !due {
                continue;
            }
            // Only client activity may push lastActiveAt; a silent tunnel must age.
            let talked = known
                .get(&sid)
                .is_none_or(|(l, _)| activity > l.last_active_at);
            let rules = Rules {
                touch_ms: if talked { s.rules.touch_ms } else { u64::MAX },
                ..s.rules
            };
            match gate.store.check(&sid, now, rules).await {
                Ok(Some(l)) if l.status.is_active() => {
                    known.insert(sid, (l, now));
                }
                Ok(Some(l)) => gate.tunnels.end_session(&sid, l.status),
                Ok(None) => gate.tunnels.end_session(&sid, Status::Ended),
                Err(e) => tracing::debug!(error = %e, "tunnel sweep: store unavailable"),
            }
        }
    }
}

const STORE_SWEEP_EVERY: Duration = Duration::from_secs(60);

async fn sweep_store(gate: Arc<Gate>) {
    loop {
        tokio::time::sleep(STORE_SWEEP_EVERY).await;
        let rules = gate.settings().rules;
        if let Err(e) = gate.store.sweep(now_ms(), rules).await {
            tracing::warn!(error = %e, "store sweep failed");
        }
    }
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Reloads on SIGHUP and when the config file changes.
async fn watch_config(gate: Arc<Gate>) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP");
            None
        }
    };
    let mut last = mtime(&gate.config_path);
    // A file caught mid-write fails to load; one retry on the next tick
    // picks up the finished file without needing another change.
    let mut retry = false;
    loop {
        let hup_fired = async {
            match hup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        let by_signal = tokio::select! {
            _ = hup_fired => true,
            _ = tokio::time::sleep(WATCH_EVERY) => false,
        };
        let now = mtime(&gate.config_path);
        let changed = now != last;
        if by_signal || changed || retry {
            last = now;
            let ok = reload(&gate);
            retry = !ok && changed && !by_signal;
        }
    }
}

/// Swaps in a new config, or keeps the old one and logs why; true when the
/// new config is in force.
pub fn reload(gate: &Gate) -> bool {
    let outcome = match load(&gate.config_path) {
        Ok((cfg, users)) => match Settings::new(cfg, users) {
            Ok(s) => {
                gate.swap_settings(s);
                tracing::info!(file = %gate.config_path.display(), "config reloaded");
                "ok"
            }
            Err(e) => {
                tracing::error!(error = %e, "config reload rejected; keeping the old config");
                "error"
            }
        },
        Err(errors) => {
            for e in &errors {
                tracing::error!("{e}");
            }
            tracing::error!("config reload rejected; keeping the old config");
            "error"
        }
    };
    gate.metrics.reloads.with_label_values(&[outcome]).inc();
    outcome == "ok"
}
