//! The benchmark's reference point: a stock Pingora 0.9.1 reverse proxy with the gate's engine
//! settings (one worker thread, no work stealing, jemalloc, the release profile's fat LTO) and
//! nothing else: no logs, no routing, no header work. `make bench` (benches/bench.sh) runs the
//! gate's public route against it, so their ratio is what the gate's own code costs.
//!
//! ```text
//! cargo build --release --locked --example stock_proxy
//! target/release/examples/stock_proxy --listen 127.0.0.1:6190 --upstream 127.0.0.1:7101
//! ```
//!
//! `--like-gate` adds, one at a time, what the gate asks of the same engine on its public route
//! (a comma-separated list): `timeouts` (the route's connect/read/write and idle timeouts on the
//! peer), `xf` (three `X-Forwarded-*` headers inserted upstream), `uri` (the path rebuilt, as a
//! stripped prefix does), `l4` (no L4 read buffer on the listener). The bench's `--profile`
//! notes in README.md use it to split the gate's cost on top of stock Pingora.

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use clap::Parser;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

// The same allocator as the gate: it was worth +22 % on this path (PITFALLS, Speed).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(about = "A stock Pingora proxy to one upstream, for benchmarks")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:6190")]
    listen: SocketAddr,
    /// The one upstream every request goes to (plain HTTP/1.1).
    #[arg(long)]
    upstream: SocketAddr,
    /// Pingora worker threads (the gate's default is 1).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Gate-like extras: any of timeouts,xf,uri,l4 (comma-separated).
    #[arg(long, value_delimiter = ',')]
    like_gate: Vec<String>,
}

struct Stock {
    upstream: SocketAddr,
    timeouts: bool,
    xf: bool,
    uri: bool,
}

#[async_trait]
impl ProxyHttp for Stock {
    type CTX = ();
    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        if self.timeouts {
            // The gate's defaults for a route (README, Configuration).
            peer.options.connection_timeout = Some(Duration::from_secs(2));
            peer.options.read_timeout = Some(Duration::from_secs(30));
            peer.options.write_timeout = Some(Duration::from_secs(30));
            peer.options.idle_timeout = Some(Duration::from_secs(60));
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        up: &mut RequestHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        if self.uri {
            let path = up.uri.path().to_owned();
            let uri = http::Uri::builder()
                .path_and_query(path)
                .build()
                .map_err(|e| Error::because(ErrorType::InternalError, "uri", e))?;
            up.set_uri(uri);
        }
        if self.xf {
            let ip = session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip().to_string());
            if let Some(ip) = ip {
                up.insert_header("x-forwarded-for", ip)?;
            }
            up.insert_header("x-forwarded-proto", "http")?;
            if let Some(host) = session.req_header().headers.get("host").cloned() {
                up.insert_header("x-forwarded-host", host)?;
            }
        }
        Ok(())
    }
}

fn main() {
    let args = Args::parse();
    let conf = ServerConf {
        threads: args.threads.max(1),
        work_stealing: false,
        // The bench stops it with SIGTERM between runs: do not sit out Pingora's 300 s default.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        // The gate's setting: timeouts of a second or more on tokio's timer.
        fast_timeout_to_tokio_threshold_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let like = |what: &str| args.like_gate.iter().any(|w| w == what);
    let mut proxy = http_proxy_service(
        &server.configuration,
        Stock {
            upstream: args.upstream,
            timeouts: like("timeouts"),
            xf: like("xf"),
            uri: like("uri"),
        },
    );
    if like("l4") {
        use pingora::listeners::ListenerConfig;
        use pingora::protocols::l4::stream::L4BufferSettings;
        proxy.add_listener(
            ListenerConfig::tcp(args.listen.to_string())
                .l4_buffer(L4BufferSettings::default().read(0)),
        );
    } else {
        proxy.add_tcp(&args.listen.to_string());
    }
    server.add_service(proxy);
    server.run_forever();
}
