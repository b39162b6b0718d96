//! Ticket flood for sessiongate's verified-ticket cache: sends N requests, each with a
//! distinct valid ticket of one live session (minted here with the gate's key, each with its
//! own `iat` and a few hundred bytes of vars, as a client refreshing often would hold), and
//! reports, per window of requests, the rate, latency percentiles and the gate's RSS. A cache
//! bounded by entries would grow with the flood; one bounded by bytes stays flat, and its
//! evictions must not show as a latency cliff.
//!
//! ```text
//! target/release/examples/ticket_flood --url http://127.0.0.1:6090/controller/echo/static \
//!     --ticket "$T" --requests 1000000 --gate-pid "$(pgrep -n sessiongate)"
//! ```
//!
//! The signing key comes from `SESSIONGATE_KEY` (base64url) with key id `--kid`; the session's
//! claims are copied from `--ticket`, a ticket the gate issued. Prints one
//! `FLOODRESULT key=value ...` line at the end for scripts.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use clap::Parser;
use sessiongate::ticket::{Claims, Key, KeyRing};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

#[derive(Parser)]
#[command(about = "Flood a ticket-checked route with distinct valid tickets")]
struct Args {
    /// A ticket-checked URL on the gate (http://127.0.0.1:PORT/PATH).
    #[arg(long)]
    url: String,
    /// A ticket the gate issued: its session's claims are reused.
    #[arg(long)]
    ticket: String,
    /// Key id of SESSIONGATE_KEY in the gate's config.
    #[arg(long, default_value = "lt1")]
    kid: String,
    #[arg(long, default_value_t = 1_000_000)]
    requests: u64,
    #[arg(short = 'c', long, default_value_t = 32)]
    connections: usize,
    /// Requests per reported window.
    #[arg(long, default_value_t = 100_000)]
    window: u64,
    /// The gate's PID, for its RSS from /proc.
    #[arg(long)]
    gate_pid: Option<u32>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("ticket_flood: {e}");
            ExitCode::from(2)
        }
    }
}

/// What the windows share: latencies of the current window and counters.
struct Stats {
    window_us: Mutex<Vec<u32>>,
    sent: AtomicU64,
    failed: AtomicU64,
}

async fn run(args: Args) -> Result<bool, String> {
    let secret = std::env::var("SESSIONGATE_KEY").map_err(|_| "SESSIONGATE_KEY is not set")?;
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(secret.trim_end_matches('='))
        .map_err(|e| format!("SESSIONGATE_KEY: {e}"))?;
    let payload = args
        .ticket
        .split('.')
        .nth(1)
        .ok_or("--ticket is not a JWT")?;
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|e| format!("--ticket: {e}"))?;
    let base: Claims =
        serde_json::from_slice(&payload).map_err(|e| format!("--ticket claims: {e}"))?;
    let ring = Arc::new(KeyRing::new(
        vec![Key::new(args.kid.clone(), secret)],
        base.iss.clone(),
        5,
    ));
    let rest = args
        .url
        .strip_prefix("http://")
        .ok_or("--url must be http://")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let (host, port) = authority.rsplit_once(':').ok_or("--url needs a port")?;
    if !(host.starts_with("127.") || host == "localhost") {
        return Err("--url must be a loopback address".into());
    }
    let addr = format!("{host}:{port}");

    let stats = Arc::new(Stats {
        window_us: Mutex::new(Vec::with_capacity(args.window as usize)),
        sent: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let next = Arc::new(AtomicU64::new(0));
    let now_secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let rss_start = args.gate_pid.and_then(rss_kib);
    println!(
        "{:>10} {:>9} {:>8} {:>8} {:>8} {:>10}",
        "requests", "req/s", "p50 ms", "p99 ms", "max ms", "gate MiB"
    );
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.connections {
        let (ring, base, stats, next) = (
            Arc::clone(&ring),
            base.clone(),
            Arc::clone(&stats),
            Arc::clone(&next),
        );
        let (addr, path, total) = (addr.clone(), path.to_owned(), args.requests);
        workers.push(tokio::spawn(async move {
            let mut con: Option<BufReader<TcpStream>> = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return;
                }
                // Distinct text per request: its own iat (in the past) and a var naming it.
                let mut c = base.clone();
                c.iat = now_secs.saturating_sub(i % 86_400);
                c.vars
                    .insert("flood".into(), format!("{i:020}-{}", "x".repeat(300)));
                let Ok(ticket) = ring.sign(&c) else {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let t0 = Instant::now();
                let ok = match con.as_mut() {
                    Some(s) => request(s, &path, &ticket).await,
                    None => false,
                };
                let ok = ok || {
                    // (Re)connect once and retry: a kept-alive connection may have been closed.
                    con = TcpStream::connect(&addr).await.ok().map(BufReader::new);
                    match con.as_mut() {
                        Some(s) => request(s, &path, &ticket).await,
                        None => false,
                    }
                };
                if !ok {
                    con = None;
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                }
                let us = u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX);
                stats.window_us.lock().await.push(us);
                stats.sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    let mut reported = 0u64;
    let mut last = Instant::now();
    let mut worst_p99 = 0.0f64;
    let mut first_p99 = None;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let sent = stats.sent.load(Ordering::Relaxed);
        let done = sent >= args.requests || workers.iter().all(|w| w.is_finished());
        if sent - reported >= args.window || (done && sent > reported) {
            let mut lat = std::mem::take(&mut *stats.window_us.lock().await);
            lat.sort_unstable();
            let pick = |p: f64| {
                lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
                    .map_or(0.0, |us| f64::from(*us) / 1000.0)
            };
            let rate = (sent - reported) as f64 / last.elapsed().as_secs_f64();
            let p99 = pick(0.99);
            first_p99.get_or_insert(p99);
            worst_p99 = worst_p99.max(p99);
            println!(
                "{sent:>10} {rate:>9.0} {:>8.2} {p99:>8.2} {:>8.2} {:>10}",
                pick(0.5),
                lat.last().map_or(0.0, |us| f64::from(*us) / 1000.0),
                args.gate_pid
                    .and_then(rss_kib)
                    .map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0))
            );
            reported = sent;
            last = Instant::now();
        }
        if done {
            break;
        }
    }
    let failed = stats.failed.load(Ordering::Relaxed);
    let hwm = args.gate_pid.and_then(hwm_kib);
    println!(
        "FLOODRESULT requests={reported} failed={failed} seconds={:.1} rss_start_kib={} rss_peak_kib={} first_p99_ms={:.2} worst_p99_ms={worst_p99:.2}",
        started.elapsed().as_secs_f64(),
        rss_start.unwrap_or(0),
        hwm.unwrap_or(0),
        first_p99.unwrap_or(0.0),
    );
    Ok(failed == 0)
}

/// One keep-alive GET; true on a 200 read to its end.
async fn request(s: &mut BufReader<TcpStream>, path: &str, ticket: &str) -> bool {
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: flood\r\nAuthorization: Bearer {ticket}\r\n\r\n");
    if s.get_mut().write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut line = String::new();
    if s.read_line(&mut line).await.unwrap_or(0) == 0 {
        return false;
    }
    let ok = line.split_whitespace().nth(1) == Some("200");
    let mut len = 0usize;
    loop {
        line.clear();
        if s.read_line(&mut line).await.unwrap_or(0) == 0 {
            return false;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; len];
    ok && s.read_exact(&mut body).await.is_ok()
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

fn hwm_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}
