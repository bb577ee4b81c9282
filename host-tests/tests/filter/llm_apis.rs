//! The LLM APIs beyond OpenAI's and Anthropic's, through the compiled module: a Gemini stream
//! sent as a JSON array (no `alt=sse`) cut at every byte and an Ollama NDJSON stream, each
//! passed unchanged and charged the usage it reports; refusals in Gemini's and Ollama's error
//! formats with the rate-limit headers; a model named only in the path meets its budget.

use host_tests::{Harness, Outcome, Request, Response};

use crate::support::{json, number, tollgate_with};

const BUDGET: u64 = 1_000_000;

/// `:streamGenerateContent` without `alt=sse`: three chunks, cumulative usage 9 in, 23 + 24
/// (thinking) out in the last.
const GEMINI_ARRAY: &str = include_str!("../../../fixtures/llm/gemini-stream.json");
/// `/api/chat` streamed: counts 26 in, 12 out in the final object.
const OLLAMA_NDJSON: &str = include_str!("../../../fixtures/llm/ollama-chat.ndjson");

const GEMINI_PATH: &str = "/v1beta/models/gemini-2.5-flash:streamGenerateContent";
const GEMINI_BODY: &str = r#"{"contents":[{"role":"user","parts":[{"text":"Write about rain"}]}]}"#;
const OLLAMA_BODY: &str = r#"{"model":"llama3.2","messages":[{"role":"user","content":"Why?"}]}"#;

/// One tier `free`: [`BUDGET`] tokens a day, and `flash` tokens a day for gemini-2.5-flash.
fn policy(flash: u64) -> String {
    format!(
        r#"{{"tiers":[{{"name":"free","identity":{{"header":"x-user-id"}},
            "tokens":[{{"tokens":{BUDGET},"per":"day"}},
                      {{"tokens":{flash},"per":"day","model":"gemini-2.5-flash","name":"flash"}}]}}],
            "llm":{{"mode":"charge_after","default_max_tokens":100}}}}"#
    )
}

fn request(user: &str, path: &str, body: &str) -> Request {
    Request::new("POST", path)
        .header("x-user-id", user)
        .header("content-type", "application/json")
        .header("content-length", body.len().to_string())
        .body_chunk(body)
}

/// What `user` has left of the all-models budget, seen through a probe's headers.
fn left(h: &Harness, user: &str) -> u64 {
    let probe = r#"{"model":"m","max_tokens":1}"#;
    let out = h
        .send(
            0,
            &request(user, "/v1/chat/completions", probe).respond_with(
                Response::ok()
                    .header("content-type", "application/json")
                    .body_chunk(r#"{"usage":{"prompt_tokens":0,"completion_tokens":0}}"#),
            ),
        )
        .unwrap();
    assert!(out.is_continue(), "{out:?}");
    number(&out, "x-ratelimit-remaining-tokens")
}

/// A Gemini JSON-array stream cut in two at every byte passes unchanged and is charged the
/// last chunk's usage (9 + 47), however the cut falls; the sum of the chunks' counts would be
/// 27 + 44 + 24.
#[test]
fn a_gemini_json_array_stream_cut_at_every_byte_is_charged_its_last_usage() {
    let h = tollgate_with(1, &policy(BUDGET));
    let bytes = GEMINI_ARRAY.as_bytes();
    for cut in 0..=bytes.len() {
        let user = format!("gemini-{cut}");
        let out = h
            .send(
                0,
                &request(&user, GEMINI_PATH, GEMINI_BODY).respond_with(
                    Response::ok()
                        .header("content-type", "application/json; charset=UTF-8")
                        .body_chunk(&bytes[..cut])
                        .body_chunk(&bytes[cut..]),
                ),
            )
            .unwrap();
        let Outcome::Continue { response_body, .. } = out else {
            panic!("refused at cut {cut}: {out:?}");
        };
        assert_eq!(response_body, bytes, "cut at {cut}");
        assert_eq!(BUDGET - left(&h, &user), 56, "cut at {cut}");
    }
}

/// An Ollama NDJSON stream, in chunks of every size up to 64, is charged its final counts.
#[test]
fn an_ollama_ndjson_stream_is_charged_its_final_counts() {
    let h = tollgate_with(1, &policy(BUDGET));
    let bytes = OLLAMA_NDJSON.as_bytes();
    for size in 1..=64 {
        let user = format!("ollama-{size}");
        let mut response = Response::ok().header("content-type", "application/x-ndjson");
        for piece in bytes.chunks(size) {
            response = response.body_chunk(piece);
        }
        let out = h
            .send(
                0,
                &request(&user, "/api/chat", OLLAMA_BODY).respond_with(response),
            )
            .unwrap();
        let Outcome::Continue { response_body, .. } = out else {
            panic!("refused with chunks of {size}: {out:?}");
        };
        assert_eq!(response_body, bytes, "chunks of {size}");
        assert_eq!(BUDGET - left(&h, &user), 26 + 12, "chunks of {size}");
    }
}

/// A spent budget is refused in the API's own error format, with the rate-limit headers; the
/// model named only in Gemini's path is the one whose budget is spent.
#[test]
fn refusals_speak_gemini_and_ollama() {
    let h = tollgate_with(1, &policy(10));
    let gemini = |user: &str, path: &str| {
        h.send(
            0,
            &request(user, path, GEMINI_BODY).respond_with(
                Response::ok()
                    .header("content-type", "application/json")
                    .body_chunk(
                        r#"{"usageMetadata":{"promptTokenCount":20,"candidatesTokenCount":5}}"#,
                    ),
            ),
        )
        .unwrap()
    };
    let flash = "/v1beta/models/gemini-2.5-flash:generateContent";
    assert!(gemini("u", flash).is_continue(), "the first call passes");
    // 25 charged against a budget of 10: the next flash call is refused...
    let out = gemini("u", flash);
    assert_eq!(out.status(), 429, "{out:?}");
    let body = json(&out);
    assert_eq!(body["error"]["code"], 429, "{body}");
    assert_eq!(body["error"]["status"], "RESOURCE_EXHAUSTED", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("policy flash")),
        "{body}"
    );
    assert!(out.header("retry-after").is_some(), "{:?}", out.headers());
    assert_eq!(number(&out, "x-ratelimit-remaining-tokens"), 0);
    // ... on Vertex AI's path too; another model passes.
    let vertex =
        "/v1/projects/p/locations/l/publishers/google/models/gemini-2.5-flash:generateContent";
    assert_eq!(gemini("u", vertex).status(), 429);
    assert!(gemini("u", "/v1beta/models/gemini-2.5-pro:generateContent").is_continue());

    // Ollama: `{"error": "…"}`.
    let h = tollgate_with(
        1,
        r#"{"tiers":[{"name":"free","identity":{"header":"x-user-id"},
            "tokens":[{"tokens":10,"per":"day"}]}],
            "llm":{"mode":"charge_after"}}"#,
    );
    let ollama = || {
        h.send(
            0,
            &request(
                "u",
                "/api/generate",
                r#"{"model":"llama3.2","prompt":"hi","stream":false}"#,
            )
            .respond_with(
                Response::ok()
                    .header("content-type", "application/json")
                    .body_chunk(
                        r#"{"response":"hello","done":true,"prompt_eval_count":20,"eval_count":5}"#,
                    ),
            ),
        )
        .unwrap()
    };
    assert!(ollama().is_continue());
    let out = ollama();
    assert_eq!(out.status(), 429, "{out:?}");
    let body = json(&out);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|m| m.starts_with("Rate limit reached for tokens")),
        "{body}"
    );
    assert!(out.header("retry-after").is_some(), "{:?}", out.headers());
}

#[test]
fn an_unpriced_bedrock_model_is_a_validation_exception_botocore_can_name() {
    // A spend budget and a price table without the called model (`unpriced` refuses): the 400
    // carries `x-amzn-errortype: ValidationException`, whence botocore takes the error's name.
    let policy = r#"{"prices":{"currency":"USD","models":[{"model":"m","input":"1","output":"2"}]},
        "tiers":[{"name":"free","identity":{"header":"x-user-id"},
            "tokens":[{"spend":"5","per":"day"}]}]}"#;
    let h = tollgate_with(1, policy);
    let body = r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#;
    let call = Request::new("POST", "/model/amazon.nova-pro-v1:0/converse")
        .header("x-user-id", "alice")
        .header("content-type", "application/json")
        .header("content-length", body.len().to_string())
        .body_chunk(body);
    let out: Outcome = h.send(0, &call).unwrap();
    assert_eq!(out.status(), 400, "{out:?}");
    assert_eq!(out.header("x-amzn-errortype"), Some("ValidationException"));
    assert!(json(&out)["message"].is_string(), "{out:?}");
}
