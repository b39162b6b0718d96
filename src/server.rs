//! Assembles and runs the gate: the Pingora server with the proxy service,
//! the admin listener and one background service for the lifecycle tasks
//! (session events, tunnel sweeping, health probes, config reload).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::listeners::ListenerConfig;
use pingora::listeners::tls::Acceptor;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{BackgroundService, background_service};
use pingora::services::listening::Service;

use crate::clock::now_ms;
use crate::config::{self, Config, ConfigError, StoreKind};
use crate::downstream::Downstream;
use crate::gate::Gate;
use crate::health::Health;
use crate::listeners::EdgeApp;
use crate::proxy::Proxy;
use crate::settings::{Settings, SettingsError};
use crate::store::memory::MemoryStore;
use crate::store::redis::RedisStore;
use crate::store::{SessionStore, StoreError};
use crate::tls::SniResolver;
use crate::tunnel::CLOSE_GOING_AWAY;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Config(Vec<ConfigError>),
    #[error("store: no Redis to connect to")]
    NoStore,
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("settings: {0}")]
    HandOver(#[from] crate::listeners::HandOverError),
    #[error("settings: --upgrade needs every listen address to name its port (not 0)")]
    UpgradeNeedsPorts,
    #[error("settings: --upgrade needs server.pid_file to find the running gate")]
    UpgradeNeedsPidFile,
    #[error("settings: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("listeners: {0}")]
    Bind(#[from] crate::bind::BindError),
    #[error("settings: {0}")]
    Build(#[from] SettingsError),
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
                    return Err(StartError::NoStore);
                }
            }?;
            Ok((r.clone(), Some(r)))
        }
    }
}

/// Extra in-process services `demo` runs beside the gate.
pub type Extra = Box<dyn FnOnce(&mut Server) + Send>;

/// Builds everything and serves until SIGTERM/SIGINT; never returns.
/// With `ready_file`, the bound addresses are written there as JSON once
/// every listener accepts connections.
pub fn run(
    config_path: PathBuf,
    cfg: Config,
    users: Vec<config::UserEntry>,
    extra: Option<Extra>,
    upgrade: bool,
    ready_file: Option<PathBuf>,
) -> Result<(), StartError> {
    let pid_file = cfg.server.pid_file.clone();
    let conf = ServerConf {
        upgrade_sock: cfg.server.upgrade_sock.display().to_string(),
        threads: cfg.server.threads.max(1),
        work_stealing: false,
        grace_period_seconds: Some(cfg.server.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(cfg.server.shutdown_timeout.as_secs().max(1)),
        // Every timeout of a second or more (the routes' upstream timeouts, the
        // pool's idle limit) on tokio's timer wheel, in the task's own runtime,
        // rather than Pingora's fast timer, whose 10 ms buckets a clock thread
        // fires from another core: nearly all of these are cancelled, which the
        // wheel does in place (README, Performance, run K).
        fast_timeout_to_tokio_threshold_seconds: Some(0),
        ..ServerConf::default()
    };
    let (store, redis) = build_store(&cfg)?;
    let grace = cfg.server.grace_period;
    let keepalive = cfg.server.keepalive_timeout;
    let configured = crate::bind::Addresses {
        listen: cfg.listen.clone(),
        tls_listen: cfg
            .tls
            .as_ref()
            .map(|t| t.listen.clone())
            .unwrap_or_default(),
        admin: cfg.admin.as_ref().map(|a| a.listen),
    };
    let (bound, reserved) = crate::bind::reserve(&configured)?;
    if upgrade && !reserved.is_empty() {
        // The running gate's sockets are found by address; a port-0 address
        // names none of them.
        return Err(StartError::UpgradeNeedsPorts);
    }
    let listen = bound.listen.clone();
    let tls = cfg.tls.clone();
    let proxy_protocol = cfg.clients.proxy_protocol;
    let settings = Settings::new(cfg, users)?;
    let gate = Gate::new(settings, store, config_path);
    export_cert_expiry(&gate);
    let health = Arc::new(Health::default());

    let opt = pingora::server::configuration::Opt {
        upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    if upgrade {
        // The old gate sends its listening sockets once it gets SIGQUIT;
        // bootstrap waits for them on the upgrade socket (both sides retry
        // for about five seconds, so the order of the two does not matter).
        let Some(pid_file) = &pid_file else {
            return Err(StartError::UpgradeNeedsPidFile);
        };
        crate::listeners::ask_to_hand_over(pid_file)?;
    }
    server.bootstrap();
    if let Some(p) = &pid_file
        && let Err(e) = std::fs::write(p, format!("{}\n", std::process::id()))
    {
        tracing::warn!(file = %p.display(), error = %e, "cannot write the pid file");
    }

    let mut app = pingora::proxy::http_proxy(
        &server.configuration,
        Proxy::new(Arc::clone(&gate), Arc::clone(&health)),
    );
    // HTTP/2 connections stay Pingora's whole; the idle limit applies to them there.
    let mut options = HttpServerOptions::default();
    options.h2_idle_timeout = Some(keepalive);
    app.server_options = Some(options);
    // Pingora's HTTP/1 loop behind the head deadline and keep-alive limit,
    // behind the PROXY header and TLS handshake of each listener.
    let proxy = Arc::new(Downstream::new(app, Arc::clone(&gate)));
    // No L4 read buffer in front of client sockets: Pingora reads headers and
    // bodies into its own buffers anyway, and the default 64 KiB buffer is
    // zero-filled per connection, which an idle WebSocket pays for in RSS.
    let endpoint = |addr: &SocketAddr| {
        let l =
            ListenerConfig::tcp(addr.to_string()).l4_buffer(L4BufferSettings::default().read(0));
        match reserved.options(addr) {
            Some(o) => l.tcp_socket_options(o),
            None => l,
        }
    };
    if !listen.is_empty() {
        let app = EdgeApp::new(Arc::clone(&proxy), None, proxy_protocol);
        let mut svc = Service::new("sessiongate".into(), app);
        for addr in &listen {
            svc.add_listener(endpoint(addr));
        }
        server.add_service(svc);
    }
    if let Some(tls) = &tls {
        // Every handshake asks the settings in force for the certificates,
        // so a reload reaches new connections and leaves open ones alone.
        let current = Arc::clone(&gate);
        let resolver = SniResolver::new(move || {
            current
                .settings()
                .config
                .tls
                .as_ref()
                .map(|t| Arc::clone(&t.certificates))
        });
        let rustls = crate::tls::server_config(tls.min_version, tls.http2, Arc::new(resolver))?;
        let acceptor = Arc::new(Acceptor::from_server_config(Arc::new(rustls)));
        let app = EdgeApp::new(Arc::clone(&proxy), Some(acceptor), proxy_protocol);
        let mut svc = Service::new("sessiongate-tls".into(), app);
        for addr in &bound.tls_listen {
            svc.add_listener(endpoint(addr));
        }
        server.add_service(svc);
    }

    if let Some(addr) = bound.admin {
        // SPEC 3: with proxy_protocol every listener, this one included,
        // takes a PROXY header first (a balancer's health check sends a v1
        // UNKNOWN or v2 LOCAL one).
        let admin_app = Arc::new(crate::events::AdminServer {
            gate: Arc::clone(&gate),
        });
        let mut svc = Service::new(
            "admin".into(),
            EdgeApp::new(admin_app, None, proxy_protocol),
        );
        match reserved.options(&addr) {
            Some(o) => svc.add_tcp_with_settings(&addr.to_string(), o),
            None => svc.add_tcp(&addr.to_string()),
        }
        server.add_service(svc);
    }
    server.add_service(background_service(
        "lifecycle",
        Lifecycle {
            gate: Arc::clone(&gate),
            grace,
            health,
            redis,
            ready: std::sync::Mutex::new(ready_file.map(|path| (path, bound.clone(), reserved))),
        },
    ));
    if let Some(extra) = extra {
        extra(&mut server);
    }
    tracing::info!(
        listen = ?listen,
        tls_listen = ?bound.tls_listen,
        upgrade,
        "sessiongate starting"
    );
    server.run_forever();
}

const WATCH_EVERY: Duration = Duration::from_secs(1);
/// How long tunnels ended at shutdown get to write their Close frames.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);

struct Lifecycle {
    gate: Arc<Gate>,
    grace: Duration,
    health: Arc<Health>,
    redis: Option<Arc<RedisStore>>,
    /// `run --ready-file`: where to report the bound addresses, and the
    /// port reservations to end then.
    ready: std::sync::Mutex<Option<(PathBuf, crate::bind::Addresses, crate::bind::Reserved)>>,
}

#[async_trait]
impl BackgroundService for Lifecycle {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if let Some(r) = &self.redis {
            r.start_events();
        }
        // Services start together; by now the listeners are up.
        crate::listeners::notify_systemd();
        let ready = self.ready.lock().ok().and_then(|mut r| r.take());
        if let Some((path, addrs, reserved)) = ready {
            tokio::spawn(async move {
                if let Err(e) = crate::bind::report_ready(&path, &addrs, reserved).await {
                    tracing::error!(error = %e, "no ready file");
                }
            });
        }
        // SIGQUIT is Pingora's graceful upgrade: the sockets go to the new
        // process, and this one drains.
        let upgrading = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let quit = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::quit()).ok();
        let flag = Arc::clone(&upgrading);
        let quit_task = tokio::spawn(async move {
            if let Some(mut q) = quit {
                q.recv().await;
                flag.store(true, std::sync::atomic::Ordering::Release);
            }
        });
        let tasks = [
            tokio::spawn(Arc::clone(&self.gate).follow_events()),
            tokio::spawn(Arc::clone(&self.health).run(Arc::clone(&self.gate))),
            tokio::spawn(crate::sweeper::run(Arc::clone(&self.gate))),
            tokio::spawn(watch_config(Arc::clone(&self.gate))),
            tokio::spawn(sweep_store(Arc::clone(&self.gate))),
        ];
        let _ = shutdown.changed().await;
        quit_task.abort();
        let deadline = std::time::Instant::now() + self.grace;
        if upgrading.load(std::sync::atomic::Ordering::Acquire) {
            // The new process serves new connections already: requests and
            // WebSockets here get the grace period to end by themselves,
            // less a moment for the Close frames of those still open
            // (Pingora stops the runtimes when the grace period ends).
            tracing::info!("upgraded: draining requests and WebSockets, then closing the rest");
            let drain_until = deadline - self.grace.min(CLOSE_FLUSH);
            while self.gate.requests_in_flight() > 0 && std::time::Instant::now() < drain_until {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        tracing::info!("shutting down: closing WebSockets, draining requests");
        self.gate
            .tunnels
            .end_all(CLOSE_GOING_AWAY, "gate shutting down");
        for t in tasks {
            t.abort();
        }
        // Pingora sleeps out the whole grace period before stopping; exit as
        // soon as the last in-flight request is done instead.
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

const STORE_SWEEP_EVERY: Duration = Duration::from_secs(60);

async fn sweep_store(gate: Arc<Gate>) {
    loop {
        tokio::time::sleep(STORE_SWEEP_EVERY).await;
        if let Err(e) = gate.sweep_store(now_ms()).await {
            tracing::warn!(error = %e, "store sweep failed");
        }
    }
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The files a reload reads that are watched for changes: the config and
/// the TLS certificates and keys it names.
async fn watched(gate: &Gate) -> Vec<(PathBuf, Option<SystemTime>)> {
    let s = gate.settings();
    let mut files = vec![gate.config_path.clone()];
    if let Some(tls) = &s.config.tls {
        for c in &tls.certificates.certs {
            files.push(c.cert_file.clone());
            files.push(c.key_file.clone());
        }
    }
    stamps(files).await
}

/// The files with their modification times, read off the async runtime (file work).
async fn stamps(files: Vec<PathBuf>) -> Vec<(PathBuf, Option<SystemTime>)> {
    let stamp = |files: Vec<PathBuf>| -> Vec<(PathBuf, Option<SystemTime>)> {
        files
            .into_iter()
            .map(|f| {
                let t = mtime(&f);
                (f, t)
            })
            .collect()
    };
    let copy = files.clone();
    // Only a panicking stat could fail the blocking task; then stamp here rather than
    // report every file changed.
    tokio::task::spawn_blocking(move || stamp(files))
        .await
        .unwrap_or_else(|_| stamp(copy))
}

/// Reloads on SIGHUP and when the config file or a certificate changes.
async fn watch_config(gate: Arc<Gate>) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP");
            None
        }
    };
    let mut last = watched(&gate).await;
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
        let now = stamps(last.iter().map(|(f, _)| f.clone()).collect()).await;
        let changed = now != last;
        if by_signal || changed || retry {
            let ok = reload(&gate).await;
            retry = !ok && changed && !by_signal;
            // The new config may name other certificate files. Files already
            // watched keep the stamps read before the load: a write landing
            // while it ran (after the file was read) then differs from them
            // and is reloaded on the next tick, instead of being taken as seen.
            last = if ok {
                watched(&gate)
                    .await
                    .into_iter()
                    .map(|(f, t)| {
                        let before = now.iter().find(|(g, _)| *g == f).map(|(_, b)| *b);
                        (f, before.unwrap_or(t))
                    })
                    .collect()
            } else {
                now
            };
        }
    }
}

/// Publishes each certificate's expiry on `/metrics`.
fn export_cert_expiry(gate: &Gate) {
    let gauge = &gate.metrics.cert_expiry;
    gauge.reset();
    if let Some(tls) = &gate.settings().config.tls {
        for c in &tls.certificates.certs {
            let name = c.names.first().map_or("", String::as_str);
            gauge
                .with_label_values(&[&c.cert_file.display().to_string(), name])
                .set(c.not_after);
        }
    }
}

/// Why a reload keeps the old config.
enum Refused {
    Config(Vec<ConfigError>),
    /// `tls` added or removed, or `clients.proxy_protocol` changed.
    Listeners,
    Settings(SettingsError),
}

/// Reads the config and its files and builds its settings (TLS material included): file
/// and DNS work, run off the async runtime.
fn build_reload(path: &Path, old: &Settings) -> Result<Settings, Refused> {
    let (cfg, users) = load(path).map_err(Refused::Config)?;
    if cfg.tls.is_some() != old.config.tls.is_some()
        || cfg.clients.proxy_protocol != old.config.clients.proxy_protocol
    {
        return Err(Refused::Listeners);
    }
    Settings::new(cfg, users).map_err(Refused::Settings)
}

/// Swaps in a new config, or keeps the old one and logs why; true when the
/// new config is in force.
pub async fn reload(gate: &Gate) -> bool {
    let path = gate.config_path.clone();
    let old = gate.settings();
    let built = tokio::task::spawn_blocking(move || build_reload(&path, &old)).await;
    let outcome = match built {
        Ok(Ok(s)) => {
            gate.swap_settings(s);
            export_cert_expiry(gate);
            tracing::info!(file = %gate.config_path.display(), "config reloaded");
            "ok"
        }
        Ok(Err(Refused::Listeners)) => {
            tracing::error!(
                "config reload rejected: `tls` added or removed, or `clients.proxy_protocol` changed; listeners are set at start; keeping the old config"
            );
            "error"
        }
        Ok(Err(Refused::Settings(e))) => {
            tracing::error!(error = %e, "config reload rejected; keeping the old config");
            "error"
        }
        Ok(Err(Refused::Config(errors))) => {
            for e in &errors {
                tracing::error!("{e}");
            }
            tracing::error!("config reload rejected; keeping the old config");
            "error"
        }
        Err(e) => {
            tracing::error!(error = %e, "config reload failed; keeping the old config");
            "error"
        }
    };
    gate.metrics.reloads.with_label_values(&[outcome]).inc();
    outcome == "ok"
}
