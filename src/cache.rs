//! The gate's two per-node caches: verified tickets ([`TicketCache`], found by
//! a hash of the ticket's signature and confirmed against its whole text) and
//! session liveness ([`LivenessCache`], voided by generation-stamped forgets
//! so a store answer older than a revoke never vouches for the session). Both
//! are bounded by byte budgets from the config.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::HeaderValue;

use crate::identity::WireName;
use crate::session::Liveness;
use crate::store::Rules;
use crate::ticket::Claims;

/// A ticket verified once, with the identity headers it yields. Shared by
/// every request presenting the same ticket.
pub struct Admitted {
    pub claims: Claims,
    pub headers: Vec<(WireName, HeaderValue)>,
    /// The ticket's whole text: a hit on the key is confirmed byte for byte
    /// against it, so no other text (a tampered payload under a real
    /// signature, a hash collision) is ever taken for the verified ticket.
    ticket: Box<str>,
}

impl Admitted {
    pub fn new(claims: Claims, headers: Vec<(WireName, HeaderValue)>, ticket: &str) -> Admitted {
        Admitted {
            claims,
            headers,
            ticket: ticket.into(),
        }
    }

    /// What the entry holds, estimated in bytes, for the cache's budget.
    fn weight(&self) -> u32 {
        let c = &self.claims;
        let claims = c.iss.len()
            + c.sid.len()
            + c.sub.len()
            + c.name.len()
            + c.roles.iter().map(|r| r.len() + 24).sum::<usize>()
            + c.vars
                .iter()
                .map(|(k, v)| k.len() + v.len() + 64)
                .sum::<usize>();
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.len() + v.len() + 64)
            .sum();
        let total = std::mem::size_of::<Admitted>() + claims + headers + self.ticket.len();
        u32::try_from(total + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
    }
}

fn signature_of(ticket: &str) -> &str {
    split_signature(ticket).1
}

/// The text before the last `.` and the signature after it (`memrchr`: the
/// signature is the last 43 bytes of a ticket of several hundred).
fn split_signature(ticket: &str) -> (&str, &str) {
    match memchr::memrchr(b'.', ticket.as_bytes()) {
        Some(at) => (
            ticket.get(..at).unwrap_or_default(),
            ticket.get(at + 1..).unwrap_or_default(),
        ),
        None => ("", ticket),
    }
}

/// Whether a presented ticket is byte for byte the cached one. Only the
/// signature, the secret part, is compared in constant time; the text it
/// signs (the base64 of header and claims) needs no such care, and a
/// constant-time pass over all of a ticket's few hundred bytes costs about
/// what the rest of a cache hit does. An entry is only reached through its
/// key, a keyed hash of the signature, so a caller comparing here already
/// holds it.
fn same_text(cached: &str, presented: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    let ((cached_signed, cached_sig), (signed, sig)) =
        (split_signature(cached), split_signature(presented));
    bool::from(cached_sig.as_bytes().ct_eq(sig.as_bytes())) && cached_signed == signed
}

/// Bytes a cache entry costs beyond its own data (the cache's node, its
/// key, the map slot), a rough figure that keeps the budget honest.
const ENTRY_OVERHEAD: usize = 160;
/// A verified ticket is re-verified at least this often even while repeated.
const TICKET_CACHE_TTL: Duration = Duration::from_secs(600);

/// Verified tickets: a repeat of a ticket (byte for byte the same text)
/// skips the HMAC, the JSON decoding and the header building. Only the
/// expiry is re-checked; the session's liveness is checked on every request
/// regardless. The key is taken from the signature segment ([`key`]), and
/// every hit is compared with the whole text.
/// Bounded by an estimate of the bytes it holds (`tickets.cache_max_bytes`),
/// evicting the least used first, entry by entry. Lives in the config's
/// `Settings`, so a reload (new keys) starts it empty.
pub struct TicketCache {
    map: moka::sync::Cache<u64, Arc<Admitted>>,
}

/// A ticket's map key: the first 16 bytes of its signature folded into a word.
/// A signature is an HMAC output, so those bytes already spread tickets as a
/// hash would, without hashing. A forged ticket can choose them, which buys it
/// nothing: a key only finds an entry, which must then be the same text
/// ([`same_text`]); only verified tickets are put; and the map hashes its keys
/// again with its own random state, so chosen keys do not crowd its buckets.
fn key(ticket: &str) -> u64 {
    let sig = signature_of(ticket).as_bytes();
    let mut word = [0u8; 16];
    let n = sig.len().min(word.len());
    word[..n].copy_from_slice(&sig[..n]);
    let (lo, hi) = word.split_at(8);
    let le = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or_default());
    le(lo) ^ le(hi).rotate_left(29)
}

impl TicketCache {
    pub fn new(max_bytes: u64) -> TicketCache {
        TicketCache {
            map: moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_, a: &Arc<Admitted>| a.weight())
                .time_to_live(TICKET_CACHE_TTL)
                .build(),
        }
    }

    /// The entry for exactly this text, whatever its expiry.
    fn exact(&self, ticket: &str) -> Option<Arc<Admitted>> {
        self.map
            .get(&key(ticket))
            .filter(|a| same_text(&a.ticket, ticket))
    }

    pub(crate) fn get(
        &self,
        ticket: &str,
        now_secs: u64,
        leeway_secs: u64,
    ) -> Option<Arc<Admitted>> {
        self.exact(ticket)
            .filter(|a| a.claims.exp.saturating_add(leeway_secs) > now_secs)
    }

    /// Whether this exact text was verified (signed by a key of this config's
    /// ring: the cache is the config's own), expired since or not.
    pub(crate) fn holds(&self, ticket: &str) -> bool {
        self.exact(ticket).is_some()
    }

    pub(crate) fn put(&self, ticket: &str, admitted: Arc<Admitted>) {
        self.map.insert(key(ticket), admitted);
    }

    /// Entries and their estimated bytes (after pending evictions ran).
    pub fn usage(&self) -> (u64, u64) {
        self.map.run_pending_tasks();
        (self.map.entry_count(), self.map.weighted_size())
    }
}

/// Forgetting with generations: the answer to a store check that began
/// before a session was forgotten must never vouch for it afterwards.
///
/// Every forget takes the next generation from one counter and records it
/// in the session's slot (a slot per hash of the session id, so the table
/// is fixed-size and needs no expiry). A check notes the counter before it
/// goes to the store; its answer is good only while the session's slot, and
/// the forget-everything mark, are no later than that note. A forget that
/// lands while a check is in flight thus voids the check's answer, however
/// late it comes back. Two sessions sharing a slot only cost an extra round
/// trip now and then.
struct Forgets {
    clock: AtomicU64,
    slots: Box<[AtomicU64]>,
    everything: AtomicU64,
    hasher: std::hash::RandomState,
}

/// Slots of [`Forgets`]: 512 KiB, so that collisions stay rare.
const FORGET_SLOTS: usize = 1 << 16;

impl Forgets {
    fn new() -> Forgets {
        Forgets {
            clock: AtomicU64::new(0),
            slots: (0..FORGET_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            everything: AtomicU64::new(0),
            hasher: std::hash::RandomState::new(),
        }
    }

    fn slot(&self, sid: &str) -> &AtomicU64 {
        use std::hash::BuildHasher as _;
        let i = (self.hasher.hash_one(sid) as usize) % FORGET_SLOTS;
        &self.slots[i]
    }

    /// The generation a check notes before it asks the store.
    fn now(&self) -> u64 {
        self.clock.load(Ordering::SeqCst)
    }

    fn forget(&self, sid: &str) {
        let g = self.clock.fetch_add(1, Ordering::SeqCst) + 1;
        self.slot(sid).fetch_max(g, Ordering::SeqCst);
    }

    fn forget_everything(&self) {
        let g = self.clock.fetch_add(1, Ordering::SeqCst) + 1;
        self.everything.fetch_max(g, Ordering::SeqCst);
    }

    /// Whether nothing forgot `sid` after generation `since`.
    fn unchanged_since(&self, sid: &str, since: u64) -> bool {
        self.slot(sid).load(Ordering::SeqCst) <= since
            && self.everything.load(Ordering::SeqCst) <= since
    }
}

#[derive(Clone, Copy)]
struct CacheEntry {
    live: Liveness,
    checked_at: u64,
    /// The [`Forgets`] generation noted before the check that answered.
    since: u64,
}

/// Per-node liveness cache: skips the store round trip for a session checked
/// within `store.cache` (default 1 s) whose `lastActiveAt` is not yet due a
/// write. Status changes are pushed over the events channel, which forgets
/// the session at once; the TTL bounds the delay if an event is lost, and a
/// lost event that is noticed (a lagging follower, a lost subscription)
/// forgets everything. Bounded by `store.cache_max_bytes`.
pub struct LivenessCache {
    map: moka::sync::Cache<String, CacheEntry>,
    forgets: Forgets,
}

fn liveness_weight(sid: &str) -> u32 {
    let bytes = sid.len() + std::mem::size_of::<CacheEntry>() + ENTRY_OVERHEAD;
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

/// Entries outlive their freshness so `on_unavailable: grace` can use them.
const CACHE_RETAIN: Duration = Duration::from_secs(5 * 60);

impl LivenessCache {
    /// `retain`: how long an entry is kept at most (the longest of its uses).
    pub(crate) fn new(max_bytes: u64, retain: Duration) -> LivenessCache {
        LivenessCache {
            map: moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|sid: &String, _: &CacheEntry| liveness_weight(sid))
                .time_to_live(retain.max(CACHE_RETAIN))
                .build(),
            forgets: Forgets::new(),
        }
    }

    /// The session's entry, if no forget has voided it.
    fn entry(&self, sid: &str) -> Option<CacheEntry> {
        self.map
            .get(sid)
            .filter(|e| self.forgets.unchanged_since(sid, e.since))
    }

    pub(crate) fn fresh(&self, sid: &str, now: u64, rules: Rules, ttl_ms: u64) -> bool {
        self.entry(sid).is_some_and(|e| {
            let mut l = e.live;
            now.saturating_sub(e.checked_at) < ttl_ms
                && l.apply_clock(now, rules.idle_ms).is_none()
                && l.status.is_active()
                && !l.touch_due(now, rules.touch_ms)
        })
    }

    /// Whether this node saw the session active within `grace_ms` (and the
    /// clock has not ended it since, nor has an event).
    pub(crate) fn seen_active_within(&self, sid: &str, now: u64, grace_ms: u64) -> bool {
        self.entry(sid).is_some_and(|e| {
            now.saturating_sub(e.checked_at) < grace_ms
                && e.live.status.is_active()
                && now < e.live.expire_at
        })
    }

    /// Keeps an answer from a check that began at generation `since`, unless
    /// the session was forgotten meanwhile.
    pub(crate) fn put(&self, sid: &str, live: Liveness, now: u64, since: u64) {
        if self.forgets.unchanged_since(sid, since) {
            let entry = CacheEntry {
                live,
                checked_at: now,
                since,
            };
            self.map.insert(sid.to_owned(), entry);
        }
    }

    pub(crate) fn forget(&self, sid: &str) {
        // The generation first: from here on no older answer is good, even
        // one whose insert races with the removal below.
        self.forgets.forget(sid);
        self.map.invalidate(sid);
    }

    pub(crate) fn forget_everything(&self) {
        self.forgets.forget_everything();
        self.map.invalidate_all();
    }

    /// Entries and their estimated bytes (after pending evictions ran).
    pub fn usage(&self) -> (u64, u64) {
        self.map.run_pending_tasks();
        (self.map.entry_count(), self.map.weighted_size())
    }

    /// The forget generation now: a check noting it before it goes to the store can later
    /// ask [`LivenessCache::unchanged_since`] whether its answer still holds.
    pub(crate) fn generation(&self) -> u64 {
        self.forgets.now()
    }

    /// Whether no forget of `sid` (nor of everything) landed after generation `since`.
    pub(crate) fn unchanged_since(&self, sid: &str, since: u64) -> bool {
        self.forgets.unchanged_since(sid, since)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::IdentityHeaders;
    use crate::session::Status;

    /// Item 7: both caches stay within their byte budgets however many
    /// distinct entries arrive, evicting entry by entry.
    #[test]
    fn caches_are_bounded_by_their_byte_budgets() {
        let identity = IdentityHeaders::new("X-Session-").unwrap();
        let budget = 1u64 << 20;
        let tickets = TicketCache::new(budget);
        let claims = |i: usize| Claims {
            iss: "sessiongate".into(),
            sid: format!("sid-{i:026}"),
            sub: format!("user-{i}"),
            name: "A name".into(),
            roles: vec!["player".into()],
            vars: (0..8).map(|k| (format!("k{k}"), "v".repeat(100))).collect(),
            iat: 0,
            exp: u64::MAX / 2,
        };
        let mut weight = 0;
        for i in 0..20_000 {
            let c = claims(i);
            let headers = identity.for_claims(&c);
            let ticket = format!("h.p{i}.sig{i}");
            let a = Arc::new(Admitted::new(c, headers, &ticket));
            weight = a.weight();
            tickets.put(&ticket, a);
        }
        let (n, bytes) = tickets.usage();
        assert!(bytes <= budget, "{bytes} > {budget}");
        assert!(n > 0 && n < 20_000, "{n} entries of {weight} bytes");
        assert!(
            u64::from(weight) > 2_000,
            "the vars and headers are weighed: {weight}"
        );
        // Only the same text hits (a key collision would still need the signature).
        let roomy = TicketCache::new(budget);
        let c = claims(1);
        let headers = identity.for_claims(&c);
        roomy.put("h.p.sig", Arc::new(Admitted::new(c, headers, "h.p.sig")));
        assert!(roomy.get("h.p.sig", 0, 0).is_some());
        assert!(roomy.get("h.p.forged", 0, 0).is_none());

        let live = LivenessCache::new(budget, Duration::from_secs(60));
        let l = Liveness {
            status: Status::Active,
            expire_at: u64::MAX,
            last_active_at: 0,
        };
        for i in 0..100_000 {
            live.put(&format!("sid-{i:026}"), l, 0, live.forgets.now());
        }
        let (n, bytes) = live.usage();
        assert!(bytes <= budget && n < 100_000, "{n} entries, {bytes} bytes");
    }
}
