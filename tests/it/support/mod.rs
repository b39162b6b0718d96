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
//!
//! One file a part: `redis_server` (Redis, TLS, Cluster, Sentinel), `certs`
//! (a throwaway CA), `upstream`, `setup` (the config as data), `gate` (the
//! binary and raw HTTP/1 requests to it), `recording` (an upstream that keeps
//! raw heads) and `edge` (TLS, HTTP/2 and PROXY-protocol clients).

#![allow(dead_code)]

pub mod edge;
pub mod recording;

mod certs;
mod gate;
mod redis_server;
mod setup;
mod upstream;

pub use certs::*;
pub use gate::*;
pub use redis_server::*;
pub use setup::*;
pub use upstream::*;

// What the parts share; each takes it with `use super::*`.
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
