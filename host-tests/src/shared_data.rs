//! Proxy-wasm shared data with Envoy's exact semantics, shared by every simulated worker, plus the
//! fault injection that lets tests provoke what real contention and a sick host would.
//!
//! Semantics (proxy-wasm-cpp-host `src/shared_data.cc`): one key/value map per `vm_id`; every write
//! stamps the value with the next number of one process-wide CAS counter that starts at 1 and skips
//! 0 on wrap; `set` with a non-zero CAS that differs from the stored one is `CasMismatch`; `set` on a
//! missing key ignores the CAS (so two workers can both "insert"); there is no delete.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::abi::Status;

/// How long a rendezvous waits for the other parties before letting a caller through anyway, so a
/// filter that reads less often than a test expected slows the test down instead of hanging it.
const RENDEZVOUS_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an injected failure lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailFor {
    /// The next `n` calls fail, then the store heals.
    Next(u64),
    /// Every call fails until [`SharedData::clear_faults`].
    Always,
}

impl FailFor {
    /// Consumes one failure if one is pending.
    pub(crate) fn take(slot: &mut Option<FailFor>) -> bool {
        match *slot {
            None => false,
            Some(FailFor::Always) => true,
            Some(FailFor::Next(n)) => {
                *slot = (n > 1).then(|| FailFor::Next(n - 1));
                n > 0
            }
        }
    }
}

/// Counters a test can read to check how hard the filter worked the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// `proxy_get_shared_data` calls.
    pub gets: u64,
    /// `proxy_set_shared_data` calls.
    pub sets: u64,
    /// Sets answered with `CasMismatch` (stale CAS or injected).
    pub cas_mismatches: u64,
    /// Calls answered with an injected `InternalFailure`.
    pub injected_failures: u64,
    /// Rendezvous that gave up waiting.
    pub rendezvous_timeouts: u64,
}

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    cas: u32,
}

#[derive(Debug, Default)]
struct Rendezvous {
    parties: usize,
    arrived: usize,
    generation: u64,
}

#[derive(Debug, Default)]
struct Inner {
    maps: HashMap<String, HashMap<Vec<u8>, Entry>>,
    /// The next CAS to hand out; 0 means "not started" and is read as 1.
    next_cas: u32,
    cas_conflicts: u64,
    failing_gets: Option<FailFor>,
    failing_sets: Option<FailFor>,
    rendezvous: Option<Rendezvous>,
    generation: u64,
    stats: StoreStats,
}

impl Inner {
    fn next_cas(&mut self) -> u32 {
        let cas = self.next_cas.max(1);
        self.next_cas = cas.wrapping_add(1).max(1);
        cas
    }
}

/// The shared-data store of one simulated Envoy process. Clones share the same store.
#[derive(Debug, Clone, Default)]
pub struct SharedData {
    inner: Arc<(Mutex<Inner>, Condvar)>,
}

impl SharedData {
    /// An empty store whose CAS counter starts at 1.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store whose next CAS is `cas` (0 reads as 1): lets a test reach the wrap-around.
    pub fn with_next_cas(cas: u32) -> Self {
        let store = Self::new();
        store.lock().next_cas = cas;
        store
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A test thread that panicked while holding the lock leaves consistent data behind: every
        // mutation below completes before the guard drops.
        self.inner.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `proxy_get_shared_data`: the value and its CAS, or `NotFound`.
    pub fn get(&self, vm_id: &str, key: &[u8]) -> Result<(Vec<u8>, u32), Status> {
        let mut inner = self.lock();
        inner.stats.gets += 1;
        if FailFor::take(&mut inner.failing_gets) {
            inner.stats.injected_failures += 1;
            return Err(Status::InternalFailure);
        }
        // Read first, then wait: every party returns what the store held before any of them
        // could write.
        let found = inner
            .maps
            .get(vm_id)
            .and_then(|map| map.get(key))
            .map(|entry| (entry.value.clone(), entry.cas))
            .ok_or(Status::NotFound);
        drop(self.meet(inner));
        found
    }

    /// `proxy_set_shared_data`: stale non-zero CAS on an existing key is `CasMismatch`; a missing
    /// key is inserted whatever the CAS.
    pub fn set(&self, vm_id: &str, key: &[u8], value: &[u8], cas: u32) -> Result<(), Status> {
        let mut inner = self.lock();
        inner.stats.sets += 1;
        if FailFor::take(&mut inner.failing_sets) {
            inner.stats.injected_failures += 1;
            return Err(Status::InternalFailure);
        }
        if inner.cas_conflicts > 0 {
            inner.cas_conflicts -= 1;
            inner.stats.cas_mismatches += 1;
            return Err(Status::CasMismatch);
        }
        let stale = inner
            .maps
            .get(vm_id)
            .and_then(|map| map.get(key))
            .is_some_and(|entry| cas != 0 && cas != entry.cas);
        if stale {
            inner.stats.cas_mismatches += 1;
            return Err(Status::CasMismatch);
        }
        let cas = inner.next_cas();
        inner.maps.entry(vm_id.to_owned()).or_default().insert(
            key.to_vec(),
            Entry {
                value: value.to_vec(),
                cas,
            },
        );
        Ok(())
    }

    /// Holds a `get` (after it has read) until every party of a pending rendezvous has arrived, so
    /// the reads of several workers all happen before any of their writes: the interleaving that
    /// makes races visible.
    fn meet<'a>(&'a self, mut inner: MutexGuard<'a, Inner>) -> MutexGuard<'a, Inner> {
        let Some(rendezvous) = inner.rendezvous.as_mut() else {
            return inner;
        };
        rendezvous.arrived += 1;
        if rendezvous.arrived >= rendezvous.parties {
            inner.rendezvous = None;
            inner.generation += 1;
            self.inner.1.notify_all();
            return inner;
        }
        let generation = rendezvous.generation;
        let (mut inner, timeout) = self
            .inner
            .1
            .wait_timeout_while(inner, RENDEZVOUS_TIMEOUT, |inner| {
                inner.generation == generation
            })
            .unwrap_or_else(PoisonError::into_inner);
        if timeout.timed_out() {
            inner.stats.rendezvous_timeouts += 1;
            inner.rendezvous = None;
            inner.generation += 1;
            self.inner.1.notify_all();
        }
        inner
    }

    /// Makes the next `parties` gets (from any workers, on their own threads) wait for each other
    /// before reading, so they all see the same value and CAS. Only useful with workers driven from
    /// different threads; a lone caller is released after a timeout.
    pub fn rendezvous_next_gets(&self, parties: usize) {
        let mut inner = self.lock();
        let generation = inner.generation;
        inner.rendezvous = (parties > 1).then_some(Rendezvous {
            parties,
            arrived: 0,
            generation,
        });
    }

    /// A conflict storm: the next `count` sets fail with `CasMismatch` without writing, as if other
    /// workers had won every race.
    pub fn inject_cas_conflicts(&self, count: u64) {
        self.lock().cas_conflicts = count;
    }

    /// Makes gets answer `InternalFailure`.
    pub fn fail_gets(&self, fail: FailFor) {
        self.lock().failing_gets = Some(fail);
    }

    /// Makes sets answer `InternalFailure`.
    pub fn fail_sets(&self, fail: FailFor) {
        self.lock().failing_sets = Some(fail);
    }

    /// Heals the store: no pending conflicts, failures or rendezvous.
    pub fn clear_faults(&self) {
        let mut inner = self.lock();
        inner.cas_conflicts = 0;
        inner.failing_gets = None;
        inner.failing_sets = None;
        inner.rendezvous = None;
        inner.generation += 1;
        self.inner.1.notify_all();
    }

    /// Conflicts of an injected storm not yet consumed.
    pub fn pending_cas_conflicts(&self) -> u64 {
        self.lock().cas_conflicts
    }

    /// Number of keys stored for `vm_id`.
    pub fn key_count(&self, vm_id: &str) -> usize {
        self.lock().maps.get(vm_id).map_or(0, HashMap::len)
    }

    /// Bytes held for `vm_id`: keys plus values, the memory Envoy keeps until the VM goes away.
    pub fn total_bytes(&self, vm_id: &str) -> usize {
        self.lock().maps.get(vm_id).map_or(0, |map| {
            map.iter().map(|(k, e)| k.len() + e.value.len()).sum()
        })
    }

    /// The keys stored for `vm_id`, sorted, for assertions and debugging.
    pub fn keys(&self, vm_id: &str) -> Vec<Vec<u8>> {
        let mut keys: Vec<Vec<u8>> = self
            .lock()
            .maps
            .get(vm_id)
            .map(|map| map.keys().cloned().collect())
            .unwrap_or_default();
        keys.sort();
        keys
    }

    /// Reads a value without counting it as guest traffic or meeting a rendezvous.
    pub fn peek(&self, vm_id: &str, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        self.lock()
            .maps
            .get(vm_id)
            .and_then(|map| map.get(key))
            .map(|entry| (entry.value.clone(), entry.cas))
    }

    /// Call counters since the store was created.
    pub fn stats(&self) -> StoreStats {
        self.lock().stats
    }
}
