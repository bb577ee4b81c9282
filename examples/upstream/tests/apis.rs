//! The LLM mock speaking Gemini (the Gemini API and Vertex AI), Anthropic on Vertex AI, Azure
//! OpenAI and Ollama's native API, handler by handler (no socket).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use http::{Method, Uri};
use serde_json::Value;
use tollgate_upstream::llm::LlmMock;
use tollgate_upstream::request::Request;
use tollgate_upstream::response::Response;
use tollgate_upstream::server::Handler;

const GEMINI: &str = "/v1beta/models/gemini-2.5-flash:";
const VERTEX: &str = "/v1/projects/p/locations/us-central1/publishers/";
const CONTENTS: &str = r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#;

fn call(path: &str, body: &str, headers: &[(&str, &str)]) -> Response {
    let mut request = Request::new(Method::POST, path.parse::<Uri>().unwrap());
    for (n, v) in headers {
        request.headers.append(
            http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    request.body = body.to_owned().into();
    LlmMock::new().handle(&request)
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(bytes)))
}

fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |v, k| match k.parse::<usize>() {
        Ok(i) => &v[i],
        Err(_) => &v[*k],
    })
}

fn gemini_text(chunk: &Value) -> String {
    at(chunk, &["candidates", "0", "content", "parts", "0", "text"])
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn gemini_generate_content_reports_usage_metadata_and_the_path_model() {
    for path in [
        format!("{GEMINI}generateContent"),
        format!("{VERTEX}google/models/gemini-2.5-flash:generateContent"),
        format!("{GEMINI}generateContent").replace(':', "%3A"),
    ] {
        let r = call(&path, CONTENTS, &[("x-mock-completion-tokens", "30")]);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        let v = json(&r.body_bytes());
        assert_eq!(gemini_text(&v).len(), 120);
        assert_eq!(at(&v, &["candidates", "0", "finishReason"]), "STOP");
        assert_eq!(v["modelVersion"], "gemini-2.5-flash");
        let usage = &v["usageMetadata"];
        assert_eq!(
            (
                &usage["promptTokenCount"],
                &usage["candidatesTokenCount"],
                &usage["totalTokenCount"]
            ),
            (&Value::from(100), &Value::from(30), &Value::from(130)),
            "{path}"
        );
        assert_eq!(r.header("x-mock-saw-model"), Some("gemini-2.5-flash"));
    }
}

/// A Gemini stream's chunks, from SSE (`\r\n\r\n` between events) or a JSON array.
fn gemini_chunks(r: &Response) -> Vec<Value> {
    let body = r.body_bytes();
    if r.header("content-type") == Some("text/event-stream") {
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(text.ends_with("\r\n\r\n"));
        text.split("\r\n\r\n")
            .filter(|e| !e.is_empty())
            .map(|e| json(e.strip_prefix("data: ").unwrap().as_bytes()))
            .collect()
    } else {
        assert_eq!(
            r.header("content-type"),
            Some("application/json; charset=UTF-8")
        );
        json(&body).as_array().unwrap().clone()
    }
}

#[test]
fn a_gemini_stream_repeats_a_growing_usage_in_sse_or_a_json_array() {
    for query in ["?alt=sse", ""] {
        let path = format!("{GEMINI}streamGenerateContent{query}");
        let r = call(&path, CONTENTS, &[("x-mock-completion-tokens", "30")]);
        let pieces = &r.pieces().expect("streamed").pieces;
        let chunks = gemini_chunks(&r);
        assert_eq!(chunks.len(), 10, "{path}");
        // One write per chunk (and the array's closing bracket).
        assert_eq!(pieces.len(), if query.is_empty() { 11 } else { 10 });
        let outs: Vec<u64> = chunks
            .iter()
            .map(|c| c["usageMetadata"]["candidatesTokenCount"].as_u64().unwrap())
            .collect();
        assert_eq!(outs, [3, 6, 9, 12, 15, 18, 21, 24, 27, 30], "{path}");
        assert!(chunks
            .iter()
            .all(|c| c["usageMetadata"]["promptTokenCount"] == 100));
        let text: String = chunks.iter().map(gemini_text).collect();
        assert_eq!(text.len(), 120);
        assert_eq!(at(&chunks[9], &["candidates", "0", "finishReason"]), "STOP");
        assert!(at(&chunks[8], &["candidates", "0", "finishReason"]).is_null());
    }
}

#[test]
fn gemini_embeddings_report_no_usage_and_count_tokens_counts() {
    let r = call(&format!("{GEMINI}embedContent"), CONTENTS, &[]);
    let v = json(&r.body_bytes());
    assert_eq!(v["embedding"]["values"].as_array().unwrap().len(), 8);
    assert!(v.get("usageMetadata").is_none());
    let r = call(
        &format!("{GEMINI}countTokens"),
        CONTENTS,
        &[("x-mock-prompt-tokens", "17")],
    );
    assert_eq!(
        json(&r.body_bytes()),
        serde_json::json!({"totalTokens": 17})
    );
    assert_eq!(
        call(&format!("{GEMINI}unknownMethod"), CONTENTS, &[]).status,
        404
    );
}

#[test]
fn anthropic_on_vertex_answers_messages_with_the_path_model() {
    let body = r#"{"anthropic_version":"vertex-2023-10-16","max_tokens":10,"messages":[]}"#;
    let model = "claude-sonnet-4@20250514";
    let r = call(
        &format!("{VERTEX}anthropic/models/{model}:rawPredict"),
        body,
        &[],
    );
    let v = json(&r.body_bytes());
    assert_eq!(v["type"], "message");
    assert_eq!(v["model"], model);
    assert_eq!(v["usage"]["input_tokens"], 100);
    assert_eq!(v["usage"]["output_tokens"], 200);
    let r = call(
        &format!("{VERTEX}anthropic/models/{model}:streamRawPredict"),
        body,
        &[],
    );
    let text = String::from_utf8(r.body_bytes().to_vec()).unwrap();
    assert!(text.starts_with("event: message_start\n"), "{text}");
    assert!(text.contains(r#""usage":{"output_tokens":200}"#), "{text}");
    // Only Anthropic's models answer rawPredict.
    let other = format!("{VERTEX}meta/models/llama:rawPredict");
    assert_eq!(call(&other, body, &[]).status, 404);
}

#[test]
fn azure_openai_answers_as_openai_with_the_deployment_as_model() {
    let body = r#"{"messages":[{"role":"user","content":"hi"}]}"#;
    let r = call(
        "/openai/deployments/prod-chat/chat/completions?api-version=2024-10-21",
        body,
        &[],
    );
    let v = json(&r.body_bytes());
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "prod-chat");
    assert_eq!(v["usage"]["total_tokens"], 300);
    let r = call(
        "/openai/v1/chat/completions",
        r#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true}}"#,
        &[],
    );
    let text = String::from_utf8(r.body_bytes().to_vec()).unwrap();
    assert!(text.contains(r#""total_tokens":300"#), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"));
}

#[test]
fn ollama_streams_ndjson_unless_told_not_to_and_counts_in_the_final_object() {
    for (path, field) in [("/api/chat", "message"), ("/api/generate", "response")] {
        let r = call(
            path,
            r#"{"model":"llama3.2"}"#,
            &[("x-mock-completion-tokens", "20")],
        );
        assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
        let pieces = &r.pieces().expect("streamed").pieces;
        assert!(pieces.iter().all(|p| p.ends_with(b"\n")));
        let lines: Vec<Value> = pieces.iter().map(|p| json(p)).collect();
        assert_eq!(lines.len(), 11, "{path}: ten deltas and the final object");
        let text: usize = lines
            .iter()
            .map(|l| {
                let t = if field == "message" {
                    &l["message"]["content"]
                } else {
                    &l["response"]
                };
                t.as_str().unwrap().len()
            })
            .sum();
        assert_eq!(text, 80);
        let last = lines.last().unwrap();
        assert_eq!(
            (&last["done"], &last["done_reason"]),
            (&Value::from(true), &Value::from("stop"))
        );
        assert_eq!(
            (&last["prompt_eval_count"], &last["eval_count"]),
            (&Value::from(100), &Value::from(20))
        );
        assert!(lines[..10]
            .iter()
            .all(|l| l["done"] == false && l.get("eval_count").is_none()));
        let r = call(path, r#"{"model":"llama3.2","stream":false}"#, &[]);
        assert_eq!(r.header("content-type"), Some("application/json"));
        let v = json(&r.body_bytes());
        assert_eq!(
            (&v["model"], &v["eval_count"]),
            (&Value::from("llama3.2"), &Value::from(200))
        );
    }
}

#[test]
fn each_api_refuses_in_its_own_error_format_and_keeps_the_fault_modes() {
    let r = call(
        &format!("{GEMINI}generateContent"),
        CONTENTS,
        &[("x-mock-status", "429")],
    );
    assert_eq!(r.status, 429);
    assert_eq!(
        json(&r.body_bytes()),
        serde_json::json!({"error": {"code": 429, "message": "mock upstream failure", "status": "RESOURCE_EXHAUSTED"}})
    );
    let r = call("/api/chat", "{}", &[("x-mock-status", "503")]);
    assert_eq!(
        json(&r.body_bytes()),
        serde_json::json!({"error": "mock upstream failure"})
    );
    let r = call(&format!("{GEMINI}generateContent"), "{nope", &[]);
    assert_eq!(json(&r.body_bytes())["error"]["status"], "INVALID_ARGUMENT");
    // Cut, paced, chunked, without usage, truncated: as for the other APIs.
    let r = call(
        &format!("{GEMINI}streamGenerateContent"),
        CONTENTS,
        &[("x-mock-cut-after", "3"), ("x-mock-chunk-bytes", "7")],
    );
    let p = r.pieces().unwrap();
    assert_eq!(p.cut_after, Some(3));
    assert!(p.pieces.iter().all(|p| p.len() <= 7));
    let r = call("/api/chat", "{}", &[("x-mock-no-usage", "1")]);
    assert!(!String::from_utf8(r.body_bytes().to_vec())
        .unwrap()
        .contains("eval_count"));
    let r = call(
        &format!("{GEMINI}streamGenerateContent?alt=sse"),
        CONTENTS,
        &[("x-mock-truncated-event", "1")],
    );
    let text = String::from_utf8(r.body_bytes().to_vec()).unwrap();
    assert!(!text.ends_with("\r\n\r\n") && text.contains("\r\n\r\ndata: {"));
    let r = call(
        &format!("{GEMINI}generateContent"),
        CONTENTS,
        &[("x-mock-big-body", "10000")],
    );
    let body = r.body_bytes();
    assert!(
        body.len() >= 10_000 && body.len() < 10_100,
        "{}",
        body.len()
    );
    assert_eq!(json(&body)["usageMetadata"]["totalTokenCount"], 300);
}

#[test]
fn a_path_that_does_not_tell_its_api_is_told_by_x_mock_api() {
    let r = call(
        "/llm-proxy/complete",
        r#"{"model":"llama3.2"}"#,
        &[("x-mock-api", "ollama_generate")],
    );
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    assert_eq!(call("/llm-proxy/complete", "{}", &[]).status, 404);
    assert_eq!(
        call("/llm-proxy/complete", "{}", &[("x-mock-api", "bedrock")]).status,
        404
    );
}
