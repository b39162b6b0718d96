//! The benchmark's reference point: a stock Pingora 0.9.1 reverse proxy with the gate's engine
//! settings (one worker thread, no work stealing, jemalloc, the release profile's fat LTO) and
//! nothing else: no logs, no routing, no header work. `make bench` (benches/bench.sh) runs the
//! gate's public route against it, so their ratio is what the gate's own code costs.
//!
//! ```text
//! cargo build --release --locked --example stock_proxy
//! target/release/examples/stock_proxy --listen 127.0.0.1:6190 --upstream 127.0.0.1:7101
//! ```

use std::net::SocketAddr;

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
}

struct Stock {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Stock {
    type CTX = ();
    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
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
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(
        &server.configuration,
        Stock {
            upstream: args.upstream,
        },
    );
    proxy.add_tcp(&args.listen.to_string());
    server.add_service(proxy);
    server.run_forever();
}
