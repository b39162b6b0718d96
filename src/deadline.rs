//! Deadlines for request heads without a timer per request. Each client
//! connection holds one [`Deadline`], armed before a head is read and disarmed
//! once it is complete; one sweeper thread looks at every live deadline each
//! [`TICK`] and wakes the connections whose instant has passed (and sleeps
//! while there are none).
//!
//! Why not a timer: Pingora's fast timeout registers one per call in a shared
//! tree, with clock reads and a notifier each, and for a keep-alive request
//! that was the largest single cost the gate's HTTP/1 loop added on top of
//! stock Pingora (README, Performance). Arming here is one clock read and one
//! atomic store; the head deadlines it keeps are seconds long, and a tick of
//! lateness is within what they promise.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// How often the sweeper looks; a deadline fires at most this late.
pub const TICK: Duration = Duration::from_millis(10);
const DISARMED: u64 = u64::MAX;

/// What a connection and the sweeper share.
struct Shared {
    /// Microseconds since the sweeper's epoch, or [`DISARMED`].
    at: AtomicU64,
    notify: Notify,
}

struct Sweeper {
    epoch: Instant,
    watched: Mutex<Vec<Arc<Shared>>>,
    /// The sweeper's thread, unparked by the first deadline after it found
    /// none to watch.
    thread: Option<std::thread::Thread>,
}

impl Sweeper {
    fn micros(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_micros()).unwrap_or(DISARMED - 1)
    }

    /// One look at every deadline: those gone with their connection are
    /// dropped, those passed are woken (a permit stays if nobody waits, and
    /// the waiter checks the instant again, so a late one is harmless).
    /// Whether any are left to watch.
    fn sweep(&self) -> bool {
        let now = self.micros(Instant::now());
        let mut watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
        watched.retain(|d| {
            if Arc::strong_count(d) == 1 {
                return false;
            }
            if d.at.load(Ordering::Acquire) <= now {
                d.notify.notify_one();
            }
            true
        });
        !watched.is_empty()
    }
}

/// The one sweeper, and its thread, started by the first deadline.
fn sweeper() -> &'static Sweeper {
    static SWEEPER: OnceLock<Sweeper> = OnceLock::new();
    SWEEPER.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("head deadlines".into())
            .spawn(|| {
                let s = sweeper();
                loop {
                    std::thread::sleep(TICK);
                    // A gate with no client connections wakes nobody: the
                    // next deadline unparks the thread (an unpark that comes
                    // first makes this park return at once).
                    if !s.sweep() {
                        std::thread::park();
                    }
                }
            });
        let thread = match spawned {
            Ok(handle) => Some(handle.thread().clone()),
            Err(e) => {
                // Without the thread no head deadline fires: say so loudly, once.
                tracing::error!(error = %e, "cannot start the head-deadline thread");
                None
            }
        };
        Sweeper {
            epoch: Instant::now(),
            watched: Mutex::new(Vec::new()),
            thread,
        }
    })
}

/// One connection's deadline: armed for one head at a time.
pub struct Deadline {
    shared: Arc<Shared>,
}

impl Default for Deadline {
    fn default() -> Deadline {
        Deadline::new()
    }
}

impl Deadline {
    /// A disarmed deadline, watched by the sweeper until it is dropped.
    pub fn new() -> Deadline {
        let shared = Arc::new(Shared {
            at: AtomicU64::new(DISARMED),
            notify: Notify::new(),
        });
        let s = sweeper();
        let first = {
            let mut watched = s.watched.lock().unwrap_or_else(PoisonError::into_inner);
            watched.push(Arc::clone(&shared));
            watched.len() == 1
        };
        if first && let Some(t) = &s.thread {
            t.unpark();
        }
        Deadline { shared }
    }

    /// Arms the deadline `limit` from now.
    pub fn arm_in(&self, limit: Duration) {
        let s = sweeper();
        let at = s
            .micros(Instant::now())
            .saturating_add(u64::try_from(limit.as_micros()).unwrap_or(DISARMED - 1));
        self.shared
            .at
            .store(at.min(DISARMED - 1), Ordering::Release);
    }

    pub fn disarm(&self) {
        self.shared.at.store(DISARMED, Ordering::Release);
    }

    /// Whether the armed instant has passed.
    pub fn passed(&self) -> bool {
        let at = self.shared.at.load(Ordering::Acquire);
        at != DISARMED && sweeper().micros(Instant::now()) >= at
    }

    /// Resolves once the armed instant has passed (at most a [`TICK`] late);
    /// never while disarmed. A wake-up left from an earlier head is checked
    /// against the instant in force and waited past.
    pub async fn expired(&self) {
        loop {
            self.shared.notify.notified().await;
            if self.passed() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATIENCE: Duration = Duration::from_secs(5);

    /// Waits for `d` to fire, failing the test past [`PATIENCE`].
    async fn fired(d: &Deadline) {
        tokio::time::timeout(PATIENCE, d.expired())
            .await
            .expect("the deadline fired");
    }

    #[tokio::test]
    async fn an_armed_deadline_fires_after_its_instant_and_soon_after() {
        let d = Deadline::new();
        let start = Instant::now();
        d.arm_in(Duration::from_millis(60));
        fired(&d).await;
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(60), "{took:?}");
        assert!(d.passed());
    }

    #[tokio::test]
    async fn a_disarmed_deadline_never_fires() {
        let d = Deadline::new();
        d.arm_in(Duration::from_millis(20));
        d.disarm();
        // Several sweeps pass meanwhile.
        let waited = tokio::time::timeout(TICK * 15, d.expired()).await;
        assert!(waited.is_err(), "a disarmed deadline fired");
        assert!(!d.passed());
    }

    #[tokio::test]
    async fn a_wake_up_left_from_an_earlier_head_does_not_fire_the_next() {
        let d = Deadline::new();
        d.arm_in(Duration::ZERO);
        fired(&d).await;
        // The sweeper goes on notifying until it sees the next instant: the
        // permits it leaves must not end the next head's wait.
        std::thread::sleep(TICK * 3);
        let start = Instant::now();
        d.arm_in(Duration::from_millis(150));
        fired(&d).await;
        assert!(start.elapsed() >= Duration::from_millis(150));
    }

    #[tokio::test]
    async fn a_deadline_after_an_idle_spell_still_fires() {
        // With nothing to watch the sweeper parks (several ticks pass here).
        drop(Deadline::new());
        std::thread::sleep(TICK * 5);
        let d = Deadline::new();
        d.arm_in(Duration::from_millis(30));
        fired(&d).await;
    }

    #[test]
    fn dropped_deadlines_leave_the_sweepers_list() {
        let mine = Deadline::new();
        let watched = Arc::downgrade(&mine.shared);
        // The connection's and the sweeper's.
        assert_eq!(watched.strong_count(), 2);
        drop(mine);
        sweeper().sweep();
        assert!(
            watched.upgrade().is_none(),
            "the sweeper kept a closed connection's deadline"
        );
    }
}
