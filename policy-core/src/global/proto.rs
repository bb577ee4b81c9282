//! The messages of Envoy's rate limit service (`envoy.service.ratelimit.v3`), as much of them as
//! tollgate sends and reads, derived with prost (no protoc, no std).
//!
//! Field numbers and types are those of Envoy's `.proto` files; `sync/`'s tests encode with these
//! types and decode with `envoy-types` (generated from those files), and the other way round, so
//! a mistake here fails a test rather than a call. Fields tollgate never reads (response headers,
//! raw body, quota, dynamic metadata) are left out: prost skips unknown fields when decoding.

use alloc::string::String;
use alloc::vec::Vec;

/// `envoy.service.ratelimit.v3.RateLimitRequest`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RateLimitRequest {
    /// All descriptors of a request live in this namespace.
    #[prost(string, tag = "1")]
    pub domain: String,
    /// One per bucket.
    #[prost(message, repeated, tag = "2")]
    pub descriptors: Vec<RateLimitDescriptor>,
    /// The default cost of each descriptor (0 means 1); tollgate sets each descriptor's own.
    #[prost(uint32, tag = "3")]
    pub hits_addend: u32,
}

/// `envoy.extensions.common.ratelimit.v3.RateLimitDescriptor`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RateLimitDescriptor {
    /// The key (and `tollgate.*` parameters).
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<Entry>,
    /// The limit, carried by every descriptor: the service has no configuration of its own.
    #[prost(message, optional, tag = "2")]
    pub limit: Option<RateLimitOverride>,
    /// This descriptor's cost.
    #[prost(message, optional, tag = "3")]
    pub hits_addend: Option<UInt64Value>,
}

/// `RateLimitDescriptor.Entry`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Entry {
    /// Entry key.
    #[prost(string, tag = "1")]
    pub key: String,
    /// Entry value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `RateLimitDescriptor.RateLimitOverride`.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct RateLimitOverride {
    /// Cells per unit.
    #[prost(uint32, tag = "1")]
    pub requests_per_unit: u32,
    /// `envoy.type.v3.RateLimitUnit`, see [`crate::global::descriptor::Unit`].
    #[prost(int32, tag = "2")]
    pub unit: i32,
}

/// `google.protobuf.UInt64Value`.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct UInt64Value {
    /// The value.
    #[prost(uint64, tag = "1")]
    pub value: u64,
}

/// `envoy.service.ratelimit.v3.RateLimitResponse`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RateLimitResponse {
    /// [`Code`] of the whole request.
    #[prost(int32, tag = "1")]
    pub overall_code: i32,
    /// One per descriptor, in the request's order.
    #[prost(message, repeated, tag = "2")]
    pub statuses: Vec<DescriptorStatus>,
}

/// `RateLimitResponse.DescriptorStatus`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct DescriptorStatus {
    /// [`Code`] of this descriptor.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// The limit the answer was computed with.
    #[prost(message, optional, tag = "2")]
    pub current_limit: Option<RateLimit>,
    /// Whole cells left.
    #[prost(uint32, tag = "3")]
    pub limit_remaining: u32,
    /// Time until the bucket is full again (tollgate-sync) or until the window resets (others).
    #[prost(message, optional, tag = "4")]
    pub duration_until_reset: Option<Duration>,
}

/// `RateLimitResponse.RateLimit`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RateLimit {
    /// Name, when the service has one.
    #[prost(string, tag = "3")]
    pub name: String,
    /// Cells per unit.
    #[prost(uint32, tag = "1")]
    pub requests_per_unit: u32,
    /// `RateLimitResponse.RateLimit.Unit` (numbered as `envoy.type.v3.RateLimitUnit`, plus WEEK = 7).
    #[prost(int32, tag = "2")]
    pub unit: i32,
}

/// `google.protobuf.Duration`.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Duration {
    /// Whole seconds (may be negative in general; never from tollgate-sync).
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Nanoseconds, -999,999,999 to 999,999,999, with the sign of `seconds`.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// `RateLimitResponse.Code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// 0: the service did not say.
    Unknown,
    /// 1: within the limit.
    Ok,
    /// 2: over the limit.
    OverLimit,
}

impl Code {
    /// The code of a wire value; values Envoy does not define read as `Unknown`.
    pub fn from_wire(value: i32) -> Code {
        match value {
            1 => Code::Ok,
            2 => Code::OverLimit,
            _ => Code::Unknown,
        }
    }
}

impl Duration {
    /// As nanoseconds, negative durations as zero and huge ones saturated.
    pub fn to_nanos(self) -> crate::Nanos {
        if self.seconds < 0 || self.nanos < 0 {
            return crate::Nanos::ZERO;
        }
        let secs = u64::try_from(self.seconds).unwrap_or(u64::MAX);
        let nanos = u64::try_from(self.nanos.min(999_999_999)).unwrap_or(0);
        crate::Nanos(secs.saturating_mul(1_000_000_000).saturating_add(nanos))
    }
}

/// The gRPC service and method of `ShouldRateLimit`, as `dispatch_grpc_call` takes them.
pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
/// See [`SERVICE`].
pub const METHOD: &str = "ShouldRateLimit";

/// `envoy.config.core.v3.GrpcService`, only its `envoy_grpc` target: what `dispatch_grpc_call`
/// is given instead of a bare cluster name (see [`grpc_service`]).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct GrpcService {
    /// `envoy_grpc` (field 1 of the `target_specifier` oneof).
    #[prost(message, optional, tag = "1")]
    pub envoy_grpc: Option<EnvoyGrpc>,
}

/// `envoy.config.core.v3.GrpcService.EnvoyGrpc`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct EnvoyGrpc {
    /// The cluster.
    #[prost(string, tag = "1")]
    pub cluster_name: String,
}

/// The serialized `GrpcService` naming `cluster`. Envoy takes either a bare cluster name or this
/// message as a gRPC callout's target, and tells them apart by trying to parse the bytes as the
/// message: a bare name can happen to parse (as some other, wrong, message), while this always
/// means what it says.
pub fn grpc_service(cluster: &str) -> Vec<u8> {
    use prost::Message as _;
    GrpcService {
        envoy_grpc: Some(EnvoyGrpc {
            cluster_name: cluster.into(),
        }),
    }
    .encode_to_vec()
}
