//! The count of requests (tunnels included) being served, which a graceful stop waits on:
//! a guard per request, shared by the proxy and the tunnels it hands off.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts one request as in flight for as long as it lives.
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    pub fn new(counter: &Arc<AtomicUsize>) -> InFlight {
        counter.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(counter))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
