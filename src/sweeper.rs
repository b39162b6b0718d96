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
