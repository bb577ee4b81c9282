//! The per-instance host state: what one VM's imports read and write (its contexts and
//! streams, logs, callouts, configuration), kept in the wasmtime `Store` of its [`crate::Vm`].
//!
//! It has a module of its own so that the layers that use it (guest memory access, the imports,
//! the compiled plugin, the VM) all depend on it and not on each other.

use std::collections::{BTreeMap, HashMap};

use crate::abi::{LogLevel, MapType, Status};
use crate::headers::Headers;
use crate::record::{CallReply, GrpcCallout, HttpCallout, LogRecord, Properties, StreamRecord};
use crate::shared::Shared;

/// The root context id the host gives the plugin (Envoy numbers contexts per VM from 1).
pub const ROOT_CONTEXT_ID: u32 = 1;

/// The store data of one instance: everything the imports read and write.
#[derive(Debug)]
pub struct HostState {
    pub(crate) shared: Shared,
    pub(crate) vm_id: String,
    pub(crate) instance_id: u64,
    pub(crate) vm_configuration: Vec<u8>,
    pub(crate) plugin_configuration: Vec<u8>,
    pub(crate) log_level: LogLevel,
    pub(crate) logs: Vec<LogRecord>,
    pub(crate) properties: Properties,
    pub(crate) tick_period_ms: u32,
    pub(crate) next_tick: Option<u64>,
    pub(crate) current_context: u32,
    pub(crate) streams: HashMap<u32, StreamRecord>,
    pub(crate) next_context: u32,
    pub(crate) http_callouts: BTreeMap<u32, HttpCallout>,
    pub(crate) grpc_callouts: BTreeMap<u32, GrpcCallout>,
    pub(crate) next_token: u32,
    pub(crate) call_reply: CallReply,
    pub(crate) grpc_status: (u32, Vec<u8>),
    pub(crate) done_calls: u32,
}

impl HostState {
    /// A fresh instance's state: no streams, no logs, no callouts; the root context is
    /// [`ROOT_CONTEXT_ID`] and stream contexts are numbered after it.
    pub(crate) fn new(
        shared: &Shared,
        vm_id: String,
        vm_configuration: Vec<u8>,
        log_level: LogLevel,
        properties: Properties,
    ) -> Self {
        Self {
            shared: shared.clone(),
            vm_id,
            instance_id: shared.next_instance_id(),
            vm_configuration,
            plugin_configuration: Vec::new(),
            log_level,
            logs: Vec::new(),
            properties,
            tick_period_ms: 0,
            next_tick: None,
            current_context: 0,
            streams: HashMap::new(),
            next_context: ROOT_CONTEXT_ID + 1,
            http_callouts: BTreeMap::new(),
            grpc_callouts: BTreeMap::new(),
            next_token: 1,
            call_reply: CallReply::default(),
            grpc_status: (0, Vec::new()),
            done_calls: 0,
        }
    }

    /// The stream the guest is acting on, or `BadArgument` from a root context.
    pub(crate) fn stream_mut(&mut self) -> Result<&mut StreamRecord, Status> {
        self.streams
            .get_mut(&self.current_context)
            .ok_or(Status::BadArgument)
    }

    fn stream(&self) -> Option<&StreamRecord> {
        self.streams.get(&self.current_context)
    }

    /// The header map `map` as the guest may read it now. `Ok(None)`: absent, which reads as empty
    /// in the log phase. `Err(BadArgument)`: not available in this phase (Envoy's answer).
    pub(crate) fn header_map(&self, map: MapType) -> Result<Option<&Headers>, Status> {
        let reply = &self.call_reply;
        let found = match map {
            MapType::HttpCallResponseHeaders => reply.http_headers.as_ref(),
            MapType::HttpCallResponseTrailers => reply.http_trailers.as_ref(),
            MapType::GrpcReceiveInitialMetadata => reply.grpc_initial_metadata.as_ref(),
            MapType::GrpcReceiveTrailingMetadata => reply.grpc_trailing_metadata.as_ref(),
            _ => {
                let stream = self.stream().ok_or(Status::BadArgument)?;
                let found = match map {
                    MapType::HttpRequestHeaders => stream.request_headers.as_ref(),
                    MapType::HttpRequestTrailers => stream.request_trailers.as_ref(),
                    MapType::HttpResponseHeaders => stream.response_headers.as_ref(),
                    _ => stream.response_trailers.as_ref(),
                };
                if found.is_none() && stream.in_log_phase {
                    return Ok(None);
                }
                found
            }
        };
        found.map(Some).ok_or(Status::BadArgument)
    }

    /// The header map `map` for writing; callout replies are read-only.
    pub(crate) fn header_map_mut(&mut self, map: MapType) -> Result<&mut Headers, Status> {
        let stream = self.stream_mut()?;
        let found = match map {
            MapType::HttpRequestHeaders => stream.request_headers.as_mut(),
            MapType::HttpRequestTrailers => stream.request_trailers.as_mut(),
            MapType::HttpResponseHeaders => stream.response_headers.as_mut(),
            MapType::HttpResponseTrailers => stream.response_trailers.as_mut(),
            _ => None,
        };
        found.ok_or(Status::BadArgument)
    }

    /// A property: the current stream's first, then the VM's.
    pub(crate) fn property(&self, path: &[Vec<u8>]) -> Option<Vec<u8>> {
        self.stream()
            .and_then(|s| s.properties.lookup(path))
            .or_else(|| self.properties.lookup(path))
            .map(<[u8]>::to_vec)
    }

    pub(crate) fn next_token(&mut self) -> u32 {
        let token = self.next_token;
        self.next_token = self.next_token.wrapping_add(1).max(1);
        token
    }

    pub(crate) fn log(&mut self, level: LogLevel, message: &[u8]) {
        self.logs.push(LogRecord {
            level,
            message: String::from_utf8_lossy(message).into_owned(),
            context_id: self.current_context,
        });
    }
}
