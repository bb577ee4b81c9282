//! Driving one HTTP stream step by step, for what a whole-request call cannot express: streamed
//! bodies, a downstream reset halfway, several streams interleaved on one worker.

use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::abi::Action;
use crate::error::HostError;
use crate::headers::Headers;
use crate::record::{LocalReply, Properties, StreamRecord};
use crate::vm::Vm;

impl<K: AsRef<[u8]>, V: AsRef<[u8]>> From<&[(K, V)]> for Headers {
    fn from(pairs: &[(K, V)]) -> Self {
        Headers::from_pairs(pairs)
    }
}

impl<K: AsRef<[u8]>, V: AsRef<[u8]>, const N: usize> From<&[(K, V); N]> for Headers {
    fn from(pairs: &[(K, V); N]) -> Self {
        Headers::from_pairs(pairs)
    }
}

/// One live stream on one worker. Each step locks that worker only for the call, so other streams
/// (on this worker or others) can be driven in between.
///
/// End it with [`Stream::finish`] or [`Stream::reset`]; a dropped stream is never told it ended,
/// like a leaked context.
#[derive(Debug)]
pub struct Stream<'h> {
    vm: &'h Mutex<Vm>,
    worker: usize,
    id: u32,
}

impl<'h> Stream<'h> {
    /// Stream `id` on `vm`, which is the harness's worker number `worker`.
    pub(crate) fn new(vm: &'h Mutex<Vm>, worker: usize, id: u32) -> Self {
        Self { vm, worker, id }
    }

    /// Locks the stream's worker for one step.
    fn vm(&self) -> MutexGuard<'h, Vm> {
        self.vm.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The stream's context id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The worker it runs on.
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// Delivers request headers.
    pub fn request_headers(
        &mut self,
        headers: impl Into<Headers>,
        end_of_stream: bool,
    ) -> Result<Action, HostError> {
        self.vm()
            .request_headers(self.id, headers.into(), end_of_stream)
    }

    /// Delivers a request body chunk.
    pub fn request_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Result<Action, HostError> {
        self.vm().request_body(self.id, chunk, end_of_stream)
    }

    /// Delivers request trailers.
    pub fn request_trailers(&mut self, trailers: impl Into<Headers>) -> Result<Action, HostError> {
        self.vm().request_trailers(self.id, trailers.into())
    }

    /// Delivers upstream response headers.
    pub fn response_headers(
        &mut self,
        headers: impl Into<Headers>,
        end_of_stream: bool,
    ) -> Result<Action, HostError> {
        self.vm()
            .response_headers(self.id, headers.into(), end_of_stream)
    }

    /// Delivers a response body chunk.
    pub fn response_body(
        &mut self,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> Result<Action, HostError> {
        self.vm().response_body(self.id, chunk, end_of_stream)
    }

    /// Delivers response trailers.
    pub fn response_trailers(&mut self, trailers: impl Into<Headers>) -> Result<Action, HostError> {
        self.vm().response_trailers(self.id, trailers.into())
    }

    /// Sets a property this stream sees.
    pub fn set_property(
        &mut self,
        path: &[&str],
        value: impl AsRef<[u8]>,
    ) -> Result<(), HostError> {
        self.vm().set_stream_property(self.id, path, value);
        Ok(())
    }

    /// Copies `properties` into this stream's.
    pub fn extend_properties(&mut self, properties: &Properties) -> Result<(), HostError> {
        self.vm().extend_stream_properties(self.id, properties);
        Ok(())
    }

    /// A snapshot of what the host has seen of this stream so far.
    pub fn record(&self) -> Result<StreamRecord, HostError> {
        self.vm()
            .stream(self.id)
            .cloned()
            .ok_or(HostError::StreamState {
                step: "inspect the stream",
                reason: "the stream is finished",
            })
    }

    /// The local reply the filter sent, if it did.
    pub fn local_reply(&self) -> Result<Option<LocalReply>, HostError> {
        Ok(self.record()?.local_reply)
    }

    /// Whether the filter has answered the stream itself (a local reply went out).
    pub fn answered(&self) -> bool {
        self.record().is_ok_and(|r| r.local_reply.is_some())
    }

    /// Ends the stream normally: `proxy_on_done`, `proxy_on_log`, `proxy_on_delete`.
    pub fn finish(self) -> Result<StreamRecord, HostError> {
        self.vm().finish_stream(self.id)
    }

    /// Ends the stream as a downstream reset: straight to done/log/delete, whatever phase it is in.
    pub fn reset(self) -> Result<StreamRecord, HostError> {
        self.vm().reset_stream(self.id)
    }
}
