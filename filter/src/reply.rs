//! Local replies: what a refused client receives.

use policy_core::decision::Decision;
use policy_core::headers;
use policy_core::identity::IdentityError;
use policy_core::tier::Tier;
use proxy_wasm::hostcalls;
use proxy_wasm::types::GrpcStatusCode;

use crate::attributes::Request;

const JSON: (&str, &str) = ("content-type", "application/json");

/// 429 with the rate-limit headers, or gRPC RESOURCE_EXHAUSTED for a gRPC client (Envoy would
/// otherwise map 429 to UNAVAILABLE, which gRPC clients retry at once).
pub fn rate_limited(request: &Request, tier: &Tier, decision: &Decision) {
    let fields = headers::fields(tier, decision);
    if request.is_grpc() {
        let metadata: Vec<(&str, &[u8])> = fields.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
        let message = headers::denial_grpc_message(tier, decision);
        let _ = hostcalls::send_grpc_response(
            GrpcStatusCode::ResourceExhausted,
            Some(&message),
            metadata,
        );
    } else {
        let mut list: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (*n, v.as_str())).collect();
        list.push(JSON);
        let body = headers::denial_body(tier, decision);
        let _ = hostcalls::send_http_response(429, list, Some(body.as_bytes()));
    }
}

/// 400 for a request whose identity is ambiguous.
pub fn ambiguous(request: &Request, error: &IdentityError) {
    let header = match error {
        IdentityError::Repeated { header } => header.as_str(),
        _ => "",
    };
    if request.is_grpc() {
        let msg = format!("identity header {header} must appear once");
        let _ = hostcalls::send_grpc_response(GrpcStatusCode::InvalidArgument, Some(&msg), vec![]);
    } else {
        let body = format!(
            "{{\"error\":\"ambiguous_identity\",\"message\":\"identity header {header} must appear exactly once\"}}"
        );
        let _ = hostcalls::send_http_response(400, vec![JSON], Some(body.as_bytes()));
    }
}

/// 503 when the state store failed and the policy says to refuse.
pub fn unavailable(request: &Request) {
    if request.is_grpc() {
        let _ = hostcalls::send_grpc_response(
            GrpcStatusCode::Unavailable,
            Some("rate limiter state unavailable"),
            vec![],
        );
    } else {
        let body = "{\"error\":\"rate_limiter_unavailable\",\"message\":\"rate limiter state unavailable\"}";
        let _ = hostcalls::send_http_response(503, vec![JSON], Some(body.as_bytes()));
    }
}
