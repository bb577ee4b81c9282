//! Wasm operators the filter executes per request, counted by wasmtime's fuel: exact and
//! independent of the machine's load, so a change to the request path can be measured on a busy
//! machine (BENCHMARKS.md §2). Runs the cases of `benches/count-hostcalls` (one user's first and
//! second request, a refusal, another user) through the wasmtime host and prints, per case, the
//! guest's operators and host calls; with `--trace`, the operators each callback spent before
//! each host call it made and before returning. With `--llm`, the chat completions of
//! `benches/count-hostcalls --llm` instead (its token-budget policy; a JSON answer with usage,
//! the same again, and a 20-chunk stream), played as Envoy delivers them.
//!
//! ```sh
//! scripts/build-wasm
//! cargo run -p host-tests --example guest_ops [-- [--trace] [--llm] POLICY.json]   # TOLLGATE_WASM=… for another module
//! ```

use std::collections::BTreeMap;

use host_tests::{Harness, Plugin, Request, Response};

/// `benches/count-hostcalls`'s policy: 2 requests a minute per `x-user-id`.
const POLICY: &str = r#"{"tiers":[{"name":"users","identity":{"header":"x-user-id"},
    "limits":[{"requests":2,"per":"minute"}]}]}"#;

/// `benches/count-hostcalls`' request with the headers Envoy adds. `Request::get` already has
/// `:authority` and `:scheme`, so those two appear twice (11 header lines; BENCHMARKS.md's
/// figures were taken with this request).
fn request(user: &str, id: &str) -> Request {
    Request::get("/api/v1/tasks")
        .header(":authority", "127.0.0.1:10000")
        .header(":scheme", "http")
        .header("accept-encoding", "identity")
        .header("user-agent", "Python-urllib/3.13")
        .header("x-user-id", user)
        .header("x-forwarded-proto", "http")
        .header("x-request-id", id)
}

/// `benches/count-hostcalls --llm`'s policy: a request limit and two token budgets of the
/// caller (one per model, one for every model).
const LLM_POLICY: &str = r#"{"tiers":[{"name":"users","identity":{"header":"x-user-id"},
    "limits":[{"requests":6000,"per":"minute","burst":100}],
    "tokens":[{"tokens":1000000000,"per":"hour","model":"gpt-4o-mini"},
              {"tokens":1000000000,"per":"day"}]}],
    "llm":{"mode":"reserve","count":"total","default_max_tokens":1024}}"#;

/// `benches/count-hostcalls --llm`'s chat completion (`stream`: with `"stream":true`) with the
/// headers Envoy adds, its body then the empty chunk ending it, answered by `answer`.
fn chat_call(user: &str, id: &str, stream: bool, answer: Response) -> Request {
    let body = format!(
        r#"{{"model":"gpt-4o-mini",{}"max_tokens":256,"messages":[{{"role":"system","content":"You are a helpful assistant."}},{{"role":"user","content":"Summarise the plot of Hamlet in three sentences."}}]}}"#,
        if stream { r#""stream":true,"# } else { "" }
    );
    Request::new("POST", "/v1/chat/completions")
        .header(":authority", "127.0.0.1:10000")
        .header("accept-encoding", "identity")
        .header("content-type", "application/json")
        .header("content-length", body.len().to_string())
        .header("user-agent", "Python-urllib/3.13")
        .header("x-user-id", user)
        .header("x-forwarded-proto", "http")
        .header("x-request-id", id)
        .body_chunk(body)
        .body_chunk("")
        .respond_with(answer)
}

/// A chat completion's JSON answer with its usage, then the empty chunk ending it.
fn json_answer() -> Response {
    let answer = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Prince Hamlet avenges his father."},"finish_reason":"stop"}],"usage":{"prompt_tokens":25,"completion_tokens":7,"total_tokens":32}}"#;
    Response::ok()
        .header("content-type", "application/json")
        .header("content-length", answer.len().to_string())
        .body_chunk(answer)
        .body_chunk("")
}

/// A streamed answer: 19 content events, one with the usage and `[DONE]`, the empty end.
fn stream_answer() -> Response {
    let mut answer = Response::ok().header("content-type", "text/event-stream");
    for i in 0..19 {
        answer = answer.body_chunk(format!(
            "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"w{i} \"}}}}]}}\n\n"
        ));
    }
    answer
        .body_chunk(
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":25,\"completion_tokens\":19,\
             \"total_tokens\":44}}\n\ndata: [DONE]\n\n",
        )
        .body_chunk("")
}

/// What each name's count grew by from `before` to `after`, without the zeros.
fn since(
    before: &BTreeMap<&'static str, u64>,
    after: &BTreeMap<&'static str, u64>,
) -> BTreeMap<&'static str, u64> {
    after
        .iter()
        .map(|(name, n)| (*name, n - before.get(name).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<_> = std::env::args_os().skip(1).collect();
    let trace = args.iter().any(|a| a == "--trace");
    let llm = args.iter().any(|a| a == "--llm");
    args.retain(|a| a != "--trace" && a != "--llm");
    let policy = match args.first() {
        Some(path) => std::fs::read_to_string(path)?,
        None if llm => LLM_POLICY.to_owned(),
        None => POLICY.to_owned(),
    };
    let plugin = Plugin::tollgate()?;
    let h = Harness::new(&plugin).workers(1).configure(&policy)?;
    let id = |i: usize| format!("6a3c1f0e-8d2b-4c5a-9e7f-00000000000{i}");
    // The VM's first requests pay one-off set-up (allocator growth, lazy tables): not counted.
    // The LLM mode warms both answers' paths.
    let warm_up = if llm {
        vec![
            chat_call("warm-up", &id(8), false, json_answer()),
            chat_call("warm-up", &id(9), true, stream_answer()),
        ]
    } else {
        vec![request("warm-up", &id(9))]
    };
    for request in &warm_up {
        h.send(0, request)?;
    }
    if trace {
        h.shared().trace_fuel();
        h.shared().take_fuel_trace();
    }
    let cases: Vec<(&str, Request)> = if llm {
        vec![
            ("llm-json", chat_call("a", &id(0), false, json_answer())),
            ("llm-json2", chat_call("a", &id(1), false, json_answer())),
            ("llm-stream", chat_call("a", &id(2), true, stream_answer())),
        ]
    } else {
        vec![
            ("allowed", request("a", &id(0))),
            ("allowed2", request("a", &id(1))),
            ("denied", request("a", &id(2))),
            ("other", request("b", &id(3))),
        ]
    };
    for (case, request) in cases {
        let shared = h.shared();
        let (fuel, calls) = (shared.fuel().snapshot(), shared.calls().snapshot());
        let outcome = h.send(0, &request)?;
        let ops = since(&fuel, &shared.fuel().snapshot());
        let made = since(&calls, &shared.calls().snapshot());
        let status = if outcome.is_continue() {
            200
        } else {
            outcome.status()
        };
        println!(
            "{case} (HTTP {status}): {} Wasm operators, {} host calls",
            ops.values().sum::<u64>(),
            made.values().sum::<u64>()
        );
        for (name, n) in made {
            println!("    {n} × {name}");
        }
        for (name, n) in ops {
            println!("    {n} operators in {name}");
        }
        if trace {
            // Where each export's fuel went: up to each host call it made, then to its return.
            for (what, used) in shared.take_fuel_trace() {
                if used == 0 && what.starts_with("proxy_on_") {
                    println!("      {what}:");
                } else {
                    println!("        {used:>6} → {what}");
                }
            }
        }
    }
    Ok(())
}
