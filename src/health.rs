//! Upstream health: a TCP connect probe every few seconds per upstream, plus
//! passive marking when a proxied connect fails. A down upstream is skipped
//! by round robin until a probe reaches it again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::gate::Gate;

pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Health {
    down: RwLock<HashMap<SocketAddr, ()>>,
}

impl Health {
    pub fn is_up(&self, addr: &SocketAddr) -> bool {
        self.down
            .read()
            .map(|d| !d.contains_key(addr))
            .unwrap_or(true)
    }

    pub fn mark_down(&self, addr: SocketAddr) {
        if let Ok(mut d) = self.down.write()
            && d.insert(addr, ()).is_none()
        {
            tracing::warn!(upstream = %addr, "upstream marked down");
        }
    }

    fn mark_up(&self, addr: &SocketAddr) {
        let was_down = self
            .down
            .read()
            .map(|d| d.contains_key(addr))
            .unwrap_or(false);
        if was_down && let Ok(mut d) = self.down.write() {
            d.remove(addr);
            tracing::info!(upstream = %addr, "upstream back up");
        }
    }

    /// Probes every configured upstream forever.
    pub async fn run(self: Arc<Self>, gate: Arc<Gate>) {
        loop {
            let addrs: Vec<SocketAddr> = {
                let s = gate.settings();
                let mut v: Vec<SocketAddr> = s
                    .routes
                    .routes()
                    .iter()
                    .flat_map(|r| r.config.upstreams.iter().copied())
                    .collect();
                v.sort();
                v.dedup();
                v
            };
            for addr in addrs {
                let probe =
                    tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr));
                match probe.await {
                    Ok(Ok(_)) => self.mark_up(&addr),
                    _ => self.mark_down(addr),
                }
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }
}
