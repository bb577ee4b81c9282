//! Driving one HTTP stream step by step, for what a whole-request call cannot express: streamed
//! bodies, a downstream reset halfway, several streams interleaved on one worker.

use crate::abi::Action;
use crate::error::HostError;
use crate::harness::Harness;
use crate::headers::Headers;
use crate::record::{LocalReply, Properties, StreamRecord};

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
    harness: &'h Harness,
    worker: usize,
    id: u32,
}

impl<'h> Stream<'h> {
    pub(crate) fn new(harness: &'h Harness, worker: usize, id: u32) -> Self {
        Self {
            harness,
            worker,
            id,
        }
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
        self.harness
            .worker(self.worker)?
            .request_headers(self.id, headers.into(), end_of_stream)
    }

    /// Delivers a request body chunk.
    pub fn request_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Result<Action, HostError> {
        self.harness
            .worker(self.worker)?
            .request_body(self.id, chunk, end_of_stream)
    }

    /// Delivers request trailers.
    pub fn request_trailers(&mut self, trailers: impl Into<Headers>) -> Result<Action, HostError> {
        self.harness
            .worker(self.worker)?
            .request_trailers(self.id, trailers.into())
    }

    /// Delivers upstream response headers.
    pub fn response_headers(
        &mut self,
        headers: impl Into<Headers>,
        end_of_stream: bool,
    ) -> Result<Action, HostError> {
        self.harness
            .worker(self.worker)?
            .response_headers(self.id, headers.into(), end_of_stream)
    }

    /// Delivers a response body chunk.
    pub fn response_body(
        &mut self,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> Result<Action, HostError> {
        self.harness
            .worker(self.worker)?
            .response_body(self.id, chunk, end_of_stream)
    }

    /// Delivers response trailers.
    pub fn response_trailers(&mut self, trailers: impl Into<Headers>) -> Result<Action, HostError> {
        self.harness
            .worker(self.worker)?
            .response_trailers(self.id, trailers.into())
    }

    /// Sets a property this stream sees.
    pub fn set_property(
        &mut self,
        path: &[&str],
        value: impl AsRef<[u8]>,
    ) -> Result<(), HostError> {
        self.harness
            .worker(self.worker)?
            .set_stream_property(self.id, path, value);
        Ok(())
    }

    /// Copies `properties` into this stream's.
    pub fn extend_properties(&mut self, properties: &Properties) -> Result<(), HostError> {
        self.harness
            .worker(self.worker)?
            .extend_stream_properties(self.id, properties);
        Ok(())
    }

    /// A snapshot of what the host has seen of this stream so far.
    pub fn record(&self) -> Result<StreamRecord, HostError> {
        self.harness
            .worker(self.worker)?
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
        self.harness.worker(self.worker)?.finish_stream(self.id)
    }

    /// Ends the stream as a downstream reset: straight to done/log/delete, whatever phase it is in.
    pub fn reset(self) -> Result<StreamRecord, HostError> {
        self.harness.worker(self.worker)?.reset_stream(self.id)
    }
}
