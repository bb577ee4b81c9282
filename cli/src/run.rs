//! Runs a test file's cases against the compiled filter and compares what came back with what
//! was expected.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use host_tests::{Harness, Headers, HostError, Outcome, Plugin, Request, Response, Stream};
use serde_json::Value;

use crate::llm;
use crate::spec::{self, Case, Expect, ExpectResponse, Llm, Send, Step, Vocabulary};

/// What the client saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The status.
    pub status: u32,
    /// The response headers.
    pub headers: Headers,
    /// The response body.
    pub body: Vec<u8>,
}

impl From<&Outcome> for Seen {
    fn from(o: &Outcome) -> Self {
        Self {
            status: o.status(),
            headers: o.headers().clone(),
            body: o.body().to_vec(),
        }
    }
}

/// How one case went.
#[derive(Debug)]
pub struct CaseResult {
    /// The case's name.
    pub name: String,
    /// Empty when it passed; else one entry per failed step.
    pub failures: Vec<String>,
    /// How long it took.
    pub elapsed: Duration,
}

/// Runs one case from a fresh store and clock. `policies[i]` is the policy in effect before
/// step `i` (from [`spec::plan`]). A host error (the module trapped, the filter refused a
/// policy) is a failure of the case, not of the run.
pub fn case(plugin: &Plugin, workers: usize, case: &Case, policies: &[Value]) -> CaseResult {
    let started = Instant::now();
    let failures = match run_case(plugin, workers, case, policies) {
        Ok(f) => f,
        Err(e) => vec![e],
    };
    CaseResult {
        name: case.name.clone(),
        failures,
        elapsed: started.elapsed(),
    }
}

fn run_case(
    plugin: &Plugin,
    workers: usize,
    case: &Case,
    policies: &[Value],
) -> Result<Vec<String>, String> {
    let first = policies.first().ok_or("no policy")?;
    let h = Harness::new(plugin)
        .workers(workers)
        .configure(first.to_string())
        .map_err(|e| format!("  the filter refused the policy: {e}"))?;
    let mut failures = Vec::new();
    let mut next_worker = 0usize;
    for (si, step) in case.steps.iter().enumerate() {
        let policy = policies.get(si).ok_or("no policy for a step")?;
        let vocab = vocabulary(policy)?;
        let host =
            |e: HostError| format!("  step {} ({}): host error: {e}", si + 1, describe(step));
        let seen = if let Some(send) = &step.send {
            send_all(&h, send, &mut next_worker).map_err(host)?
        } else if let Some(call) = &step.llm {
            llm_calls(&h, call, &mut next_worker, None).map_err(host)?
        } else if let Some(d) = &step.advance {
            h.advance(spec::duration(d).unwrap_or_default())
                .map_err(host)?;
            Vec::new()
        } else {
            let next = policies
                .get(si + 1)
                .ok_or("no policy after a reconfigure")?;
            h.configure(next.to_string()).map_err(|e| {
                format!(
                    "  step {} (reconfigure): the filter refused the policy: {e}",
                    si + 1
                )
            })?;
            Vec::new()
        };
        if let Some(expect) = &step.expect {
            let diffs = compare(expect, &seen, &vocab);
            if !diffs.is_empty() {
                let mut text = format!("  step {} ({}):", si + 1, describe(step));
                for d in diffs {
                    text.push_str("\n    ");
                    text.push_str(&d.replace('\n', "\n    "));
                }
                failures.push(text);
            }
        }
    }
    Ok(failures)
}

fn vocabulary(policy: &Value) -> Result<Vocabulary, String> {
    let parsed = policy_core::Policy::from_json(policy.to_string().as_bytes())
        .map_err(|e| format!("  the policy is invalid: {e}"))?;
    Ok(Vocabulary::of(&parsed))
}

/// A step in a few words, for failure messages.
pub fn describe(step: &Step) -> String {
    if let Some(s) = &step.send {
        let headers: Vec<String> = s.headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        format!(
            "send {} × {} {}{}",
            s.count,
            s.method,
            s.path,
            if headers.is_empty() {
                String::new()
            } else {
                format!(" {{{}}}", headers.join(", "))
            }
        )
    } else if let Some(l) = &step.llm {
        let headers: Vec<String> = l.headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        format!(
            "llm {} × {}{}{} {{{}}}",
            l.count,
            l.model,
            l.max_tokens
                .map_or(String::new(), |m| format!(" max_tokens {m}")),
            if l.concurrent { " concurrent" } else { "" },
            headers.join(", ")
        )
    } else if let Some(d) = &step.advance {
        format!("advance {d}")
    } else {
        "reconfigure".to_owned()
    }
}

fn header_pairs(map: &BTreeMap<String, spec::Scalar>) -> Vec<(String, String)> {
    map.iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect()
}

fn send_all(h: &Harness, send: &Send, next: &mut usize) -> Result<Vec<Seen>, HostError> {
    let mut request = Request::new(&send.method, &send.path).headers(&header_pairs(&send.headers));
    if let Some(body) = &send.body {
        request = request.body_chunk(body);
    }
    if let Some(client) = &send.client {
        request = request.property(&["source", "address"], client);
    }
    if let Some(status) = send.upstream_status {
        request = request.respond_with(Response::status(status));
    }
    let mut seen = Vec::new();
    for _ in 0..send.count {
        let worker = *next % h.worker_count();
        *next += 1;
        seen.push(Seen::from(&h.send(worker, &request)?));
    }
    Ok(seen)
}

/// Makes `call.count` LLM calls (all requests first when `concurrent`), round-robin over the
/// workers from `*next`, from client address `client` when given.
pub fn llm_calls(
    h: &Harness,
    call: &Llm,
    next: &mut usize,
    client: Option<&str>,
) -> Result<Vec<Seen>, HostError> {
    let prompt = call.prompt.as_deref().unwrap_or("Hello");
    let body = llm::request_body(call.api, &call.model, call.max_tokens, prompt, call.stream);
    let mut headers = header_pairs(&call.headers);
    headers.push(("content-type".to_owned(), "application/json".to_owned()));
    if call.api == spec::Api::Anthropic {
        headers.push(("anthropic-version".to_owned(), "2023-06-01".to_owned()));
    }
    headers.push(("content-length".to_owned(), body.len().to_string()));
    let mut request = Request::new("POST", llm::path(call.api)).headers(&headers);
    if let Some(client) = client {
        request = request.property(&["source", "address"], client);
    }
    let chunks = llm::response_chunks(call.api, &call.model, call.usage, call.stream);
    let batch = if call.concurrent { call.count } else { 1 };
    let mut seen = Vec::new();
    let mut left = call.count;
    while left > 0 {
        let n = batch.min(left);
        left -= n;
        // Every call of the batch reaches the filter before any answer comes back.
        let mut open = Vec::new();
        for _ in 0..n {
            let worker = *next % h.worker_count();
            *next += 1;
            let mut stream = h.stream(worker)?;
            stream.extend_properties(&request.properties)?;
            stream.request_headers(request.headers.clone(), false)?;
            if !stream.answered() {
                stream.request_body(&body, true)?;
            }
            open.push(stream);
        }
        for stream in open {
            seen.push(respond(stream, call, &chunks)?);
        }
    }
    Ok(seen)
}

/// Plays the upstream's answer on a stream the filter let through, then ends it.
fn respond(mut stream: Stream<'_>, call: &Llm, chunks: &[Vec<u8>]) -> Result<Seen, HostError> {
    if let Some(reply) = stream.local_reply()? {
        let record = stream.finish()?;
        return Ok(Seen {
            status: reply.status,
            headers: record.response_headers.unwrap_or(reply.headers),
            body: reply.body,
        });
    }
    let status = call.upstream_status.unwrap_or(200);
    let content_type = if call.stream {
        "text/event-stream"
    } else {
        "application/json"
    };
    let headers = Headers::from_pairs(&[
        (":status", status.to_string()),
        ("content-type", content_type.to_owned()),
    ]);
    stream.response_headers(headers, false)?;
    let sent = call.cut_after.unwrap_or(chunks.len()).min(chunks.len());
    for (i, chunk) in chunks.iter().take(sent).enumerate() {
        let last = call.cut_after.is_none() && i + 1 == chunks.len();
        stream.response_body(chunk, last)?;
    }
    let record = if call.cut_after.is_some() {
        stream.reset()?
    } else {
        stream.finish()?
    };
    let headers = record.response_headers.clone().unwrap_or_default();
    Ok(Seen {
        status: headers
            .get(":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(status),
        headers,
        body: record.response_body.forwarded,
    })
}

/// The tier that decided a response: the owner of the first quota policy its `RateLimit-Policy`
/// names. `None` when it has none (no tier took the request).
pub fn decided_by(seen: &Seen, vocab: &Vocabulary) -> Option<String> {
    let policy = seen.headers.get("ratelimit-policy")?;
    let name = policy.strip_prefix('"')?.split('"').next()?;
    vocab.quota_tier.get(name).cloned()
}

fn counts_text(counts: &BTreeMap<u32, u64>) -> String {
    if counts.is_empty() {
        return "no responses".to_owned();
    }
    counts
        .iter()
        .map(|(s, n)| format!("{s} × {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn compare(expect: &Expect, seen: &[Seen], vocab: &Vocabulary) -> Vec<String> {
    let mut diffs = Vec::new();
    if let Some(want) = &expect.status {
        let mut got = BTreeMap::new();
        for s in seen {
            *got.entry(s.status).or_insert(0u64) += 1;
        }
        let want: BTreeMap<u32, u64> = want
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(s, n)| (*s, *n))
            .collect();
        if want != got {
            diffs.push(format!(
                "status counts\n  expected: {}\n  actual:   {}",
                counts_text(&want),
                counts_text(&got)
            ));
        }
    }
    if let Some(tier) = &expect.tier {
        let mut by: BTreeMap<String, u64> = BTreeMap::new();
        for s in seen {
            let t = decided_by(s, vocab).unwrap_or_else(|| "(no tier)".to_owned());
            *by.entry(t).or_insert(0) += 1;
        }
        if by.len() != 1 || !by.contains_key(tier) {
            let actual = by
                .iter()
                .map(|(t, n)| format!("{t} × {n}"))
                .collect::<Vec<_>>()
                .join(", ");
            diffs.push(format!(
                "tier that decided\n  expected: {tier} × {}\n  actual:   {actual}",
                seen.len()
            ));
        }
    }
    if let Some(want) = &expect.last {
        match seen.last() {
            Some(s) => response_diffs("last response", want, s, vocab, &mut diffs),
            None => diffs.push("last response: there were no responses".to_owned()),
        }
    }
    if let Some(want) = &expect.first_refused {
        match seen.iter().position(|s| s.status == 429) {
            Some(i) => {
                if let Some(s) = seen.get(i) {
                    let what = format!(
                        "first refused response (request {} of {})",
                        i + 1,
                        seen.len()
                    );
                    response_diffs(&what, want, s, vocab, &mut diffs);
                }
            }
            None => diffs.push(format!(
                "first refused response\n  expected: a 429\n  actual:   none of {} was refused",
                seen.len()
            )),
        }
    }
    diffs
}

fn response_diffs(
    what: &str,
    want: &ExpectResponse,
    seen: &Seen,
    vocab: &Vocabulary,
    diffs: &mut Vec<String>,
) {
    let mut one = |field: &str, expected: String, actual: String| {
        if expected != actual {
            diffs.push(format!(
                "{what}: {field}\n  expected: {expected}\n  actual:   {actual}"
            ));
        }
    };
    let header = |name: &str| {
        seen.headers
            .get(name)
            .map_or_else(|| "(absent)".to_owned(), str::to_owned)
    };
    if let Some(status) = want.status {
        one("status", status.to_string(), seen.status.to_string());
    }
    for (name, value) in &want.headers {
        let name = name.to_ascii_lowercase();
        one(&name, value.to_string(), header(&name));
    }
    if let Some(v) = want.retry_after {
        one("retry-after", v.to_string(), header("retry-after"));
    }
    if let Some(v) = want.remaining {
        one(
            "x-ratelimit-remaining",
            v.to_string(),
            header("x-ratelimit-remaining"),
        );
    }
    if let Some(v) = want.remaining_tokens {
        one(
            "x-ratelimit-remaining-tokens",
            v.to_string(),
            header("x-ratelimit-remaining-tokens"),
        );
    }
    if let Some(t) = &want.tier {
        one(
            "tier that decided",
            t.clone(),
            decided_by(seen, vocab).unwrap_or_else(|| "(no tier)".to_owned()),
        );
    }
    if let Some(body) = &want.body {
        let text = String::from_utf8_lossy(&seen.body);
        match serde_json::from_slice::<Value>(&seen.body) {
            Ok(actual) => {
                if let Some(path) = first_mismatch(body, &actual, "") {
                    one(
                        &format!("body{path}"),
                        pick(body, &path).to_string(),
                        pick(&actual, &path).to_string(),
                    );
                }
            }
            Err(_) => one("body", body.to_string(), format!("(not JSON) {text}")),
        }
    }
}

/// The first place `want` (a subset) differs from `actual`, as a `.field[0]` path.
fn first_mismatch(want: &Value, actual: &Value, at: &str) -> Option<String> {
    match (want, actual) {
        (Value::Object(w), Value::Object(a)) => w.iter().find_map(|(k, wv)| match a.get(k) {
            Some(av) => first_mismatch(wv, av, &format!("{at}.{k}")),
            None => Some(format!("{at}.{k}")),
        }),
        (Value::Array(w), Value::Array(a)) if w.len() == a.len() => w
            .iter()
            .zip(a)
            .enumerate()
            .find_map(|(i, (wv, av))| first_mismatch(wv, av, &format!("{at}[{i}]"))),
        _ if want == actual => None,
        _ => Some(at.to_owned()),
    }
}

/// The value at a `.field[0]` path, or `(absent)`.
fn pick(v: &Value, path: &str) -> Value {
    let mut at = v;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, indices) = part.split_once('[').map_or((part, ""), |(k, i)| (k, i));
        let next = if key.is_empty() {
            Some(at)
        } else {
            at.get(key)
        };
        let Some(mut next) = next else {
            return Value::String("(absent)".to_owned());
        };
        for idx in indices.split('[').filter(|s| !s.is_empty()) {
            let i: usize = idx.trim_end_matches(']').parse().unwrap_or(usize::MAX);
            match next.get(i) {
                Some(n) => next = n,
                None => return Value::String("(absent)".to_owned()),
            }
        }
        at = next;
    }
    at.clone()
}
