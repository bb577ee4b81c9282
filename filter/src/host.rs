//! The host calls tollgate makes, bound directly so that no status can trap the VM.
//!
//! proxy-wasm 0.2.5's wrappers `panic!` on any status they do not expect (and its context traits
//! `.unwrap()` every result), its map decoder unwraps UTF-8, and its extern declarations return
//! a Rust enum, so a status outside that enum is undefined behaviour before any check. A panic
//! traps the VM, and a trapped VM fails every request on its worker until Envoy recycles it.
//! Here every import returns a plain `u32`, every status maps to a result, and a failure is a
//! [`HostError`] naming the call: the caller decides how to degrade (each call site says how).
//! [`crate::shared`] does the same for shared data.
//!
//! Not covered: the SDK's dispatcher unwraps `proxy_set_effective_context` when it delivers a
//! gRPC callout's answer (global mode's sync round, [`crate::global`], and strict mode's checks,
//! [`crate::global_strict`]), and the call itself goes through the SDK's `dispatch_grpc_call`,
//! because only a callout the SDK registered is delivered to the context that made it; see
//! `global::dispatch` for how its panicking statuses are avoided.
#![allow(unsafe_code)]
// FFI to the host; each call's safety is argued where it is made.

use core::fmt;
use core::ptr::{null, null_mut};
use std::time::Duration;

use policy_core::{HeaderList, Nanos, Span};
use proxy_wasm::types::{BufferType, GrpcStatusCode, LogLevel, MapType, MetricType};

/// `proxy_status_t` values that have a meaning to tollgate; anything else is an error.
mod status {
    pub const OK: u32 = 0;
    pub const NOT_FOUND: u32 = 1;
}

/// A host call that answered with a status tollgate cannot act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostError {
    /// The import that failed.
    pub call: &'static str,
    /// The status it returned.
    pub status: u32,
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.status {
            1 => "NotFound",
            2 => "BadArgument",
            3 => "SerializationFailure",
            4 => "ParseFailure",
            6 => "InvalidMemoryAccess",
            7 => "Empty",
            8 => "CasMismatch",
            10 => "InternalFailure",
            12 => "Unimplemented",
            _ => "unknown",
        };
        write!(f, "{} returned status {} ({name})", self.call, self.status)
    }
}

type Result<T> = core::result::Result<T, HostError>;

/// `Ok(())` for `OK`, else the error naming `call`.
fn check(call: &'static str, status: u32) -> Result<()> {
    match status {
        status::OK => Ok(()),
        status => Err(HostError { call, status }),
    }
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
    fn proxy_set_buffer_bytes(
        buffer_type: u32,
        start: usize,
        size: usize,
        buffer_data: *const u8,
        buffer_size: usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_set_property(
        path_data: *const u8,
        path_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    fn proxy_register_shared_queue(
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_enqueue_shared_queue(queue_id: u32, value_data: *const u8, value_size: usize) -> u32;
    fn proxy_dequeue_shared_queue(
        queue_id: u32,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
}

/// Takes ownership of a buffer the host returned: on `OK` the host allocated `size` bytes with
/// this module's exported allocator (as for every proxy-wasm return buffer).
///
/// # Safety
/// `data` is null or points to `size` initialised bytes allocated by the global allocator and
/// owned by no one else.
unsafe fn take(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        return Vec::new();
    }
    // SAFETY: as the caller promised.
    unsafe { Vec::from_raw_parts(data, size, size) }
}

/// Calls an import that returns a buffer: `Ok(Some)` on `OK`, `Ok(None)` on `NOT_FOUND` (or
/// `OK` with no data, which Envoy sends for an empty value).
fn returned(
    call: &'static str,
    f: impl FnOnce(*mut *mut u8, *mut usize) -> u32,
) -> Result<Option<Vec<u8>>> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    match f(&mut data, &mut size) {
        // SAFETY: on OK the host handed us `size` bytes at `data` (see `take`).
        status::OK if !data.is_null() => Ok(Some(unsafe { take(data, size) })),
        status::OK | status::NOT_FOUND => Ok(None),
        status => Err(HostError { call, status }),
    }
}

/// Logs a line. A failed log cannot be reported anywhere, so its status is returned for the
/// caller to drop.
pub fn log(level: LogLevel, message: &str) -> Result<()> {
    // SAFETY: pointer and length of a live &str; the host copies it.
    let status = unsafe { proxy_log(level as u32, message.as_ptr(), message.len()) };
    check("proxy_log", status)
}

/// The host's wall clock, in nanoseconds since the Unix epoch.
pub fn now() -> Result<Nanos> {
    let mut t: u64 = 0;
    // SAFETY: `t` is a valid local for the host to write.
    let status = unsafe { proxy_get_current_time_nanoseconds(&mut t) };
    check("proxy_get_current_time_nanoseconds", status).map(|()| Nanos(t))
}

thread_local! {
    /// The last good clock reading of this VM (one VM is one worker thread), and how many reads
    /// have failed since the last warning.
    static CLOCK: core::cell::Cell<(Nanos, u32)> = const { core::cell::Cell::new((Nanos::ZERO, 0)) };
}

/// Failed clock reads between two warnings.
const CLOCK_WARN_EVERY: u32 = 1024;

/// The time to decide with: [`now`], or when the host cannot tell, this worker's last good
/// reading. Time then stands still, which is the fail-safe direction: buckets refill no further,
/// so nobody gets more than their limit while the clock is gone; they refill when it is back. A
/// worker whose clock never worked decides at the epoch, where buckets are as new callers see
/// them. Logged on the first failure and every 1024th after.
pub fn clock() -> Nanos {
    match now() {
        Ok(t) => {
            CLOCK.with(|c| c.set((t, 0)));
            t
        }
        Err(e) => {
            let (last, failed) = CLOCK.with(core::cell::Cell::get);
            if failed % CLOCK_WARN_EVERY == 0 {
                let _ = log(
                    LogLevel::Warn,
                    &format!("tollgate: clock unavailable, deciding at the last good reading: {e}"),
                );
            }
            CLOCK.with(|c| c.set((last, failed.wrapping_add(1))));
            last
        }
    }
}

/// Resumes the request held at its headers (`proxy_continue_stream` on the request, stream
/// type 0): a request strict mode held for the rate limit service's answer.
pub fn continue_request() -> Result<()> {
    // SAFETY: no pointers.
    let status = unsafe { proxy_continue_stream(0) };
    check("proxy_continue_stream", status)
}

/// Asks for `proxy_on_tick` every `period` (whole milliseconds, saturating).
pub fn set_tick_period(period: Duration) -> Result<()> {
    let ms = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
    // SAFETY: no pointers.
    let status = unsafe { proxy_set_tick_period_milliseconds(ms) };
    check("proxy_set_tick_period_milliseconds", status)
}

/// `max` bytes of a buffer from `start`; `None` when the buffer is absent or empty.
pub fn buffer(kind: BufferType, start: usize, max: usize) -> Result<Option<Vec<u8>>> {
    returned("proxy_get_buffer_bytes", |data, size| {
        // SAFETY: the out-pointers are valid locals of `returned`.
        unsafe { proxy_get_buffer_bytes(kind as u32, start, max, data, size) }
    })
}

/// Replaces `size` bytes of a buffer from `start` with `value`.
pub fn set_buffer(kind: BufferType, start: usize, size: usize, value: &[u8]) -> Result<()> {
    // SAFETY: pointer and length of a live slice; the host copies it.
    let status =
        unsafe { proxy_set_buffer_bytes(kind as u32, start, size, value.as_ptr(), value.len()) };
    check("proxy_set_buffer_bytes", status)
}

/// The plugin configuration (the policy JSON), whole.
pub fn plugin_configuration() -> Result<Option<Vec<u8>>> {
    buffer(BufferType::PluginConfiguration, 0, usize::MAX)
}

/// Every pair of a header map, in order. Names that are not UTF-8 (Envoy never sends them) are
/// decoded lossily rather than trusted; a malformed serialisation ends the list where it breaks.
pub fn header_map(map: MapType) -> Result<HeaderList> {
    let bytes = returned("proxy_get_header_map_pairs", |data, size| {
        // SAFETY: the out-pointers are valid locals of `returned`.
        unsafe { proxy_get_header_map_pairs(map as u32, data, size) }
    })?;
    Ok(bytes.map_or_else(HeaderList::default, decode_map))
}

/// The first value of each of `names` in a header map, from one `proxy_get_header_map_pairs`
/// call instead of one `proxy_get_header_map_value` call per name; only the values found are
/// copied out of the host's answer. Names compare without regard to ASCII case.
pub fn header_values<const N: usize>(
    map: MapType,
    names: [&str; N],
) -> Result<[Option<Vec<u8>>; N]> {
    let bytes = returned("proxy_get_header_map_pairs", |data, size| {
        // SAFETY: the out-pointers are valid locals of `returned`.
        unsafe { proxy_get_header_map_pairs(map as u32, data, size) }
    })?;
    Ok(first_values(bytes.as_deref().unwrap_or_default(), names))
}

/// One header's value (the first, if repeated, as Envoy answers), or `None`.
pub fn header(map: MapType, name: &str) -> Result<Option<Vec<u8>>> {
    returned("proxy_get_header_map_value", |data, size| {
        // SAFETY: the name is a live &str; the out-pointers are valid locals of `returned`.
        unsafe { proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), data, size) }
    })
}

/// Sets a header, replacing every existing value, or removes it (`None`).
pub fn set_header(map: MapType, name: &str, value: Option<&str>) -> Result<()> {
    match value {
        Some(v) => {
            // SAFETY: pointers and lengths of live &strs; the host copies them.
            let status = unsafe {
                proxy_replace_header_map_value(
                    map as u32,
                    name.as_ptr(),
                    name.len(),
                    v.as_ptr(),
                    v.len(),
                )
            };
            check("proxy_replace_header_map_value", status)
        }
        None => {
            // SAFETY: pointer and length of a live &str.
            let status =
                unsafe { proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) };
            check("proxy_remove_header_map_value", status)
        }
    }
}

/// A property of the stream or the host (`["source", "address"]`), or `None`.
pub fn property(path: &[&str]) -> Result<Option<Vec<u8>>> {
    let mut serialized = Vec::new();
    for (i, part) in path.iter().enumerate() {
        if i > 0 {
            serialized.push(0);
        }
        serialized.extend_from_slice(part.as_bytes());
    }
    returned("proxy_get_property", |data, size| {
        // SAFETY: the path is a live Vec; the out-pointers are valid locals of `returned`.
        unsafe { proxy_get_property(serialized.as_ptr(), serialized.len(), data, size) }
    })
}

/// Sets a property of the stream. Envoy keeps it as filter state named `wasm.<path>`, which
/// `%FILTER_STATE(wasm.<path>:PLAIN)%` prints in an access log.
pub fn set_property(path: &[&str], value: &[u8]) -> Result<()> {
    // A one-part path (the record's) is its own serialisation: no joined copy of it.
    let joined;
    let serialized = match path {
        [one] => one.as_bytes(),
        _ => {
            joined = path.join("\0");
            joined.as_bytes()
        }
    };
    // SAFETY: pointers and lengths of live buffers; the host copies them.
    let status = unsafe {
        proxy_set_property(
            serialized.as_ptr(),
            serialized.len(),
            value.as_ptr(),
            value.len(),
        )
    };
    check("proxy_set_property", status)
}

/// Sends a local HTTP reply instead of the upstream's.
pub fn send_http_response(status: u32, headers: &[(&str, &[u8])], body: &[u8]) -> Result<()> {
    let map = encode_map(headers);
    // SAFETY: pointers and lengths of live buffers; the host copies them. -1: not gRPC.
    let result = unsafe {
        proxy_send_local_response(
            status,
            null(),
            0,
            body.as_ptr(),
            body.len(),
            map.as_ptr(),
            map.len(),
            -1,
        )
    };
    check("proxy_send_local_response", result)
}

/// Sends a local gRPC reply: HTTP 200 with `grpc-status` and `grpc-message` (Envoy takes the
/// message from the body argument) and `metadata` as headers.
pub fn send_grpc_response(
    status: GrpcStatusCode,
    message: &str,
    metadata: &[(&str, &[u8])],
) -> Result<()> {
    let map = encode_map(metadata);
    // SAFETY: pointers and lengths of live buffers; the host copies them.
    let result = unsafe {
        proxy_send_local_response(
            200,
            null(),
            0,
            message.as_ptr(),
            message.len(),
            map.as_ptr(),
            map.len(),
            status as i32,
        )
    };
    check("proxy_send_local_response", result)
}

/// Defines a metric, returning its id.
pub fn define_metric(kind: MetricType, name: &str) -> Result<u32> {
    let mut id: u32 = 0;
    // SAFETY: the name is a live &str; `id` is a valid local.
    let status = unsafe { proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) };
    check("proxy_define_metric", status).map(|()| id)
}

/// Adds `delta` to a counter.
pub fn increment_metric(id: u32, delta: i64) -> Result<()> {
    // SAFETY: no pointers.
    let status = unsafe { proxy_increment_metric(id, delta) };
    check("proxy_increment_metric", status)
}

/// Sets a gauge.
pub fn record_metric(id: u32, value: u64) -> Result<()> {
    // SAFETY: no pointers.
    let status = unsafe { proxy_record_metric(id, value) };
    check("proxy_record_metric", status)
}

/// Registers (or, when another worker of this VM already did, joins) the shared queue `name`.
pub fn register_shared_queue(name: &str) -> Result<u32> {
    let mut id: u32 = 0;
    // SAFETY: the name is a live &str; `id` is a valid local.
    let status = unsafe { proxy_register_shared_queue(name.as_ptr(), name.len(), &mut id) };
    check("proxy_register_shared_queue", status).map(|()| id)
}

/// Appends `value` to shared queue `id`.
pub fn enqueue_shared_queue(id: u32, value: &[u8]) -> Result<()> {
    // SAFETY: pointer and length of a live slice; the host copies it.
    let status = unsafe { proxy_enqueue_shared_queue(id, value.as_ptr(), value.len()) };
    check("proxy_enqueue_shared_queue", status)
}

/// Takes the oldest message of shared queue `id`; `None` when it is empty.
pub fn dequeue_shared_queue(id: u32) -> Result<Option<Vec<u8>>> {
    const EMPTY: u32 = 7;
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: out-pointers are valid locals; on OK the host hands us `size` bytes (see `take`).
    match unsafe { proxy_dequeue_shared_queue(id, &mut data, &mut size) } {
        // SAFETY: as above.
        status::OK => Ok(Some(unsafe { take(data, size) })),
        EMPTY => Ok(None),
        status => Err(HostError {
            call: "proxy_dequeue_shared_queue",
            status,
        }),
    }
}

// --- the header-map wire format ----------------------------------------------------------------
//
// proxy-wasm serialises a map as: the pair count (u32 LE), then each pair's name and value
// lengths (u32 LE each), then each name and value, each followed by a NUL.

fn encode_map(pairs: &[(&str, &[u8])]) -> Vec<u8> {
    let size = 4 + pairs
        .iter()
        .map(|(n, v)| 10 + n.len() + v.len())
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    out.extend_from_slice(&len(pairs.len()).to_le_bytes());
    for (n, v) in pairs {
        // A pair's two lengths (little-endian u32s) in one write: −368 Wasm operators for a
        // refusal's map of 9 pairs (BENCHMARKS.md §2).
        let both = u64::from(len(n.len())) | u64::from(len(v.len())) << 32;
        out.extend_from_slice(&both.to_le_bytes());
    }
    for (n, v) in pairs {
        out.extend_from_slice(n.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// Walks a serialised header map, calling `each` with where every (name, value) pair is in it,
/// in order, as (start, end) offsets; a malformed serialisation ends the walk where it breaks.
fn walk_spans(bytes: &[u8], mut each: impl FnMut((usize, usize), (usize, usize))) {
    let Some((count, sizes)) = bytes.split_first_chunk::<4>() else {
        return;
    };
    let count = usize::try_from(u32::from_le_bytes(*count)).unwrap_or(usize::MAX);
    let mut data = count.saturating_mul(8).saturating_add(4);
    // The size table read as whole 8-byte entries: a table cut short ends the walk where it
    // breaks, as a missing size would, without a bounds check per size.
    for entry in sizes.chunks_exact(8).take(count) {
        let Ok(&[n0, n1, n2, n3, v0, v1, v2, v3]) = <&[u8; 8]>::try_from(entry) else {
            break;
        };
        let len = |b: [u8; 4]| usize::try_from(u32::from_le_bytes(b)).unwrap_or(usize::MAX);
        let name_end = data.saturating_add(len([n0, n1, n2, n3]));
        let value_start = name_end.saturating_add(1);
        let value_end = value_start.saturating_add(len([v0, v1, v2, v3]));
        if value_end > bytes.len() {
            break;
        }
        each((data, name_end), (value_start, value_end));
        data = value_end.saturating_add(1);
    }
}

/// Walks a serialised header map, calling `each` with every (name, value) pair in order; a
/// malformed serialisation ends the walk where it breaks.
fn walk_map<'a>(bytes: &'a [u8], mut each: impl FnMut(&'a [u8], &'a [u8])) {
    walk_spans(bytes, |n, v| {
        if let (Some(name), Some(value)) = (bytes.get(n.0..n.1), bytes.get(v.0..v.1)) {
            each(name, value);
        }
    });
}

/// The first value of each of `names` in a serialised header map.
fn first_values<const N: usize>(bytes: &[u8], names: [&str; N]) -> [Option<Vec<u8>>; N] {
    let mut found: [Option<Vec<u8>>; N] = core::array::from_fn(|_| None);
    walk_map(bytes, |name, value| {
        for (wanted, slot) in names.iter().zip(found.iter_mut()) {
            if slot.is_none() && name.eq_ignore_ascii_case(wanted.as_bytes()) {
                *slot = Some(value.to_vec());
            }
        }
    });
    found
}

/// The pairs of a serialised header map, kept in the host's buffer: one allocation for their
/// places instead of two per header (BENCHMARKS.md §2).
fn decode_map(bytes: Vec<u8>) -> HeaderList {
    let count = bytes
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes);
    let mut spans = Vec::with_capacity(usize::try_from(count.min(256)).unwrap_or(0));
    walk_spans(&bytes, |name, value| spans.push(Span::new(name, value)));
    HeaderList::from_spans(bytes, spans)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_round_trip_through_the_wire_format() {
        let pairs: [(&str, &[u8]); 3] = [(":path", b"/v1"), ("x-user-id", b"alice"), ("e", b"")];
        let decoded = decode_map(encode_map(&pairs));
        let expected: HeaderList = pairs.iter().map(|(n, v)| (*n, *v)).collect();
        assert_eq!(decoded, expected);
        assert_eq!(decoded.iter().count(), 3);
    }

    #[test]
    fn a_malformed_map_is_cut_where_it_breaks_never_a_panic() {
        let good = encode_map(&[("a", b"1"), ("b", b"2")]);
        for cut in 0..good.len() {
            let pairs = decode_map(good[..cut].to_vec());
            assert!(pairs.iter().count() <= 2);
        }
        let mut huge = good.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_map(huge).iter().count() <= 2);
        assert_eq!(decode_map(Vec::new()), HeaderList::default());
    }

    #[test]
    fn first_values_takes_the_first_of_each_name_from_one_map() {
        let map = encode_map(&[
            (":status", b"200"),
            ("Content-Type", b"application/json"),
            ("content-type", b"text/plain"),
            ("x-other", b"1"),
        ]);
        let [status, content_type, encoding] =
            first_values(&map, [":status", "content-type", "content-encoding"]);
        assert_eq!(status.as_deref(), Some(&b"200"[..]));
        assert_eq!(content_type.as_deref(), Some(&b"application/json"[..]));
        assert_eq!(encoding, None);
        let good = encode_map(&[("a", b"1"), ("b", b"2")]);
        for cut in 0..good.len() {
            let _ = first_values(&good[..cut], ["a", "b"]);
        }
        assert_eq!(first_values(&[], ["a"]), [None]);
    }

    #[test]
    fn errors_name_the_call_and_the_status() {
        let e = HostError {
            call: "proxy_get_current_time_nanoseconds",
            status: 10,
        };
        assert_eq!(
            e.to_string(),
            "proxy_get_current_time_nanoseconds returned status 10 (InternalFailure)"
        );
    }
}
