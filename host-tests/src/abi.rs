//! The numeric vocabulary of proxy-wasm ABI 0.2.1: statuses and the enums that cross the boundary
//! as plain `i32`s.
//!
//! Values follow the spec (`abi-versions/v0.2.1`) and the Rust SDK's `types.rs`. Conversions from
//! guest integers are fallible: a filter passing an out-of-range enum gets `BadArgument`, the same
//! answer Envoy gives, instead of a host panic.

/// `proxy_status_t`: what every host function returns to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// The call succeeded.
    Ok = 0,
    /// The key, map, queue or buffer does not exist.
    NotFound = 1,
    /// An argument was out of range or not valid in this phase.
    BadArgument = 2,
    /// A value could not be serialized.
    SerializationFailure = 3,
    /// Guest-supplied bytes could not be parsed.
    ParseFailure = 4,
    /// A pointer/length pair fell outside guest memory.
    InvalidMemoryAccess = 6,
    /// A queue was empty.
    Empty = 7,
    /// A shared-data write carried a stale CAS.
    CasMismatch = 8,
    /// The host failed (used by fault injection).
    InternalFailure = 10,
    /// The host does not implement this call.
    Unimplemented = 12,
}

impl Status {
    /// The wire value returned to the guest.
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// Turns a guest `i32` that names an enum variant into the variant, or `BadArgument`.
macro_rules! abi_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $value:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum $name {
            $($(#[$vmeta])* $variant = $value,)+
        }

        impl TryFrom<i32> for $name {
            type Error = Status;

            fn try_from(value: i32) -> Result<Self, Status> {
                match value {
                    $($value => Ok(Self::$variant),)+
                    _ => Err(Status::BadArgument),
                }
            }
        }
    };
}

abi_enum! {
    /// Which byte buffer `proxy_get_buffer_bytes`/`proxy_set_buffer_bytes` address.
    BufferType {
        /// The request body chunk being processed.
        HttpRequestBody = 0,
        /// The response body chunk being processed.
        HttpResponseBody = 1,
        /// TCP downstream data.
        DownstreamData = 2,
        /// TCP upstream data.
        UpstreamData = 3,
        /// The body of an HTTP callout's response.
        HttpCallResponseBody = 4,
        /// A message received on a gRPC callout.
        GrpcReceiveBuffer = 5,
        /// The VM configuration (read in `proxy_on_vm_start`).
        VmConfiguration = 6,
        /// The plugin configuration (read in `proxy_on_configure`).
        PluginConfiguration = 7,
        /// Arguments of a foreign function call.
        CallData = 8,
    }
}

abi_enum! {
    /// Which header map a header call addresses.
    MapType {
        /// Request headers.
        HttpRequestHeaders = 0,
        /// Request trailers.
        HttpRequestTrailers = 1,
        /// Response headers.
        HttpResponseHeaders = 2,
        /// Response trailers.
        HttpResponseTrailers = 3,
        /// Initial metadata of a gRPC callout's reply.
        GrpcReceiveInitialMetadata = 4,
        /// Trailing metadata of a gRPC callout's reply.
        GrpcReceiveTrailingMetadata = 5,
        /// Headers of an HTTP callout's response.
        HttpCallResponseHeaders = 6,
        /// Trailers of an HTTP callout's response.
        HttpCallResponseTrailers = 7,
    }
}

abi_enum! {
    /// Severity of a `proxy_log` line.
    LogLevel {
        /// Trace.
        Trace = 0,
        /// Debug.
        Debug = 1,
        /// Info.
        Info = 2,
        /// Warn.
        Warn = 3,
        /// Error: the level tollgate uses for configuration errors.
        Error = 4,
        /// Critical: the level the SDK's panic hook uses.
        Critical = 5,
    }
}

abi_enum! {
    /// The direction `proxy_continue_stream`/`proxy_close_stream` act on.
    StreamType {
        /// The HTTP request.
        HttpRequest = 0,
        /// The HTTP response.
        HttpResponse = 1,
        /// TCP downstream.
        Downstream = 2,
        /// TCP upstream.
        Upstream = 3,
    }
}

abi_enum! {
    /// The kind of a metric defined with `proxy_define_metric`.
    MetricType {
        /// Monotonic counter.
        Counter = 0,
        /// Gauge.
        Gauge = 1,
        /// Histogram.
        Histogram = 2,
    }
}

/// What a stream callback asked the host to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// Forward this part of the stream.
    Continue,
    /// Hold it (after a local reply, or while waiting for a callout).
    Pause,
}

impl TryFrom<i32> for Action {
    type Error = i32;

    fn try_from(value: i32) -> Result<Self, i32> {
        match value {
            0 => Ok(Self::Continue),
            1 => Ok(Self::Pause),
            other => Err(other),
        }
    }
}
