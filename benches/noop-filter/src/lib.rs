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

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { calls: false }) });
}}

/// The root context: hands out one [`Stream`] per HTTP stream.
struct Root {
    /// Make the lean admission's host calls (configuration containing `"host_calls"`).
    calls: bool,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let config = hostcalls::get_buffer(
            proxy_wasm::types::BufferType::PluginConfiguration,
            0,
            usize::MAX,
        );
        self.calls = matches!(config, Ok(Some(c)) if c.windows(12).any(|w| w == b"\"host_calls\""));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream { calls: self.calls }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One HTTP stream: every callback answers Continue; with `calls`, the request and response
/// headers make the lean admission's host calls first.
struct Stream {
    calls: bool,
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

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if !self.calls {
            return Action::Continue;
        }
        let map = request_map().unwrap_or_default();
        let user = value_of(&map, b"x-user-id").unwrap_or(b"anonymous");
        let mut key = [0u8; 64];
        let key = match core::str::from_utf8(user) {
            Ok(user) if user.len() <= 56 => {
                key[..8].copy_from_slice(b"noop/ul/");
                key[8..8 + user.len()].copy_from_slice(user.as_bytes());
                core::str::from_utf8(&key[..8 + user.len()]).unwrap_or("noop/ul/")
            }
            _ => "noop/ul/",
        };
        let now = hostcalls::get_current_time().ok();
        let nanos = now
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as u64);
        if let Ok((_, cas)) = hostcalls::get_shared_data(key) {
            let mut value = [0u8; 16];
            value[..8].copy_from_slice(&nanos.to_le_bytes());
            let _ = hostcalls::set_shared_data(key, Some(&value), cas);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.calls {
            let map = MapType::HttpResponseHeaders;
            let _ = hostcalls::set_map_value(map, "ratelimit", Some("\"users\";r=99;t=1"));
            let _ = hostcalls::set_map_value(map, "ratelimit-policy", Some("\"users\";q=100;w=60"));
        }
        Action::Continue
    }
}
