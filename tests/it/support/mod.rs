//! Test harness: real processes on loopback, each test its own.
//!
//! `Redis::spawn()` starts a private `redis-server`; `Upstream::http()` /
//! `Upstream::ws()` serve the built-in echo upstreams in the test's runtime
//! (bound to port 0); `Gate::start(&Setup::redis(&redis).routes(..))` runs
//! the real `sessiongate` binary on a config built as data ([`Setup`], JSON
//! merge patches) or, with `Gate::start_yaml`, on a config text of the test's
//! own; it binds port 0, the harness learns its ports from `run --ready-file`
//! and waits until it answers `/healthz`. `standard_gate` is the usual bed of
//! all of these. Everything is killed on drop.
//! Waiting is done by probing readiness, never by fixed sleeps.

#![allow(dead_code)]

pub mod edge;
pub mod recording;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const SECRET: &str = "c2Vzc2lvbmdhdGUtdGVzdC1zZWNyZXQtMzItYnl0ZXMhIQ";
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Retries `f` until it returns `Some` or `deadline` passes.
pub async fn eventually<T, F, Fut>(deadline: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn scratch_dir(tag: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("sg-test-{tag}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

pub struct Redis {
    child: Child,
    pub port: u16,
}

impl Redis {
    pub async fn spawn() -> Redis {
        Self::spawn_free(|_| (Vec::new(), ())).await.0
    }

    pub async fn spawn_on(port: u16) -> Redis {
        Self::spawn_with(port, &[]).await
    }

    /// A redis-server with extra arguments (e.g. `--replicaof 127.0.0.1 P`).
    pub async fn spawn_with(port: u16, extra: &[&str]) -> Redis {
        Self::try_spawn(port, extra)
            .await
            .unwrap_or_else(|| panic!("redis-server exited at start on {port}"))
    }

    /// A redis-server on a free port, with the extra arguments (and whatever
    /// the caller keeps of them) `args(port)` gives. redis-server cannot bind
    /// port 0 and say which port it got, so a port another test took between
    /// the pick and the bind is tried again on a new one.
    pub async fn spawn_free<T>(args: impl Fn(u16) -> (Vec<String>, T)) -> (Redis, T) {
        for _ in 0..5 {
            let port = free_port();
            let (extra, kept) = args(port);
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            if let Some(r) = Self::try_spawn(port, &extra).await {
                return (r, kept);
            }
        }
        panic!("redis-server found no free port in 5 tries");
    }

    /// Starts a redis-server; `None` when it exits at start (its port is taken).
    async fn try_spawn(port: u16, extra: &[&str]) -> Option<Redis> {
        // Its own working directory: a replica's full sync makes the master
        // write dump.rdb to its cwd, and a redis-server started in a folder
        // holding one loads it, so a shared cwd leaks sessions between tests.
        let child = Command::new("redis-server")
            .current_dir(scratch_dir("redis"))
            .args(extra)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (make test installs it)");
        let pid = child.id();
        let mut r = Redis { child, port };
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            // The server that answers must be this one, not another test's
            // that holds the port.
            if is_redis_pid(port, pid).await {
                return Some(r);
            }
            if let Ok(Some(_)) = r.child.try_wait() {
                return None;
            }
            assert!(
                Instant::now() < end,
                "redis-server did not come up on {port}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("redis url")
    }

    pub fn kill(&mut self) {
        // A frozen server takes no SIGKILL-less way out: wake it first.
        self.signal("CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal by name (`STOP` freezes the server, `CONT` thaws it).
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status();
    }
}

/// Whether the server answering on `port` is the process `pid` (`INFO
/// server` names its `process_id`).
async fn is_redis_pid(port: u16, pid: u32) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if s.write_all(b"INFO server\r\n").await.is_err() {
        return false;
    }
    let want = format!("process_id:{pid}\r\n");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(2), async {
        // The reply's last field ends in a blank line of its own.
        while !got.ends_with(b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    });
    let _ = read.await;
    String::from_utf8_lossy(&got).contains(&want)
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A throwaway CA and a server certificate for `127.0.0.1` it signed, made
/// with the `openssl` command.
pub struct TestCerts {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCerts {
    pub fn make(dir: &std::path::Path) -> TestCerts {
        let path = |f: &str| dir.join(f).to_str().expect("utf-8 path").to_owned();
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .expect("write ext.cnf");
        let steps: [&[&str]; 3] = [
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=sessiongate test CA",
                "-keyout",
                &path("ca.key"),
                "-out",
                &path("ca.pem"),
            ],
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                &path("server.key"),
                "-out",
                &path("server.csr"),
            ],
            &[
                "x509",
                "-req",
                "-days",
                "1",
                "-in",
                &path("server.csr"),
                "-CA",
                &path("ca.pem"),
                "-CAkey",
                &path("ca.key"),
                "-CAcreateserial",
                "-extfile",
                &path("ext.cnf"),
                "-out",
                &path("server.pem"),
            ],
        ];
        for args in steps {
            let out = Command::new("openssl")
                .args(args)
                .output()
                .expect("openssl must be installed (make test installs it)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        TestCerts {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        }
    }
}

/// A private redis-server that also listens with TLS, with a [`TestCerts`]
/// server certificate.
pub struct RedisTls {
    pub redis: Redis,
    pub tls_port: u16,
    /// The CA's certificate (PEM).
    pub ca: PathBuf,
    dir: PathBuf,
}

impl RedisTls {
    pub async fn spawn() -> RedisTls {
        let dir = scratch_dir("tls");
        let certs = TestCerts::make(&dir);
        let s = |p: &PathBuf| p.to_str().expect("utf-8 path").to_owned();
        let (cert, key, ca) = (s(&certs.cert), s(&certs.key), s(&certs.ca));
        let (redis, tls_port) = Redis::spawn_free(|_| {
            let tls_port = free_port();
            let args = [
                "--tls-port",
                &tls_port.to_string(),
                "--tls-cert-file",
                &cert,
                "--tls-key-file",
                &key,
                "--tls-ca-cert-file",
                &ca,
                "--tls-auth-clients",
                "no",
            ]
            .map(str::to_owned)
            .into();
            (args, tls_port)
        })
        .await;
        RedisTls {
            redis,
            tls_port,
            ca: certs.ca,
            dir,
        }
    }

    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/0", self.tls_port)
    }
}

impl Drop for RedisTls {
    fn drop(&mut self) {
        self.redis.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private three-node Redis Cluster (masters only), every node on free
/// ports, slots assigned and agreed before `spawn` returns.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
    /// Each node's port and redis-server arguments, to restart it as it was.
    args: Vec<(u16, Vec<String>)>,
    dir: PathBuf,
}

impl RedisCluster {
    /// Three masters, no replicas.
    pub async fn spawn() -> RedisCluster {
        Self::spawn_shaped(3, 0).await
    }

    /// `masters` masters with `replicas_each` replicas each.
    pub async fn spawn_shaped(masters: usize, replicas_each: usize) -> RedisCluster {
        let dir = scratch_dir("cluster");
        let mut c = RedisCluster {
            nodes: Vec::new(),
            args: Vec::new(),
            dir,
        };
        for _ in 0..masters * (1 + replicas_each) {
            let dir = c.dir.clone();
            let (node, args) = Redis::spawn_free(|port| {
                let conf = dir.join(format!("nodes-{port}.conf"));
                let args: Vec<String> = [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    conf.to_str().expect("utf-8 path"),
                    "--cluster-port",
                    &free_port().to_string(),
                    "--cluster-node-timeout",
                    "2000",
                    "--dir",
                    dir.to_str().expect("utf-8 path"),
                ]
                .map(str::to_owned)
                .into();
                (args.clone(), args)
            })
            .await;
            c.args.push((node.port, args));
            c.nodes.push(node);
        }
        let addrs: Vec<String> = c
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args([
                "--cluster-replicas",
                &replicas_each.to_string(),
                "--cluster-yes",
            ])
            .output()
            .expect("redis-cli must be installed (make test installs redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        c.wait_ok().await;
        c
    }

    async fn start_nodes(&mut self) {
        for (port, args) in &self.args {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            self.nodes.push(Redis::spawn_with(*port, &args).await);
        }
    }

    /// Kills every node and starts it again on its port with its cluster
    /// config file: the cluster comes back with its slots, without its data.
    pub async fn restart(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        self.nodes.clear();
        self.start_nodes().await;
        self.wait_ok().await;
    }

    async fn wait_ok(&self) {
        let ok = eventually(Duration::from_secs(30), || async {
            for n in &self.nodes {
                let mut con = n.client().get_multiplexed_async_connection().await.ok()?;
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut con)
                    .await
                    .ok()?;
                if !info.contains("cluster_state:ok") {
                    return None;
                }
            }
            Some(())
        })
        .await;
        assert!(ok.is_some(), "the cluster never reached cluster_state:ok");
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct Upstream {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn http() -> Upstream {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        Upstream {
            addr,
            task: tokio::spawn(sessiongate::echo::serve_http(l)),
        }
    }

    pub async fn ws() -> Upstream {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        Upstream {
            addr,
            task: tokio::spawn(sessiongate::echo::serve_ws(l)),
        }
    }

    /// HTTPS with a [`TestCerts`] certificate: answers each request (then
    /// closes) with `tls:<X-Session-User>`.
    pub async fn https(certs: &TestCerts) -> Upstream {
        let acceptor = tls_acceptor(certs);
        Upstream::custom(move |tcp| {
            let acceptor = acceptor.clone();
            async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(req) = sessiongate::http1::read_request(&mut tls, &READ_LIMITS).await else {
                    return;
                };
                let user = req
                    .head
                    .headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("x-session-user"))
                    .map_or_else(
                        || "-".into(),
                        |(_, v)| String::from_utf8_lossy(v).into_owned(),
                    );
                let body = format!("tls:{user}");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            }
        })
        .await
    }

    /// A WebSocket echo over TLS with a [`TestCerts`] certificate.
    pub async fn wss(certs: &TestCerts) -> Upstream {
        let acceptor = tls_acceptor(certs);
        Upstream::custom(move |tcp| {
            let acceptor = acceptor.clone();
            async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
                    return;
                };
                use futures_util::{SinkExt, StreamExt};
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        return;
                    }
                }
            }
        })
        .await
    }

    /// Accepts connections and never answers.
    pub async fn hanging() -> Upstream {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        Upstream { addr, task }
    }

    /// Serves with a custom per-connection handler.
    pub async fn custom<F, Fut>(f: F) -> Upstream
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(f(s));
            }
        });
        Upstream { addr, task }
    }
}

/// A TLS server side with a [`TestCerts`] certificate.
fn tls_acceptor(certs: &TestCerts) -> tokio_rustls::TlsAcceptor {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let chain = vec![CertificateDer::from_pem_file(&certs.cert).expect("server cert")];
    let key = PrivateKeyDer::from_pem_file(&certs.key).expect("server key");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A users file with `alice`/`wonderland` (player, tier=gold) and
/// `bob`/`builder` (no roles), written as `users.yaml` in `dir`. The hashes
/// are real argon2id PHC strings with tiny parameters (m=8, t=1, p=1), so
/// a test logs in without waiting on the hash; the gate verifies whatever
/// parameters a PHC string names.
pub fn users_file(dir: &std::path::Path) -> PathBuf {
    use std::sync::OnceLock;
    static HASHES: OnceLock<(String, String)> = OnceLock::new();
    let (a, b) = HASHES.get_or_init(|| (cheap_hash("wonderland"), cheap_hash("builder")));
    let p = dir.join("users.yaml");
    std::fs::write(
        &p,
        format!(
            "users:\n  - username: alice\n    password_hash: \"{a}\"\n    id: u-alice\n    name: Alice\n    roles: [player]\n    vars: {{tier: gold}}\n  - username: bob\n    password_hash: \"{b}\"\n    id: u-bob\n    name: Bob\n"
        ),
    )
    .expect("write users");
    p
}

/// `(id, status)` of each session of a `/_session/list` or
/// `/admin/sessions` answer, in its order.
pub fn ids_and_statuses(sessions: &[serde_json::Value]) -> Vec<(String, String)> {
    sessions
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap_or_default().to_owned(),
                s["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// An argon2id PHC string for `password` with tiny parameters (m=8, t=1,
/// p=1): tests log in often and must not wait on the hash.
pub fn cheap_hash(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
    use argon2::{Algorithm, Argon2, Params, Version};
    Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(8, 1, 1, None).expect("argon2 params"),
    )
    .hash_password(password.as_bytes(), &SaltString::generate(&mut OsRng))
    .expect("hash")
    .to_string()
}

/// Stands for the standard users file in a [`Setup`]: [`Setup::text`] puts
/// the path of the one it was given there.
pub const USERS: &str = "{users}";

/// The standard test config as data. A test changes it with merge patches
/// (RFC 7386: objects merge key by key, `null` removes a key, anything else,
/// arrays included, replaces), and [`Setup::text`] writes it as JSON, which
/// the gate reads as the YAML it is.
#[derive(Clone, Debug)]
pub struct Setup {
    config: serde_json::Value,
    /// The users file's text when a test names its own users.
    users: Option<String>,
}

impl Setup {
    pub fn redis(r: &Redis) -> Setup {
        Self::on_store(serde_json::json!({"kind": "redis", "url": r.url(), "timeout": "200ms"}))
    }

    pub fn cluster(c: &RedisCluster) -> Setup {
        Self::on_store(
            serde_json::json!({"kind": "redis", "cluster": c.urls(), "timeout": "500ms"}),
        )
    }

    pub fn memory() -> Setup {
        Self::on_store(serde_json::json!({"kind": "memory"}))
    }

    /// The standard config on `store`: one key, the users file with cheap
    /// rate limits, a short grace period and a placeholder route.
    pub fn on_store(store: serde_json::Value) -> Setup {
        Setup {
            config: serde_json::json!({
                "admin": {"token": ADMIN_TOKEN},
                "store": store,
                "tickets": {
                    "keys": [{"id": "k1", "secret": SECRET}],
                    "cookie": {"name": "sg_ticket", "secure": false},
                },
                "login": {
                    "users_file": USERS,
                    "rate_limit": {"per_ip": "1000/min", "per_user": "1000/min"},
                },
                "server": {"grace_period": "5s", "shutdown_timeout": "2s"},
                "routes": [{
                    "name": "none", "kind": "controller", "path": "/none",
                    "upstreams": ["127.0.0.1:9"], "auth": "public",
                }],
            }),
            users: None,
        }
    }

    /// Replaces the standard users with `(username, password, id, vars as a
    /// YAML flow map)`, hashed cheaply.
    pub fn users(mut self, users: &[(&str, &str, &str, &str)]) -> Setup {
        let mut yaml = String::from("users:\n");
        for (username, password, id, vars) in users {
            yaml.push_str(&format!(
                "  - username: \"{username}\"\n    password_hash: \"{}\"\n    id: \"{id}\"\n    vars: {vars}\n",
                cheap_hash(password)
            ));
        }
        self.users = Some(yaml);
        self
    }

    /// Writes the users file [`USERS`] stands for into `dir`: the test's own
    /// users, else the standard ones.
    pub fn write_users(&self, dir: &std::path::Path) -> PathBuf {
        match &self.users {
            Some(yaml) => {
                let p = dir.join("users.yaml");
                std::fs::write(&p, yaml).expect("write users");
                p
            }
            None => users_file(dir),
        }
    }

    /// Applies a merge patch to the whole config.
    pub fn patch(mut self, patch: serde_json::Value) -> Setup {
        merge_patch(&mut self.config, patch);
        self
    }

    /// Replaces the `store` block.
    pub fn store(mut self, store: serde_json::Value) -> Setup {
        self.config["store"] = store;
        self
    }

    pub fn sessions(self, sessions: serde_json::Value) -> Setup {
        self.patch(serde_json::json!({ "sessions": sessions }))
    }

    /// Replaces the routes (an array of route objects).
    pub fn routes(mut self, routes: serde_json::Value) -> Setup {
        self.config["routes"] = routes;
        self
    }

    pub fn login(self, login: serde_json::Value) -> Setup {
        self.patch(serde_json::json!({ "login": login }))
    }

    pub fn server(self, server: serde_json::Value) -> Setup {
        self.patch(serde_json::json!({ "server": server }))
    }

    /// The config file's text, listening on `listen` and `admin` (0: the gate
    /// picks) unless the config names its own, with `users` for [`USERS`].
    pub fn text(&self, listen: u16, admin: u16, users: &std::path::Path) -> String {
        let mut c = self.config.clone();
        if c.get("listen").is_none() {
            c["listen"] = serde_json::json!([format!("127.0.0.1:{listen}")]);
        }
        if let Some(a) = c.get_mut("admin").and_then(|a| a.as_object_mut()) {
            a.entry("listen")
                .or_insert_with(|| format!("127.0.0.1:{admin}").into());
        }
        if let Some(f) = c.pointer_mut("/login/users_file")
            && f == USERS
        {
            *f = users.display().to_string().into();
        }
        serde_json::to_string_pretty(&c).expect("config as JSON")
    }
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut serde_json::Value, patch: serde_json::Value) {
    let serde_json::Value::Object(patch) = patch else {
        *target = patch;
        return;
    };
    if !target.is_object() {
        *target = serde_json::json!({});
    }
    let Some(t) = target.as_object_mut() else {
        return;
    };
    for (k, v) in patch {
        if v.is_null() {
            t.remove(&k);
        } else {
            merge_patch(t.entry(k).or_insert(serde_json::Value::Null), v);
        }
    }
}

pub struct Gate {
    child: Option<Child>,
    /// The first plain listener (the first TLS one when there is none).
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The TLS listeners, as bound.
    pub tls: Vec<SocketAddr>,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    /// With `clients.proxy_protocol: true` every listener, the admin one
    /// included, wants a PROXY header first: the harness's own admin
    /// requests (readiness, metrics, the admin API) send one.
    admin_prefix: String,
}

impl Gate {
    /// Writes the config and starts the gate; waits until it serves.
    pub async fn start(setup: &Setup) -> Gate {
        Self::start_args(setup, &[]).await
    }

    /// [`Gate::start`] with command-line options before `run`.
    pub async fn start_args(setup: &Setup, args: &[&str]) -> Gate {
        let dir = scratch_dir("gate");
        let users = setup.write_users(&dir);
        Self::start_yaml(dir, &setup.text(0, 0, &users), args).await
    }

    /// Starts the gate on a config of the test's own (port 0 lets the gate
    /// pick its ports) and learns the bound addresses from its ready file.
    pub async fn start_yaml(dir: PathBuf, yaml: &str, args: &[&str]) -> Gate {
        let config = dir.join("sessiongate.yaml");
        std::fs::write(&config, yaml).expect("write config");
        let log = dir.join("gate.log");
        let ready_file = dir.join("ready.json");
        let _ = std::fs::remove_file(&ready_file);
        let logf = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_sessiongate"))
            .args(args)
            .arg("run")
            .arg("-c")
            .arg(&config)
            .arg("--ready-file")
            .arg(&ready_file)
            .env("SESSIONGATE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("spawn sessiongate");
        let mut g = Gate {
            child: Some(child),
            addr: "0.0.0.0:0".parse().expect("addr"),
            admin: "0.0.0.0:0".parse().expect("addr"),
            tls: Vec::new(),
            dir,
            config,
            log,
            admin_prefix: String::new(),
        };
        let ready = g.ready_file(&ready_file).await;
        let addrs = |k: &str| -> Vec<SocketAddr> {
            serde_json::from_value(ready[k].clone()).expect("addresses in the ready file")
        };
        let (listen, tls) = (addrs("listen"), addrs("tls_listen"));
        g.tls = tls.clone();
        // A gate with only TLS listeners is reached on the first of them.
        g.addr = *listen.first().or(tls.first()).expect("a listener");
        g.admin = serde_json::from_value(ready["admin"].clone()).expect("admin address");
        // The config is JSON when a Setup wrote it, else a test's own YAML.
        let proxy_protocol = match serde_json::from_str::<serde_json::Value>(yaml) {
            Ok(v) => v.pointer("/clients/proxy_protocol") == Some(&serde_json::Value::Bool(true)),
            Err(_) => yaml.contains("proxy_protocol: true"),
        };
        if proxy_protocol {
            g.admin_prefix = format!(
                "PROXY TCP4 127.0.0.1 127.0.0.1 40000 {}\r\n",
                g.admin.port()
            );
        }
        g.wait_ready().await;
        g
    }

    /// Waits for `run --ready-file` to appear (written once every listener
    /// accepts connections) and parses it.
    async fn ready_file(&mut self, path: &std::path::Path) -> serde_json::Value {
        let end = Instant::now() + Duration::from_secs(20);
        let exited = loop {
            if let Ok(text) = std::fs::read(path) {
                return serde_json::from_slice(&text).expect("ready file JSON");
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > end {
                break exited;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        panic!(
            "gate wrote no ready file (exit: {exited:?}); log:\n{}",
            self.logs()
        )
    }

    async fn wait_ready(&mut self) {
        let addr = self.admin;
        let probe = format!(
            "{}GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            self.admin_prefix
        );
        let ok = eventually(Duration::from_secs(20), || async {
            let r = http(addr, &probe).await.ok()?;
            (r.status == 200).then_some(())
        })
        .await;
        if ok.is_none() {
            let status = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            panic!(
                "gate did not become ready (exit: {status:?}); log:\n{}",
                self.logs()
            );
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status();
    }

    /// Waits for the process to exit; returns its exit code.
    pub async fn wait_exit(&mut self, deadline: Duration) -> Option<i32> {
        let end = Instant::now() + deadline;
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                return st.code();
            }
            if Instant::now() > end {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn req(&self, raw: &str) -> Resp {
        http(self.addr, raw).await.expect("request to gate")
    }

    pub async fn get(&self, path: &str, ticket: Option<&str>) -> Resp {
        let auth = ticket
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        self.req(&format!(
            "GET {path} HTTP/1.1\r\nHost: gate.test\r\n{auth}\r\n"
        ))
        .await
    }

    pub async fn post(&self, path: &str, ticket: Option<&str>, body: &str) -> Resp {
        self.send("POST", path, ticket, body).await
    }

    pub async fn send(&self, method: &str, path: &str, ticket: Option<&str>, body: &str) -> Resp {
        let auth = ticket
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        self.req(&format!(
            "{method} {path} HTTP/1.1\r\nHost: gate.test\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ))
        .await
    }

    /// Logs in; returns (ticket, whole response).
    /// Asks for a login; the answer may be a refusal.
    pub async fn try_login(&self, user: &str, password: &str) -> Resp {
        self.post(
            "/_session/login",
            None,
            &format!(r#"{{"username":"{user}","password":"{password}"}}"#),
        )
        .await
    }

    /// Logs in, retrying until a login succeeds or `within` passes (a store
    /// coming back, a failover): the ticket.
    pub async fn login_within(
        &self,
        user: &str,
        password: &str,
        within: Duration,
    ) -> Option<String> {
        eventually(within, || async {
            let r = self.try_login(user, password).await;
            (r.status == 201).then(|| r.json()["ticket"].as_str().unwrap_or_default().to_owned())
        })
        .await
    }

    pub async fn login(&self, user: &str, password: &str) -> (String, Resp) {
        let r = self.try_login(user, password).await;
        assert_eq!(r.status, 201, "login failed: {}", r.text());
        let t = r.json()["ticket"].as_str().expect("ticket").to_owned();
        (t, r)
    }

    pub async fn admin_req(&self, method: &str, path: &str) -> Resp {
        http(
            self.admin,
            &format!(
                "{}{method} {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Length: 0\r\n\r\n",
                self.admin_prefix
            ),
        )
        .await
        .expect("admin request")
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The `error` code of a SPEC error body.
    pub fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or("").to_owned()
    }

    /// For echo upstream answers: the headers it received.
    pub fn upstream_headers(&self) -> HashMap<String, String> {
        serde_json::from_value(self.json()["headers"].clone()).unwrap_or_default()
    }
}

/// One raw HTTP/1.1 exchange on a fresh connection (the request is sent as
/// given; `Connection: close` is not added, the response is framed by
/// Content-Length or chunking).
pub async fn http(addr: SocketAddr, raw: &str) -> std::io::Result<Resp> {
    http_bytes(addr, raw.as_bytes()).await
}

pub async fn http_bytes(addr: SocketAddr, raw: &[u8]) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(raw).await?;
    read_response(&mut s).await
}

/// What the harness reads of a response: far more than any test is sent,
/// and no read waits longer than 15 s.
pub const READ_LIMITS: sessiongate::http1::Limits = sessiongate::http1::Limits {
    head: 1 << 20,
    headers: 128,
    body: 64 << 20,
    idle: Some(Duration::from_secs(15)),
};

/// Reads one response, framed by Content-Length, chunking or the close;
/// header values lossily UTF-8.
pub async fn read_response<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<Resp> {
    let r = sessiongate::http1::read_response(s, &READ_LIMITS)
        .await
        .map_err(std::io::Error::other)?;
    let headers = r
        .head
        .headers
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect();
    Ok(Resp {
        status: r.head.status,
        headers,
        body: r.body,
    })
}

/// Standard routes for the proxy tests.
pub fn routes(http: SocketAddr, ws: SocketAddr) -> serde_json::Value {
    let route = |name: &str, path: &str, auth: &str| {
        serde_json::json!({
            "name": name, "kind": "controller", "path": path,
            "upstreams": [http.to_string()], "auth": auth,
        })
    };
    let mut shop = route("shop", "/controller/shop", "required");
    shop["strip_prefix"] = true.into();
    let mut admin = route("admin-area", "/admin", "required");
    admin["roles"] = serde_json::json!(["admin"]);
    serde_json::json!([
        {
            "name": "chat", "kind": "gateway", "path": "/gateway/chat",
            "upstreams": [ws.to_string()], "auth": "required",
            "roles": ["player"], "origins": ["https://app.example.com"],
        },
        shop,
        admin,
        route("public", "/public", "public"),
        route("maybe", "/maybe", "optional"),
    ])
}

impl Gate {
    /// [`Gate::send`] from another client address (any of 127.0.0.0/8), so
    /// the gate sees another client IP.
    pub async fn send_from(
        &self,
        local: std::net::IpAddr,
        method: &str,
        path: &str,
        body: &str,
    ) -> Resp {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.bind(SocketAddr::new(local, 0))
            .expect("bind client address");
        let mut s = sock.connect(self.addr).await.expect("connect to gate");
        let raw = format!(
            "{method} {path} HTTP/1.1\r\nHost: gate.test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(raw.as_bytes()).await.expect("send");
        read_response(&mut s).await.expect("response from gate")
    }
}

/// The usual bed for a test: a private redis-server, the echo upstreams and
/// a gate in front of them on the standard [`routes`], with `sessions` as its
/// sessions block.
pub async fn standard_gate(sessions: serde_json::Value) -> (Redis, Upstream, Upstream, Gate) {
    let redis = Redis::spawn().await;
    let http = Upstream::http().await;
    let ws = Upstream::ws().await;
    let setup = Setup::redis(&redis)
        .sessions(sessions)
        .routes(routes(http.addr, ws.addr));
    let gate = Gate::start(&setup).await;
    (redis, http, ws, gate)
}

/// A master, one replica of it, and a Sentinel that already knows the
/// replica (until it has seen one, a Sentinel cannot promote it).
pub struct SentinelSet {
    pub master: Redis,
    pub replica: Redis,
    pub sentinel: Redis,
    /// A connection to the Sentinel, to clone per command.
    pub con: redis::aio::MultiplexedConnection,
}

impl SentinelSet {
    pub async fn spawn() -> SentinelSet {
        let master = Redis::spawn().await;
        let master_port = master.port.to_string();
        let (replica, ()) = Redis::spawn_free(|_| {
            let args = ["--replicaof", "127.0.0.1", &master_port].map(str::to_owned);
            (args.into(), ())
        })
        .await;
        let sentinel = sentinel(master.port).await;
        let con = sentinel
            .client()
            .get_multiplexed_async_connection()
            .await
            .expect("sentinel connection");
        let known = eventually(Duration::from_secs(20), || {
            let mut con = con.clone();
            async move {
                let replicas: Vec<redis::Value> = redis::cmd("SENTINEL")
                    .arg("REPLICAS")
                    .arg("mymaster")
                    .query_async(&mut con)
                    .await
                    .ok()?;
                (!replicas.is_empty()).then_some(())
            }
        })
        .await;
        assert!(known.is_some(), "sentinel never saw the replica");
        SentinelSet {
            master,
            replica,
            sentinel,
            con,
        }
    }

    /// The `store` of a gate that finds the master through the Sentinel.
    pub fn store(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "redis",
            "sentinel": {
                "master": "mymaster",
                "nodes": [format!("redis://127.0.0.1:{}", self.sentinel.port)],
            },
            "timeout": "300ms",
        })
    }

    /// The port the Sentinel names as the master now.
    pub async fn master_port(&self) -> Option<String> {
        let mut con = self.con.clone();
        let addr: (String, String) = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg("mymaster")
            .query_async(&mut con)
            .await
            .ok()?;
        Some(addr.1)
    }
}

/// Waits until what `master` holds reached at least one replica (`WAIT 1`):
/// replication is asynchronous, and a failover test needs its writes there.
pub async fn wait_replicated(master: &Redis) -> bool {
    let con = master
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("master connection");
    eventually(Duration::from_secs(10), || {
        let mut con = con.clone();
        async move {
            let n: i64 = redis::cmd("WAIT")
                .arg(1)
                .arg(200)
                .query_async(&mut con)
                .await
                .ok()?;
            (n >= 1).then_some(())
        }
    })
    .await
    .is_some()
}

/// A Redis Sentinel watching `master` (as `mymaster`), quick to act: 1 s to
/// call a master down, quorum 1.
pub async fn sentinel(master: u16) -> Redis {
    let dir = scratch_dir("sentinel");
    let conf = dir.join("sentinel.conf");
    let conf = conf.display().to_string();
    Redis::spawn_free(|_| {
        // A Sentinel rewrites its config file: a fresh one per try.
        std::fs::write(
            &conf,
            format!(
                "sentinel monitor mymaster 127.0.0.1 {master} 1\nsentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 3000\n"
            ),
        )
        .expect("sentinel conf");
        (vec![conf.clone(), "--sentinel".to_owned()], ())
    })
    .await
    .0
}

/// A WebSocket client of the gate's `/gateway/chat` (the [`routes`] gateway).
pub type ChatWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `/gateway/chat` on `gate` with `ticket` as a bearer token.
pub async fn open_chat(gate: &Gate, ticket: &str) -> ChatWs {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{}/gateway/chat", gate.addr)
        .into_client_request()
        .expect("ws url");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {ticket}").parse().expect("header"),
    );
    req.headers_mut()
        .insert("origin", "https://app.example.com".parse().expect("header"));
    tokio_tungstenite::connect_async(req)
        .await
        .expect("WebSocket handshake")
        .0
}

/// The Close frame's code and reason, if one arrives within `within`.
pub async fn close_of(ws: &mut ChatWs, within: Duration) -> Option<(u16, String)> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    tokio::time::timeout(within, async {
        while let Some(m) = ws.next().await {
            match m {
                Ok(Message::Close(Some(f))) => {
                    return Some((u16::from(f.code), f.reason.to_string()));
                }
                Ok(Message::Close(None)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
}

/// How many subscribers `channel` has on the server behind `client`.
pub async fn subscribers(client: &redis::Client, channel: &str) -> Option<i64> {
    let mut con = client.get_multiplexed_async_connection().await.ok()?;
    let (_, n): (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(&mut con)
        .await
        .ok()?;
    Some(n)
}
