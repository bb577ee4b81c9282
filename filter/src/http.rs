//! One HTTP stream: decide on the request headers, decorate or refuse; for LLM tiers, follow
//! the bodies (see [`crate::llm`]).

use std::rc::Rc;

use policy_core::global::descriptor::{BucketKey, TableId};
use policy_core::headers;
use policy_core::policy::OnStoreFailure;
use policy_core::table::{Placement, TableError};
use policy_core::tier::Tier;
use policy_core::{Nanos, Outcome};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, LogLevel, MapType};

use crate::attributes::Request;
use crate::host;
use crate::llm::{Admission, LlmStream, Phase};
use crate::metrics::Event;
use crate::plugin::Plugin;
use crate::reply;
use crate::shared::SharedData;
use policy_core::llm::{ApiKind, RewriteError, MAX_STREAM_USAGE_GROWTH};

/// Bytes a request body may grow by when asked to report stream usage.
const REWRITE_ROOM: u64 = MAX_STREAM_USAGE_GROWTH as u64;

/// An admission decided while a body passes, before the chunk in hand goes upstream.
#[derive(Clone, Copy, Debug)]
enum Early {
    /// On its first chunk, of this size.
    First(usize),
    /// On a later chunk of a body without `content-length`, this many bytes seen in all.
    More(usize),
}

/// A stream's state between request and response.
#[derive(Debug)]
pub struct Stream {
    id: u32,
    plugin: Rc<Plugin>,
    /// Headers to add to the response of an admitted request.
    pending: headers::Fields,
    /// Set for a request on a tier with token budgets.
    llm: Option<LlmStream>,
    grpc: bool,
}

impl Stream {
    pub fn new(id: u32, plugin: Rc<Plugin>) -> Stream {
        Stream {
            id,
            plugin,
            pending: Vec::new(),
            llm: None,
            grpc: false,
        }
    }

    fn now(&self) -> Nanos {
        host::clock()
    }

    fn log(&self, level: LogLevel, msg: &str) {
        let _ = host::log(level, &format!("tollgate[{}]: {msg}", self.id));
    }

    fn tier(&self, index: usize) -> Option<&Tier> {
        self.plugin.policy.tiers().get(index)
    }

    /// Admits the LLM request against its token budgets; replies itself when refused.
    /// Returns whether the stream may go on. `early`: decide on a chunk of a body that passes,
    /// before it goes upstream (see [`Early`]); `None`: the body is read, decide the rest.
    fn admit_tokens(&mut self, early: Option<Early>) -> bool {
        let plugin = Rc::clone(&self.plugin);
        let now = self.now();
        let (Some(llm), Some(settings)) = (self.llm.as_mut(), plugin.policy.llm()) else {
            return true;
        };
        let Some(tier) = plugin.policy.tiers().get(llm.tier) else {
            return true;
        };
        let admission = match (early, plugin.policy.llm()) {
            (Some(Early::First(size)), Some(settings)) => {
                llm.admit_early(&plugin.policy, tier, settings, size, now)
            }
            (Some(Early::More(seen)), Some(settings)) => {
                llm.top_up(&plugin.policy, tier, settings, seen, now)
            }
            _ => llm.admit(&plugin.policy, tier, now),
        };
        match admission {
            Admission::Admitted => {
                if early.is_none() {
                    plugin.metrics.count(llm.tier, Event::Allowed);
                }
                true
            }
            Admission::Denied => {
                plugin.metrics.count(llm.tier, Event::Denied);
                let fields = llm.fields(tier, settings, || now);
                let body = headers::llm_denial_body(
                    llm.style(),
                    tier,
                    Some(&llm.requests),
                    llm.tokens.as_ref(),
                );
                let (wait, max_wait) = (llm.retry_after(), settings.max_client_wait);
                reply::llm_rate_limited(self.grpc, fields, &body, wait, max_wait);
                false
            }
            Admission::Contended => {
                plugin.metrics.count(llm.tier, Event::Contended);
                self.llm = None;
                reply::contended(self.grpc);
                false
            }
            Admission::StoreFailed => {
                plugin.metrics.count(llm.tier, Event::StoreFailure);
                self.llm = None;
                match plugin.policy.on_store_failure() {
                    OnStoreFailure::Allow => true,
                    OnStoreFailure::Deny => {
                        reply::unavailable(self.grpc);
                        false
                    }
                }
            }
        }
    }

    /// Settles the LLM stream at its end (complete or not).
    fn settle(&mut self, complete: bool) {
        let plugin = Rc::clone(&self.plugin);
        let Some(settings) = plugin.policy.llm() else {
            return;
        };
        let Some(llm) = self.llm.as_mut() else {
            return;
        };
        let Some(cost) = llm.final_cost(settings, complete) else {
            return;
        };
        self.settle_at(cost);
    }

    fn settle_at(&mut self, cost: u64) {
        let plugin = Rc::clone(&self.plugin);
        let now = self.now();
        let Some(llm) = self.llm.as_mut() else {
            return;
        };
        let Some(tier) = plugin.policy.tiers().get(llm.tier) else {
            return;
        };
        if let (Some(global), true) = (&plugin.global, tier.global) {
            // The real charge, recorded once per budget the call held.
            for (budget, slot) in llm.held() {
                let table = u8::try_from(budget).map(TableId::Budget);
                if let Ok(table) = table {
                    global.record(BucketKey::new(llm.tier, table, slot), cost);
                }
            }
        }
        if let Some((reserved, charged)) = llm.settle(&plugin.policy, tier, cost, now) {
            plugin
                .metrics
                .add(llm.tier, Event::TokensReserved, reserved);
            plugin.metrics.add(llm.tier, Event::TokensCharged, charged);
            plugin.metrics.add(
                llm.tier,
                Event::TokensRefunded,
                reserved.saturating_sub(charged),
            );
            if let Some(model) = llm.model() {
                plugin.metrics.add_model(llm.tier, model, charged);
            }
        }
    }

    /// The body chunk Envoy offers, without a host call for an empty one (Envoy ends many
    /// bodies with an empty end-of-stream callback).
    fn body_bytes(&self, size: usize, request: bool) -> Vec<u8> {
        if size == 0 {
            return Vec::new();
        }
        let bytes = if request {
            host::buffer(BufferType::HttpRequestBody, 0, size)
                .ok()
                .flatten()
        } else {
            host::buffer(BufferType::HttpResponseBody, 0, size)
                .ok()
                .flatten()
        };
        bytes.unwrap_or_default()
    }

    /// Refuses a request whose body cannot be rewritten as announced (400). Headers may already
    /// be upstream: the local reply resets that request.
    fn refuse_body(&mut self, error: &RewriteError) -> Action {
        if let Some(llm) = self.llm.as_mut() {
            llm.phase = Phase::Done;
        }
        reply::bad_request(self.grpc, &error.to_string());
        Action::Pause
    }

    fn add_llm_fields(&self) {
        let llm = self.plugin.policy.llm();
        let fields = self.llm.as_ref().and_then(|l| {
            let (tier, settings) = (self.tier(l.tier)?, llm?);
            Some(l.fields(tier, settings, || self.now()))
        });
        if let Some(fields) = fields {
            self.add_response_fields(fields);
        }
    }

    /// Sets the fields on the response, one host call each, replacing any the upstream sent
    /// (two `x-ratelimit-remaining` lines would leave clients to pick one). Measured in Envoy,
    /// five replace calls cost ~3 µs less per request than reading the whole map and writing it
    /// back (BENCHMARKS.md).
    fn add_response_fields(&self, fields: headers::Fields) {
        for (name, value) in fields {
            let _ = host::set_header(MapType::HttpResponseHeaders, name, Some(&value));
        }
    }
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let plugin = Rc::clone(&self.plugin);
        let request = Request::read();
        self.grpc = request.is_grpc();
        let now = self.now();
        match plugin.policy.check(&request, now, &mut SharedData) {
            Outcome::Unmatched => Action::Continue,
            Outcome::Decided {
                tier,
                decision,
                placement,
                identity,
            } => {
                let i = plugin.policy.tier_index(tier);
                if placement == Placement::Shared {
                    plugin.metrics.count(i, Event::Saturated);
                }
                let llm_tier = !tier.budgets.is_empty() && plugin.policy.llm().is_some();
                if !decision.allowed {
                    plugin.metrics.count(i, Event::Denied);
                    if let (true, Some(settings)) = (llm_tier, plugin.policy.llm()) {
                        let api = ApiKind::from_path(&request.path());
                        let stream = LlmStream::new(i, identity, api, decision);
                        let body = headers::llm_denial_body(
                            stream.style(),
                            tier,
                            Some(&stream.requests),
                            None,
                        );
                        let fields = stream.fields(tier, settings, || now);
                        let (wait, max_wait) = (stream.retry_after(), settings.max_client_wait);
                        reply::llm_rate_limited(self.grpc, fields, &body, wait, max_wait);
                    } else {
                        reply::rate_limited(self.grpc, tier, &decision);
                    }
                    return Action::Pause;
                }
                if let (Some(global), true) = (&plugin.global, tier.global) {
                    if let Some(key) = BucketKey::limits(&plugin.policy, i, &identity) {
                        global.record(key, 1);
                    }
                }
                if !llm_tier {
                    plugin.metrics.count(i, Event::Allowed);
                    self.pending = headers::fields(tier, &decision);
                    return Action::Continue;
                }
                let api = ApiKind::from_path(&request.path());
                let Some(settings) = plugin.policy.llm().filter(|_| api != ApiKind::Unknown) else {
                    // Not a completion API (e.g. listing models): request limits only.
                    plugin.metrics.count(i, Event::Allowed);
                    self.pending = headers::llm_fields(tier, Some(&decision), None);
                    return Action::Continue;
                };
                let mut stream = LlmStream::new(i, identity, api, decision);
                if settings.strip_accept_encoding {
                    let _ = host::set_header(MapType::HttpRequestHeaders, "accept-encoding", None);
                }
                if end_of_stream {
                    stream.unreadable_request(settings, 0);
                    self.llm = Some(stream);
                    return if self.admit_tokens(None) {
                        Action::Continue
                    } else {
                        Action::Pause
                    };
                }
                let length = request.content_length();
                stream.content_length = length;
                if stream.refuse_early(&plugin.policy, tier, now) {
                    // No room for even the least this call can cost: refused before anything
                    // goes upstream, body unread.
                    plugin.metrics.count(i, Event::Denied);
                    let body = headers::llm_denial_body(
                        stream.style(),
                        tier,
                        Some(&stream.requests),
                        stream.tokens.as_ref(),
                    );
                    let fields = stream.fields(tier, settings, || now);
                    let (wait, max_wait) = (stream.retry_after(), settings.max_client_wait);
                    reply::llm_rate_limited(self.grpc, fields, &body, wait, max_wait);
                    return Action::Pause;
                }
                // Ask Envoy to buffer only a body known to fit, with room for the rewrite: Envoy
                // adds each read to a held body before calling us, so a body that outgrows its
                // buffer limit while held is answered 413 before the filter can let go.
                let small = length.is_some_and(|n| {
                    n.saturating_add(REWRITE_ROOM) <= settings.buffer_limit as u64
                });
                if let Phase::ReadingRequest { holding, .. } = &mut stream.phase {
                    *holding = small;
                }
                let hold = settings.hold_headers && small;
                // Headers held: the exact new length is set once the body is rewritten.
                // Otherwise they leave now, so a body that may be rewritten announces the
                // original length plus the rewrite's fixed size, which the rewrite then always
                // produces exactly (padding with spaces). Without a content-length, Envoy frames
                // the body whatever its size.
                let exact = !hold && length.is_some() && stream.may_rewrite(settings);
                if let (true, Some(n)) = (exact, length) {
                    let announced = n.saturating_add(REWRITE_ROOM);
                    let _ = host::set_header(
                        MapType::HttpRequestHeaders,
                        "content-length",
                        Some(&announced.to_string()),
                    );
                }
                stream.follow_body(settings, exact, small);
                self.llm = Some(stream);
                if hold {
                    // Envoy resumes a stream held at its headers only with
                    // allow_on_headers_stop_iteration, which `hold_headers` promises.
                    Action::Pause
                } else {
                    Action::Continue
                }
            }
            Outcome::Ambiguous { tier, error } => {
                plugin
                    .metrics
                    .count(plugin.policy.tier_index(tier), Event::Ambiguous);
                reply::ambiguous(self.grpc, &error);
                Action::Pause
            }
            Outcome::StoreFailed {
                tier,
                error: TableError::Contended,
            } => {
                // Lost every CAS race: the key is being written as fast as we can read it. That
                // is heavy traffic on one key, which must not turn into unmetered traffic.
                plugin
                    .metrics
                    .count(plugin.policy.tier_index(tier), Event::Contended);
                reply::contended(self.grpc);
                Action::Pause
            }
            Outcome::StoreFailed { tier, error } => {
                plugin
                    .metrics
                    .count(plugin.policy.tier_index(tier), Event::StoreFailure);
                if plugin.warn_due(now) {
                    self.log(
                        LogLevel::Warn,
                        &format!(
                            "state store failed for tier {}: {error:?} (logged at most once a second per worker)",
                            tier.name
                        ),
                    );
                }
                match plugin.policy.on_store_failure() {
                    OnStoreFailure::Allow => Action::Continue,
                    OnStoreFailure::Deny => {
                        reply::unavailable(self.grpc);
                        Action::Pause
                    }
                }
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let plugin = Rc::clone(&self.plugin);
        let Some(settings) = plugin.policy.llm() else {
            return Action::Continue;
        };
        let Some(Phase::ReadingRequest { holding, copy }) = self.llm.as_ref().map(|l| &l.phase)
        else {
            return Action::Continue;
        };
        let first = copy.seen == 0;
        if *holding {
            if body_size <= settings.buffer_limit {
                if !end_of_stream {
                    return Action::Pause; // Envoy buffers it for us.
                }
                let body = self.body_bytes(body_size, true);
                let rewritten = match self.llm.as_mut() {
                    Some(llm) => {
                        llm.read_request(settings, &body);
                        llm.rewrite_chunk(&body, true)
                    }
                    None => Ok(None),
                };
                match rewritten {
                    Ok(Some(new_body)) => {
                        let _ =
                            host::set_buffer(BufferType::HttpRequestBody, 0, body_size, &new_body);
                        if settings.hold_headers {
                            let _ = host::set_header(
                                MapType::HttpRequestHeaders,
                                "content-length",
                                Some(&new_body.len().to_string()),
                            );
                        }
                    }
                    Ok(None) => {}
                    Err(e) => return self.refuse_body(&e),
                }
                return if self.admit_tokens(None) {
                    Action::Continue
                } else {
                    Action::Pause
                };
            }
            // Larger than we may ask Envoy to buffer: copy it as it passes instead.
            if let Some(LlmStream {
                phase: Phase::ReadingRequest { holding, .. },
                ..
            }) = self.llm.as_mut()
            {
                *holding = false;
            }
        }
        let chunk = self.body_bytes(body_size, true);
        let rewritten = match self.llm.as_mut() {
            Some(llm) => llm.rewrite_chunk(&chunk, end_of_stream),
            None => Ok(None),
        };
        let rewritten = match rewritten {
            Ok(r) => r,
            Err(e) => return self.refuse_body(&e),
        };
        if let Some(LlmStream {
            phase: Phase::ReadingRequest { copy, .. },
            ..
        }) = self.llm.as_mut()
        {
            copy.push(&chunk, settings.max_request_body);
        }
        // A body that passes is admitted on its first chunk, before any of it goes upstream
        // (a body that is all in its first chunk is simply read first), and one without
        // content-length again as it grows.
        let seen = match self.llm.as_ref().map(|l| &l.phase) {
            Some(Phase::ReadingRequest { copy, .. }) => copy.seen,
            _ => body_size,
        };
        let early = match (first, end_of_stream) {
            // An empty chunk decides nothing: the next one is still the first.
            _ if body_size == 0 => None,
            (_, true) => None,
            (true, false) => Some(Early::First(body_size)),
            (false, false) => Some(Early::More(seen)),
        };
        if early.is_some() && !self.admit_tokens(early) {
            return Action::Pause;
        }
        if let Some(new_chunk) = rewritten {
            let _ = host::set_buffer(BufferType::HttpRequestBody, 0, body_size, &new_chunk);
        }
        if !end_of_stream {
            return Action::Continue;
        }
        if let Some(llm) = self.llm.as_mut() {
            llm.read_copied_request(settings);
        }
        // What the first chunk did not decide (the model's own budgets, once the model is
        // known) is decided now; the body already went upstream, so a refusal resets it.
        if self.admit_tokens(None) {
            Action::Continue
        } else {
            Action::Pause
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let plugin = Rc::clone(&self.plugin);
        let admitted = matches!(self.llm.as_ref().map(|l| &l.phase), Some(Phase::Admitted));
        if let (Some(settings), true) = (plugin.policy.llm(), admitted) {
            let status = host::header(MapType::HttpResponseHeaders, ":status")
                .ok()
                .flatten();
            let content_type = host::header(MapType::HttpResponseHeaders, "content-type")
                .ok()
                .flatten();
            let encoded = host::header(MapType::HttpResponseHeaders, "content-encoding")
                .ok()
                .flatten()
                .is_some_and(|e| !e.eq_ignore_ascii_case(b"identity"));
            let length = host::header(MapType::HttpResponseHeaders, "content-length")
                .ok()
                .flatten()
                .and_then(|v| std::str::from_utf8(&v).ok()?.trim().parse().ok());
            let hold = self.llm.as_mut().is_some_and(|l| {
                l.on_response_headers(
                    settings,
                    status.as_deref(),
                    content_type.as_deref(),
                    length,
                    encoded,
                    end_of_stream,
                )
            });
            if hold {
                return Action::Pause;
            }
            if self.llm.as_ref().is_some_and(|l| l.remover.is_some()) {
                // The client gets fewer bytes than the upstream sent.
                let _ = host::set_header(MapType::HttpResponseHeaders, "content-length", None);
            }
            if end_of_stream {
                self.settle(true);
            }
            self.add_llm_fields();
            return Action::Continue;
        }
        let pending = std::mem::take(&mut self.pending);
        self.add_response_fields(pending);
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let plugin = Rc::clone(&self.plugin);
        let Some(settings) = plugin.policy.llm() else {
            return Action::Continue;
        };
        let Some(phase) = self.llm.as_ref().map(|l| &l.phase) else {
            return Action::Continue;
        };
        match phase {
            Phase::Streaming(_) => {
                let chunk = self.body_bytes(body_size, false);
                let mut rewritten = None;
                if let Some(LlmStream {
                    phase: Phase::Streaming(scanner),
                    remover,
                    ..
                }) = self.llm.as_mut()
                {
                    // The usage is read from the upstream's bytes, before any are taken out.
                    scanner.feed(&chunk);
                    if let Some(remover) = remover.as_mut() {
                        let mut out = Vec::with_capacity(chunk.len());
                        remover.push(&chunk, &mut out);
                        if end_of_stream {
                            remover.finish(&mut out);
                        }
                        rewritten = Some(out).filter(|out| *out != chunk);
                    }
                }
                if let Some(out) = rewritten {
                    // Replaces this chunk only (Envoy drains `body_size` bytes from the front of
                    // the chunk's buffer and puts `out` in their place); bytes of an unfinished
                    // event stay with the remover until a later chunk completes them.
                    let _ = host::set_buffer(BufferType::HttpResponseBody, 0, body_size, &out);
                }
                if end_of_stream {
                    self.settle(true);
                }
                Action::Continue
            }
            Phase::Json { holding: true, .. } if body_size <= settings.buffer_limit => {
                if !end_of_stream {
                    return Action::Pause;
                }
                // Held whole: charge it, then let the headers out showing the charge.
                let body = self.body_bytes(body_size, false);
                if let Some(LlmStream {
                    phase: Phase::Json { copy, .. },
                    ..
                }) = self.llm.as_mut()
                {
                    copy.push(&body, settings.max_response_body);
                }
                self.settle(true);
                self.add_llm_fields();
                Action::Continue
            }
            Phase::Json { holding, .. } => {
                let was_holding = *holding;
                let chunk = self.body_bytes(body_size, false);
                if let Some(LlmStream {
                    phase: Phase::Json { copy, holding },
                    ..
                }) = self.llm.as_mut()
                {
                    copy.push(&chunk, settings.max_response_body);
                    *holding = false;
                }
                if end_of_stream {
                    self.settle(true);
                }
                if was_holding {
                    // Too large to hold: the headers go now, with the reservation's state.
                    self.add_llm_fields();
                }
                Action::Continue
            }
            Phase::Unreadable { .. } => {
                if end_of_stream {
                    self.settle(true);
                }
                Action::Continue
            }
            _ => Action::Continue,
        }
    }

    fn on_log(&mut self) {
        // Still unsettled here means the stream ended early: client gone or upstream reset.
        self.settle(false);
    }
}
