//! One VM instance: what Envoy runs on each worker thread. It owns a wasmtime `Store` whose data is
//! the per-instance host state, and shares [`Shared`] with its sibling workers.
//!
//! Every export call gets a fresh fuel budget, so a runaway guest comes back as
//! [`HostError::Runaway`] instead of hanging the test, and every trap comes back as
//! [`HostError::Trap`] carrying the guest's last error log line.

use std::fmt;
use std::time::Duration;

use wasmtime::{Instance, Store, Trap, WasmParams, WasmResults};

use crate::abi::{Action, LogLevel};
use crate::error::HostError;
use crate::headers::Headers;
use crate::plugin::Plugin;
use crate::record::{
    CallReply, GrpcCallout, HttpCallout, HttpReply, LocalReply, LogRecord, Properties, StreamRecord,
};
use crate::shared::Shared;
use crate::state::HostState;

/// Where they were before the state had a module of its own.
pub use crate::state::ROOT_CONTEXT_ID;

/// Fuel for one export call: far more than any sane callback needs (a request through tollgate
/// costs well under a million), small enough that an endless loop is caught in about a second.
pub const DEFAULT_FUEL: u64 = 1_000_000_000;

/// How a VM instance is set up.
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// The vm_id: workers with the same vm_id share one shared-data map.
    pub vm_id: String,
    /// Bytes the filter reads as its VM configuration in `proxy_on_vm_start`.
    pub vm_configuration: Vec<u8>,
    /// Fuel per export call.
    pub fuel: u64,
    /// The level `proxy_get_log_level` reports (every line is captured whatever it says).
    pub log_level: LogLevel,
    /// VM-wide properties (streams overlay their own).
    pub properties: Properties,
}

impl Default for VmOptions {
    fn default() -> Self {
        Self {
            vm_id: "tollgate".to_owned(),
            vm_configuration: Vec::new(),
            fuel: DEFAULT_FUEL,
            log_level: LogLevel::Trace,
            properties: Properties::default(),
        }
    }
}

/// One VM instance (one simulated Envoy worker).
pub struct Vm {
    store: Store<HostState>,
    instance: Instance,
    fuel: u64,
}

impl fmt::Debug for Vm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vm")
            .field("vm_id", &self.store.data().vm_id)
            .field("fuel", &self.fuel)
            .finish_non_exhaustive()
    }
}

impl Vm {
    /// Instantiates `plugin` against `shared`. Runs no guest code: call [`Vm::start`] next.
    pub fn new(plugin: &Plugin, shared: &Shared, options: &VmOptions) -> Result<Self, HostError> {
        let mut store = Store::new(
            plugin.engine(),
            HostState::new(
                shared,
                options.vm_id.clone(),
                options.vm_configuration.clone(),
                options.log_level,
                options.properties.clone(),
            ),
        );
        store.set_fuel(options.fuel).map_err(HostError::Load)?;
        let instance = plugin
            .instance_pre()
            .instantiate(&mut store)
            .map_err(HostError::Load)?;
        Ok(Self {
            store,
            instance,
            fuel: options.fuel,
        })
    }

    /// Calls export `name` with a fresh fuel budget, with `context` as the current context.
    /// Public so tests can drive hand-written modules' own exports.
    pub fn call<P, R>(
        &mut self,
        name: &'static str,
        context: u32,
        params: P,
    ) -> Result<R, HostError>
    where
        P: WasmParams,
        R: WasmResults,
    {
        let func = self
            .instance
            .get_typed_func::<P, R>(&mut self.store, name)
            .map_err(|_| HostError::MissingExport(name))?;
        self.store.data_mut().current_context = context;
        let mark = self.store.data().logs.len();
        self.store.set_fuel(self.fuel).map_err(HostError::Load)?;
        self.store.data().shared.mark_fuel(name, self.fuel, true);
        let result = func
            .call(&mut self.store, params)
            .map_err(|error| self.classify(name, &error, mark));
        if let Ok(left) = self.store.get_fuel() {
            let used = self.fuel.saturating_sub(left);
            self.store.data().shared.fuel().add(name, used);
            self.store.data().shared.mark_fuel("return", left, false);
        }
        result
    }

    fn classify(&self, call: &'static str, error: &wasmtime::Error, mark: usize) -> HostError {
        if error.downcast_ref::<Trap>() == Some(&Trap::OutOfFuel) {
            return HostError::Runaway {
                call,
                fuel: self.fuel,
            };
        }
        HostError::Trap {
            call,
            message: format!("{error:#}"),
            last_error_log: self.last_error_log_since(mark),
        }
    }

    /// The last Critical or Error line among the lines from index `mark` on: "why did this call
    /// fail", without blaming an older line.
    pub fn last_error_log_since(&self, mark: usize) -> Option<String> {
        self.store
            .data()
            .logs
            .get(mark..)
            .unwrap_or_default()
            .iter()
            .rev()
            .find(|log| log.level >= LogLevel::Error)
            .map(|log| log.message.clone())
    }

    fn has_export(&mut self, name: &str) -> bool {
        self.instance.get_func(&mut self.store, name).is_some()
    }

    fn action(call: &'static str, value: i32) -> Result<Action, HostError> {
        Action::try_from(value).map_err(|value| HostError::BadReturn { call, value })
    }

    /// Runs the module's start-up (`_initialize`, else `_start`), creates the root context and
    /// calls `proxy_on_vm_start`. Returns what `proxy_on_vm_start` returned.
    pub fn start(&mut self) -> Result<bool, HostError> {
        if self.has_export("_initialize") {
            self.call::<(), ()>("_initialize", 0, ())?;
        } else if self.has_export("_start") {
            self.call::<(), ()>("_start", 0, ())?;
        }
        self.call::<(i32, i32), ()>(
            "proxy_on_context_create",
            ROOT_CONTEXT_ID,
            (ROOT_CONTEXT_ID as i32, 0),
        )?;
        let size = self.store.data().vm_configuration.len() as i32;
        let started: i32 = self.call(
            "proxy_on_vm_start",
            ROOT_CONTEXT_ID,
            (ROOT_CONTEXT_ID as i32, size),
        )?;
        Ok(started != 0)
    }

    /// Hands `config` to the filter as its plugin configuration and calls `proxy_on_configure`.
    /// Returns what it returned; on `false`, [`Vm::last_error_log`] usually says why.
    pub fn configure(&mut self, config: &[u8]) -> Result<bool, HostError> {
        self.store.data_mut().plugin_configuration = config.to_vec();
        let size = config.len() as i32;
        let configured: i32 = self.call(
            "proxy_on_configure",
            ROOT_CONTEXT_ID,
            (ROOT_CONTEXT_ID as i32, size),
        )?;
        Ok(configured != 0)
    }

    /// Creates an HTTP stream context (`proxy_on_context_create(id, root)`) and returns its id.
    pub fn create_stream(&mut self) -> Result<u32, HostError> {
        let state = self.store.data_mut();
        let id = state.next_context;
        state.next_context += 1;
        state.streams.insert(
            id,
            StreamRecord {
                context_id: id,
                ..StreamRecord::default()
            },
        );
        self.call::<(i32, i32), ()>(
            "proxy_on_context_create",
            id,
            (id as i32, ROOT_CONTEXT_ID as i32),
        )?;
        Ok(id)
    }

    fn stream_checked(
        &mut self,
        id: u32,
        step: &'static str,
    ) -> Result<&mut StreamRecord, HostError> {
        let stream = self
            .store
            .data_mut()
            .streams
            .get_mut(&id)
            .ok_or(HostError::StreamState {
                step,
                reason: "the stream is finished or was never created",
            })?;
        if stream.local_reply_delivered {
            return Err(HostError::StreamState {
                step,
                reason: "the filter already answered this stream with a local reply",
            });
        }
        Ok(stream)
    }

    /// The stream `id`, while it lives.
    pub fn stream(&self, id: u32) -> Option<&StreamRecord> {
        self.store.data().streams.get(&id)
    }

    /// Sets a property visible to stream `id` only.
    pub fn set_stream_property(&mut self, id: u32, path: &[&str], value: impl AsRef<[u8]>) {
        if let Some(stream) = self.store.data_mut().streams.get_mut(&id) {
            stream.properties.set(path, value);
        }
    }

    /// Copies `properties` into stream `id`'s own.
    pub fn extend_stream_properties(&mut self, id: u32, properties: &Properties) {
        if let Some(stream) = self.store.data_mut().streams.get_mut(&id) {
            stream.properties.extend(properties);
        }
    }

    /// Sets a property visible to every stream of this VM.
    pub fn set_property(&mut self, path: &[&str], value: impl AsRef<[u8]>) {
        self.store.data_mut().properties.set(path, value);
    }

    /// Delivers request headers (`proxy_on_request_headers`).
    pub fn request_headers(
        &mut self,
        id: u32,
        headers: Headers,
        end_of_stream: bool,
    ) -> Result<Action, HostError> {
        let stream = self.stream_checked(id, "deliver request headers")?;
        let count = headers.len() as i32;
        stream.request_headers = Some(headers);
        let action = self.call(
            "proxy_on_request_headers",
            id,
            (id as i32, count, i32::from(end_of_stream)),
        )?;
        self.settle(id, "proxy_on_request_headers", action)
    }

    /// Delivers a request body chunk (`proxy_on_request_body`). While the filter pauses, chunks
    /// accumulate in its buffer, as Envoy buffers them.
    pub fn request_body(
        &mut self,
        id: u32,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> Result<Action, HostError> {
        let stream = self.stream_checked(id, "deliver a request body chunk")?;
        stream.request_body.buffered.extend_from_slice(chunk);
        let size = stream.request_body.buffered.len() as i32;
        let action = self.call(
            "proxy_on_request_body",
            id,
            (id as i32, size, i32::from(end_of_stream)),
        )?;
        let action = self.settle(id, "proxy_on_request_body", action)?;
        if action == Action::Continue {
            if let Some(stream) = self.store.data_mut().streams.get_mut(&id) {
                let body = &mut stream.request_body;
                body.forwarded.append(&mut body.buffered);
            }
        }
        Ok(action)
    }

    /// Delivers request trailers (`proxy_on_request_trailers`).
    pub fn request_trailers(&mut self, id: u32, trailers: Headers) -> Result<Action, HostError> {
        let stream = self.stream_checked(id, "deliver request trailers")?;
        let count = trailers.len() as i32;
        stream.request_trailers = Some(trailers);
        let action = self.call("proxy_on_request_trailers", id, (id as i32, count))?;
        self.settle(id, "proxy_on_request_trailers", action)
    }

    /// Delivers upstream response headers (`proxy_on_response_headers`).
    pub fn response_headers(
        &mut self,
        id: u32,
        headers: Headers,
        end_of_stream: bool,
    ) -> Result<Action, HostError> {
        let stream = self.stream_checked(id, "deliver response headers")?;
        let count = headers.len() as i32;
        stream.response_headers = Some(headers);
        stream.response_started = true;
        let action = self.call(
            "proxy_on_response_headers",
            id,
            (id as i32, count, i32::from(end_of_stream)),
        )?;
        self.settle(id, "proxy_on_response_headers", action)
    }

    /// Delivers a response body chunk (`proxy_on_response_body`), buffering while the filter pauses.
    pub fn response_body(
        &mut self,
        id: u32,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> Result<Action, HostError> {
        let stream = self.stream_checked(id, "deliver a response body chunk")?;
        stream.response_body.buffered.extend_from_slice(chunk);
        let size = stream.response_body.buffered.len() as i32;
        let action = self.call(
            "proxy_on_response_body",
            id,
            (id as i32, size, i32::from(end_of_stream)),
        )?;
        let action = self.settle(id, "proxy_on_response_body", action)?;
        if action == Action::Continue {
            if let Some(stream) = self.store.data_mut().streams.get_mut(&id) {
                let body = &mut stream.response_body;
                body.forwarded.append(&mut body.buffered);
            }
        }
        Ok(action)
    }

    /// Delivers response trailers (`proxy_on_response_trailers`).
    pub fn response_trailers(&mut self, id: u32, trailers: Headers) -> Result<Action, HostError> {
        let stream = self.stream_checked(id, "deliver response trailers")?;
        let count = trailers.len() as i32;
        stream.response_trailers = Some(trailers);
        let action = self.call("proxy_on_response_trailers", id, (id as i32, count))?;
        self.settle(id, "proxy_on_response_trailers", action)
    }

    /// Ends stream `id` the way Envoy does after the last byte or a reset: `proxy_on_done`,
    /// `proxy_on_log`, `proxy_on_delete`. Returns what the host saw of it.
    pub fn finish_stream(&mut self, id: u32) -> Result<StreamRecord, HostError> {
        match self.store.data_mut().streams.get_mut(&id) {
            Some(stream) => stream.in_log_phase = true,
            None => {
                return Err(HostError::StreamState {
                    step: "finish the stream",
                    reason: "the stream is finished or was never created",
                })
            }
        }
        let outcome = self
            .call::<i32, i32>("proxy_on_done", id, id as i32)
            .and_then(|_| self.call::<i32, ()>("proxy_on_log", id, id as i32))
            .and_then(|()| self.call::<i32, ()>("proxy_on_delete", id, id as i32));
        let record = self.store.data_mut().streams.remove(&id);
        outcome?;
        record.ok_or(HostError::StreamState {
            step: "finish the stream",
            reason: "the stream vanished",
        })
    }

    /// Ends stream `id` as a downstream reset: straight to done/log/delete.
    pub fn reset_stream(&mut self, id: u32) -> Result<StreamRecord, HostError> {
        if let Some(stream) = self.store.data_mut().streams.get_mut(&id) {
            stream.reset_by_downstream = true;
        }
        self.finish_stream(id)
    }

    /// After a stream callback: checks its return value and, if the filter sent a local reply,
    /// plays Envoy's part: the reply goes out after the callback returns and passes back through
    /// this filter's response callbacks (Envoy runs encoder filters on local replies). A reply
    /// after the response has started resets the stream instead.
    fn settle(&mut self, id: u32, call: &'static str, value: i32) -> Result<Action, HostError> {
        let action = Self::action(call, value)?;
        let Some(stream) = self.store.data_mut().streams.get_mut(&id) else {
            return Ok(action);
        };
        let Some(reply) = stream.local_reply.clone() else {
            return Ok(action);
        };
        if stream.local_reply_delivered {
            return Ok(action);
        }
        stream.local_reply_delivered = true;
        if stream.response_started {
            stream.reset_by_filter = true;
            return Ok(action);
        }
        let grpc_request = stream
            .request_headers
            .as_ref()
            .and_then(|h| h.get_bytes("content-type"))
            .is_some_and(|ct| ct.starts_with(b"application/grpc"));
        let (headers, body) = envoy_local_reply(&reply, grpc_request);
        let count = headers.len() as i32;
        stream.response_headers = Some(headers);
        stream.response_started = true;
        let end_of_stream = body.is_empty();
        stream.response_body.buffered.clone_from(&body);
        self.call::<(i32, i32, i32), i32>(
            "proxy_on_response_headers",
            id,
            (id as i32, count, i32::from(end_of_stream)),
        )?;
        if !end_of_stream {
            self.call::<(i32, i32, i32), i32>(
                "proxy_on_response_body",
                id,
                (id as i32, body.len() as i32, 1),
            )?;
        }
        if let Some(stream) = self.store.data_mut().streams.get_mut(&id) {
            let body = &mut stream.response_body;
            body.forwarded.append(&mut body.buffered);
        }
        Ok(action)
    }

    /// The tick period the filter asked for, if any.
    pub fn tick_period(&self) -> Option<Duration> {
        let ms = self.store.data().tick_period_ms;
        (ms > 0).then(|| Duration::from_millis(u64::from(ms)))
    }

    /// When the next tick is due (virtual nanoseconds).
    pub fn next_tick(&self) -> Option<u64> {
        self.store.data().next_tick
    }

    /// Fires `proxy_on_tick` and schedules the next one.
    pub fn tick(&mut self) -> Result<(), HostError> {
        let state = self.store.data_mut();
        let period = u64::from(state.tick_period_ms) * 1_000_000;
        state.next_tick = state.next_tick.map(|due| due.saturating_add(period.max(1)));
        self.call::<i32, ()>("proxy_on_tick", ROOT_CONTEXT_ID, ROOT_CONTEXT_ID as i32)
    }

    /// Skips the ticks due before the last one due at or before `until` (virtual nanoseconds):
    /// a worker that stalled fires once when it resumes, as Envoy's tick timer does (it is re-armed
    /// one period after it fires, never once per missed period).
    pub fn skip_ticks_until(&mut self, until: u64) {
        let state = self.store.data_mut();
        let period = (u64::from(state.tick_period_ms) * 1_000_000).max(1);
        if let Some(due) = state.next_tick.filter(|due| *due < until) {
            state.next_tick = Some(due + (until - due) / period * period);
        }
    }

    /// Delivers pending `proxy_on_queue_ready` notifications for queues this VM registered.
    pub fn deliver_queue_ready(&mut self) -> Result<usize, HostError> {
        let state = self.store.data();
        let ready = state.shared.queues().take_ready(state.instance_id);
        for id in &ready {
            self.call::<(i32, i32), ()>(
                "proxy_on_queue_ready",
                ROOT_CONTEXT_ID,
                (ROOT_CONTEXT_ID as i32, *id as i32),
            )?;
        }
        Ok(ready.len())
    }

    /// HTTP callouts not yet answered.
    pub fn pending_http_callouts(&self) -> Vec<HttpCallout> {
        self.store.data().http_callouts.values().cloned().collect()
    }

    /// gRPC callouts not yet answered.
    pub fn pending_grpc_callouts(&self) -> Vec<GrpcCallout> {
        self.store.data().grpc_callouts.values().cloned().collect()
    }

    /// Answers HTTP callout `token` (`proxy_on_http_call_response`).
    pub fn deliver_http_reply(&mut self, token: u32, reply: HttpReply) -> Result<(), HostError> {
        let state = self.store.data_mut();
        let callout = state
            .http_callouts
            .remove(&token)
            .ok_or(HostError::UnknownToken(token))?;
        let counts = (
            reply.headers.len() as i32,
            reply.body.len() as i32,
            reply.trailers.len() as i32,
        );
        state.call_reply = CallReply {
            http_headers: Some(reply.headers),
            http_body: Some(reply.body),
            http_trailers: Some(reply.trailers),
            ..CallReply::default()
        };
        let context = callout.context_id;
        let result = self.call::<(i32, i32, i32, i32, i32), ()>(
            "proxy_on_http_call_response",
            context,
            (context as i32, token as i32, counts.0, counts.1, counts.2),
        );
        self.store.data_mut().call_reply = CallReply::default();
        result?;
        self.settle_callout(context)
    }

    /// Answers gRPC callout `token`: status 0 delivers `message` (`proxy_on_grpc_receive`);
    /// any other status closes the call (`proxy_on_grpc_close`) with `message` as the status text.
    pub fn deliver_grpc_reply(
        &mut self,
        token: u32,
        status: u32,
        message: &[u8],
    ) -> Result<(), HostError> {
        let state = self.store.data_mut();
        let callout = state
            .grpc_callouts
            .remove(&token)
            .ok_or(HostError::UnknownToken(token))?;
        let context = callout.context_id;
        let result = if status == 0 {
            state.grpc_status = (0, Vec::new());
            state.call_reply = CallReply {
                grpc_message: Some(message.to_vec()),
                ..CallReply::default()
            };
            self.call::<(i32, i32, i32), ()>(
                "proxy_on_grpc_receive",
                context,
                (context as i32, token as i32, message.len() as i32),
            )
        } else {
            state.grpc_status = (status, message.to_vec());
            self.call::<(i32, i32, i32), ()>(
                "proxy_on_grpc_close",
                context,
                (context as i32, token as i32, status as i32),
            )
        };
        self.store.data_mut().call_reply = CallReply::default();
        result?;
        self.settle_callout(context)
    }

    /// A callout reply may end in a local reply; treat it like any stream callback.
    fn settle_callout(&mut self, context: u32) -> Result<(), HostError> {
        if self.store.data().streams.contains_key(&context) {
            self.settle(context, "callout reply", 0)?;
        }
        Ok(())
    }

    /// Copies `len` bytes of guest memory at `ptr` (for tests of hand-written modules).
    pub fn read_memory(&mut self, ptr: u32, len: usize) -> Option<Vec<u8>> {
        let memory = self.instance.get_memory(&mut self.store, "memory")?;
        let start = ptr as usize;
        let end = start.checked_add(len)?;
        memory.data(&self.store).get(start..end).map(<[u8]>::to_vec)
    }

    /// Writes `bytes` into guest memory at `ptr`; `None` if out of bounds.
    pub fn write_memory(&mut self, ptr: u32, bytes: &[u8]) -> Option<()> {
        let memory = self.instance.get_memory(&mut self.store, "memory")?;
        let start = ptr as usize;
        let end = start.checked_add(bytes.len())?;
        memory
            .data_mut(&mut self.store)
            .get_mut(start..end)?
            .copy_from_slice(bytes);
        Some(())
    }

    /// Every log line so far.
    pub fn logs(&self) -> &[LogRecord] {
        &self.store.data().logs
    }

    /// Forgets the log lines so far (long tests keep memory flat).
    pub fn clear_logs(&mut self) {
        self.store.data_mut().logs.clear();
    }

    /// The last Critical or Error line, if any.
    pub fn last_error_log(&self) -> Option<String> {
        self.last_error_log_since(0)
    }

    /// How many times the guest called `proxy_done`.
    pub fn done_calls(&self) -> u32 {
        self.store.data().done_calls
    }

    /// The vm_id.
    pub fn vm_id(&self) -> &str {
        &self.store.data().vm_id
    }
}

/// The response Envoy builds for a local reply (`Utility::prepareLocalReply`): `:status`, the
/// filter's headers, and for a body `content-length` plus a default `content-type: text/plain`.
/// For a gRPC request Envoy answers trailers-only: HTTP 200, `content-type: application/grpc`,
/// `grpc-status` (the filter's, else mapped from the HTTP status) and `grpc-message` (the body).
fn envoy_local_reply(reply: &LocalReply, grpc_request: bool) -> (Headers, Vec<u8>) {
    let mut headers = Headers::new();
    if grpc_request {
        headers.add(":status", "200");
        headers.add("content-type", "application/grpc");
        for (name, value) in reply.headers.iter() {
            headers.replace(name, value);
        }
        let status = reply
            .grpc_status
            .unwrap_or_else(|| grpc_status_for_http(reply.status));
        headers.replace("grpc-status", status.to_string());
        if !reply.body.is_empty() {
            headers.replace("grpc-message", &reply.body);
        }
        return (headers, Vec::new());
    }
    headers.add(":status", reply.status.to_string());
    for (name, value) in reply.headers.iter() {
        headers.add(name, value);
    }
    if !reply.body.is_empty() {
        headers.replace("content-length", reply.body.len().to_string());
        if !headers.contains("content-type") {
            headers.add("content-type", "text/plain");
        }
    }
    (headers, reply.body.clone())
}

/// Envoy's `Grpc::Utility::httpToGrpcStatus`.
fn grpc_status_for_http(status: u32) -> u32 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}
