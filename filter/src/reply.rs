//! Local replies: what a refused client receives.
//!
//! Besides the rate-limit fields, every reply carries what the clients' retry logic and error
//! reports read: the request's id (`x-request-id`, which Envoy's connection manager sets before
//! any filter runs, and Anthropic's `request-id` on `/v1/messages`), so an SDK's error names the
//! request an operator can find in Envoy's access log; and [`headers::retry_hints`].

use std::borrow::Cow;

use policy_core::decimal::Digits;
use policy_core::decision::Decision;
use policy_core::headers::{self, Fields, RequestFields};
use policy_core::identity::IdentityError;
use policy_core::llm::ApiKind;
use policy_core::scope::MissingScope;
use policy_core::tier::Tier;
use policy_core::{HeaderList, Nanos};
use proxy_wasm::types::{GrpcStatusCode, LogLevel, MapType};

use crate::host;

const JSON: (&str, &[u8]) = ("content-type", b"application/json");

/// Request ids longer than this, or not visible ASCII, are not echoed (Envoy's own are 36 bytes).
const MAX_REQUEST_ID: usize = 128;

/// Who a reply answers: a gRPC client (a gRPC status instead of an HTTP one) or not, and the
/// request's headers when the filter holds them. A refusal at the request headers finds the
/// request's id and path in the headers it decided on (no host call); a refusal at a body
/// callback, when they are no longer held, asks the host (two calls).
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    pub grpc: bool,
    pub headers: Option<&'a HeaderList>,
}

/// The first value of request header `name` (as Envoy's `proxy_get_header_map_value` gives):
/// where it is in `held`, else asked of the host.
fn read<'a>(held: Option<&'a HeaderList>, name: &'a str) -> Option<Cow<'a, [u8]>> {
    match held {
        Some(headers) => headers.values(name).next().map(Cow::Borrowed),
        None => host::header(MapType::HttpRequestHeaders, name)
            .ok()
            .flatten()
            .map(Cow::Owned),
    }
}

/// The request's id to echo (visible ASCII, at most [`MAX_REQUEST_ID`] bytes), and whether it
/// goes under Anthropic's `request-id` too. Read where it is when the headers are held (no copy).
fn request_id(client: Client<'_>) -> Option<(Cow<'_, [u8]>, bool)> {
    let id = read(client.headers, "x-request-id").filter(|v| echoable(v))?;
    let anthropic = read(client.headers, ":path")
        .filter(|p| may_be_messages(p))
        .is_some_and(|p| {
            std::str::from_utf8(&p)
                .is_ok_and(|p| ApiKind::from_path(p) == ApiKind::AnthropicMessages)
        });
    Some((id, anthropic))
}

/// Whether a request id may be echoed: 1 to [`MAX_REQUEST_ID`] bytes of visible ASCII (no
/// header injection, nothing a log would mangle).
fn echoable(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= MAX_REQUEST_ID && visible_ascii(id)
}

/// Whether every byte is visible ASCII (`!` to `~`), as `u8::is_ascii_graphic` says, eight bytes
/// at a time: byte by byte, the 36 bytes of Envoy's request ids cost a refusal ~870 Wasm
/// operators (BENCHMARKS.md §2).
fn visible_ascii(bytes: &[u8]) -> bool {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut chunks = bytes.chunks_exact(8);
    let words_ok = chunks.by_ref().all(|chunk| {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        // With every byte below 0x80, adding at most 0x5F to each cannot carry into the next:
        // a byte's high bit then says whether it reached 0x21 (`+ 0x5F`) or 0x7F (`+ 0x01`).
        w & HIGH == 0
            && w.wrapping_add(0x5F5F_5F5F_5F5F_5F5F) & HIGH == HIGH
            && w.wrapping_add(0x0101_0101_0101_0101) & HIGH == 0
    });
    words_ok && chunks.remainder().iter().all(u8::is_ascii_graphic)
}

/// Whether `path` can name Anthropic's Messages API (`…/v1/messages`, or Vertex AI's
/// `…/publishers/anthropic/…:rawPredict`): checked before [`ApiKind::from_path`], whose
/// normalising and matching cost a refusal ~6,000 Wasm operators (BENCHMARKS.md §2). The words
/// of the normalised path come from the raw path's own letters or from `%` escapes, so a path
/// with neither word and no `%` cannot be one. One pass over the path: a word is compared only
/// where its first letter is.
fn may_be_messages(path: &[u8]) -> bool {
    path.iter().enumerate().any(|(i, &b)| {
        if b == b'%' {
            return true;
        }
        let word: &[u8] = match b | 0x20 {
            b'm' => b"messages",
            b'r' => b"rawpredict",
            _ => return false,
        };
        path.get(i..i + word.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(word))
    })
}

/// `fields` as the pairs [`send`] takes, with room for what it adds.
fn listed(fields: &Fields) -> Vec<(&str, &[u8])> {
    let mut list = Vec::with_capacity(fields.len() + ADDED);
    list.extend(fields.iter().map(|(n, v)| (*n, v.as_bytes())));
    list
}

/// At most how many fields [`send`] adds: the request id under two names, the content type.
const ADDED: usize = 3;

/// Sends a local reply with the fields in `list` (the request's id and, for HTTP, the body's
/// type are added).
fn send(
    client: Client<'_>,
    status: u32,
    grpc_status: GrpcStatusCode,
    list: Vec<(&str, &[u8])>,
    body: &str,
    grpc_message: &str,
) {
    let id = request_id(client);
    let mut list = list;
    if let Some((id, anthropic)) = &id {
        if *anthropic {
            list.push(("request-id", id));
        }
        list.push(("x-request-id", id));
    }
    let sent = if client.grpc {
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
/// otherwise map 429 to UNAVAILABLE, which gRPC clients retry at once) with
/// `grpc-retry-pushback-ms`.
///
/// The fields are those of [`headers::fields`] and [`headers::retry_hints`], written from the
/// tier's constant text ([`RequestFields`]) and borrowed where they are: the reply allocates only
/// its text (`RateLimit`, the body) and the list of fields.
pub fn rate_limited(client: Client<'_>, tier: &Tier, decision: &Decision) {
    let mut current = String::new();
    let fields = RequestFields::new(tier, decision, true, &mut current);
    // `grpc-retry-pushback-ms` (the wait in milliseconds, rounded up), as `retry_hints` writes
    // it without a longest wait: HTTP clients get nothing more than `retry-after`.
    let pushback = decision
        .retry_after()
        .filter(|_| client.grpc)
        .map(|wait| Digits::of(wait.0.div_ceil(1_000_000)));
    let mut list = Vec::with_capacity(fields.len() + 1 + ADDED);
    fields.each(|name, value| list.push((name, value.as_bytes())));
    if let Some(ms) = &pushback {
        list.push(("grpc-retry-pushback-ms", ms.as_str().as_bytes()));
    }
    // Each client reads one of them: build only that one.
    let mut text = String::new();
    if client.grpc {
        tier.text().push_grpc_message(decision, &mut text);
    } else {
        tier.text().push_denial_body(decision, &mut text);
    }
    let (body, message) = if client.grpc {
        ("", text.as_str())
    } else {
        (text.as_str(), "")
    };
    send(
        client,
        429,
        GrpcStatusCode::ResourceExhausted,
        list,
        body,
        message,
    );
}

/// 429 for an LLM request, with a body in the client's API's error format; `wait` is how long
/// until the request would pass, `max_wait` the longest the client should be told to wait
/// (`llm.max_client_wait_seconds`).
pub fn llm_rate_limited(
    client: Client<'_>,
    mut fields: Fields,
    body: &str,
    wait: Option<Nanos>,
    max_wait: Nanos,
) {
    if let Some(wait) = wait {
        fields.extend(headers::retry_hints(wait, Some(max_wait), client.grpc));
    }
    send(
        client,
        429,
        GrpcStatusCode::ResourceExhausted,
        listed(&fields),
        body,
        "rate limit exceeded",
    );
}

/// 400 for a request whose identity is ambiguous.
pub fn ambiguous(client: Client<'_>, error: &IdentityError) {
    // The message names a header from the policy, whose names are HTTP tokens: no quotes or
    // backslashes to escape.
    let message = error.to_string();
    let body = format!("{{\"error\":\"ambiguous_identity\",\"message\":\"{message}\"}}");
    send(
        client,
        400,
        GrpcStatusCode::InvalidArgument,
        Vec::with_capacity(ADDED),
        &body,
        &message,
    );
}

/// 400 for a request without the identity of a scope one of its tier's limits counts against
/// and refuses without.
pub fn missing_scope(client: Client<'_>, missing: &MissingScope) {
    // Header names are HTTP tokens; a metadata path is the operator's text: escaped.
    let message: String = missing
        .to_string()
        .chars()
        .filter(|c| !c.is_control())
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect();
    let body = format!("{{\"error\":\"missing_scope\",\"message\":\"{message}\"}}");
    send(
        client,
        400,
        GrpcStatusCode::InvalidArgument,
        Vec::with_capacity(ADDED),
        &body,
        &message,
    );
}

/// 400 for a request body tollgate cannot pass on as its headers announced. `message` is one
/// of tollgate's own error texts (no quotes or backslashes to escape).
pub fn bad_request(client: Client<'_>, message: &str) {
    let body = format!(
        "{{\"error\":{{\"type\":\"invalid_request_error\",\"code\":\"invalid_request_body\",\"message\":\"{message}\"}}}}"
    );
    send(
        client,
        400,
        GrpcStatusCode::InvalidArgument,
        Vec::with_capacity(ADDED),
        &body,
        message,
    );
}

/// 400 for an LLM call whose model the price table does not price (and refuses unpriced
/// models) while a spend budget applies: `body` is in the API's own error format.
pub fn unpriced(client: Client<'_>, headers: &[(&'static str, &'static str)], body: &str) {
    let mut list = Vec::with_capacity(headers.len() + ADDED);
    list.extend(headers.iter().map(|&(n, v)| (n, v.as_bytes())));
    send(
        client,
        400,
        GrpcStatusCode::InvalidArgument,
        list,
        body,
        "the model has no price in the gateway's price table",
    );
}

/// 503 when the state store failed and the policy says to refuse.
pub fn unavailable(client: Client<'_>) {
    let body =
        "{\"error\":\"rate_limiter_unavailable\",\"message\":\"rate limiter state unavailable\"}";
    send(
        client,
        503,
        GrpcStatusCode::Unavailable,
        Vec::with_capacity(ADDED),
        body,
        "rate limiter state unavailable",
    );
}

/// 429 with `Retry-After: 1` when every compare-and-swap attempt lost to other workers.
pub fn contended(client: Client<'_>) {
    let mut fields = vec![("retry-after", String::from("1"))];
    fields.extend(headers::retry_hints(Nanos::SECOND, None, client.grpc));
    let body = "{\"error\":\"rate_limited\",\"message\":\"rate limiter state is contended; retry shortly\",\"retry_after_seconds\":1}";
    send(
        client,
        429,
        GrpcStatusCode::ResourceExhausted,
        listed(&fields),
        body,
        "rate limiter state is contended; retry shortly",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visible_ascii_agrees_with_is_ascii_graphic_for_every_byte_at_every_place() {
        for len in 0..=20 {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut id = vec![b'a'; len];
                    id[at] = b;
                    let want = id.iter().all(u8::is_ascii_graphic);
                    assert_eq!(visible_ascii(&id), want, "{b:#x} at {at} of {len}");
                }
            }
        }
        assert!(visible_ascii(b"6a3c1f0e-8d2b-4c5a-9e7f-000000000001"));
        assert!(!visible_ascii(b"6a3c1f0e-8d2b-4c5a-9e7f 000000000001"));
        assert!(!echoable(b""));
        assert!(!echoable(&[b'x'; MAX_REQUEST_ID + 1]));
    }

    #[test]
    fn every_path_of_anthropics_messages_api_passes_the_quick_check() {
        let paths = [
            "/v1/messages",
            "/V1/Messages?beta=true",
            "/anthropic/v1/messages/",
            "/v1/%6Dessages",
            "/v1//x/../messages",
            "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-3-5-sonnet:rawPredict",
            "/v1/projects/p/locations/l/publishers/anthropic/models/c:streamRawPredict",
            "/api/tasks",
            "/v1/chat/completions",
            "/v1/messages-archive",
        ];
        for path in paths {
            let messages = ApiKind::from_path(path) == ApiKind::AnthropicMessages;
            if messages {
                assert!(may_be_messages(path.as_bytes()), "{path}");
            }
        }
        assert!(!may_be_messages(b"/api/tasks"));
        // The same answer as looking for each word at every position, as it did before.
        let by_windows = |path: &[u8]| {
            let has = |word: &[u8]| {
                path.windows(word.len())
                    .any(|w| w.eq_ignore_ascii_case(word))
            };
            path.contains(&b'%') || has(b"messages") || has(b"rawpredict")
        };
        let pieces: [&[u8]; 9] = [
            b"/",
            b"v1",
            b"MESSAGES",
            b"messag",
            b"es",
            b"rawPredict",
            b"%6d",
            b"m",
            b"\x05",
        ];
        for a in pieces {
            for b in pieces {
                for c in pieces {
                    let path = [a, b, c].concat();
                    assert_eq!(may_be_messages(&path), by_windows(&path), "{path:?}");
                }
            }
        }
        assert!(!may_be_messages(b"/v1/chat/completions"));
        assert!(may_be_messages(b"/v1/messages"));
    }
}
