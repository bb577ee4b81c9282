//! Injected host-call failures: a test makes a named import answer a status of its choice,
//! without acting, the way a sick or newer host might. This is how the suite shows that no status
//! the host can return traps the filter.
//!
//! ```no_run
//! # use host_tests::{FailFor, Harness, Plugin};
//! # fn main() -> Result<(), host_tests::HostError> {
//! # let plugin = Plugin::tollgate()?;
//! let h = Harness::new(&plugin).configure(r#"{"tiers":[{"name":"all","identity":"shared",
//!     "limits":[{"requests":1,"per":"second"}]}]}"#)?;
//! // Status 99 is in no version of the ABI.
//! h.shared().faults().fail("proxy_get_current_time_nanoseconds", 99, FailFor::Always)?;
//! assert!(h.request(0, &[("x", "y")]).is_ok()); // answered, not trapped
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::error::HostError;
use crate::shared_data::FailFor;
use crate::signatures::IMPLEMENTED_IMPORTS;

#[derive(Debug, Default)]
struct Table {
    /// Import name → (status to answer, how long).
    failing: HashMap<&'static str, (u32, FailFor)>,
    /// Import name → calls answered with an injected status.
    injected: HashMap<&'static str, u64>,
}

/// The injected failures of one simulated Envoy process (every worker sees them). Cloning
/// shares.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    table: Arc<Mutex<Table>>,
}

impl Faults {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes `import` answer `status` without acting, for `fail_for`. An import the host does
    /// not implement is an error, so a typo cannot make a test vacuous.
    pub fn fail(&self, import: &str, status: u32, fail_for: FailFor) -> Result<(), HostError> {
        let name = IMPLEMENTED_IMPORTS
            .iter()
            .find(|n| **n == import)
            .ok_or_else(|| HostError::UnknownImport(import.to_owned()))?;
        self.lock().failing.insert(name, (status, fail_for));
        Ok(())
    }

    /// Heals every import.
    pub fn clear(&self) {
        self.lock().failing.clear();
    }

    /// How many calls of `import` were answered with an injected status.
    pub fn injected(&self, import: &str) -> u64 {
        self.lock().injected.get(import).copied().unwrap_or(0)
    }

    /// The status to answer instead of running `import`, if one is injected (consumes it).
    pub(crate) fn take(&self, import: &'static str) -> Option<u32> {
        let mut table = self.lock();
        let (status, fail_for) = *table.failing.get(import)?;
        let mut slot = Some(fail_for);
        let hit = FailFor::take(&mut slot);
        match slot {
            Some(left) => table.failing.insert(import, (status, left)),
            None => table.failing.remove(import),
        };
        if !hit {
            return None;
        }
        *table.injected.entry(import).or_default() += 1;
        Some(status)
    }
}
