//! The fixture tests are written against: N workers (VM instances) of one plugin sharing one
//! simulated Envoy process, whole requests in one call, and a virtual clock.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::abi::Action;
use crate::error::HostError;
use crate::headers::Headers;
use crate::metrics::Metrics;
use crate::outcome::Outcome;
use crate::plugin::Plugin;
use crate::record::{LogRecord, Properties};
use crate::shared::Shared;
use crate::shared_data::SharedData;
use crate::stream::Stream;
use crate::vm::{Vm, VmOptions};

/// The client address every request carries unless it sets its own (`source.address`).
pub const DEFAULT_SOURCE_ADDRESS: &str = "192.0.2.10:50000";

/// A request as a client sends it, and the response the upstream will give if the request gets
/// through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Request headers, pseudo-headers included.
    pub headers: Headers,
    /// Body chunks, delivered one `proxy_on_request_body` each.
    pub body: Vec<Vec<u8>>,
    /// Trailers, if any.
    pub trailers: Option<Headers>,
    /// Per-request properties (dynamic metadata, `source.address`, ...).
    pub properties: Properties,
    /// What the upstream answers.
    pub response: Response,
}

impl Request {
    /// A request with `method` and `path`, authority `api.example.com`, scheme `http`, client
    /// address [`DEFAULT_SOURCE_ADDRESS`], and an upstream that answers `200` with no body.
    pub fn new(method: &str, path: &str) -> Self {
        let mut properties = Properties::default();
        properties.set(&["source", "address"], DEFAULT_SOURCE_ADDRESS);
        Self {
            headers: Headers::from_pairs(&[
                (":method", method),
                (":path", path),
                (":authority", "api.example.com"),
                (":scheme", "http"),
            ]),
            body: Vec::new(),
            trailers: None,
            properties,
            response: Response::ok(),
        }
    }

    /// `GET path`.
    pub fn get(path: &str) -> Self {
        Self::new("GET", path)
    }

    /// Adds a header (names are lower-cased, as Envoy's codecs do).
    #[must_use]
    pub fn header(mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Self {
        self.headers.add(name, value);
        self
    }

    /// Adds several headers.
    #[must_use]
    pub fn headers<K: AsRef<[u8]>, V: AsRef<[u8]>>(mut self, pairs: &[(K, V)]) -> Self {
        for (name, value) in pairs {
            self.headers.add(name, value);
        }
        self
    }

    /// Adds a body chunk.
    #[must_use]
    pub fn body_chunk(mut self, chunk: impl AsRef<[u8]>) -> Self {
        self.body.push(chunk.as_ref().to_vec());
        self
    }

    /// Sets request trailers.
    #[must_use]
    pub fn trailers<K: AsRef<[u8]>, V: AsRef<[u8]>>(mut self, pairs: &[(K, V)]) -> Self {
        self.trailers = Some(Headers::from_pairs(pairs));
        self
    }

    /// Sets a per-request property.
    #[must_use]
    pub fn property(mut self, path: &[&str], value: impl AsRef<[u8]>) -> Self {
        self.properties.set(path, value);
        self
    }

    /// Sets what the upstream answers.
    #[must_use]
    pub fn respond_with(mut self, response: Response) -> Self {
        self.response = response;
        self
    }
}

/// What the upstream answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Response headers (`:status` included).
    pub headers: Headers,
    /// Body chunks.
    pub body: Vec<Vec<u8>>,
    /// Trailers, if any.
    pub trailers: Option<Headers>,
}

impl Response {
    /// `200` with no body.
    pub fn ok() -> Self {
        Self::status(200)
    }

    /// `status` with no body.
    pub fn status(status: u32) -> Self {
        Self {
            headers: Headers::from_pairs(&[(":status", status.to_string())]),
            body: Vec::new(),
            trailers: None,
        }
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Self {
        self.headers.add(name, value);
        self
    }

    /// Adds a body chunk.
    #[must_use]
    pub fn body_chunk(mut self, chunk: impl AsRef<[u8]>) -> Self {
        self.body.push(chunk.as_ref().to_vec());
        self
    }

    /// Sets trailers.
    #[must_use]
    pub fn trailers<K: AsRef<[u8]>, V: AsRef<[u8]>>(mut self, pairs: &[(K, V)]) -> Self {
        self.trailers = Some(Headers::from_pairs(pairs));
        self
    }
}

/// Sets up a [`Harness`]: how many workers, which vm_id, what they share.
#[derive(Debug)]
pub struct HarnessBuilder {
    plugin: Plugin,
    workers: usize,
    shared: Shared,
    options: VmOptions,
}

impl HarnessBuilder {
    /// Number of workers (VM instances), 1 by default.
    #[must_use]
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// The vm_id (selects the shared-data map), `"tollgate"` by default.
    #[must_use]
    pub fn vm_id(mut self, vm_id: &str) -> Self {
        vm_id.clone_into(&mut self.options.vm_id);
        self
    }

    /// The VM configuration buffer.
    #[must_use]
    pub fn vm_configuration(mut self, bytes: impl AsRef<[u8]>) -> Self {
        self.options.vm_configuration = bytes.as_ref().to_vec();
        self
    }

    /// Fuel per export call ([`crate::vm::DEFAULT_FUEL`] by default).
    #[must_use]
    pub fn fuel(mut self, fuel: u64) -> Self {
        self.options.fuel = fuel;
        self
    }

    /// Shares an existing process state (e.g. to restart workers over a surviving store).
    #[must_use]
    pub fn shared(mut self, shared: Shared) -> Self {
        self.shared = shared;
        self
    }

    /// Sets a VM-wide property.
    #[must_use]
    pub fn property(mut self, path: &[&str], value: impl AsRef<[u8]>) -> Self {
        self.options.properties.set(path, value);
        self
    }

    /// Instantiates and starts the workers without configuring them.
    pub fn start(self) -> Result<Harness, HostError> {
        let mut workers = Vec::with_capacity(self.workers);
        for worker in 0..self.workers {
            let mut vm = Vm::new(&self.plugin, &self.shared, &self.options)?;
            let mark = vm.logs().len();
            if !vm.start()? {
                return Err(HostError::VmStartRejected {
                    worker,
                    reason: vm.last_error_log_since(mark),
                });
            }
            workers.push(Mutex::new(vm));
        }
        Ok(Harness {
            shared: self.shared,
            vm_id: self.options.vm_id,
            workers,
        })
    }

    /// Starts the workers and configures each with `config`, the way Envoy configures every
    /// worker's VM. A filter that rejects it gives [`HostError::ConfigureRejected`] with the
    /// reason it logged.
    pub fn configure(self, config: impl AsRef<[u8]>) -> Result<Harness, HostError> {
        let harness = self.start()?;
        harness.configure(config)?;
        Ok(harness)
    }
}

/// N workers of one plugin in one simulated Envoy process.
///
/// Methods take `&self` and each worker sits behind its own lock, so tests can drive workers
/// from several threads (`std::thread::scope`) to get real interleavings.
#[derive(Debug)]
pub struct Harness {
    shared: Shared,
    vm_id: String,
    workers: Vec<Mutex<Vm>>,
}

impl Harness {
    /// Starts describing a harness for `plugin`.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(plugin: &Plugin) -> HarnessBuilder {
        HarnessBuilder {
            plugin: plugin.clone(),
            workers: 1,
            shared: Shared::new(),
            options: VmOptions::default(),
        }
    }

    /// Locks worker `index` for direct use of the [`Vm`] API.
    pub fn worker(&self, index: usize) -> Result<MutexGuard<'_, Vm>, HostError> {
        self.workers
            .get(index)
            .map(|vm| vm.lock().unwrap_or_else(PoisonError::into_inner))
            .ok_or(HostError::NoSuchWorker(index))
    }

    /// Number of workers.
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// (Re)configures every worker with `config`.
    pub fn configure(&self, config: impl AsRef<[u8]>) -> Result<(), HostError> {
        for index in 0..self.workers.len() {
            let mut vm = self.worker(index)?;
            let mark = vm.logs().len();
            if !vm.configure(config.as_ref())? {
                return Err(HostError::ConfigureRejected {
                    worker: index,
                    reason: vm.last_error_log_since(mark),
                });
            }
        }
        Ok(())
    }

    /// Sends `GET /` with `headers` through worker `worker`: request headers, then (if the filter
    /// lets it through) the upstream's `200`, then done/log/delete.
    pub fn request<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        worker: usize,
        headers: &[(K, V)],
    ) -> Result<Outcome, HostError> {
        self.send(worker, &Request::get("/").headers(headers))
    }

    /// Sends a whole request through worker `worker` and plays the upstream's response back.
    pub fn send(&self, worker: usize, request: &Request) -> Result<Outcome, HostError> {
        let mut stream = self.stream(worker)?;
        stream.extend_properties(&request.properties)?;
        let result = Self::drive(&mut stream, request);
        let record = stream.finish();
        // The first failure is the one to report: after a trap, finishing traps again on the
        // SDK's state the first one left half-updated ("RefCell already borrowed").
        result?;
        let record = record?;
        let Some(reply) = record.local_reply.clone() else {
            return Ok(Outcome::Continue {
                request_headers: record.request_headers.clone().unwrap_or_default(),
                response_headers: record.response_headers.clone().unwrap_or_default(),
                response_body: record.response_body.forwarded.clone(),
                record: Box::new(record),
            });
        };
        Ok(Outcome::LocalReply {
            status: reply.status,
            headers: record.response_headers.unwrap_or_default(),
            body: reply.body,
            grpc_status: reply.grpc_status,
        })
    }

    /// Plays `request` through `stream` until the filter answers or the response is done.
    fn drive(stream: &mut Stream<'_>, request: &Request) -> Result<(), HostError> {
        let stalled = |step| HostError::StreamState {
            step,
            reason: "the filter paused without answering; drive it with Harness::stream",
        };
        let has_trailers = request.trailers.is_some();
        let action = stream.request_headers(
            request.headers.clone(),
            request.body.is_empty() && !has_trailers,
        )?;
        if stream.answered() {
            return Ok(());
        }
        if action == Action::Pause {
            return Err(stalled("send request headers"));
        }
        let chunks = request.body.len();
        for (index, chunk) in request.body.iter().enumerate() {
            let last = index + 1 == chunks && !has_trailers;
            let action = stream.request_body(chunk, last)?;
            if stream.answered() {
                return Ok(());
            }
            if action == Action::Pause && last {
                return Err(stalled("send the request body"));
            }
        }
        if let Some(trailers) = &request.trailers {
            stream.request_trailers(trailers.clone())?;
            if stream.answered() {
                return Ok(());
            }
        }
        let response = &request.response;
        let has_trailers = response.trailers.is_some();
        stream.response_headers(
            response.headers.clone(),
            response.body.is_empty() && !has_trailers,
        )?;
        let chunks = response.body.len();
        for (index, chunk) in response.body.iter().enumerate() {
            stream.response_body(chunk, index + 1 == chunks && !has_trailers)?;
        }
        if let Some(trailers) = &response.trailers {
            stream.response_trailers(trailers.clone())?;
        }
        Ok(())
    }

    /// Opens a stream on worker `worker` to drive step by step.
    pub fn stream(&self, worker: usize) -> Result<Stream<'_>, HostError> {
        let vm = self
            .workers
            .get(worker)
            .ok_or(HostError::NoSuchWorker(worker))?;
        let id = vm
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .create_stream()?;
        Ok(Stream::new(vm, worker, id))
    }

    /// Moves the clock forward by `by`, firing each worker's `proxy_on_tick` at the instants it is
    /// due (with the clock reading that instant), then delivers queue notifications.
    ///
    /// A worker plays at most [`TICKS_PER_ADVANCE`] ticks of one advance; the rest of the span
    /// is a stall after which it fires once, at the last instant due (what Envoy does when a
    /// worker resumes), so that advancing a month costs what advancing an hour does.
    pub fn advance(&self, by: Duration) -> Result<(), HostError> {
        let clock = self.shared.clock();
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let target = clock.now().saturating_add(by);
        let mut fired = vec![0_u64; self.workers.len()];
        loop {
            let mut due: Option<(u64, usize)> = None;
            for index in 0..self.workers.len() {
                if let Some(at) = self.worker(index)?.next_tick() {
                    if at <= target && due.is_none_or(|(first, _)| at < first) {
                        due = Some((at, index));
                    }
                }
            }
            let Some((at, index)) = due else { break };
            if let Some(n) = fired.get_mut(index) {
                *n += 1;
                if *n == TICKS_PER_ADVANCE {
                    self.worker(index)?.skip_ticks_until(target);
                    continue;
                }
            }
            clock.set(at.max(clock.now()));
            self.worker(index)?.tick()?;
        }
        clock.set(target);
        self.deliver_queue_ready()?;
        Ok(())
    }

    /// Delivers pending `proxy_on_queue_ready` notifications to the workers that own the queues.
    pub fn deliver_queue_ready(&self) -> Result<usize, HostError> {
        let mut delivered = 0;
        for index in 0..self.workers.len() {
            delivered += self.worker(index)?.deliver_queue_ready()?;
        }
        Ok(delivered)
    }

    /// Sets the clock (nanoseconds since the Unix epoch) without firing ticks.
    pub fn set_time(&self, nanos: u64) {
        self.shared.clock().set(nanos);
    }

    /// The clock (nanoseconds since the Unix epoch).
    pub fn now(&self) -> u64 {
        self.shared.clock().now()
    }

    /// The process state the workers share.
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The shared-data store (for fault injection and inspection).
    pub fn store(&self) -> &SharedData {
        self.shared.data()
    }

    /// The stats.
    pub fn metrics(&self) -> &Metrics {
        self.shared.metrics()
    }

    /// The vm_id the workers share.
    pub fn vm_id(&self) -> &str {
        &self.vm_id
    }

    /// Keys in this vm_id's shared-data map.
    pub fn key_count(&self) -> usize {
        self.store().key_count(&self.vm_id)
    }

    /// Bytes (keys plus values) in this vm_id's shared-data map.
    pub fn total_bytes(&self) -> usize {
        self.store().total_bytes(&self.vm_id)
    }

    /// Worker `worker`'s log lines.
    pub fn logs(&self, worker: usize) -> Result<Vec<LogRecord>, HostError> {
        Ok(self.worker(worker)?.logs().to_vec())
    }

    /// Every worker's log lines, worker by worker.
    pub fn all_logs(&self) -> Result<Vec<LogRecord>, HostError> {
        let mut logs = Vec::new();
        for index in 0..self.workers.len() {
            logs.extend_from_slice(self.worker(index)?.logs());
        }
        Ok(logs)
    }

    /// Forgets every worker's log lines.
    pub fn clear_logs(&self) -> Result<(), HostError> {
        for index in 0..self.workers.len() {
            self.worker(index)?.clear_logs();
        }
        Ok(())
    }
}

/// The ticks a worker plays in one [`Harness::advance`] before the rest of the span counts as a
/// stall (an hour of Envoy's one-second ticks).
pub const TICKS_PER_ADVANCE: u64 = 3_600;
