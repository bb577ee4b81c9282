//! Local replies: what a refused client receives.

use policy_core::decision::Decision;
use policy_core::headers::{self, Fields};
use policy_core::identity::IdentityError;
use policy_core::tier::Tier;
use proxy_wasm::types::{GrpcStatusCode, LogLevel};

use crate::host;

const JSON: (&str, &[u8]) = ("content-type", b"application/json");

fn send(
    grpc: bool,
    status: u32,
    grpc_status: GrpcStatusCode,
    fields: &Fields,
    body: &str,
    grpc_message: &str,
) {
    let mut list: Vec<(&str, &[u8])> = fields.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
    let sent = if grpc {
        host::send_grpc_response(grpc_status, grpc_message, &list)
    } else {
        list.push(JSON);
        host::send_http_response(status, &list, body.as_bytes())
    };
    if let Err(e) = sent {
        // The stream is already paused: Envoy's own stream timeout or the client ends it. Nothing
        // was admitted, so nothing is owed.
        let _ = host::log(
            LogLevel::Warn,
            &format!("tollgate: local reply {status} not sent: {e}"),
        );
    }
}

/// 429 with the rate-limit headers, or gRPC RESOURCE_EXHAUSTED for a gRPC client (Envoy would
/// otherwise map 429 to UNAVAILABLE, which gRPC clients retry at once).
pub fn rate_limited(grpc: bool, tier: &Tier, decision: &Decision) {
    let fields = headers::fields(tier, decision);
    let body = headers::denial_body(tier, decision);
    let message = headers::denial_grpc_message(tier, decision);
    send(
        grpc,
        429,
        GrpcStatusCode::ResourceExhausted,
        &fields,
        &body,
        &message,
    );
}

/// 429 for an LLM request, with a body in the client's API's error format.
pub fn llm_rate_limited(grpc: bool, fields: Fields, body: &str) {
    send(
        grpc,
        429,
        GrpcStatusCode::ResourceExhausted,
        &fields,
        body,
        "rate limit exceeded",
    );
}

/// 400 for a request whose identity is ambiguous.
pub fn ambiguous(grpc: bool, error: &IdentityError) {
    let header = match error {
        IdentityError::Repeated { header } => header.as_str(),
        _ => "",
    };
    let body = format!("{{\"error\":\"ambiguous_identity\",\"message\":\"identity header {header} must appear exactly once\"}}");
    let message = format!("identity header {header} must appear exactly once");
    send(
        grpc,
        400,
        GrpcStatusCode::InvalidArgument,
        &Vec::new(),
        &body,
        &message,
    );
}

/// 503 when the state store failed and the policy says to refuse.
pub fn unavailable(grpc: bool) {
    let body =
        "{\"error\":\"rate_limiter_unavailable\",\"message\":\"rate limiter state unavailable\"}";
    send(
        grpc,
        503,
        GrpcStatusCode::Unavailable,
        &Vec::new(),
        body,
        "rate limiter state unavailable",
    );
}

/// 429 with `Retry-After: 1` when every compare-and-swap attempt lost to other workers.
pub fn contended(grpc: bool) {
    let fields = vec![("retry-after", String::from("1"))];
    let body = "{\"error\":\"rate_limited\",\"message\":\"rate limiter state is contended; retry shortly\",\"retry_after_seconds\":1}";
    send(
        grpc,
        429,
        GrpcStatusCode::ResourceExhausted,
        &fields,
        body,
        "rate limiter state is contended; retry shortly",
    );
}
