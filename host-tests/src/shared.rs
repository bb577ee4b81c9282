//! What the workers of one simulated Envoy process share: shared data, the clock, stats and shared
//! queues. Each VM instance holds a clone; cloning shares, it does not copy.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::abi::Status;
use crate::calls::Calls;
use crate::clock::Clock;
use crate::faults::Faults;
use crate::metrics::Metrics;
use crate::shared_data::SharedData;

/// Where the guest's fuel went, when tracing ([`Shared::trace_fuel`]).
#[derive(Debug, Clone, Default)]
struct FuelTrace(Arc<Mutex<Option<Vec<FuelMark>>>>);

/// Where, how much fuel was left, and whether the guest was entered there.
type FuelMark = (&'static str, u64, bool);

/// The process-wide state every worker's VM sees.
#[derive(Debug, Clone, Default)]
pub struct Shared {
    data: SharedData,
    clock: Clock,
    metrics: Metrics,
    queues: Queues,
    faults: Faults,
    calls: Calls,
    next_instance: Arc<AtomicU64>,
    fuel: Calls,
    fuel_trace: FuelTrace,
}

impl Shared {
    /// Fresh state: empty store, clock at [`crate::clock::DEFAULT_START_NANOS`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Fresh state with the clock at `nanos`.
    pub fn starting_at(nanos: u64) -> Self {
        Self {
            clock: Clock::at(nanos),
            ..Self::default()
        }
    }

    /// The shared-data store.
    pub fn data(&self) -> &SharedData {
        &self.data
    }

    /// The clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The stats.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The shared queues.
    pub fn queues(&self) -> &Queues {
        &self.queues
    }

    /// Injected host-call failures.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Host calls made so far, per import.
    pub fn calls(&self) -> &Calls {
        &self.calls
    }

    /// Fuel the guest has burnt so far, per export (`proxy_on_request_headers`, …), in every
    /// worker: wasmtime charges one unit per Wasm operator executed (control-flow markers such as
    /// `nop`, `block` and `end` are free), so differences of these are the guest's instruction
    /// counts, exact and independent of the machine's load (BENCHMARKS.md §2 measures the request
    /// path with them).
    pub fn fuel(&self) -> &Calls {
        &self.fuel
    }

    /// Starts recording where the guest's fuel goes: from now on every export call and every
    /// host call the guest makes leaves a mark, taken by [`Shared::take_fuel_trace`].
    pub fn trace_fuel(&self) {
        let mut trace = self
            .fuel_trace
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        trace.get_or_insert_with(Vec::new);
    }

    /// The marks since the last take, in order: `(what, fuel used since the previous mark)`,
    /// where `what` is an export (`proxy_on_request_headers`: the guest entered it), a host call
    /// (`proxy_get_shared_data`: the guest spent the fuel up to calling it) or `return` (the
    /// guest spent the fuel from its last host call to returning). Empty unless
    /// [`Shared::trace_fuel`] was called.
    pub fn take_fuel_trace(&self) -> Vec<(&'static str, u64)> {
        let mut trace = self
            .fuel_trace
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(marks) = trace.as_mut() else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(marks.len());
        let mut left = 0;
        for (what, fuel_left, entry) in marks.drain(..) {
            // An export's entry carries its whole budget: nothing was spent before it.
            let used = if entry { 0 } else { left - fuel_left.min(left) };
            out.push((what, used));
            left = fuel_left;
        }
        out
    }

    /// Records `fuel_left` at `what` (`entry`: the guest is entered by export `what`), when
    /// tracing.
    pub(crate) fn mark_fuel(&self, what: &'static str, fuel_left: u64, entry: bool) {
        let mut trace = self
            .fuel_trace
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(marks) = trace.as_mut() {
            marks.push((what, fuel_left, entry));
        }
    }

    pub(crate) fn next_instance_id(&self) -> u64 {
        self.next_instance.fetch_add(1, Ordering::SeqCst)
    }
}

#[derive(Debug)]
struct Queue {
    owner: u64,
    items: VecDeque<Vec<u8>>,
}

#[derive(Debug, Default)]
struct QueueTable {
    queues: Vec<Queue>,
    by_name: HashMap<(String, Vec<u8>), u32>,
    /// `(owner instance, queue id)` notifications not yet delivered as `proxy_on_queue_ready`.
    ready: Vec<(u64, u32)>,
}

/// Shared queues (`proxy_register_shared_queue` and friends), keyed by `(vm_id, name)`.
#[derive(Debug, Clone, Default)]
pub struct Queues {
    table: Arc<Mutex<QueueTable>>,
}

impl Queues {
    fn lock(&self) -> MutexGuard<'_, QueueTable> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn register(&self, vm_id: &str, name: &[u8], owner: u64) -> u32 {
        let mut table = self.lock();
        let key = (vm_id.to_owned(), name.to_vec());
        if let Some(&id) = table.by_name.get(&key) {
            return id;
        }
        table.queues.push(Queue {
            owner,
            items: VecDeque::new(),
        });
        let id = table.queues.len() as u32;
        table.by_name.insert(key, id);
        id
    }

    pub(crate) fn resolve(&self, vm_id: &[u8], name: &[u8]) -> Option<u32> {
        let vm_id = String::from_utf8_lossy(vm_id).into_owned();
        self.lock().by_name.get(&(vm_id, name.to_vec())).copied()
    }

    pub(crate) fn enqueue(&self, id: u32, item: Vec<u8>) -> Result<(), Status> {
        let mut table = self.lock();
        let queue = id
            .checked_sub(1)
            .and_then(|index| table.queues.get_mut(index as usize))
            .ok_or(Status::NotFound)?;
        queue.items.push_back(item);
        let owner = queue.owner;
        table.ready.push((owner, id));
        Ok(())
    }

    pub(crate) fn dequeue(&self, id: u32) -> Result<Vec<u8>, Status> {
        let mut table = self.lock();
        let queue = id
            .checked_sub(1)
            .and_then(|index| table.queues.get_mut(index as usize))
            .ok_or(Status::NotFound)?;
        queue.items.pop_front().ok_or(Status::Empty)
    }

    /// Takes the pending ready notifications addressed to VM instance `owner`.
    pub(crate) fn take_ready(&self, owner: u64) -> Vec<u32> {
        let mut table = self.lock();
        let (mine, others) = table.ready.drain(..).partition(|(o, _)| *o == owner);
        table.ready = others;
        mine.into_iter().map(|(_, id)| id).collect::<Vec<_>>()
    }

    /// Number of items waiting in queue `id`.
    pub fn len(&self, id: u32) -> usize {
        let table = self.lock();
        id.checked_sub(1)
            .and_then(|index| table.queues.get(index as usize))
            .map_or(0, |q| q.items.len())
    }
}
