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
