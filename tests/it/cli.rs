//! The command line, black-box: `check`, `keygen`, `hash-password`,
//! `ticket inspect`, `run` with a bad config, and the `demo` tour.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sessiongate"))
}

fn minimal_yaml(extra_route: &str) -> String {
    format!(
        "listen: [\"127.0.0.1:0\"]\nstore:\n  kind: memory\ntickets:\n  keys:\n    - id: k1\n      secret: {SECRET}\nroutes:\n  - name: r\n    kind: controller\n    path: /r\n    upstreams: [\"127.0.0.1:9\"]\n{extra_route}"
    )
}

#[test]
fn check_accepts_a_good_config() {
    let dir = scratch_dir("cli");
    let f = dir.join("ok.yaml");
    std::fs::write(&f, minimal_yaml("")).unwrap();
    let out = bin().args(["check", "-c"]).arg(&f).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_reports_every_error_with_file_line_and_column() {
    let dir = scratch_dir("cli");
    let f = dir.join("bad.yaml");
    let yaml = "listen: [\"127.0.0.1:1\"]\nstore:\n  kind: memory\ntickets:\n  keys:\n    - id: k1\n      secret: c2hvcnQ\nroutes:\n  - name: a\n    kind: controller\n    path: /a\n    upstreams: [\"127.0.0.1:9\"]\n  - name: a\n    kind: controller\n    path: /b\n    upstreams: [\"127.0.0.1:9\"]\n    auth: public\n    roles: [x]\n";
    std::fs::write(&f, yaml).unwrap();
    let out = bin().args(["check", "-c"]).arg(&f).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines.len() >= 3,
        "short secret, duplicate name, roles on a public route:\n{err}"
    );
    let prefix = format!("{}:", f.display());
    for l in &lines {
        assert!(l.starts_with(&prefix), "{l}");
        let rest = &l[prefix.len()..];
        let mut parts = rest.splitn(3, ':');
        let line: usize = parts.next().unwrap().parse().expect("line number");
        let col: usize = parts.next().unwrap().parse().expect("column number");
        assert!(line >= 1 && col >= 1, "{l}");
    }
    assert!(
        lines.iter().any(|l| l.starts_with(&format!("{prefix}7:"))),
        "secret on line 7:\n{err}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with(&format!("{prefix}13:"))),
        "duplicate name on line 13:\n{err}"
    );
}

#[test]
fn check_locates_unknown_keys() {
    let dir = scratch_dir("cli");
    let f = dir.join("unknown.yaml");
    std::fs::write(&f, minimal_yaml("    colour: blue\n")).unwrap();
    let out = bin().args(["check", "-c"]).arg(&f).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with(&format!("{}:13:5:", f.display())), "{err}");
    assert!(err.contains("colour"), "{err}");
}

#[test]
fn run_with_a_bad_config_exits_64() {
    let dir = scratch_dir("cli");
    let f = dir.join("bad.yaml");
    std::fs::write(&f, "listen: nope\n").unwrap();
    let out = bin().args(["run", "-c"]).arg(&f).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("{}:", f.display())));
}

#[test]
fn keygen_prints_a_256_bit_base64url_secret() {
    let out = bin().arg("keygen").output().unwrap();
    assert!(out.status.success());
    let s = String::from_utf8(out.stdout).unwrap();
    let s = s.trim();
    assert_eq!(s.len(), 43);
    assert!(
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    assert_eq!(sessiongate::ticket::decode_secret(s).unwrap().len(), 32);
    let again = bin().arg("keygen").output().unwrap();
    assert_ne!(String::from_utf8(again.stdout).unwrap().trim(), s);
}

#[test]
fn hash_password_reads_stdin_and_prints_argon2id() {
    let mut child = bin()
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let phc = String::from_utf8(out.stdout).unwrap();
    assert!(phc.starts_with("$argon2id$v=19$"), "{phc}");
    assert!(sessiongate::login::verify_password("s3cret", phc.trim()));
    assert!(!sessiongate::login::verify_password("s3cret\n", phc.trim()));
}

#[test]
fn ticket_inspect_prints_claims_and_verifies_with_a_config() {
    let ring = sessiongate::ticket::KeyRing::new(
        vec![sessiongate::ticket::Key::new(
            "k1",
            sessiongate::ticket::decode_secret(SECRET).unwrap(),
        )],
        "sessiongate".into(),
        5,
    );
    let claims = sessiongate::ticket::Claims {
        iss: "sessiongate".into(),
        sid: "abcdefghijklmnopqrstuv".into(),
        sub: "u-alice".into(),
        name: "Alice".into(),
        roles: vec!["player".into()],
        vars: Default::default(),
        iat: 1_700_000_000,
        exp: 1_700_003_600,
    };
    let t = ring.sign(&claims).unwrap();
    let out = bin().args(["ticket", "inspect", &t]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("\"kid\": \"k1\"") && text.contains("\"sub\": \"u-alice\""),
        "{text}"
    );

    let dir = scratch_dir("cli");
    let f = dir.join("c.yaml");
    std::fs::write(&f, minimal_yaml("")).unwrap();
    let out = bin()
        .args(["ticket", "inspect", &t, "-c"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("signature: valid")
    );

    let mut forged = t.into_bytes();
    let n = forged.len();
    forged[n - 2] = if forged[n - 2] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let out = bin()
        .args(["ticket", "inspect", &forged, "-c"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("signature: INVALID")
    );

    let out = bin()
        .args(["ticket", "inspect", "not-a-ticket"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_the_tour_it_prints() {
    let (listen, admin, h, w) = (free_port(), free_port(), free_port(), free_port());
    let a = |p: u16| format!("127.0.0.1:{p}");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sessiongate"))
        .args([
            "demo",
            "--listen",
            &a(listen),
            "--admin",
            &a(admin),
            "--http-echo",
            &a(h),
            "--ws-echo",
            &a(w),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let gate: std::net::SocketAddr = a(listen).parse().unwrap();
    let login = eventually(Duration::from_secs(20), || async {
        let body = r#"{"username":"demo","password":"demo"}"#;
        let r = http(gate, &format!("POST /_session/login HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())).await.ok()?;
        Some(r)
    })
    .await
    .expect("demo gate up");
    assert_eq!(login.status, 201, "{}", login.text());
    let ticket = login.json()["ticket"].as_str().unwrap().to_owned();
    let r = http(gate, &format!("GET /controller/echo/hello HTTP/1.1\r\nHost: d\r\nAuthorization: Bearer {ticket}\r\n\r\n")).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/hello");
    assert_eq!(
        r.upstream_headers()
            .get("x-session-user")
            .map(String::as_str),
        Some("u-demo")
    );
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{gate}/gateway/chat?ticket={ticket}"))
            .await
            .unwrap();
    ws.send(Message::Text("hi".into())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Text("hi".into())
    );
    let _ = child.start_kill();
    let out = child.wait_with_output().await.unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("/_session/login") && printed.contains("websocat"),
        "{printed}"
    );
}

#[tokio::test]
async fn run_gives_each_port_zero_listener_its_own_port_and_names_it_in_the_ready_file() {
    let dir = scratch_dir("cli-ready");
    let users = users_file(&dir);
    let yaml = Setup::memory()
        .patch(serde_json::json!({"listen": ["127.0.0.1:0", "127.0.0.1:0"]}))
        .text(0, 0, &users);
    let gate = Gate::start_yaml(dir.clone(), &yaml, &[]).await;
    let ready: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("ready.json")).unwrap()).unwrap();
    let listen: Vec<std::net::SocketAddr> =
        serde_json::from_value(ready["listen"].clone()).unwrap();
    let admin: std::net::SocketAddr = serde_json::from_value(ready["admin"].clone()).unwrap();
    assert_eq!(ready["tls_listen"], serde_json::json!([]));
    assert_eq!(listen.len(), 2, "{ready}");
    assert!(listen.iter().all(|a| a.port() != 0), "{ready}");
    assert_ne!(listen[0], listen[1]);
    assert!(!listen.contains(&admin), "{ready}");
    for addr in &listen {
        let r = http(
            *addr,
            "GET /_session/openapi.json HTTP/1.1\r\nHost: gate.test\r\n\r\n",
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{addr}: {}", r.text());
    }
    let health = http(admin, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(health.status, 200);
    drop(gate);

    // `--upgrade` finds the running gate's sockets by address: port 0 names none.
    let upgrade_dir = scratch_dir("cli-upgrade0");
    let users = users_file(&upgrade_dir);
    let f = upgrade_dir.join("sessiongate.yaml");
    let pid_file = upgrade_dir.join("gate.pid");
    let yaml = Setup::memory()
        .server(serde_json::json!({ "pid_file": pid_file }))
        .text(0, 0, &users);
    std::fs::write(&f, yaml).unwrap();
    let out = bin()
        .args(["run", "--upgrade", "-c"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--upgrade needs every listen address to name its port (not 0)"),
        "{err}"
    );
}

#[test]
fn check_locates_yaml_errors_from_the_parser() {
    let dir = scratch_dir("cli");
    let f = dir.join("twice.yaml");
    std::fs::write(&f, minimal_yaml("    kind: gateway\n")).unwrap();
    let out = bin().args(["check", "-c"]).arg(&f).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("{}:13:5: duplicate key `kind`\n", f.display())
    );
}
