//! WebSocket load for sessiongate: opens N authenticated connections through a gateway route
//! (ticket in `?ticket=`, tickets read from a file and used round robin), runs M echo round
//! trips on each, optionally holds them open and idle, and prints a summary table.
//!
//! One process holds one socket per connection; the open-files cap (20,000 here) bounds it, so
//! spread larger runs over several processes (`deploy/loadtest/run_ws.sh` does that).
//!
//! ```text
//! cargo build --release --example ws_load
//! target/release/examples/ws_load --url ws://127.0.0.1:6090/gateway/chat \
//!     --tickets tickets.txt --connections 1000 --round-trips 10 --gate-pid "$(pgrep -n sessiongate)"
//! ```
//!
//! Besides the table it prints one `RESULT key=value ...` line for scripts, and `ready: N open`
//! on stderr once every connection has finished its round trips (wrappers wait for it before
//! they sample memory).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
#[command(about = "Open N authenticated WebSockets through sessiongate and time echo round trips")]
struct Args {
    /// Gateway route URL; `ticket=...` is appended to its query.
    #[arg(long, default_value = "ws://127.0.0.1:6090/gateway/chat")]
    url: String,
    /// File with one ticket per line (deploy/loadtest/login_users.sh writes it).
    #[arg(long)]
    tickets: PathBuf,
    /// Concurrent connections to open and keep.
    #[arg(short = 'c', long, default_value_t = 100)]
    connections: usize,
    /// Echo round trips per connection, one after another.
    #[arg(short = 'm', long, default_value_t = 10)]
    round_trips: usize,
    /// Bytes per message.
    #[arg(long, default_value_t = 32)]
    message_size: usize,
    /// Handshakes in flight at once, so the gate's accept queue is not flooded.
    #[arg(long, default_value_t = 64)]
    open_concurrency: usize,
    /// After the round trips, keep every connection open and idle this many seconds
    /// (SIGTERM or Ctrl-C ends the hold early).
    #[arg(long, default_value_t = 0)]
    hold: u64,
    /// Start the round-robin over tickets here (give each process its own offset).
    #[arg(long, default_value_t = 0)]
    ticket_offset: usize,
    /// Seconds allowed for one handshake or one round trip.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// The gate's PID: its RSS is read from /proc before and after.
    #[arg(long)]
    gate_pid: Option<u32>,
    /// Name shown in the table (useful with several processes).
    #[arg(long, default_value = "ws_load")]
    label: String,
    /// While held, write one line per connection the gate ends:
    /// `<session id> <close code, 0 if lost without one> <ms since the epoch>`
    /// (revocation benchmarks time the gate's closes against status changes).
    #[arg(long)]
    closes: Option<PathBuf>,
    /// End the hold as soon as every connection has been closed by the gate.
    #[arg(long)]
    until_closed: bool,
}

/// A Close frame the gate sent while a connection was held.
struct Closed {
    sid: String,
    code: u16,
    at_ms: u128,
}

/// The `sid` claim of a ticket, read without verifying it (the gate does that).
fn sid_of(ticket: &str) -> String {
    use base64::Engine as _;
    ticket
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["sid"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// What one connection reports once its round trips are done (or it failed).
enum Report {
    Opened {
        rtts_us: Vec<u32>,
        failed_trips: usize,
    },
    Failed(String),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("ws_load: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<bool, String> {
    let tickets = read_tickets(&args.tickets)?;
    let timeout = Duration::from_secs(args.timeout.max(1));
    let sep = if args.url.contains('?') { '&' } else { '?' };
    let rss_before = args.gate_pid.and_then(proc_status);

    let gate = Arc::new(Semaphore::new(args.open_concurrency.max(1)));
    let (report_tx, mut reports) = mpsc::unbounded_channel();
    let (release_tx, release_rx) = watch::channel(false);
    let closed_early = Arc::new(AtomicUsize::new(0));
    let (closes_tx, mut closes_rx) = mpsc::unbounded_channel::<Closed>();
    let payload = "x".repeat(args.message_size);
    let started = Instant::now();

    let mut tasks = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let ticket = &tickets[(i + args.ticket_offset) % tickets.len()];
        let conn = Conn {
            sid: sid_of(ticket),
            closes: closes_tx.clone(),
            url: format!("{}{sep}ticket={ticket}", args.url),
            payload: payload.clone(),
            round_trips: args.round_trips,
            timeout,
        };
        tasks.push(tokio::spawn(conn.run(
            Arc::clone(&gate),
            report_tx.clone(),
            release_rx.clone(),
            Arc::clone(&closed_early),
        )));
    }
    drop(report_tx);
    drop(closes_tx);

    let mut opened = 0usize;
    let mut failures: Vec<String> = Vec::new();
    let mut rtts: Vec<u32> = Vec::with_capacity(args.connections * args.round_trips);
    let mut failed_trips = 0usize;
    // Counted, not drained to the end: every task keeps its sender while it holds its connection.
    for _ in 0..args.connections {
        let Some(r) = reports.recv().await else { break };
        match r {
            Report::Opened {
                rtts_us,
                failed_trips: f,
            } => {
                opened += 1;
                failed_trips += f;
                rtts.extend(rtts_us);
            }
            Report::Failed(why) => failures.push(why),
        }
    }
    let open_time = started.elapsed();
    eprintln!("ready: {opened} open");
    // Sampled while every connection is still open: that is the memory the gate needs for them.
    let rss_after = args.gate_pid.and_then(proc_status);

    if args.hold > 0 && opened > 0 {
        let all_closed = async {
            if !args.until_closed {
                return std::future::pending().await;
            }
            while closed_early.load(Ordering::Relaxed) < opened {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::select! {
            () = hold(Duration::from_secs(args.hold)) => {}
            () = all_closed => {}
        }
    }
    let _ = release_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(timeout, t).await;
    }

    if let Some(path) = &args.closes {
        let mut out = String::new();
        while let Ok(c) = closes_rx.try_recv() {
            out.push_str(&format!("{} {} {}\n", c.sid, c.code, c.at_ms));
        }
        std::fs::write(path, out).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }

    rtts.sort_unstable();
    let summary = Summary {
        args: &args,
        opened,
        failures: &failures,
        closed_early: closed_early.load(Ordering::Relaxed),
        rtts: &rtts,
        failed_trips,
        open_time,
        rss_before,
        rss_after,
    };
    summary.print();
    Ok(failures.is_empty() && failed_trips == 0 && summary.closed_early == 0)
}

fn read_tickets(path: &PathBuf) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read tickets from {}: {e}", path.display()))?;
    let tickets: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if tickets.is_empty() {
        return Err(format!("no tickets in {}", path.display()));
    }
    Ok(tickets)
}

/// Waits `d`, or less if the process is asked to stop: the connections are then closed
/// cleanly and the summary still printed.
async fn hold(d: Duration) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        tokio::time::sleep(d).await;
        return;
    };
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

struct Conn {
    sid: String,
    closes: mpsc::UnboundedSender<Closed>,
    url: String,
    payload: String,
    round_trips: usize,
    timeout: Duration,
}

impl Conn {
    async fn run(
        self,
        gate: Arc<Semaphore>,
        reports: mpsc::UnboundedSender<Report>,
        mut release: watch::Receiver<bool>,
        closed_early: Arc<AtomicUsize>,
    ) {
        let handshake = async {
            // Held for the handshake only: it paces opening, not holding.
            let _permit = gate.acquire().await.map_err(|e| e.to_string())?;
            tokio::time::timeout(
                self.timeout,
                tokio_tungstenite::connect_async_with_config(self.url.as_str(), None, true),
            )
            .await
            .map_err(|_| "handshake timed out".to_owned())?
            .map_err(|e| e.to_string())
        };
        let mut ws = match handshake.await {
            Ok((ws, _)) => ws,
            Err(why) => {
                let _ = reports.send(Report::Failed(why));
                return;
            }
        };

        let mut rtts_us = Vec::with_capacity(self.round_trips);
        let mut failed_trips = 0usize;
        for _ in 0..self.round_trips {
            let t0 = Instant::now();
            let trip = async {
                ws.send(Message::Text(self.payload.clone())).await.ok()?;
                loop {
                    match ws.next().await? {
                        Ok(Message::Text(t)) => return (t == self.payload).then_some(()),
                        Ok(Message::Ping(_) | Message::Pong(_)) => {}
                        _ => return None,
                    }
                }
            };
            match tokio::time::timeout(self.timeout, trip).await {
                Ok(Some(())) => {
                    let us = t0.elapsed().as_micros();
                    rtts_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                }
                _ => {
                    failed_trips += 1;
                    break;
                }
            }
        }
        let _ = reports.send(Report::Opened {
            rtts_us,
            failed_trips,
        });

        // Idle until released; a frame or close from the gate meanwhile means the connection
        // did not survive idling (for instance a Close 4401 when its session ended).
        let released = tokio::select! {
            r = release.wait_for(|r| *r) => r.is_ok(),
            m = ws.next() => {
                // Code 0: the connection was lost without a Close frame.
                let code = match m {
                    Some(Ok(Message::Close(Some(f)))) => u16::from(f.code),
                    Some(Ok(Message::Close(None))) => 1005,
                    _ => 0,
                };
                let at_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis());
                let _ = self.closes.send(Closed { sid: self.sid.clone(), code, at_ms });
                false
            }
        };
        if released {
            let _ = ws.close(None).await;
            let _ = tokio::time::timeout(self.timeout, async {
                while let Some(Ok(_)) = ws.next().await {}
            })
            .await;
        } else {
            closed_early.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Summary<'a> {
    args: &'a Args,
    opened: usize,
    failures: &'a [String],
    closed_early: usize,
    /// Sorted.
    rtts: &'a [u32],
    failed_trips: usize,
    open_time: Duration,
    rss_before: Option<Mem>,
    rss_after: Option<Mem>,
}

impl Summary<'_> {
    fn print(&self) {
        let row = |k: &str, v: String| println!("  {k:<28} {v}");
        println!("{} summary", self.args.label);
        row("url", self.args.url.clone());
        row("connections requested", self.args.connections.to_string());
        row("connections opened", self.opened.to_string());
        row("connections failed", self.failures.len().to_string());
        if let Some(first) = self.failures.first() {
            row("first failure", first.clone());
        }
        row("closed while held", self.closed_early.to_string());
        row("round trips ok", self.rtts.len().to_string());
        row("round trips failed", self.failed_trips.to_string());
        row(
            "time to open + round trips",
            format!("{:.2} s", self.open_time.as_secs_f64()),
        );
        let p50 = percentile(self.rtts, 50.0);
        let p99 = percentile(self.rtts, 99.0);
        let max = self.rtts.last().copied();
        row("rtt p50", ms(p50));
        row("rtt p99", ms(p99));
        row("rtt max", ms(max));
        if let (Some(b), Some(a)) = (self.rss_before, self.rss_after) {
            row("gate VmRSS before", mib(b.rss_kib));
            row("gate VmRSS with connections", mib(a.rss_kib));
            row("gate VmHWM (peak)", mib(a.hwm_kib));
            if self.opened > 0 {
                let per = a.rss_kib.saturating_sub(b.rss_kib) as f64 / self.opened as f64;
                row("gate RSS per connection", format!("{per:.1} KiB"));
            }
        }
        let num = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        println!(
            "RESULT label={} requested={} opened={} failed={} closed_early={} rt_ok={} rt_failed={} p50_us={} p99_us={} rss_before_kib={} rss_after_kib={}",
            self.args.label,
            self.args.connections,
            self.opened,
            self.failures.len(),
            self.closed_early,
            self.rtts.len(),
            self.failed_trips,
            num(p50.map(u64::from)),
            num(p99.map(u64::from)),
            num(self.rss_before.map(|m| m.rss_kib)),
            num(self.rss_after.map(|m| m.rss_kib)),
        );
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[u32], p: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

fn ms(us: Option<u32>) -> String {
    us.map_or_else(
        || "-".to_owned(),
        |us| format!("{:.3} ms", f64::from(us) / 1000.0),
    )
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[derive(Clone, Copy)]
struct Mem {
    rss_kib: u64,
    hwm_kib: u64,
}

/// VmRSS and VmHWM of a process, from /proc/PID/status (Linux).
fn proc_status(pid: u32) -> Option<Mem> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some(Mem {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}
