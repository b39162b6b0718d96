//! The tunnel sweeper: keeps open WebSockets' sessions honest between
//! events. It records tunnels' client activity in the store (as the time the
//! last frame arrived) and re-checks sessions whose expiry or idle deadline
//! has come, so a tunnel ends within a second of its session leaving
//! `active` even when no event says so.
//!
//! A pass checks the sessions due in batches ([`BATCH`] sessions, one store
//! round trip each, [`CONCURRENCY`] batches at once). The first batch that
//! fails ends the pass: an unreachable store costs one `store.timeout` per
//! pass, never one per session.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;

use crate::clock::now_ms;
use crate::gate::Gate;
use crate::session::{Liveness, Status};

/// How often open tunnels' sessions are looked at.
pub const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// A tunnel's session is re-read at least this often even with no deadline
/// due, in case a status event was lost unnoticed.
pub const RESYNC_MS: u64 = 5_000;
/// Sessions per store round trip.
pub const BATCH: usize = 256;
/// Batches in flight at once.
pub const CONCURRENCY: usize = 4;

/// What the sweeper last learnt of each open tunnel's session: its liveness
/// and when it was read.
#[derive(Default)]
pub struct Known {
    map: HashMap<String, (Liveness, u64)>,
}

/// What one pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// Sessions checked in the store.
    pub checked: usize,
    /// Sessions found no longer active, whose tunnels were ended.
    pub ended: usize,
    /// Whether the store failed, cutting the pass short.
    pub store_failed: bool,
}

/// Runs for the life of the gate.
pub async fn run(gate: Arc<Gate>) {
    let mut known = Known::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
            _ = gate.resync_requested() => {}
        }
        let everything = gate.take_resync();
        pass(&gate, &mut known, now_ms(), everything).await;
    }
}

/// One look at every open tunnel; `everything`: check every session, due or not.
pub async fn pass(gate: &Gate, known: &mut Known, now: u64, everything: bool) -> Pass {
    let s = gate.settings();
    let rules = s.rules;
    let open = gate.tunnels.sessions();
    let open_sids: HashSet<&str> = open.iter().map(|(sid, _)| sid.as_str()).collect();
    known.map.retain(|sid, _| open_sids.contains(sid.as_str()));
    drop(open_sids);

    let due: Vec<(String, u64)> = open
        .into_iter()
        .filter(|(sid, activity)| {
            // Anonymous tunnels (optional routes) have no session to follow.
            !sid.is_empty()
                && (everything
                    || known.map.get(sid).is_none_or(|(l, checked)| {
                        now.saturating_sub(*checked) >= RESYNC_MS
                            || now >= l.expire_at
                            || now >= l.last_active_at.saturating_add(rules.idle_ms)
                            || (*activity > l.last_active_at && l.touch_due(now, rules.touch_ms))
                    }))
        })
        .collect();

    let mut out = Pass::default();
    // Owned batches: a stream over borrowed chunks would not be `Send` for
    // the spawned sweeper (a higher-ranked lifetime the compiler cannot name).
    let batches: Vec<Vec<(String, u64)>> = due.chunks(BATCH).map(<[_]>::to_vec).collect();
    let mut answers = futures_util::stream::iter(batches)
        .map(|batch| async move {
            let answer = gate.check_tunnels(&batch, now, rules).await;
            (batch, answer)
        })
        .buffer_unordered(CONCURRENCY);
    while let Some((batch, answer)) = answers.next().await {
        let lives = match answer {
            Ok(lives) => lives,
            Err(e) => {
                tracing::debug!(error = %e, "tunnel sweep: store unavailable; pass cut short");
                out.store_failed = true;
                // Dropping the stream cancels the batches still in flight.
                break;
            }
        };
        out.checked += batch.len();
        for ((sid, _), live) in batch.iter().zip(lives) {
            match live {
                Some(l) if l.status.is_active() => {
                    known.map.insert(sid.clone(), (l, now));
                }
                Some(l) => {
                    out.ended += 1;
                    gate.ended(sid, l.status);
                }
                None => {
                    out.ended += 1;
                    gate.ended(sid, Status::Ended);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use tokio::sync::broadcast;

    use super::*;
    use crate::gate::tests::{Wrapped, gate_with_session};
    use crate::reject::Reject;
    use crate::session::Event;
    use crate::settings::tests::settings;
    use crate::store::SessionStore as _;

    /// Item 4: a lagging follower forgets everything and has every tunnel re-checked.
    #[tokio::test]
    async fn lost_events_clear_the_cache_and_recheck_every_tunnel() {
        let now = now_ms();
        let store = Arc::new(Wrapped::new(Duration::ZERO));
        let (gate, ticket) = gate_with_session(store.clone(), "sid-lag", now).await;
        let s = gate.settings();
        gate.admit(&s, Some(&ticket), now).await.unwrap();
        let reg = gate.tunnels.register("sid-lag", "chat");
        let mut known = super::Known::default();
        let first = super::pass(&gate, &mut known, now, false).await;
        assert_eq!(first.checked, 1);
        // Nothing is due now: the next pass asks nothing.
        assert_eq!(
            super::pass(&gate, &mut known, now + 10, false)
                .await
                .checked,
            0
        );

        // The revoke's event is among those lost: a channel of one, overrun.
        let (tx, rx) = broadcast::channel(1);
        for _ in 0..3 {
            tx.send(Event::new("other", "u2", Status::Ended, now))
                .unwrap();
        }
        store
            .inner
            .set_status("sid-lag", Status::Revoked, now + 20, s.rules)
            .await
            .unwrap();
        let (_gaps_tx, gaps) = tokio::sync::watch::channel(0);
        let follower = {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move { gate.follow(rx, gaps).await })
        };
        gate.resync_requested().await;
        assert!(gate.take_resync());
        assert!(!reg.ctl().is_ending());
        assert_eq!(
            gate.admit(&s, Some(&ticket), now + 30).await.map(|_| ()),
            Err(Reject::Session(Status::Revoked)),
            "the cache was cleared"
        );
        let pass = super::pass(&gate, &mut known, now + 30, true).await;
        assert_eq!((pass.checked, pass.ended), (1, 1));
        assert!(reg.ctl().is_ending());
        drop(tx);
        follower.await.unwrap();
    }

    /// Item 3 seen from the sweeper: a tunnel whose client never sends is
    /// abandoned at its deadline, not a touch interval later; one whose
    /// client talks is kept alive from its frames' times.
    #[tokio::test]
    async fn silent_tunnels_age_from_login_and_frames_count_when_they_arrived() {
        let now = now_ms();
        let store = Arc::new(Wrapped::new(Duration::ZERO));
        let (gate, _) = gate_with_session(store.clone(), "sid-quiet", now).await;
        let s = gate.settings();
        let idle = s.rules.idle_ms;
        let quiet = gate.tunnels.register("sid-quiet", "chat");
        let mut known = super::Known::default();
        // Opened long after login; registration is no activity.
        super::pass(&gate, &mut known, now + idle - 1_000, false).await;
        assert!(!quiet.ctl().is_ending());
        let at_deadline = super::pass(&gate, &mut known, now + idle, false).await;
        assert_eq!(at_deadline.ended, 1);
        assert!(quiet.ctl().is_ending());
        let session = gate
            .session("sid-quiet", now + idle, s.rules)
            .await
            .unwrap();
        assert_eq!(session.map(|x| x.status), Some(Status::Abandoned));
    }

    /// Item 6: 10,000 tunnels over 10,000 sessions are checked in batches,
    /// one store call per batch; with the store unreachable a pass gives up
    /// after the first failed round of batches instead of waiting out a
    /// timeout per session.
    #[tokio::test(start_paused = true)]
    async fn the_sweeper_checks_in_batches_and_never_stalls_on_a_dead_store() {
        let now = now_ms();
        let store = Arc::new(Wrapped::new(Duration::ZERO));
        let gate = Gate::new(settings(), store.clone(), "t.yaml".into());
        let regs: Vec<_> = (0..10_000)
            .map(|i| gate.tunnels.register(&format!("sid-{i}"), "chat"))
            .collect();
        let mut known = super::Known::default();
        let pass = super::pass(&gate, &mut known, now, false).await;
        // Unknown sessions: each tunnel ends (no such session), in 40 calls.
        assert_eq!((pass.checked, pass.ended), (10_000, 10_000));
        assert_eq!(
            store.many_calls.load(Ordering::SeqCst),
            10_000usize.div_ceil(BATCH)
        );

        store.unreachable.store(true, Ordering::SeqCst);
        store.many_calls.store(0, Ordering::SeqCst);
        let started = tokio::time::Instant::now();
        let pass = super::pass(&gate, &mut known, now, true).await;
        assert!(pass.store_failed);
        assert_eq!(pass.checked, 0);
        assert!(store.many_calls.load(Ordering::SeqCst) <= CONCURRENCY);
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "{:?}",
            started.elapsed()
        );
        drop(regs);
    }
}
