//! The real `sessiongate` binary as a test drives it: started on port 0, its
//! ports learnt from `--ready-file`, requests and answers over raw TCP, and
//! the WebSocket chat client of the standard gateway route.

use super::*;

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
            (r.status == 201).then(|| {
                r.json()["ticket"]
                    .as_str()
                    .expect("a 201 login carries a ticket")
                    .to_owned()
            })
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
