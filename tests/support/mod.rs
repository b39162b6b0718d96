//! Test harness: real processes on free loopback ports, each test its own.
//!
//! `Redis::spawn()` starts a private `redis-server`; `Upstream::http()` /
//! `Upstream::ws()` serve the built-in echo upstreams in the test's runtime;
//! `Gate::start(&Setup::redis(&redis).routes(..))` (or `Gate::start_yaml` for
//! a config of the test's own) runs the real `sessiongate` binary and waits
//! until it answers `/healthz` and accepts connections. Everything is killed
//! on drop.
//! Waiting is done by probing readiness, never by fixed sleeps.

#![allow(dead_code)]

pub mod edge;

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
    let d = std::env::temp_dir().join(format!(
        "sg-test-{tag}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

pub struct Redis {
    child: Child,
    pub port: u16,
}

impl Redis {
    pub async fn spawn() -> Redis {
        Self::spawn_on(free_port()).await
    }

    pub async fn spawn_on(port: u16) -> Redis {
        Self::spawn_with(port, &[]).await
    }

    /// A redis-server with extra arguments (e.g. `--replicaof 127.0.0.1 P`).
    pub async fn spawn_with(port: u16, extra: &[&str]) -> Redis {
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
        let r = Redis { child, port };
        let ok = eventually(Duration::from_secs(10), || async {
            let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
            s.write_all(b"PING\r\n").await.ok()?;
            let mut buf = [0u8; 7];
            s.read_exact(&mut buf).await.ok()?;
            (&buf == b"+PONG\r\n").then_some(())
        })
        .await;
        assert!(ok.is_some(), "redis-server did not come up on {port}");
        r
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
        let tls_port = free_port().to_string();
        let s = |p: &PathBuf| p.to_str().expect("utf-8 path").to_owned();
        let (cert, key, ca) = (s(&certs.cert), s(&certs.key), s(&certs.ca));
        let args = [
            "--tls-port",
            &tls_port,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
        ];
        let redis = Redis::spawn_with(free_port(), &args).await;
        RedisTls {
            redis,
            tls_port: tls_port.parse().expect("port"),
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
        let mut args = Vec::new();
        for _ in 0..masters * (1 + replicas_each) {
            let port = free_port();
            let conf = dir.join(format!("nodes-{port}.conf"));
            let node: Vec<String> = [
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
            args.push((port, node));
        }
        let mut c = RedisCluster {
            nodes: Vec::new(),
            args,
            dir,
        };
        c.start_nodes().await;
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
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let user = head
                    .lines()
                    .find_map(|l| l.strip_prefix("x-session-user: "))
                    .unwrap_or("-")
                    .to_owned();
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
    use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
    use argon2::{Algorithm, Argon2, Params, Version};
    use std::sync::OnceLock;
    static HASHES: OnceLock<(String, String)> = OnceLock::new();
    let (a, b) = HASHES.get_or_init(|| {
        let argon = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8, 1, 1, None).expect("argon2 params"),
        );
        let hash = |pw: &str| {
            argon
                .hash_password(pw.as_bytes(), &SaltString::generate(&mut OsRng))
                .expect("hash")
                .to_string()
        };
        (hash("wonderland"), hash("builder"))
    });
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

/// Options for the standard test config.
pub struct Setup {
    pub store: String,
    pub sessions: String,
    pub routes: String,
    pub login_extra: String,
    pub extra: String,
}

impl Setup {
    pub fn redis(r: &Redis) -> Setup {
        Setup {
            store: format!(
                "store:\n  kind: redis\n  url: {}\n  timeout: 200ms\n",
                r.url()
            ),
            sessions: String::new(),
            routes: String::new(),
            login_extra: String::new(),
            extra: String::new(),
        }
    }

    pub fn cluster(c: &RedisCluster) -> Setup {
        let nodes: Vec<String> = c.urls().iter().map(|u| format!("\"{u}\"")).collect();
        Setup {
            store: format!(
                "store:\n  kind: redis\n  cluster: [{}]\n  timeout: 500ms\n",
                nodes.join(", ")
            ),
            sessions: String::new(),
            routes: String::new(),
            login_extra: String::new(),
            extra: String::new(),
        }
    }

    pub fn memory() -> Setup {
        Setup {
            store: "store:\n  kind: memory\n".into(),
            sessions: String::new(),
            routes: String::new(),
            login_extra: String::new(),
            extra: String::new(),
        }
    }

    pub fn sessions(mut self, yaml: &str) -> Setup {
        self.sessions = yaml.to_owned();
        self
    }

    /// Route entries (each starting with `  - name:`).
    pub fn routes(mut self, yaml: &str) -> Setup {
        self.routes = yaml.to_owned();
        self
    }

    pub fn login_extra(mut self, yaml: &str) -> Setup {
        self.login_extra = yaml.to_owned();
        self
    }

    pub fn extra(mut self, yaml: &str) -> Setup {
        self.extra = yaml.to_owned();
        self
    }

    pub fn yaml(&self, listen: u16, admin: u16, users: &std::path::Path) -> String {
        format!(
            "listen: [\"127.0.0.1:{listen}\"]\nadmin:\n  listen: \"127.0.0.1:{admin}\"\n  token: {ADMIN_TOKEN}\n{store}tickets:\n  keys:\n    - id: k1\n      secret: {SECRET}\n  cookie: {{name: sg_ticket, secure: false}}\n{sessions}login:\n  users_file: {users}\n  rate_limit: {{per_ip: 1000/min, per_user: 1000/min}}\n{login_extra}server:\n  grace_period: 5s\n  shutdown_timeout: 2s\n{extra}routes:\n{routes}",
            store = self.store,
            sessions = if self.sessions.is_empty() {
                String::new()
            } else {
                format!("sessions:\n{}", self.sessions)
            },
            users = users.display(),
            login_extra = self.login_extra,
            extra = self.extra,
            routes = if self.routes.is_empty() {
                "  - name: none\n    kind: controller\n    path: /none\n    upstreams: [\"127.0.0.1:9\"]\n    auth: public\n".to_owned()
            } else {
                self.routes.clone()
            },
        )
    }
}

pub struct Gate {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
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
        let dir = scratch_dir("gate");
        let users = users_file(&dir);
        let (listen, admin) = (free_port(), free_port());
        let yaml = setup.yaml(listen, admin, &users);
        Self::start_yaml(dir, &yaml, listen, admin, &[]).await
    }

    pub async fn start_yaml(
        dir: PathBuf,
        yaml: &str,
        listen: u16,
        admin: u16,
        args: &[&str],
    ) -> Gate {
        let config = dir.join("sessiongate.yaml");
        std::fs::write(&config, yaml).expect("write config");
        let log = dir.join("gate.log");
        let logf = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_sessiongate"))
            .args(args)
            .arg("run")
            .arg("-c")
            .arg(&config)
            .env("SESSIONGATE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("spawn sessiongate");
        let mut g = Gate {
            child: Some(child),
            addr: format!("127.0.0.1:{listen}").parse().expect("addr"),
            admin: format!("127.0.0.1:{admin}").parse().expect("addr"),
            dir,
            config,
            log,
            admin_prefix: if yaml.contains("proxy_protocol: true") {
                format!("PROXY TCP4 127.0.0.1 127.0.0.1 40000 {admin}\r\n")
            } else {
                String::new()
            },
        };
        g.wait_ready().await;
        g
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
        let gate = self.addr;
        eventually(Duration::from_secs(10), || async {
            TcpStream::connect(gate).await.ok().map(|_| ())
        })
        .await
        .expect("gate listener up");
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
pub fn routes(http: SocketAddr, ws: SocketAddr) -> String {
    format!(
        r#"  - name: chat
    kind: gateway
    path: /gateway/chat
    upstreams: ["{ws}"]
    auth: required
    roles: [player]
    origins: ["https://app.example.com"]
  - name: shop
    kind: controller
    path: /controller/shop
    strip_prefix: true
    upstreams: ["{http}"]
    auth: required
  - name: admin-area
    kind: controller
    path: /admin
    upstreams: ["{http}"]
    auth: required
    roles: [admin]
  - name: public
    kind: controller
    path: /public
    upstreams: ["{http}"]
    auth: public
  - name: maybe
    kind: controller
    path: /maybe
    upstreams: ["{http}"]
    auth: optional
"#
    )
}

/// The same file as [`users_file`], whose hashes are now cheap too; kept
/// for the tests that name `{cheap_users}` in [`Gate::start_with_login`].
pub fn cheap_users_file(dir: &std::path::Path) -> PathBuf {
    users_file(dir)
}

impl Gate {
    /// Like [`Gate::start`], with the lines under `login:` replaced by
    /// `login` (each indented two spaces), for a delegate or low rate limits.
    /// In `login`, `{users}` (or its older name `{cheap_users}`) stands for
    /// the standard users file.
    pub async fn start_with_login(setup: &Setup, login: &str) -> Gate {
        let dir = scratch_dir("gate");
        let users = users_file(&dir);
        let (listen, admin) = (free_port(), free_port());
        let yaml = setup.yaml(listen, admin, &users);
        let standard = format!(
            "login:\n  users_file: {}\n  rate_limit: {{per_ip: 1000/min, per_user: 1000/min}}\n",
            users.display()
        );
        assert!(
            yaml.contains(&standard),
            "the standard login block changed; update start_with_login:\n{yaml}"
        );
        let login = login
            .replace("{users}", &users.display().to_string())
            .replace("{cheap_users}", &users.display().to_string());
        let yaml = yaml.replacen(&standard, &format!("login:\n{login}"), 1);
        Self::start_yaml(dir, &yaml, listen, admin, &[]).await
    }

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
        let replica =
            Redis::spawn_with(free_port(), &["--replicaof", "127.0.0.1", &master_port]).await;
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

    /// The `store:` block of a gate that finds the master through the Sentinel.
    pub fn store_yaml(&self) -> String {
        format!(
            "store:\n  kind: redis\n  sentinel: {{master: mymaster, nodes: [\"redis://127.0.0.1:{}\"]}}\n  timeout: 300ms\n",
            self.sentinel.port
        )
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
    let port = free_port();
    let conf = dir.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "sentinel monitor mymaster 127.0.0.1 {master} 1\nsentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 3000\n"
        ),
    )
    .expect("sentinel conf");
    let conf = conf.display().to_string();
    Redis::spawn_with(port, &[conf.as_str(), "--sentinel"]).await
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
