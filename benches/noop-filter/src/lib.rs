//! The do-nothing Wasm filter of the side-by-side benchmark (`benches/side-by-side`), and its
//! "host calls only" twin.
//!
//! Built with the same proxy-wasm SDK as tollgate, it is the floor any Rust proxy-wasm filter
//! pays in Envoy: a VM per worker, a context created and deleted per stream, and Envoy calling
//! every callback the SDK exports (request and response headers and bodies, log, done). By
//! default it reads nothing and calls no host function, so the gap between it and tollgate is
//! tollgate's own work (variant `wasm-noop`).
//!
//! With a plugin configuration containing `"host_calls"` (variant `wasm-calls`) it makes exactly
//! the six host calls of tollgate's admitted request under the lean policy
//! (`"x_ratelimit_headers": false, "records": false`; BENCHMARKS.md §2) and as little else as it
//! can: the request map (scanned in place for `x-user-id`, nothing decoded), the clock, a get
//! and a compare-and-swap set of a 16-byte shared-data value keyed by the user, and two response
//! headers of fixed text. It decides nothing. So the gap between it and `wasm-noop` is what
//! those crossings cost Envoy, and the gap between it and tollgate (lean) is tollgate's own
//! guest work: the floor of issue 14's "+7 µs" target for a filter that must make these calls.
//!
//! With `"host_calls": "llm"` (variant `wasm-calls-llm`) it makes the 22 host calls of tollgate's
//! LLM JSON call under the lean policy (BENCHMARKS.md §2, "the LLM call's crossings, third
//! pass"), again deciding nothing: at the request headers the map, the clock, the request
//! limit's get and set, the budget peek's get and the request's `content-length`; at the body's
//! end its read, the admission's set and the body written back; at the response headers the map
//! and eight fields; at the answer's end its read, the clock and settlement's get and set.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { calls: Calls::None }) });
}}

/// Which host calls a stream makes.
#[derive(Clone, Copy, PartialEq)]
enum Calls {
    /// None: the do-nothing filter.
    None,
    /// The lean policy's admission of a headers-only request (6).
    Request,
    /// The lean policy's LLM JSON call (22).
    Llm,
}

/// The root context: hands out one [`Stream`] per HTTP stream.
struct Root {
    /// From the configuration: `"host_calls":"llm"`, any other `"host_calls"`, or nothing.
    calls: Calls,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let config = hostcalls::get_buffer(
            proxy_wasm::types::BufferType::PluginConfiguration,
            0,
            usize::MAX,
        );
        let config = config.ok().flatten().unwrap_or_default();
        let has = |s: &[u8]| config.windows(s.len()).any(|w| w == s);
        self.calls = if !has(b"\"host_calls\"") {
            Calls::None
        } else if has(b"\"llm\"") {
            Calls::Llm
        } else {
            Calls::Request
        };
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream { calls: self.calls, key: [0; 64], key_len: 0 }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One HTTP stream: every callback answers Continue; with `calls`, the callbacks make the
/// host calls of tollgate's lean admission (or LLM call) first.
struct Stream {
    calls: Calls,
    /// The shared-data key of the request's user (`noop/ul/` + `x-user-id`).
    key: [u8; 64],
    key_len: usize,
}

impl Context for Stream {}

extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
}

/// The request map as Envoy serialises it, in one crossing, without decoding it.
fn request_map() -> Option<Vec<u8>> {
    let mut data: *mut u8 = core::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: both out-pointers are valid locals; on success the host hands over a buffer it
    // allocated with our `proxy_on_memory_allocate` (the global allocator), `size` bytes long.
    let status = unsafe {
        proxy_get_header_map_pairs(MapType::HttpRequestHeaders as u32, &mut data, &mut size)
    };
    if status != 0 || data.is_null() {
        return None;
    }
    // SAFETY: as above: a heap buffer of `size` bytes and capacity, now ours.
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}

/// The value of `name` in a serialised map (count, then a key and value length per pair, then
/// each key and value followed by a NUL), compared byte for byte.
fn value_of<'a>(map: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let word = |at: usize| -> Option<usize> {
        let b = map.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let count = word(0)?;
    let mut text = 4 + 8 * count;
    for i in 0..count {
        let (k, v) = (word(4 + 8 * i)?, word(8 + 8 * i)?);
        let key = map.get(text..text + k)?;
        let value = map.get(text + k + 1..text + k + 1 + v)?;
        if key == name {
            return Some(value);
        }
        text += k + v + 2;
    }
    None
}

impl Stream {
    fn key(&self) -> &str {
        core::str::from_utf8(&self.key[..self.key_len]).unwrap_or("noop/ul/")
    }

    /// A get and a compare-and-swap set of the user's 16-byte value (`now` in it).
    fn get_set(&self, nanos: u64) {
        if let Ok((_, cas)) = hostcalls::get_shared_data(self.key()) {
            self.set(nanos, cas);
        }
    }

    fn set(&self, nanos: u64, cas: Option<u32>) {
        let mut value = [0u8; 16];
        value[..8].copy_from_slice(&nanos.to_le_bytes());
        let _ = hostcalls::set_shared_data(self.key(), Some(&value), cas);
    }
}

fn clock() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64)
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.calls == Calls::None {
            return Action::Continue;
        }
        let map = request_map().unwrap_or_default();
        let user = value_of(&map, b"x-user-id").unwrap_or(b"anonymous");
        self.key[..8].copy_from_slice(b"noop/ul/");
        self.key_len = 8;
        if user.len() <= 56 && core::str::from_utf8(user).is_ok() {
            self.key[8..8 + user.len()].copy_from_slice(user);
            self.key_len += user.len();
        }
        let now = clock();
        self.get_set(now);
        if self.calls == Calls::Llm {
            // The budget peek, and the request's content-length as announced.
            let _ = hostcalls::get_shared_data(self.key());
            let length = value_of(&map, b"content-length")
                .and_then(|v| core::str::from_utf8(v).ok())
                .unwrap_or("0");
            let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, "content-length", Some(length));
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        if self.calls != Calls::Llm || body_size == 0 {
            return Action::Continue;
        }
        // The body read, the admission's set, the body written back (tollgate holds the body
        // and does these at its end; Envoy's chunks of this small body: the body, then empty).
        let body = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size);
        // (No clock read: tollgate admits a held body at its headers' instant.)
        self.set(0, None);
        if let Ok(Some(body)) = body {
            let _ = hostcalls::set_buffer(BufferType::HttpRequestBody, 0, body_size, &body);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let map = MapType::HttpResponseHeaders;
        match self.calls {
            Calls::None => {}
            Calls::Request => {
                let _ = hostcalls::set_map_value(map, "ratelimit", Some("\"users\";r=99;t=1"));
                let _ = hostcalls::set_map_value(map, "ratelimit-policy", Some("\"users\";q=100;w=60"));
            }
            Calls::Llm => {
                let _ = hostcalls::get_map_bytes(map);
                for (name, value) in LLM_FIELDS {
                    let _ = hostcalls::set_map_value(map, name, Some(value));
                }
            }
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.calls != Calls::Llm {
            return Action::Continue;
        }
        if body_size > 0 {
            let _ = hostcalls::get_buffer(BufferType::HttpResponseBody, 0, body_size);
        }
        if end_of_stream {
            // Settlement: the clock, a get and a set.
            let now = clock();
            self.get_set(now);
        }
        Action::Continue
    }
}

/// Eight response fields of the size tollgate sends on an LLM call.
const LLM_FIELDS: [(&str, &str); 8] = [
    ("ratelimit-policy", "\"users\";q=6000;w=60, \"tokens\";q=1000000000;w=3600"),
    ("ratelimit", "\"users\";r=99;t=1"),
    ("x-ratelimit-limit-requests", "6000"),
    ("x-ratelimit-remaining-requests", "99"),
    ("x-ratelimit-reset-requests", "1s"),
    ("x-ratelimit-limit-tokens", "1000000000"),
    ("x-ratelimit-remaining-tokens", "999999700"),
    ("x-ratelimit-reset-tokens", "1s"),
];
