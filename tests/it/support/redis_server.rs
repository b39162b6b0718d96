//! Private `redis-server` processes: one server, one over TLS, a Cluster, a
//! Sentinel set, and the probes tests use on them (replication, subscribers).

use super::*;

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

/// Waits until what `master` holds reached at least one replica: its
/// replication offset now, acknowledged by a replica. (`WAIT` would not do: it
/// only waits for the writes of its own connection, and the gates wrote on
/// theirs, so it returned at once whatever the replica had.) Replication is
/// asynchronous, and a failover test needs its writes there.
pub async fn wait_replicated(master: &Redis) -> bool {
    let con = master
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("master connection");
    let info = |mut con: redis::aio::MultiplexedConnection| async move {
        redis::cmd("INFO")
            .arg("replication")
            .query_async::<String>(&mut con)
            .await
            .ok()
    };
    let Some(target) = info(con.clone())
        .await
        .as_deref()
        .and_then(|i| info_field(i, "master_repl_offset"))
    else {
        return false;
    };
    eventually(Duration::from_secs(10), || {
        let con = con.clone();
        async move {
            let now = info(con).await?;
            // `slave0:ip=…,port=…,state=online,offset=1234,lag=0`
            let acked = now
                .lines()
                .filter(|l| l.starts_with("slave"))
                .filter_map(|l| l.split(',').find_map(|kv| kv.strip_prefix("offset=")))
                .filter_map(|o| o.trim().parse::<u64>().ok())
                .any(|o| o >= target);
            acked.then_some(())
        }
    })
    .await
    .is_some()
}

/// A `name:value` line of `INFO`, as a number.
fn info_field(info: &str, name: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
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
