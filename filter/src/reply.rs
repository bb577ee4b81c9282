//! Local replies: what a refused client receives.

use policy_core::decision::Decision;
use policy_core::headers::{self, Fields};
use policy_core::identity::IdentityError;
use policy_core::tier::Tier;
use proxy_wasm::hostcalls;
use proxy_wasm::types::GrpcStatusCode;

const JSON: (&str, &str) = ("content-type", "application/json");

fn send(
    grpc: bool,
    status: u32,
    grpc_status: GrpcStatusCode,
    fields: &Fields,
    body: &str,
    grpc_message: &str,
) {
    if grpc {
        let metadata: Vec<(&str, &[u8])> = fields.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
        let _ = hostcalls::send_grpc_response(grpc_status, Some(grpc_message), metadata);
    } else {
        let mut list: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (*n, v.as_str())).collect();
        list.push(JSON);
        let _ = hostcalls::send_http_response(status, list, Some(body.as_bytes()));
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

/// 400 for a request body tollgate cannot pass on as its headers announced. `message` is one
/// of tollgate's own error texts (no quotes or backslashes to escape).
pub fn bad_request(grpc: bool, message: &str) {
    let body = format!(
        "{{\"error\":{{\"type\":\"invalid_request_error\",\"code\":\"invalid_request_body\",\"message\":\"{message}\"}}}}"
    );
    send(
        grpc,
        400,
        GrpcStatusCode::InvalidArgument,
        &Vec::new(),
        &body,
        message,
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
