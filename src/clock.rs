//! The wall clock as the gate reads it: milliseconds since the Unix epoch, the unit of every
//! session timestamp, ticket expiry and store rule. One place, so tests and modules agree on it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, in milliseconds since the Unix epoch (0 for a clock set before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A duration in milliseconds, saturating (config durations are far below the cap).
pub fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
