//! The virtual wall clock behind `proxy_get_current_time_nanoseconds`, shared by every worker.
//!
//! Rate limiting is arithmetic on time, so tests own time: they set it to the nanosecond and move it
//! forward explicitly. Nothing in the host reads the real clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// 2023-11-14T22:13:20Z: a realistic epoch, so a filter that divides wall time sees big numbers.
pub const DEFAULT_START_NANOS: u64 = 1_700_000_000 * 1_000_000_000;

/// Nanoseconds since the Unix epoch, as the guest sees them. Clones share the same time.
#[derive(Debug, Clone)]
pub struct Clock {
    nanos: Arc<AtomicU64>,
}

impl Default for Clock {
    fn default() -> Self {
        Self::at(DEFAULT_START_NANOS)
    }
}

impl Clock {
    /// A clock reading `nanos`.
    pub fn at(nanos: u64) -> Self {
        Self {
            nanos: Arc::new(AtomicU64::new(nanos)),
        }
    }

    /// The current reading.
    pub fn now(&self) -> u64 {
        self.nanos.load(Ordering::SeqCst)
    }

    /// Sets the reading; going backwards is allowed (wall clocks do).
    pub fn set(&self, nanos: u64) {
        self.nanos.store(nanos, Ordering::SeqCst);
    }

    /// Moves the reading forward, saturating at `u64::MAX`.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .nanos
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| {
                Some(now.saturating_add(by))
            });
    }
}
