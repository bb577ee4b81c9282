//! The host functions: Envoy's side of every import a proxy-wasm 0.2.x filter can use.
//!
//! Each function reads its arguments through [`crate::memory`] (bounds-checked), acts on the
//! instance's [`HostState`] or the [`crate::Shared`] state, and answers with a status. Envoy's
//! quirks are kept where a filter could depend on them; each is noted where it is implemented.

use wasmtime::Linker;

use crate::abi::{BufferType, LogLevel, MapType, MetricType, Status, StreamType};
use crate::headers::Headers;
use crate::memory::{self, CallError, Ctx};
use crate::record::{GrpcCallout, HttpCallout, LocalReply, Properties};
use crate::signatures::for_each_import;
use crate::state::{HostState, ROOT_CONTEXT_ID};

type Outcome = Result<(), CallError>;

/// Turns an import's outcome into what wasmtime expects: a status code, or a trap to propagate.
fn finish(outcome: Outcome) -> wasmtime::Result<i32> {
    match outcome {
        Ok(()) => Ok(Status::Ok.code()),
        Err(CallError::Status(status)) => Ok(status.code()),
        Err(CallError::Trap(error)) => Err(error),
    }
}

/// Defines each import of [`for_each_import`]'s table on the linker.
macro_rules! link_imports {
    ($($name:ident($($arg:ident: $ty:ty),*);)+) => {
        pub(crate) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
            $(
                linker.func_wrap(
                    "env",
                    stringify!($name),
                    |mut caller: Ctx<'_>, $($arg: $ty),*| -> wasmtime::Result<i32> {
                        caller.data().shared.calls().count(stringify!($name));
                        if let Ok(left) = caller.get_fuel() {
                            caller.data().shared.mark_fuel(stringify!($name), left, false);
                        }
                        // An injected failure answers in place of the host, which does nothing.
                        if let Some(status) = caller.data().shared.faults().take(stringify!($name)) {
                            return Ok(status as i32);
                        }
                        finish($name(&mut caller, $($arg),*))
                    },
                )?;
            )+
            Ok(())
        }
    };
}

for_each_import!(link_imports);

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes).into_owned()
}

// --- logging, time -------------------------------------------------------------------------------

fn proxy_log(c: &mut Ctx<'_>, level: i32, ptr: i32, len: i32) -> Outcome {
    let level = LogLevel::try_from(level)?;
    let message = memory::read(c, ptr, len)?;
    c.data_mut().log(level, &message);
    Ok(())
}

fn proxy_get_log_level(c: &mut Ctx<'_>, ret: i32) -> Outcome {
    let level = c.data().log_level as u32;
    Ok(memory::write_u32(c, ret, level)?)
}

fn proxy_get_current_time_nanoseconds(c: &mut Ctx<'_>, ret: i32) -> Outcome {
    let now = c.data().shared.clock().now();
    Ok(memory::write_u64(c, ret, now)?)
}

/// A period of 0 stops the ticks; the first tick is one period from now.
fn proxy_set_tick_period_milliseconds(c: &mut Ctx<'_>, period: i32) -> Outcome {
    let state = c.data_mut();
    let period = period as u32;
    state.tick_period_ms = period;
    state.next_tick = (period > 0).then(|| {
        state
            .shared
            .clock()
            .now()
            .saturating_add(u64::from(period) * 1_000_000)
    });
    Ok(())
}

// --- buffers -------------------------------------------------------------------------------------

fn buffer(state: &HostState, buffer: BufferType) -> Result<&[u8], Status> {
    let stream = || {
        state
            .streams
            .get(&state.current_context)
            .ok_or(Status::NotFound)
    };
    let reply = &state.call_reply;
    match buffer {
        BufferType::VmConfiguration => Ok(&state.vm_configuration),
        BufferType::PluginConfiguration => Ok(&state.plugin_configuration),
        BufferType::HttpRequestBody => Ok(&stream()?.request_body.buffered),
        BufferType::HttpResponseBody => Ok(&stream()?.response_body.buffered),
        BufferType::HttpCallResponseBody => reply.http_body.as_deref().ok_or(Status::NotFound),
        BufferType::GrpcReceiveBuffer => reply.grpc_message.as_deref().ok_or(Status::NotFound),
        _ => Err(Status::NotFound),
    }
}

/// The SDK asks for configuration with `max = usize::MAX` (-1 here): clamp to what exists.
fn proxy_get_buffer_bytes(
    c: &mut Ctx<'_>,
    kind: i32,
    start: i32,
    max: i32,
    ret_ptr: i32,
    ret_len: i32,
) -> Outcome {
    let kind = BufferType::try_from(kind)?;
    let bytes = buffer(c.data(), kind)?;
    let start = memory::to_usize(start);
    if start > bytes.len() {
        return Err(Status::BadArgument.into());
    }
    let end = start.saturating_add(memory::to_usize(max)).min(bytes.len());
    let slice = bytes.get(start..end).unwrap_or_default().to_vec();
    memory::return_bytes(c, &slice, ret_ptr, ret_len)
}

/// Envoy's `Buffer::copyFrom`: `start == 0` drops the first `size` bytes and prepends the data
/// (so `(0, len)` replaces everything, `(0, 0)` prepends); `start >= len` appends; anything else
/// is `BadArgument`. Only body buffers are writable.
fn proxy_set_buffer_bytes(
    c: &mut Ctx<'_>,
    kind: i32,
    start: i32,
    size: i32,
    ptr: i32,
    len: i32,
) -> Outcome {
    let kind = BufferType::try_from(kind)?;
    let data = memory::read(c, ptr, len)?;
    let stream = c.data_mut().stream_mut().map_err(|_| Status::NotFound)?;
    let body = match kind {
        BufferType::HttpRequestBody => &mut stream.request_body.buffered,
        BufferType::HttpResponseBody => &mut stream.response_body.buffered,
        _ => return Err(Status::BadArgument.into()),
    };
    let start = memory::to_usize(start);
    if start == 0 {
        let drop = memory::to_usize(size).min(body.len());
        body.splice(..drop, data);
    } else if start >= body.len() {
        body.extend_from_slice(&data);
    } else {
        return Err(Status::BadArgument.into());
    }
    Ok(())
}

fn proxy_get_buffer_status(c: &mut Ctx<'_>, kind: i32, ret_size: i32, ret_flags: i32) -> Outcome {
    let kind = BufferType::try_from(kind)?;
    let size = buffer(c.data(), kind)?.len() as u32;
    memory::write_u32(c, ret_size, size)?;
    Ok(memory::write_u32(c, ret_flags, 0)?)
}

// --- header maps ---------------------------------------------------------------------------------

fn proxy_get_header_map_pairs(c: &mut Ctx<'_>, map: i32, ret_ptr: i32, ret_len: i32) -> Outcome {
    let map = MapType::try_from(map)?;
    let bytes = c
        .data()
        .header_map(map)?
        .map(Headers::serialize)
        .unwrap_or_default();
    memory::return_bytes(c, &bytes, ret_ptr, ret_len)
}

/// Envoy removes every existing pair, then adds the new ones.
fn proxy_set_header_map_pairs(c: &mut Ctx<'_>, map: i32, ptr: i32, len: i32) -> Outcome {
    let map = MapType::try_from(map)?;
    let bytes = memory::read(c, ptr, len)?;
    let pairs = Headers::deserialize(&bytes)?;
    *c.data_mut().header_map_mut(map)? = pairs;
    Ok(())
}

/// Envoy reports the bytes of names and values.
fn proxy_get_header_map_size(c: &mut Ctx<'_>, map: i32, ret_size: i32) -> Outcome {
    let map = MapType::try_from(map)?;
    let size: usize = c
        .data()
        .header_map(map)?
        .map(|h| h.iter().map(|(n, v)| n.len() + v.len()).sum())
        .unwrap_or_default();
    Ok(memory::write_u32(c, ret_size, size as u32)?)
}

/// The first value only, as Envoy does (it notes this as an ABI limitation).
fn proxy_get_header_map_value(
    c: &mut Ctx<'_>,
    map: i32,
    key_ptr: i32,
    key_len: i32,
    ret_ptr: i32,
    ret_len: i32,
) -> Outcome {
    let map = MapType::try_from(map)?;
    let key = memory::read(c, key_ptr, key_len)?;
    let value = c
        .data()
        .header_map(map)?
        .and_then(|h| h.get_bytes(&key))
        .map(<[u8]>::to_vec)
        .ok_or(Status::NotFound)?;
    memory::return_bytes(c, &value, ret_ptr, ret_len)
}

fn proxy_replace_header_map_value(
    c: &mut Ctx<'_>,
    map: i32,
    key_ptr: i32,
    key_len: i32,
    val_ptr: i32,
    val_len: i32,
) -> Outcome {
    let map = MapType::try_from(map)?;
    let key = memory::read(c, key_ptr, key_len)?;
    let value = memory::read(c, val_ptr, val_len)?;
    c.data_mut().header_map_mut(map)?.replace(key, value);
    Ok(())
}

fn proxy_remove_header_map_value(c: &mut Ctx<'_>, map: i32, key_ptr: i32, key_len: i32) -> Outcome {
    let map = MapType::try_from(map)?;
    let key = memory::read(c, key_ptr, key_len)?;
    c.data_mut().header_map_mut(map)?.remove(key);
    Ok(())
}

fn proxy_add_header_map_value(
    c: &mut Ctx<'_>,
    map: i32,
    key_ptr: i32,
    key_len: i32,
    val_ptr: i32,
    val_len: i32,
) -> Outcome {
    let map = MapType::try_from(map)?;
    let key = memory::read(c, key_ptr, key_len)?;
    let value = memory::read(c, val_ptr, val_len)?;
    c.data_mut().header_map_mut(map)?.add(key, value);
    Ok(())
}

// --- properties ----------------------------------------------------------------------------------

fn proxy_get_property(
    c: &mut Ctx<'_>,
    path_ptr: i32,
    path_len: i32,
    ret_ptr: i32,
    ret_len: i32,
) -> Outcome {
    let raw = memory::read(c, path_ptr, path_len)?;
    let path = Properties::split_path(&raw);
    let value = c.data().property(&path).ok_or(Status::NotFound)?;
    memory::return_bytes(c, &value, ret_ptr, ret_len)
}

/// Written to the current stream's properties, or the VM's from the root context.
fn proxy_set_property(
    c: &mut Ctx<'_>,
    path_ptr: i32,
    path_len: i32,
    val_ptr: i32,
    val_len: i32,
) -> Outcome {
    let raw = memory::read(c, path_ptr, path_len)?;
    let value = memory::read(c, val_ptr, val_len)?;
    let path = Properties::split_path(&raw);
    let state = c.data_mut();
    match state.stream_mut() {
        Ok(stream) => stream.properties.insert(path, value),
        Err(_) => state.properties.insert(path, value),
    }
    Ok(())
}

// --- shared data and queues ----------------------------------------------------------------------

fn proxy_get_shared_data(
    c: &mut Ctx<'_>,
    key_ptr: i32,
    key_len: i32,
    ret_ptr: i32,
    ret_len: i32,
    ret_cas: i32,
) -> Outcome {
    let key = memory::read(c, key_ptr, key_len)?;
    memory::check(c, ret_cas, 4)?;
    let state = c.data();
    let (value, cas) = state.shared.data().get(&state.vm_id, &key)?;
    memory::return_bytes(c, &value, ret_ptr, ret_len)?;
    Ok(memory::write_u32(c, ret_cas, cas)?)
}

fn proxy_set_shared_data(
    c: &mut Ctx<'_>,
    key_ptr: i32,
    key_len: i32,
    val_ptr: i32,
    val_len: i32,
    cas: i32,
) -> Outcome {
    let key = memory::read(c, key_ptr, key_len)?;
    let value = memory::read(c, val_ptr, val_len)?;
    let state = c.data();
    Ok(state
        .shared
        .data()
        .set(&state.vm_id, &key, &value, cas as u32)?)
}

fn proxy_register_shared_queue(
    c: &mut Ctx<'_>,
    name_ptr: i32,
    name_len: i32,
    ret_id: i32,
) -> Outcome {
    let name = memory::read(c, name_ptr, name_len)?;
    memory::check(c, ret_id, 4)?;
    let state = c.data();
    let id = state
        .shared
        .queues()
        .register(&state.vm_id, &name, state.instance_id);
    Ok(memory::write_u32(c, ret_id, id)?)
}

/// An empty vm_id means this VM's own.
fn proxy_resolve_shared_queue(
    c: &mut Ctx<'_>,
    vm_ptr: i32,
    vm_len: i32,
    name_ptr: i32,
    name_len: i32,
    ret_id: i32,
) -> Outcome {
    let mut vm_id = memory::read(c, vm_ptr, vm_len)?;
    let name = memory::read(c, name_ptr, name_len)?;
    let state = c.data();
    if vm_id.is_empty() {
        vm_id = state.vm_id.as_bytes().to_vec();
    }
    let id = state
        .shared
        .queues()
        .resolve(&vm_id, &name)
        .ok_or(Status::NotFound)?;
    Ok(memory::write_u32(c, ret_id, id)?)
}

fn proxy_enqueue_shared_queue(c: &mut Ctx<'_>, id: i32, ptr: i32, len: i32) -> Outcome {
    let item = memory::read(c, ptr, len)?;
    Ok(c.data().shared.queues().enqueue(id as u32, item)?)
}

fn proxy_dequeue_shared_queue(c: &mut Ctx<'_>, id: i32, ret_ptr: i32, ret_len: i32) -> Outcome {
    memory::check(c, ret_ptr, 4)?;
    memory::check(c, ret_len, 4)?;
    let item = c.data().shared.queues().dequeue(id as u32)?;
    memory::return_bytes(c, &item, ret_ptr, ret_len)
}

// --- stream control ------------------------------------------------------------------------------

fn proxy_continue_stream(c: &mut Ctx<'_>, stream: i32) -> Outcome {
    let stream_type = StreamType::try_from(stream)?;
    c.data_mut().stream_mut()?.continued.push(stream_type);
    Ok(())
}

fn proxy_close_stream(c: &mut Ctx<'_>, stream: i32) -> Outcome {
    let stream_type = StreamType::try_from(stream)?;
    c.data_mut().stream_mut()?.closed.push(stream_type);
    Ok(())
}

/// Recorded now, sent by the host after the callback returns (Envoy defers it the same way).
/// Only the first reply of a stream counts; later calls are counted so tests can flag them.
#[allow(clippy::too_many_arguments)]
fn proxy_send_local_response(
    c: &mut Ctx<'_>,
    status: i32,
    details_ptr: i32,
    details_len: i32,
    body_ptr: i32,
    body_len: i32,
    headers_ptr: i32,
    headers_len: i32,
    grpc_status: i32,
) -> Outcome {
    let details = memory::read(c, details_ptr, details_len)?;
    let body = memory::read(c, body_ptr, body_len)?;
    let headers = Headers::deserialize(&memory::read(c, headers_ptr, headers_len)?)?;
    let stream = c.data_mut().stream_mut()?;
    stream.local_reply_calls += 1;
    if stream.local_reply.is_none() {
        stream.local_reply = Some(LocalReply {
            status: status as u32,
            details: text(details),
            body,
            headers,
            grpc_status: u32::try_from(grpc_status).ok(),
        });
    }
    Ok(())
}

// --- callouts ------------------------------------------------------------------------------------

/// Envoy refuses a callout without `:method`, `:path` and `:authority` (`BadArgument`).
#[allow(clippy::too_many_arguments)]
fn proxy_http_call(
    c: &mut Ctx<'_>,
    upstream_ptr: i32,
    upstream_len: i32,
    headers_ptr: i32,
    headers_len: i32,
    body_ptr: i32,
    body_len: i32,
    trailers_ptr: i32,
    trailers_len: i32,
    timeout_ms: i32,
    ret_token: i32,
) -> Outcome {
    let upstream = text(memory::read(c, upstream_ptr, upstream_len)?);
    let headers = Headers::deserialize(&memory::read(c, headers_ptr, headers_len)?)?;
    let body = memory::read(c, body_ptr, body_len)?;
    let trailers = Headers::deserialize(&memory::read(c, trailers_ptr, trailers_len)?)?;
    memory::check(c, ret_token, 4)?;
    if [":method", ":path", ":authority"]
        .iter()
        .any(|name| !headers.contains(name))
    {
        return Err(Status::BadArgument.into());
    }
    let state = c.data_mut();
    let token = state.next_token();
    let context_id = state.current_context;
    state.http_callouts.insert(
        token,
        HttpCallout {
            token,
            context_id,
            upstream,
            headers,
            body,
            trailers,
            timeout_ms: timeout_ms as u32,
        },
    );
    Ok(memory::write_u32(c, ret_token, token)?)
}

#[allow(clippy::too_many_arguments)]
fn grpc_start(
    c: &mut Ctx<'_>,
    names: [(i32, i32); 3],
    metadata: (i32, i32),
    message: Option<(Vec<u8>, u32)>,
    ret_token: i32,
) -> Outcome {
    let [upstream, service, method] = names;
    let upstream = text(memory::read(c, upstream.0, upstream.1)?);
    let service = text(memory::read(c, service.0, service.1)?);
    let method = text(memory::read(c, method.0, method.1)?);
    let metadata = Headers::deserialize(&memory::read(c, metadata.0, metadata.1)?)?;
    memory::check(c, ret_token, 4)?;
    let state = c.data_mut();
    let token = state.next_token();
    let context_id = state.current_context;
    let timeout_ms = message.as_ref().map(|(_, timeout)| *timeout);
    state.grpc_callouts.insert(
        token,
        GrpcCallout {
            token,
            context_id,
            upstream,
            service,
            method,
            metadata,
            messages: message.map(|(m, _)| (m, true)).into_iter().collect(),
            timeout_ms,
            cancelled: false,
            closed: false,
        },
    );
    Ok(memory::write_u32(c, ret_token, token)?)
}

#[allow(clippy::too_many_arguments)]
fn proxy_grpc_call(
    c: &mut Ctx<'_>,
    upstream_ptr: i32,
    upstream_len: i32,
    service_ptr: i32,
    service_len: i32,
    method_ptr: i32,
    method_len: i32,
    metadata_ptr: i32,
    metadata_len: i32,
    message_ptr: i32,
    message_len: i32,
    timeout_ms: i32,
    ret_token: i32,
) -> Outcome {
    let message = memory::read(c, message_ptr, message_len)?;
    grpc_start(
        c,
        [
            (upstream_ptr, upstream_len),
            (service_ptr, service_len),
            (method_ptr, method_len),
        ],
        (metadata_ptr, metadata_len),
        Some((message, timeout_ms as u32)),
        ret_token,
    )
}

#[allow(clippy::too_many_arguments)]
fn proxy_grpc_stream(
    c: &mut Ctx<'_>,
    upstream_ptr: i32,
    upstream_len: i32,
    service_ptr: i32,
    service_len: i32,
    method_ptr: i32,
    method_len: i32,
    metadata_ptr: i32,
    metadata_len: i32,
    ret_token: i32,
) -> Outcome {
    grpc_start(
        c,
        [
            (upstream_ptr, upstream_len),
            (service_ptr, service_len),
            (method_ptr, method_len),
        ],
        (metadata_ptr, metadata_len),
        None,
        ret_token,
    )
}

fn grpc_callout<'a>(c: &'a mut Ctx<'_>, token: i32) -> Result<&'a mut GrpcCallout, Status> {
    c.data_mut()
        .grpc_callouts
        .get_mut(&(token as u32))
        .ok_or(Status::NotFound)
}

fn proxy_grpc_send(c: &mut Ctx<'_>, token: i32, ptr: i32, len: i32, end_stream: i32) -> Outcome {
    let message = memory::read(c, ptr, len)?;
    grpc_callout(c, token)?
        .messages
        .push((message, end_stream != 0));
    Ok(())
}

fn proxy_grpc_cancel(c: &mut Ctx<'_>, token: i32) -> Outcome {
    grpc_callout(c, token)?.cancelled = true;
    Ok(())
}

fn proxy_grpc_close(c: &mut Ctx<'_>, token: i32) -> Outcome {
    grpc_callout(c, token)?.closed = true;
    Ok(())
}

fn proxy_get_status(c: &mut Ctx<'_>, ret_code: i32, ret_ptr: i32, ret_len: i32) -> Outcome {
    let (code, message) = c.data().grpc_status.clone();
    memory::write_u32(c, ret_code, code)?;
    memory::return_bytes(c, &message, ret_ptr, ret_len)
}

/// The SDK unwraps this call, so known ids (root or a live stream) must answer `Ok`.
fn proxy_set_effective_context(c: &mut Ctx<'_>, context: i32) -> Outcome {
    let context = context as u32;
    let state = c.data_mut();
    if context != ROOT_CONTEXT_ID && !state.streams.contains_key(&context) {
        return Err(Status::BadArgument.into());
    }
    state.current_context = context;
    Ok(())
}

fn proxy_done(c: &mut Ctx<'_>) -> Outcome {
    c.data_mut().done_calls += 1;
    Ok(())
}

/// No foreign functions are registered, which Envoy answers with `NotFound`.
fn proxy_call_foreign_function(
    c: &mut Ctx<'_>,
    name_ptr: i32,
    name_len: i32,
    args_ptr: i32,
    args_len: i32,
    ret_ptr: i32,
    ret_len: i32,
) -> Outcome {
    memory::read(c, name_ptr, name_len)?;
    memory::read(c, args_ptr, args_len)?;
    memory::check(c, ret_ptr, 4)?;
    memory::check(c, ret_len, 4)?;
    Err(Status::NotFound.into())
}

// --- metrics -------------------------------------------------------------------------------------

fn proxy_define_metric(
    c: &mut Ctx<'_>,
    kind: i32,
    name_ptr: i32,
    name_len: i32,
    ret_id: i32,
) -> Outcome {
    let kind = MetricType::try_from(kind)?;
    let name = text(memory::read(c, name_ptr, name_len)?);
    memory::check(c, ret_id, 4)?;
    let id = c.data().shared.metrics().define(kind, &name);
    Ok(memory::write_u32(c, ret_id, id)?)
}

fn proxy_get_metric(c: &mut Ctx<'_>, id: i32, ret: i32) -> Outcome {
    memory::check(c, ret, 8)?;
    let value = c.data().shared.metrics().get(id as u32)?;
    Ok(memory::write_u64(c, ret, value)?)
}

fn proxy_record_metric(c: &mut Ctx<'_>, id: i32, value: i64) -> Outcome {
    Ok(c.data().shared.metrics().record(id as u32, value as u64)?)
}

fn proxy_increment_metric(c: &mut Ctx<'_>, id: i32, delta: i64) -> Outcome {
    Ok(c.data().shared.metrics().increment(id as u32, delta)?)
}
