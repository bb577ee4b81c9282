//! `tollgate simulate POLICY TRACE`: replays a timestamped trace through the compiled filter in
//! virtual time and reports, per tier and per caller, what the policy admitted and refused.
//!
//! A trace is JSON lines — `{"t": 12.5, "method": "GET", "path": "/", "headers": {…}}`, `t` in
//! seconds or RFC 3339 (UTC, `Z`), plus `"model"`, `"max_tokens"`, `"api"`, `"stream"` and
//! `"usage": {"input": N, "output": N}` for an LLM call — or CSV whose header row names the
//! columns `time`, `method`, `path`, `header:<name>`…, `model`, `max_tokens`, `input_tokens`,
//! `output_tokens` (plain comma-separated values, no quoting).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use host_tests::{Harness, HostError, Request};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::module::Module;
use crate::run::{self, Seen};
use crate::spec::{Api, Llm, Scalar, Usage, Vocabulary};

/// One request of a trace.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// When: seconds (any origin), or RFC 3339.
    pub t: Scalar,
    /// `GET` unless set.
    #[serde(default)]
    pub method: Option<String>,
    /// `/` unless set.
    #[serde(default)]
    pub path: Option<String>,
    /// Request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, Scalar>,
    /// The client address.
    #[serde(default)]
    pub client: Option<String>,
    /// Makes it an LLM call for this model.
    #[serde(default)]
    pub model: Option<String>,
    /// `openai` unless set.
    #[serde(default)]
    pub api: Option<Api>,
    /// The call's `max_tokens`.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// Streamed.
    #[serde(default)]
    pub stream: bool,
    /// What the upstream reports.
    #[serde(default)]
    pub usage: Option<Usage>,
    /// What the upstream answers (200 unless set).
    #[serde(default)]
    pub status: Option<u32>,
}

/// Counts for a tier or a caller.
#[derive(Debug, Default, Clone)]
struct Tally {
    admitted: u64,
    refused: u64,
    first_refusal: Option<f64>,
    tokens: u64,
}

impl Tally {
    fn add(&mut self, refused: bool, at: f64, tokens: u64) {
        if refused {
            self.refused += 1;
            self.first_refusal.get_or_insert(at);
        } else {
            self.admitted += 1;
            self.tokens += tokens;
        }
    }

    fn json(&self) -> Value {
        json!({ "admitted": self.admitted, "refused": self.refused,
                "first_refusal_s": self.first_refusal, "tokens": self.tokens })
    }
}

/// Options of a replay.
#[derive(Debug)]
pub struct Options {
    /// Simulated workers (1 unless set, as `envoy --concurrency 1`).
    pub workers: usize,
    /// Print the report as JSON.
    pub json: bool,
    /// Write an SVG chart here.
    pub chart: Option<String>,
    /// How many most-affected callers to list.
    pub top: usize,
}

/// What a replay found.
#[derive(Debug, Default)]
struct Report {
    requests: u64,
    first_t: f64,
    last_t: f64,
    tiers: BTreeMap<String, Tally>,
    callers: HashMap<(String, String), Tally>,
    statuses: BTreeMap<u32, u64>,
    /// Per tier, per time bin: (admitted, refused).
    bins: BTreeMap<String, Vec<(u64, u64)>>,
}

const BINS: usize = 120;

fn seconds(t: &Scalar, line: usize) -> Result<f64, String> {
    match t {
        Scalar::Int(i) => Ok(*i as f64),
        Scalar::Float(x) => Ok(*x),
        Scalar::Text(s) => rfc3339(s)
            .or_else(|| s.trim().parse::<f64>().ok())
            .ok_or_else(|| format!("line {line}: time `{s}` is neither seconds nor RFC 3339")),
        Scalar::Bool(_) => Err(format!("line {line}: time is a boolean")),
    }
}

/// `2026-12-01T10:00:00Z` / `…00.250+01:00` as seconds since the Unix epoch.
fn rfc3339(s: &str) -> Option<f64> {
    let s = s.trim();
    let (date, time) = s.split_once(['T', 't', ' '])?;
    let mut d = date.split('-');
    let (y, m, day): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let (clock, offset) = if let Some(c) = time.strip_suffix(['Z', 'z']) {
        (c, 0i64)
    } else {
        let at = time.rfind(['+', '-'])?;
        let (c, off) = time.split_at(at);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off.get(1..)?.split_once(':')?;
        (
            c,
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60),
        )
    };
    let mut c = clock.split(':');
    let (hh, mm): (i64, i64) = (c.next()?.parse().ok()?, c.next()?.parse().ok()?);
    let ss: f64 = c.next()?.parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86400 + hh * 3600 + mm * 60 - offset) as f64 + ss)
}

/// Reads a trace: JSON lines, or CSV when the first line does not start with `{`.
fn read_trace(path: &str) -> Result<Box<dyn Iterator<Item = Result<Record, String>>>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{path}: cannot read: {e}"))?;
    let mut lines = BufReader::new(file).lines().enumerate().peekable();
    let csv = match lines.peek() {
        Some((_, Ok(first))) => !first.trim_start().starts_with('{'),
        _ => false,
    };
    if !csv {
        return Ok(Box::new(lines.filter_map(|(i, line)| {
            let line = match line {
                Ok(l) => l,
                Err(e) => return Some(Err(format!("line {}: {e}", i + 1))),
            };
            if line.trim().is_empty() {
                return None;
            }
            Some(serde_json::from_str::<Record>(&line).map_err(|e| format!("line {}: {e}", i + 1)))
        })));
    }
    let columns: Vec<String> = match lines.next() {
        Some((_, Ok(h))) => h.split(',').map(|c| c.trim().to_owned()).collect(),
        _ => return Err(format!("{path}: empty")),
    };
    Ok(Box::new(lines.filter_map(move |(i, line)| {
        let line = match line {
            Ok(l) => l,
            Err(e) => return Some(Err(format!("line {}: {e}", i + 1))),
        };
        if line.trim().is_empty() {
            return None;
        }
        Some(csv_record(&columns, &line).map_err(|e| format!("line {}: {e}", i + 1)))
    })))
}

fn csv_record(columns: &[String], line: &str) -> Result<Record, String> {
    let mut r = Record {
        t: Scalar::Int(0),
        method: None,
        path: None,
        headers: BTreeMap::new(),
        client: None,
        model: None,
        api: None,
        max_tokens: None,
        stream: false,
        usage: None,
        status: None,
    };
    let mut usage = Usage::default();
    let mut has_usage = false;
    let number = |v: &str, c: &str| {
        v.parse::<u64>()
            .map_err(|_| format!("column {c}: `{v}` is not a number"))
    };
    for (c, v) in columns.iter().zip(line.split(',')) {
        let v = v.trim();
        if v.is_empty() {
            continue;
        }
        match c.as_str() {
            "time" | "t" => r.t = Scalar::Text(v.to_owned()),
            "method" => r.method = Some(v.to_owned()),
            "path" => r.path = Some(v.to_owned()),
            "client" => r.client = Some(v.to_owned()),
            "model" => r.model = Some(v.to_owned()),
            "status" => r.status = Some(number(v, c)? as u32),
            "max_tokens" => r.max_tokens = Some(number(v, c)?),
            "input_tokens" => {
                usage.input = number(v, c)?;
                has_usage = true;
            }
            "output_tokens" => {
                usage.output = number(v, c)?;
                has_usage = true;
            }
            other => match other.strip_prefix("header:") {
                Some(name) => {
                    r.headers
                        .insert(name.to_owned(), Scalar::Text(v.to_owned()));
                }
                None => return Err(format!("unknown column `{other}`")),
            },
        }
    }
    if has_usage {
        r.usage = Some(usage);
    }
    Ok(r)
}

/// Replays `trace` through the module and prints the report.
pub fn run(module: &Module, policy_path: &str, trace: &str, opts: &Options) -> ExitCode {
    match replay(module, policy_path, trace, opts) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tollgate simulate: {e}");
            ExitCode::from(2)
        }
    }
}

fn replay(
    module: &Module,
    policy_path: &str,
    trace: &str,
    opts: &Options,
) -> Result<ExitCode, String> {
    let text =
        std::fs::read(policy_path).map_err(|e| format!("{policy_path}: cannot read: {e}"))?;
    let policy =
        policy_core::Policy::from_json(&text).map_err(|e| format!("{policy_path}: {e}"))?;
    let vocab = Vocabulary::of(&policy);
    let identity_headers: Vec<String> = policy
        .tiers()
        .iter()
        .filter_map(|t| match &t.identity {
            policy_core::identity::IdentitySource::Header { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect();
    let h = Harness::new(&module.plugin)
        .workers(opts.workers)
        .configure(&text)
        .map_err(|e| format!("{policy_path}: the filter refused the policy: {e}"))?;
    // Two passes would need the whole trace in memory; instead the time bins are sized from a
    // first cheap pass over the times only.
    let (first_t, last_t) = time_span(trace)?;
    let span = (last_t - first_t).max(1e-9);
    let origin = h.now();
    let mut report = Report {
        first_t,
        last_t,
        ..Report::default()
    };
    let started = Instant::now();
    for (i, record) in read_trace(trace)?.enumerate() {
        let record = record.map_err(|e| format!("{trace}: {e}"))?;
        let at = seconds(&record.t, i + 1)? - first_t;
        let target = origin.saturating_add((at.max(0.0) * 1e9) as u64);
        if target > h.now() {
            h.advance(Duration::from_nanos(target - h.now()))
                .map_err(|e| format!("{trace}: line {}: {e}", i + 1))?;
        }
        let seen = send(&h, &record, i % opts.workers)
            .map_err(|e| format!("{trace}: line {}: {e}", i + 1))?;
        let refused = seen.status == 429;
        let tier = run::decided_by(&seen, &vocab).unwrap_or_else(|| "(no tier)".to_owned());
        let caller = caller_of(&record, &identity_headers);
        let tokens = if refused {
            0
        } else {
            record.usage.map_or(0, |u| u.input + u.output)
        };
        report.requests += 1;
        *report.statuses.entry(seen.status).or_insert(0) += 1;
        report
            .tiers
            .entry(tier.clone())
            .or_default()
            .add(refused, at, tokens);
        report
            .callers
            .entry((tier.clone(), caller))
            .or_default()
            .add(refused, at, tokens);
        let bin = ((at / span * BINS as f64) as usize).min(BINS - 1);
        let bins = report
            .bins
            .entry(tier)
            .or_insert_with(|| vec![(0, 0); BINS]);
        if let Some(b) = bins.get_mut(bin) {
            if refused {
                b.1 += 1;
            } else {
                b.0 += 1;
            }
        }
    }
    let elapsed = started.elapsed();
    let rate = report.requests as f64 / elapsed.as_secs_f64().max(1e-9);
    if opts.json {
        println!("{}", json_report(&report, module, elapsed, rate, opts.top));
    } else {
        print!(
            "{}",
            text_report(&report, module, policy_path, trace, elapsed, rate, opts.top)
        );
    }
    if let Some(path) = &opts.chart {
        std::fs::write(path, svg(&report)).map_err(|e| format!("{path}: cannot write: {e}"))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn time_span(trace: &str) -> Result<(f64, f64), String> {
    let mut first = f64::INFINITY;
    let mut last = f64::NEG_INFINITY;
    let mut prev = f64::NEG_INFINITY;
    for (i, record) in read_trace(trace)?.enumerate() {
        let record = record.map_err(|e| format!("{trace}: {e}"))?;
        let t = seconds(&record.t, i + 1)?;
        if t < prev {
            return Err(format!(
                "{trace}: line {}: time {t} is before the previous line's {prev}: sort the trace by time",
                i + 1
            ));
        }
        prev = t;
        first = first.min(t);
        last = last.max(t);
    }
    if !first.is_finite() {
        return Err(format!("{trace}: no requests"));
    }
    Ok((first, last))
}

fn caller_of(record: &Record, identity_headers: &[String]) -> String {
    for name in identity_headers {
        if let Some((_, v)) = record
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            return format!("{name}={v}");
        }
    }
    record
        .client
        .as_ref()
        .map_or_else(|| "(anonymous)".to_owned(), |c| format!("client={c}"))
}

fn send(h: &Harness, record: &Record, worker: usize) -> Result<Seen, HostError> {
    let headers: Vec<(String, String)> = record
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    if let Some(model) = &record.model {
        let call = Llm {
            api: record.api.unwrap_or(Api::Openai),
            model: model.clone(),
            max_tokens: record.max_tokens,
            prompt: None,
            headers: record
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            count: 1,
            concurrent: false,
            usage: record.usage,
            stream: record.stream,
            cut_after: None,
            upstream_status: record.status,
        };
        let mut next = worker;
        let mut seen = run::llm_calls(h, &call, &mut next, record.client.as_deref())?;
        return seen.pop().ok_or(HostError::StreamState {
            step: "replay an LLM call",
            reason: "no response",
        });
    }
    let mut request = Request::new(
        record.method.as_deref().unwrap_or("GET"),
        record.path.as_deref().unwrap_or("/"),
    )
    .headers(&headers);
    if let Some(c) = &record.client {
        request = request.property(&["source", "address"], c);
    }
    if let Some(s) = record.status {
        request = request.respond_with(host_tests::Response::status(s));
    }
    Ok(Seen::from(&h.send(worker, &request)?))
}

fn most_affected(report: &Report, top: usize) -> Vec<(&(String, String), &Tally)> {
    let mut callers: Vec<_> = report
        .callers
        .iter()
        .filter(|(_, t)| t.refused > 0)
        .collect();
    callers.sort_by(|a, b| b.1.refused.cmp(&a.1.refused).then_with(|| a.0.cmp(b.0)));
    callers.truncate(top);
    callers
}

fn text_report(
    report: &Report,
    module: &Module,
    policy: &str,
    trace: &str,
    elapsed: Duration,
    rate: f64,
    top: usize,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "tollgate simulate: module {} (sha256 {})",
        module.path.display(),
        module.sha256
    );
    let _ = writeln!(out, "policy {policy}, trace {trace}");
    let _ = writeln!(
        out,
        "replayed {} requests spanning {:.1} s of trace time in {:.2} s ({:.0} requests/s)",
        report.requests,
        report.last_t - report.first_t,
        elapsed.as_secs_f64(),
        rate
    );
    let statuses: Vec<String> = report
        .statuses
        .iter()
        .map(|(s, n)| format!("{s} × {n}"))
        .collect();
    let _ = writeln!(out, "statuses: {}", statuses.join(", "));
    let _ = writeln!(
        out,
        "\n{:<16} {:>10} {:>10} {:>16} {:>12} {:>8}",
        "tier", "admitted", "refused", "first refusal s", "tokens", "callers"
    );
    for (tier, t) in &report.tiers {
        let callers = report.callers.keys().filter(|(ti, _)| ti == tier).count();
        let _ = writeln!(
            out,
            "{:<16} {:>10} {:>10} {:>16} {:>12} {:>8}",
            tier,
            t.admitted,
            t.refused,
            t.first_refusal
                .map_or("-".to_owned(), |s| format!("{s:.3}")),
            t.tokens,
            callers
        );
    }
    let affected = most_affected(report, top);
    let refused_callers = report.callers.values().filter(|t| t.refused > 0).count();
    let _ = writeln!(
        out,
        "\n{} of {} callers had a request refused; the most affected:",
        refused_callers,
        report.callers.len()
    );
    let _ = writeln!(
        out,
        "{:<16} {:<32} {:>10} {:>10} {:>16}",
        "tier", "caller", "admitted", "refused", "first refusal s"
    );
    for ((tier, caller), t) in affected {
        let _ = writeln!(
            out,
            "{:<16} {:<32} {:>10} {:>10} {:>16}",
            tier,
            caller,
            t.admitted,
            t.refused,
            t.first_refusal
                .map_or("-".to_owned(), |s| format!("{s:.3}"))
        );
    }
    out
}

fn json_report(
    report: &Report,
    module: &Module,
    elapsed: Duration,
    rate: f64,
    top: usize,
) -> Value {
    let tiers: serde_json::Map<String, Value> = report
        .tiers
        .iter()
        .map(|(k, t)| (k.clone(), t.json()))
        .collect();
    let statuses: serde_json::Map<String, Value> = report
        .statuses
        .iter()
        .map(|(s, n)| (s.to_string(), json!(n)))
        .collect();
    let affected: Vec<Value> = most_affected(report, top)
        .into_iter()
        .map(|((tier, caller), t)| {
            let mut v = t.json();
            if let Some(o) = v.as_object_mut() {
                o.insert("tier".to_owned(), json!(tier));
                o.insert("caller".to_owned(), json!(caller));
            }
            v
        })
        .collect();
    json!({
        "module": { "path": module.path.display().to_string(), "sha256": module.sha256 },
        "requests": report.requests,
        "trace_seconds": report.last_t - report.first_t,
        "replay_seconds": elapsed.as_secs_f64(),
        "requests_per_second": rate,
        "statuses": statuses,
        "tiers": tiers,
        "callers": report.callers.len(),
        "callers_refused": report.callers.values().filter(|t| t.refused > 0).count(),
        "most_affected": affected,
    })
}

/// One panel per tier: admitted (green) and refused (red) requests per time bin, as stacked
/// bars, on the trace's time axis.
fn svg(report: &Report) -> String {
    let (w, panel_h, left, top_pad) = (900.0, 160.0, 70.0, 40.0);
    let plot_w = w - left - 20.0;
    let tiers: Vec<_> = report.bins.iter().collect();
    let h = top_pad + tiers.len() as f64 * (panel_h + 40.0) + 30.0;
    let span = report.last_t - report.first_t;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"##
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="white"/>"##);
    let _ = writeln!(
        s,
        r##"<text x="{left}" y="20" font-size="14">Admitted (green) and refused (red) requests over {span:.0} s of trace, per tier</text>"##
    );
    let bar_w = plot_w / BINS as f64;
    for (p, (tier, bins)) in tiers.iter().enumerate() {
        let y0 = top_pad + p as f64 * (panel_h + 40.0);
        let max = bins.iter().map(|(a, r)| a + r).max().unwrap_or(0).max(1) as f64;
        let tally = report.tiers.get(*tier).cloned().unwrap_or_default();
        let _ = writeln!(
            s,
            r##"<text x="{left}" y="{}" font-weight="bold">{} — admitted {}, refused {}</text>"##,
            y0 + 12.0,
            xml(tier),
            tally.admitted,
            tally.refused
        );
        let base = y0 + 20.0 + panel_h;
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{base}" x2="{}" y2="{base}" stroke="black"/><line x1="{left}" y1="{}" x2="{left}" y2="{base}" stroke="black"/>"##,
            left + plot_w,
            y0 + 20.0
        );
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" text-anchor="end">{max:.0}</text><text x="{}" y="{base}" text-anchor="end">0</text>"##,
            left - 4.0,
            y0 + 30.0,
            left - 4.0
        );
        for (i, (a, r)) in bins.iter().enumerate() {
            let x = left + i as f64 * bar_w;
            let ha = *a as f64 / max * panel_h;
            let hr = *r as f64 / max * panel_h;
            if *a > 0 {
                let _ = writeln!(
                    s,
                    r##"<rect x="{x:.2}" y="{:.2}" width="{:.2}" height="{ha:.2}" fill="#2e9e44"/>"##,
                    base - ha,
                    bar_w.max(0.5)
                );
            }
            if *r > 0 {
                let _ = writeln!(
                    s,
                    r##"<rect x="{x:.2}" y="{:.2}" width="{:.2}" height="{hr:.2}" fill="#d33"/>"##,
                    base - ha - hr,
                    bar_w.max(0.5)
                );
            }
        }
        for k in 0..=4 {
            let x = left + plot_w * k as f64 / 4.0;
            let _ = writeln!(
                s,
                r##"<text x="{x:.1}" y="{}" text-anchor="middle">{:.0} s</text>"##,
                base + 14.0,
                span * k as f64 / 4.0
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Writes a synthetic trace of `n` requests over `callers` callers and `seconds` seconds:
/// mostly authenticated users (`x-user-id`), some premium keys, some anonymous; a few heavy
/// callers make most of the traffic (so some go over their limits). Deterministic.
pub fn generate(n: u64, callers: u64, seconds: f64, out: &mut impl Write) -> std::io::Result<()> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let callers = callers.max(1);
    for i in 0..n {
        let t = seconds * i as f64 / n.max(1) as f64;
        // Skewed choice: the square of a uniform number favours low caller numbers.
        let u = (next() >> 11) as f64 / (1u64 << 53) as f64;
        let c = ((u * u) * callers as f64) as u64;
        let line = match c % 20 {
            0 => {
                json!({ "t": (t * 1000.0).round() / 1000.0, "headers": { "x-api-key": format!("premium-{c}") } })
            }
            1 => {
                json!({ "t": (t * 1000.0).round() / 1000.0, "client": format!("198.51.100.{}:4000", c % 250) })
            }
            _ => {
                json!({ "t": (t * 1000.0).round() / 1000.0, "headers": { "x-user-id": format!("user-{c}") } })
            }
        };
        writeln!(out, "{line}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times() {
        assert_eq!(rfc3339("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(rfc3339("2026-12-01T10:00:00Z"), Some(1_796_119_200.0));
        assert_eq!(
            rfc3339("2026-12-01T11:00:00.5+01:00"),
            Some(1_796_119_200.5)
        );
        assert_eq!(rfc3339("yesterday"), None);
    }

    #[test]
    fn the_generator_is_deterministic() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        generate(100, 10, 60.0, &mut a).unwrap();
        generate(100, 10, 60.0, &mut b).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.iter().filter(|c| **c == b'\n').count(), 100);
    }
}
