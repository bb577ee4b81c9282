//! Time as a plain number the caller hands in.

use core::fmt;

/// Nanoseconds, either an instant (since the Unix epoch, as proxy-wasm reports it) or a duration.
///
/// A newtype rather than `u64` so that a count of tokens can never be passed where time is meant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Nanos(pub u64);

impl Nanos {
    /// Zero: the start of the epoch, or no time at all.
    pub const ZERO: Nanos = Nanos(0);
    /// One second.
    pub const SECOND: Nanos = Nanos(1_000_000_000);

    /// Whole seconds, rounded up: a client told to wait this long will not arrive early.
    pub fn as_secs_ceil(self) -> u64 {
        self.0.div_ceil(Self::SECOND.0)
    }

    /// `secs` seconds, saturating at the largest representable duration.
    pub fn from_secs(secs: u64) -> Nanos {
        Nanos(secs.saturating_mul(Self::SECOND.0))
    }
}

impl fmt::Display for Nanos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ns", self.0)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn seconds_round_up_so_clients_never_retry_early() {
        assert_eq!(Nanos(0).as_secs_ceil(), 0);
        assert_eq!(Nanos(1).as_secs_ceil(), 1);
        assert_eq!(Nanos(1_000_000_000).as_secs_ceil(), 1);
        assert_eq!(Nanos(1_000_000_001).as_secs_ceil(), 2);
        assert_eq!(Nanos(u64::MAX).as_secs_ceil(), 18_446_744_074);
    }

    #[test]
    fn from_secs_saturates() {
        assert_eq!(Nanos::from_secs(u64::MAX), Nanos(u64::MAX));
    }
}
