//! Rate-limit response headers and the 429 body.
//!
//! Several vocabularies, because clients speak all of them: the IETF draft's structured fields
//! (`RateLimit-Policy: "name";q=100;w=60`, `RateLimit: "name";r=42;t=18`, draft -09/-10), the
//! widespread `X-RateLimit-Limit/Remaining/Reset` (reset as delta seconds, as Envoy's own
//! local_ratelimit sends it), and `Retry-After` on a denial. LLM routes add OpenAI's
//! `x-ratelimit-*-{requests,tokens}` and, on `/v1/messages`, Anthropic's
//! `anthropic-ratelimit-*`; for dashboards and people: neither official SDK reads them. What the
//! SDKs act on is [`retry_hints`]: `retry-after-ms` / `retry-after` (how long) and
//! `x-should-retry` (whether at all); gRPC's retry policy reads `grpc-retry-pushback-ms` only.
//! All values come from one [`Decision`], so they always agree.

use alloc::string::String;
use alloc::vec::Vec;

use crate::budget::Meter;
use crate::decimal::{number, push_padded, push_u64};
use crate::decision::Decision;
use crate::llm::cost::Cost;
use crate::llm::price::money;
use crate::tier::Tier;
pub use crate::tier_text::RequestFields;
use crate::time::Nanos;

/// `(name, value)` pairs to add to a response.
pub type Fields = Vec<(&'static str, String)>;

/// One quota policy as the structured fields show it.
struct Entry<'a> {
    name: &'a str,
    quota: u64,
    window: u64,
    tokens: bool,
    remaining: u64,
    reset: u64,
}

fn request_entries<'a>(tier: &'a Tier, d: &'a Decision) -> impl Iterator<Item = Entry<'a>> + 'a {
    tier.limits.iter().zip(&d.limits).map(|(l, s)| Entry {
        name: &l.name,
        quota: l.rate.amount(),
        window: l.rate.period().as_secs_ceil(),
        tokens: false,
        remaining: s.remaining,
        reset: s.reset_after.as_secs_ceil(),
    })
}

fn token_entries<'a>(tier: &'a Tier, d: &'a Decision) -> impl Iterator<Item = Entry<'a>> + 'a {
    d.applied
        .iter()
        .zip(&d.limits)
        .filter_map(|(i, s)| tier.budgets.get(*i).map(|b| (b, s)))
        .map(|(b, s)| Entry {
            name: &b.name,
            quota: b.rate.amount(),
            window: b.rate.period().as_secs_ceil(),
            tokens: true,
            remaining: s.remaining,
            reset: s.reset_after.as_secs_ceil(),
        })
}

/// `RateLimit-Policy` and `RateLimit` for a list of quota policies.
fn structured<'a>(entries: impl Iterator<Item = Entry<'a>>, out: &mut Fields) {
    let mut policy = String::new();
    let mut current = String::new();
    for (i, e) in entries.enumerate() {
        if i > 0 {
            policy.push_str(", ");
            current.push_str(", ");
        }
        for (buf, (k1, v1), (k2, v2)) in [
            (&mut policy, ("q", e.quota), ("w", e.window)),
            (&mut current, ("r", e.remaining), ("t", e.reset)),
        ] {
            buf.push('"');
            buf.push_str(e.name);
            buf.push('"');
            for (k, v) in [(k1, v1), (k2, v2)] {
                buf.push(';');
                buf.push_str(k);
                buf.push('=');
                push_u64(buf, v);
            }
        }
        if e.tokens {
            policy.push_str(";qu=\"tokens\"");
        }
    }
    if !policy.is_empty() {
        out.push(("ratelimit-policy", policy));
        out.push(("ratelimit", current));
    }
}

/// The headers for a decision on request limits, allowed or denied: the IETF fields, the
/// `X-RateLimit-*` ones unless the tier's `x_ratelimit_headers` is off, and `Retry-After` on a
/// refusal. The filter's request path writes the same fields without allocating
/// ([`RequestFields`], from the tier's constant text).
pub fn fields(tier: &Tier, d: &Decision) -> Fields {
    let mut buf = String::new();
    let fields = RequestFields::new(tier, d, true, &mut buf);
    let mut out = Vec::with_capacity(fields.len());
    fields.each(|name, value| out.push((name, String::from(value))));
    out
}

/// A duration as OpenAI writes it in `x-ratelimit-reset-*` (Go's format): `6m0s`, `1.5s`,
/// `250ms`. Rounded up to the millisecond so a client never comes back early.
pub fn go_duration(n: Nanos) -> String {
    let ms = n.0.div_ceil(1_000_000);
    let mut out = String::with_capacity(16);
    if ms < 1000 {
        push_u64(&mut out, ms);
        out.push_str("ms");
        return out;
    }
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (sec, frac) = (rest / 1000, rest % 1000);
    if h > 0 {
        push_u64(&mut out, h);
        out.push('h');
    }
    if h > 0 || m > 0 {
        push_u64(&mut out, m);
        out.push('m');
    }
    push_u64(&mut out, sec);
    if frac > 0 {
        // Milliseconds as a fraction without its trailing zeros: 500 → ".5", 50 → ".05".
        let (mut digits, mut width) = (frac, 3);
        while digits % 10 == 0 {
            digits /= 10;
            width -= 1;
        }
        out.push('.');
        push_padded(&mut out, digits, width);
    }
    out.push('s');
    out
}

/// The part of a budget decision about the budgets counting `meter` (`None`: none of them
/// decided), with its own decisive budget: tokens and money are never compared.
pub fn of_meter(tier: &Tier, d: &Decision, meter: Meter) -> Option<Decision> {
    let (applied, limits): (Vec<usize>, Vec<_>) = d
        .applied
        .iter()
        .zip(&d.limits)
        .filter(|(i, _)| tier.budgets.get(**i).is_some_and(|b| b.meter == meter))
        .map(|(i, s)| (*i, *s))
        .unzip();
    if applied.len() == d.applied.len() && meter == Meter::Tokens {
        return Some(d.clone()); // the usual case: token budgets only
    }
    (!limits.is_empty()).then(|| Decision::from_limits(limits).with_applied(applied))
}

/// The headers of an LLM response: OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`
/// (what the SDKs read), and the IETF fields listing request limits and token budgets together.
/// `requests` is the request-limit decision, `tokens` the budgets' one, either may be absent.
/// Spend budgets have their own `x-ratelimit-{limit,remaining,reset}-spend`, amounts written
/// with six decimals and the currency (`50.000000 USD`); they are not in the IETF fields, whose
/// quotas are integers of one unit.
pub fn llm_fields(tier: &Tier, requests: Option<&Decision>, budgets: Option<&Decision>) -> Fields {
    let mut out = Vec::with_capacity(10);
    let tokens = budgets.and_then(|d| of_meter(tier, d, Meter::Tokens));
    let tokens = tokens.as_ref();
    let spend = budgets.and_then(|d| of_meter(tier, d, Meter::Spend));
    let req_entries = requests.into_iter().flat_map(|d| request_entries(tier, d));
    let tok_entries = tokens.into_iter().flat_map(|d| token_entries(tier, d));
    structured(req_entries.chain(tok_entries), &mut out);
    if let Some(d) = requests.filter(|d| !d.limits.is_empty()) {
        let s = d.status();
        let limit = tier.limits.get(d.decisive).map_or(0, |l| l.rate.amount());
        out.push(("x-ratelimit-limit-requests", number(limit)));
        out.push(("x-ratelimit-remaining-requests", number(s.remaining)));
        out.push(("x-ratelimit-reset-requests", go_duration(s.reset_after)));
    }
    if let Some(d) = tokens.filter(|d| !d.limits.is_empty()) {
        let s = d.status();
        let limit = d
            .applied
            .get(d.decisive)
            .and_then(|i| tier.budgets.get(*i))
            .map_or(0, |b| b.rate.amount());
        out.push(("x-ratelimit-limit-tokens", number(limit)));
        out.push(("x-ratelimit-remaining-tokens", number(s.remaining)));
        out.push(("x-ratelimit-reset-tokens", go_duration(s.reset_after)));
    }
    if let Some(d) = spend {
        let s = d.status();
        let budget = d.applied.get(d.decisive).and_then(|i| tier.budgets.get(*i));
        let (limit, currency) = budget.map_or((0, ""), |b| (b.rate.amount(), b.currency.as_str()));
        out.push(("x-ratelimit-limit-spend", money(limit, currency)));
        out.push(("x-ratelimit-remaining-spend", money(s.remaining, currency)));
        out.push(("x-ratelimit-reset-spend", go_duration(s.reset_after)));
    }
    if let Some(wait) = llm_retry_after(requests, budgets) {
        out.push(("retry-after", number(wait.as_secs_ceil())));
        out.push(("retry-after-ms", number(wait.0.div_ceil(1_000_000))));
    }
    out
}

/// When an LLM request is refused, how long until the same request would pass: the longest wait
/// among the refusing request limits and token budgets.
pub fn llm_retry_after(requests: Option<&Decision>, tokens: Option<&Decision>) -> Option<Nanos> {
    [requests, tokens]
        .into_iter()
        .flatten()
        .filter_map(Decision::retry_after)
        .max()
}

/// Whether, and how long, a refused client should wait before retrying, in the vocabulary its
/// retry logic reads. The wait itself (`retry-after`, `retry-after-ms`) comes with the other
/// fields; these say whether to act on it.
///
/// - HTTP, when `max_wait` is set (LLM routes: the official SDKs): `x-should-retry: false` when
///   the wait is longer than `max_wait`, so the SDK raises at once instead of blocking its caller
///   (the `anthropic` SDK sleeps for any `retry-after`, however long; `openai` gives up only past
///   120 s), else `x-should-retry: true`. Both SDKs obey that header before anything else.
/// - gRPC: `grpc-retry-pushback-ms`, which gRPC's retry policy obeys (it ignores `retry-after`):
///   the wait in milliseconds, rounded up, or `-1` (do not retry) past `max_wait`.
pub fn retry_hints(wait: Nanos, max_wait: Option<Nanos>, grpc: bool) -> Fields {
    let too_long = max_wait.is_some_and(|max| wait > max);
    let mut out = Vec::with_capacity(1);
    if grpc {
        let value = if too_long {
            String::from("-1")
        } else {
            number(wait.0.div_ceil(1_000_000))
        };
        out.push(("grpc-retry-pushback-ms", value));
    } else if max_wait.is_some() {
        let value = if too_long { "false" } else { "true" };
        out.push(("x-should-retry", String::from(value)));
    }
    out
}

/// Which of Anthropic's token dimensions tollgate's budgets measure, from the policy's `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counted {
    /// `count: "input"`: budgets are input-token budgets.
    Input,
    /// `count: "output"`: budgets are output-token budgets.
    Output,
    /// `"total"` or weights: budgets count a mix, which is neither input nor output tokens.
    Mixed,
}

impl Counted {
    /// What budgets charged with `cost` measure.
    pub fn of(cost: &Cost) -> Counted {
        if *cost == Cost::INPUT {
            Counted::Input
        } else if *cost == Cost::OUTPUT {
            Counted::Output
        } else {
            Counted::Mixed
        }
    }
}

/// Anthropic's own headers for `/v1/messages`:
/// `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}`,
/// reset as an RFC 3339 instant (`now` plus the time until the bucket is full again, rounded up
/// to the second).
///
/// `requests-*` is the decisive request limit; `tokens-*` the decisive token budget (the one with
/// least left), whatever it counts, as Anthropic's `tokens-*` is its most restrictive token limit.
/// `input-tokens-*` and `output-tokens-*` are sent only when the budgets count exactly that
/// ([`Counted`]): a budget of total tokens bounds neither one alone, and claiming it did would
/// tell a client it may send more input than it can.
pub fn anthropic_fields(
    tier: &Tier,
    requests: Option<&Decision>,
    tokens: Option<&Decision>,
    counted: Counted,
    now: Nanos,
) -> Fields {
    let mut out = Vec::with_capacity(9);
    let reset_at = |after: Nanos| {
        let mut s = String::with_capacity(20);
        push_rfc3339(&mut s, Nanos(now.0.saturating_add(after.0)));
        s
    };
    if let Some(d) = requests.filter(|d| !d.limits.is_empty()) {
        let s = d.status();
        let limit = tier.limits.get(d.decisive).map_or(0, |l| l.rate.amount());
        out.push(("anthropic-ratelimit-requests-limit", number(limit)));
        out.push((
            "anthropic-ratelimit-requests-remaining",
            number(s.remaining),
        ));
        out.push((
            "anthropic-ratelimit-requests-reset",
            reset_at(s.reset_after),
        ));
    }
    if let Some(d) = tokens.filter(|d| !d.limits.is_empty()) {
        let s = d.status();
        let limit = d
            .applied
            .get(d.decisive)
            .and_then(|i| tier.budgets.get(*i))
            .map_or(0, |b| b.rate.amount());
        let names: &[[&'static str; 3]] = match counted {
            Counted::Input => &[TOKENS, INPUT_TOKENS],
            Counted::Output => &[TOKENS, OUTPUT_TOKENS],
            Counted::Mixed => &[TOKENS],
        };
        for [l, r, t] in names {
            out.push((*l, number(limit)));
            out.push((*r, number(s.remaining)));
            out.push((*t, reset_at(s.reset_after)));
        }
    }
    out
}

const TOKENS: [&str; 3] = [
    "anthropic-ratelimit-tokens-limit",
    "anthropic-ratelimit-tokens-remaining",
    "anthropic-ratelimit-tokens-reset",
];
const INPUT_TOKENS: [&str; 3] = [
    "anthropic-ratelimit-input-tokens-limit",
    "anthropic-ratelimit-input-tokens-remaining",
    "anthropic-ratelimit-input-tokens-reset",
];
const OUTPUT_TOKENS: [&str; 3] = [
    "anthropic-ratelimit-output-tokens-limit",
    "anthropic-ratelimit-output-tokens-remaining",
    "anthropic-ratelimit-output-tokens-reset",
];

/// Appends an instant (nanoseconds since the Unix epoch) as RFC 3339 UTC with whole seconds,
/// rounded up (`2026-12-01T14:05:09Z`): a reset is never announced earlier than it happens.
/// Written without `core::fmt`: it is on every response of an Anthropic route.
pub fn push_rfc3339(out: &mut String, at: Nanos) {
    let secs = at.as_secs_ceil();
    let (days, of_day) = (secs / 86_400, secs % 86_400);
    // Days to a civil date in the proleptic Gregorian calendar (H. Hinnant's algorithm), with
    // eras of 400 years (146,097 days) counted from 0000-03-01 so that leap days come last.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097; // day of era, 0..=146_096
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365; // 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of the year from March 1
    let mp = (5 * doy + 2) / 153; // month from March, 0..=11
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = era * 400 + yoe + u64::from(month <= 2);
    for (n, width, sep) in [
        (year, 4, '-'),
        (month, 2, '-'),
        (day, 2, 'T'),
        (of_day / 3_600, 2, ':'),
        (of_day / 60 % 60, 2, ':'),
        (of_day % 60, 2, 'Z'),
    ] {
        push_padded(out, n, width);
        out.push(sep);
    }
}

/// Which error vocabulary an LLM client expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorStyle {
    /// `{"error": {"message", "type", "param", "code"}}`.
    OpenAi,
    /// `{"type": "error", "error": {"type", "message"}}`.
    Anthropic,
    /// Google's `{"error": {"code": 429, "message", "status": "RESOURCE_EXHAUSTED"}}`
    /// (Gemini API, Vertex AI).
    Gemini,
    /// Ollama's `{"error": "…"}`.
    Ollama,
    /// AWS's `{"message": "…"}`, with the error's name in the `x-amzn-ErrorType` header
    /// ([`ErrorStyle::headers`]): botocore raises it as `ThrottlingException` (Bedrock).
    Bedrock,
}

impl ErrorStyle {
    /// The headers a refusal in this style carries beside the rate-limit fields: AWS SDKs
    /// read the error's name from `x-amzn-ErrorType` (botocore's REST-JSON error parser).
    pub fn headers(self) -> &'static [(&'static str, &'static str)] {
        match self {
            ErrorStyle::Bedrock => &[("x-amzn-errortype", "ThrottlingException")],
            _ => &[],
        }
    }

    /// The headers a 400 in this style carries (a model the price table does not price):
    /// botocore names the error from `x-amzn-ErrorType`.
    pub fn bad_request_headers(self) -> &'static [(&'static str, &'static str)] {
        match self {
            ErrorStyle::Bedrock => &[("x-amzn-errortype", "ValidationException")],
            _ => &[],
        }
    }
}

/// The body of an LLM 429, in the format the client's SDK parses, so that it backs off.
pub fn llm_denial_body(
    style: ErrorStyle,
    tier: &Tier,
    requests: Option<&Decision>,
    tokens: Option<&Decision>,
) -> String {
    let token_denied = tokens.is_some_and(|d| !d.allowed);
    if let Some((budget, s)) = tokens.filter(|d| !d.allowed).and_then(|d| {
        let b = d
            .applied
            .get(d.decisive)
            .and_then(|i| tier.budgets.get(*i))?;
        (b.meter == Meter::Spend).then(|| (b, d.status()))
    }) {
        return spend_denial_body(style, tier, budget, s);
    }
    let (what, policy, wait) = if token_denied {
        let d = tokens.map(|d| {
            (
                d.applied.get(d.decisive).and_then(|i| tier.budgets.get(*i)),
                d.status(),
            )
        });
        let name = d.and_then(|(b, _)| b).map_or("", |b| b.name.as_str());
        (
            "tokens",
            name,
            d.map_or(Nanos::ZERO, |(_, s)| s.retry_after),
        )
    } else {
        let d = requests.map(|d| (tier.limits.get(d.decisive), d.status()));
        let name = d.and_then(|(l, _)| l).map_or("", |l| l.name.as_str());
        (
            "requests",
            name,
            d.map_or(Nanos::ZERO, |(_, s)| s.retry_after),
        )
    };
    let wait = go_duration(wait);
    let message = [
        T("Rate limit reached for "),
        T(what),
        T(" in tier "),
        T(&tier.name),
        T(" (policy "),
        T(policy),
        T("). Please try again in "),
        T(&wait),
        T("."),
    ];
    error_body(style, &message, Kind::RateLimit)
}

/// An LLM 429 from a spend budget: the budget, what is left of it and of how much, in its
/// currency, and when it is full again, in the API's own error format.
fn spend_denial_body(
    style: ErrorStyle,
    tier: &Tier,
    budget: &crate::budget::Budget,
    s: crate::decision::LimitStatus,
) -> String {
    let left = money(s.remaining, &budget.currency);
    let limit = money(budget.rate.amount(), &budget.currency);
    let wait = go_duration(s.retry_after);
    let reset = go_duration(s.reset_after);
    let message = [
        T("Spend budget reached in tier "),
        T(&tier.name),
        T(" (policy "),
        T(&budget.name),
        T("): "),
        T(&left),
        T(" left of "),
        T(&limit),
        T(", full again in "),
        T(&reset),
        T(". Please try again in "),
        T(&wait),
        T("."),
    ];
    error_body(style, &message, Kind::RateLimit)
}

/// The body of the 400 refusing a call whose model the price table does not price (with
/// `"unpriced": "refuse"`) while a spend budget applies to it, in the API's own error format.
/// The model name comes from the client: only `[A-Za-z0-9._:/@-]` of it is written, the rest
/// as `?`, so it needs no escaping.
pub fn unpriced_body(style: ErrorStyle, model: &str) -> String {
    let shown: String = model
        .chars()
        .take(128)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '/' | '@' | '-') {
                c
            } else {
                '?'
            }
        })
        .collect();
    let message = [
        T("Model "),
        T(&shown),
        T(" has no price in this gateway's price table, and a spend budget applies to it: the gateway refuses models it cannot price."),
    ];
    error_body(style, &message, Kind::Unpriced)
}

/// Which error an LLM refusal is.
#[derive(Clone, Copy)]
enum Kind {
    /// 429.
    RateLimit,
    /// 400: the model has no price.
    Unpriced,
}

fn error_body(style: ErrorStyle, message: &[Piece<'_>], kind: Kind) -> String {
    let (openai, anthropic, gemini) = match kind {
        Kind::RateLimit => (
            "\",\"type\":\"rate_limit_exceeded\",\"param\":null,\"code\":\"rate_limit_exceeded\"}}",
            "rate_limit_error",
            "\",\"status\":\"RESOURCE_EXHAUSTED\"}}",
        ),
        Kind::Unpriced => (
            "\",\"type\":\"invalid_request_error\",\"param\":\"model\",\"code\":\"model_not_priced\"}}",
            "invalid_request_error",
            "\",\"status\":\"INVALID_ARGUMENT\"}}",
        ),
    };
    let code = match kind {
        Kind::RateLimit => "429",
        Kind::Unpriced => "400",
    };
    match style {
        ErrorStyle::OpenAi => text(&[&[T("{\"error\":{\"message\":\"")], message, &[T(openai)]]),
        ErrorStyle::Anthropic => text(&[
            &[
                T("{\"type\":\"error\",\"error\":{\"type\":\""),
                T(anthropic),
                T("\",\"message\":\""),
            ],
            message,
            &[T("\"}}")],
        ]),
        ErrorStyle::Gemini => text(&[
            &[T("{\"error\":{\"code\":"), T(code), T(",\"message\":\"")],
            message,
            &[T(gemini)],
        ]),
        ErrorStyle::Ollama => text(&[&[T("{\"error\":\"")], message, &[T("\"}")]]),
        ErrorStyle::Bedrock => text(&[&[T("{\"message\":\"")], message, &[T("\"}")]]),
    }
}

/// The JSON body of a 429. Tier and limit names are restricted to `[A-Za-z0-9._-]` by config,
/// so they need no escaping.
pub fn denial_body(tier: &Tier, d: &Decision) -> String {
    let mut out = String::new();
    tier.text().push_denial_body(d, &mut out);
    out
}

/// The gRPC status message of a denial (sent as `grpc-message`).
pub fn denial_grpc_message(tier: &Tier, d: &Decision) -> String {
    let mut out = String::new();
    tier.text().push_grpc_message(d, &mut out);
    out
}

/// A piece of a refusal's text (literal text; numbers are written into the pieces first).
enum Piece<'a> {
    T(&'a str),
}
use Piece::T;

/// The pieces, in order, in one string allocated once: refusal bodies without `core::fmt`.
fn text(parts: &[&[Piece<'_>]]) -> String {
    let pieces = || parts.iter().flat_map(|p| p.iter());
    let size = pieces()
        .map(|p| match p {
            T(s) => s.len(),
        })
        .sum();
    let mut out = String::with_capacity(size);
    for piece in pieces() {
        match piece {
            T(s) => out.push_str(s),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::policy::Outcome;
    use crate::request::HeaderList;
    use crate::store::MemoryStore;
    use crate::Policy;

    #[test]
    fn durations_read_like_openai_headers() {
        assert_eq!(go_duration(Nanos(0)), "0ms");
        assert_eq!(go_duration(Nanos(1)), "1ms");
        assert_eq!(go_duration(Nanos(250_000_000)), "250ms");
        assert_eq!(go_duration(Nanos::SECOND), "1s");
        assert_eq!(go_duration(Nanos(1_500_000_000)), "1.5s");
        assert_eq!(go_duration(Nanos::from_secs(360)), "6m0s");
        assert_eq!(go_duration(Nanos::from_secs(3_723)), "1h2m3s");
    }

    #[test]
    fn a_denial_carries_headers_that_agree() {
        let p = Policy::from_json(
            br#"{"tiers":[{"name":"users","identity":{"header":"x-user-id"},
                "limits":[{"requests":100,"per":"minute"}]}]}"#,
        )
        .unwrap();
        let mut s = MemoryStore::new();
        p.init_store(&mut s).unwrap();
        let h: HeaderList = [("x-user-id", "test")].into_iter().collect();
        let now = Nanos(1_000_000_000_000);
        let mut last = None;
        for _ in 0..101 {
            last = Some(p.check(&h, now, &mut s));
        }
        let Some(Outcome::Decided { tier, decision, .. }) = last else {
            panic!()
        };
        assert!(!decision.allowed);
        let f = fields(tier, &decision);
        let get = |n: &str| f.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("ratelimit-policy"), Some("\"users\";q=100;w=60"));
        assert_eq!(get("ratelimit"), Some("\"users\";r=0;t=60"));
        assert_eq!(get("x-ratelimit-limit"), Some("100"));
        assert_eq!(get("x-ratelimit-remaining"), Some("0"));
        assert_eq!(get("x-ratelimit-reset"), Some("60"));
        assert_eq!(get("retry-after"), Some("1"));
        let body = denial_body(tier, &decision);
        assert_eq!(
            body,
            "{\"error\":\"rate_limited\",\"message\":\"rate limit exceeded\",\"tier\":\"users\",\"policy\":\"users\",\"limit\":100,\"window_seconds\":60,\"retry_after_seconds\":1}"
        );
    }

    #[test]
    fn without_x_ratelimit_headers_only_the_ietf_fields_and_the_wait_remain() {
        let p = Policy::from_json(
            br#"{"x_ratelimit_headers":false,"tiers":[{"name":"users",
                "identity":{"header":"x-user-id"},"limits":[{"requests":1,"per":"minute"}]}]}"#,
        )
        .unwrap();
        let mut s = MemoryStore::new();
        p.init_store(&mut s).unwrap();
        let h: HeaderList = [("x-user-id", "test")].into_iter().collect();
        let now = Nanos(1_000_000_000_000);
        let names = |outcome| {
            let Outcome::Decided { tier, decision, .. } = outcome else {
                panic!()
            };
            fields(tier, &decision)
                .into_iter()
                .map(|(name, _)| name)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(p.check(&h, now, &mut s)),
            ["ratelimit-policy", "ratelimit"]
        );
        assert_eq!(
            names(p.check(&h, now, &mut s)),
            ["ratelimit-policy", "ratelimit", "retry-after"]
        );
    }

    fn rfc3339(secs: u64, nanos: u64) -> String {
        let mut s = String::new();
        push_rfc3339(&mut s, Nanos(secs * 1_000_000_000 + nanos));
        s
    }

    #[test]
    fn instants_read_as_rfc3339_at_the_calendar_boundaries() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(946_684_799, 0), "1999-12-31T23:59:59Z");
        // 2000 is a leap year (divisible by 400), 2100 is not (by 100), 2024 is (by 4).
        assert_eq!(rfc3339(951_782_400, 0), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(951_868_799, 0), "2000-02-29T23:59:59Z");
        assert_eq!(rfc3339(951_868_800, 0), "2000-03-01T00:00:00Z");
        assert_eq!(rfc3339(1_709_164_800, 0), "2024-02-29T00:00:00Z");
        assert_eq!(rfc3339(4_107_542_399, 0), "2100-02-28T23:59:59Z");
        assert_eq!(rfc3339(4_107_542_400, 0), "2100-03-01T00:00:00Z");
        assert_eq!(rfc3339(2_147_483_648, 0), "2038-01-19T03:14:08Z");
        // Rounded up: a reset 1 ns past a second is announced at the next one.
        assert_eq!(rfc3339(951_868_799, 1), "2000-03-01T00:00:00Z");
        // The last instant a u64 of nanoseconds holds.
        let mut s = String::new();
        push_rfc3339(&mut s, Nanos(u64::MAX));
        assert_eq!(s, "2554-07-21T23:34:34Z");
    }

    #[test]
    fn every_day_from_1970_to_2550_matches_a_calendar_walk() {
        let leap = |y: u64| y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
        let (mut year, mut month, mut day) = (1970u64, 1u64, 1u64);
        for days in 0..212_000u64 {
            let mut expected = String::new();
            push_padded(&mut expected, year, 4);
            expected.push('-');
            push_padded(&mut expected, month, 2);
            expected.push('-');
            push_padded(&mut expected, day, 2);
            expected.push_str("T23:59:59Z");
            assert_eq!(rfc3339(days * 86_400 + 86_399, 0), expected);
            let len = match month {
                2 if leap(year) => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            day += 1;
            if day > len {
                day = 1;
                month += 1;
                if month > 12 {
                    month = 1;
                    year += 1;
                }
            }
        }
        assert_eq!(year, 2550);
    }

    #[test]
    fn retry_hints_say_whether_to_wait_in_each_vocabulary() {
        let minute = Some(Nanos::from_secs(60));
        let get = |f: &Fields, n: &str| f.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone());
        let short = retry_hints(Nanos::from_secs(60), minute, false);
        assert_eq!(get(&short, "x-should-retry").as_deref(), Some("true"));
        let long = retry_hints(Nanos(60_000_000_001), minute, false);
        assert_eq!(get(&long, "x-should-retry").as_deref(), Some("false"));
        // No cap (not an LLM route): nothing to say beyond retry-after.
        assert!(retry_hints(Nanos::from_secs(600), None, false).is_empty());
        let grpc = retry_hints(Nanos(1_500_000_001), None, true);
        assert_eq!(grpc, [("grpc-retry-pushback-ms", String::from("1501"))]);
        let grpc_long = retry_hints(Nanos::from_secs(61), minute, true);
        assert_eq!(grpc_long, [("grpc-retry-pushback-ms", String::from("-1"))]);
    }

    fn llm_denial() -> (Policy, Decision, Decision) {
        let p = Policy::from_json(
            br#"{"tiers":[{"name":"free","identity":{"header":"x-user-id"},
                "limits":[{"requests":10,"per":"minute"}],
                "tokens":[{"tokens":1000,"per":"hour"}]}]}"#,
        )
        .unwrap();
        let requests = Decision {
            allowed: true,
            decisive: 0,
            applied: alloc::vec![],
            limits: alloc::vec![crate::decision::LimitStatus {
                allowed: true,
                remaining: 9,
                reset_after: Nanos::from_secs(6),
                retry_after: Nanos::ZERO,
            }]
            .into(),
        };
        let tokens = Decision {
            allowed: false,
            decisive: 0,
            applied: alloc::vec![0],
            limits: alloc::vec![crate::decision::LimitStatus {
                allowed: false,
                remaining: 0,
                reset_after: Nanos::from_secs(3_600),
                retry_after: Nanos(1_500_000_000),
            }]
            .into(),
        };
        (p, requests, tokens)
    }

    #[test]
    fn anthropic_headers_report_the_decisive_limits_with_rfc3339_resets() {
        let (p, requests, tokens) = llm_denial();
        let tier = &p.tiers()[0];
        let now = Nanos::from_secs(951_868_790); // 2000-02-29T23:59:50Z
        let f = anthropic_fields(tier, Some(&requests), Some(&tokens), Counted::Mixed, now);
        let get = |n: &str| f.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("anthropic-ratelimit-requests-limit"), Some("10"));
        assert_eq!(get("anthropic-ratelimit-requests-remaining"), Some("9"));
        assert_eq!(
            get("anthropic-ratelimit-requests-reset"),
            Some("2000-02-29T23:59:56Z")
        );
        assert_eq!(get("anthropic-ratelimit-tokens-limit"), Some("1000"));
        assert_eq!(get("anthropic-ratelimit-tokens-remaining"), Some("0"));
        assert_eq!(
            get("anthropic-ratelimit-tokens-reset"),
            Some("2000-03-01T00:59:50Z")
        );
        // Total tokens bound neither input nor output alone.
        assert_eq!(get("anthropic-ratelimit-input-tokens-limit"), None);
        assert_eq!(get("anthropic-ratelimit-output-tokens-limit"), None);
        let input = anthropic_fields(tier, Some(&requests), Some(&tokens), Counted::Input, now);
        assert!(input
            .iter()
            .any(|(k, v)| *k == "anthropic-ratelimit-input-tokens-remaining" && v == "0"));
        assert!(!input.iter().any(|(k, _)| k.contains("output-tokens")));
        let output = anthropic_fields(tier, Some(&requests), Some(&tokens), Counted::Output, now);
        assert!(output
            .iter()
            .any(|(k, v)| *k == "anthropic-ratelimit-output-tokens-limit" && v == "1000"));
        assert!(!output.iter().any(|(k, _)| k.contains("input-tokens")));
    }

    #[test]
    fn count_settings_map_to_anthropic_dimensions() {
        assert_eq!(Counted::of(&Cost::INPUT), Counted::Input);
        assert_eq!(Counted::of(&Cost::OUTPUT), Counted::Output);
        assert_eq!(Counted::of(&Cost::TOTAL), Counted::Mixed);
    }

    #[test]
    fn an_llm_refusal_waits_for_the_longest_refusing_limit() {
        let (_, requests, tokens) = llm_denial();
        assert_eq!(llm_retry_after(Some(&requests), None), None);
        assert_eq!(
            llm_retry_after(Some(&requests), Some(&tokens)),
            Some(Nanos(1_500_000_000))
        );
    }

    /// What `go_duration` wrote with `core::fmt` before it wrote digits itself: the oracle.
    fn go_duration_by_fmt(n: Nanos) -> String {
        use alloc::format;
        let ms = n.0.div_ceil(1_000_000);
        if ms < 1000 {
            return format!("{ms}ms");
        }
        let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
        let (m, rest) = (rest / 60_000, rest % 60_000);
        let (sec, frac) = (rest / 1000, rest % 1000);
        let mut out = String::new();
        if h > 0 {
            out.push_str(&format!("{h}h"));
        }
        if h > 0 || m > 0 {
            out.push_str(&format!("{m}m"));
        }
        if frac == 0 {
            out.push_str(&format!("{sec}s"));
        } else {
            let f = format!("{frac:03}");
            out.push_str(&format!("{sec}.{}s", f.trim_end_matches('0')));
        }
        out
    }

    #[test]
    fn durations_are_written_as_core_fmt_wrote_them() {
        assert_eq!(go_duration(Nanos(1_005_000_000)), "1.005s");
        assert_eq!(go_duration(Nanos(1_050_000_000)), "1.05s");
        assert_eq!(go_duration(Nanos(61_001_000_000)), "1m1.001s");
        let mut ms = 0u64;
        while ms < 200_000_000 {
            for n in [ms * 1_000_000, ms * 1_000_000 + 1] {
                assert_eq!(
                    go_duration(Nanos(n)),
                    go_duration_by_fmt(Nanos(n)),
                    "{n} ns"
                );
            }
            ms = ms * 3 / 2 + 7;
        }
        for ms in (0..3_700_000).step_by(997) {
            let n = Nanos(ms * 1_000_000);
            assert_eq!(go_duration(n), go_duration_by_fmt(n), "{ms} ms");
        }
        assert_eq!(
            go_duration(Nanos(u64::MAX)),
            go_duration_by_fmt(Nanos(u64::MAX))
        );
    }

    #[test]
    fn refusal_texts_are_written_as_core_fmt_wrote_them() {
        use alloc::format;
        let (p, mut requests, mut tokens) = llm_denial();
        let tier = &p.tiers()[0];
        for wait in [
            0,
            1,
            999_999_999,
            1_000_000_000,
            86_400_000_000_123,
            u64::MAX,
        ] {
            requests.limits[0].retry_after = Nanos(wait);
            tokens.limits[0].retry_after = Nanos(wait);
            let secs = Nanos(wait).as_secs_ceil();
            assert_eq!(
                denial_grpc_message(tier, &requests),
                format!("rate limit exceeded for tier free; retry after {secs} s")
            );
            assert_eq!(
                denial_body(tier, &requests),
                format!(
                    "{{\"error\":\"rate_limited\",\"message\":\"rate limit exceeded\",\"tier\":\"free\",\"policy\":\"free\",\"limit\":10,\"window_seconds\":60,\"retry_after_seconds\":{secs}}}"
                )
            );
            for (what, policy, requests, tokens, d) in [
                (
                    "tokens",
                    &tier.budgets[0].name,
                    Some(&requests),
                    Some(&tokens),
                    &tokens,
                ),
                (
                    "requests",
                    &tier.limits[0].name,
                    Some(&requests),
                    None,
                    &requests,
                ),
            ] {
                let message = format!(
                    "Rate limit reached for {what} in tier free (policy {policy}). Please try again in {}.",
                    go_duration(d.limits[0].retry_after)
                );
                assert_eq!(
                    llm_denial_body(ErrorStyle::OpenAi, tier, requests, tokens),
                    format!(
                        "{{\"error\":{{\"message\":\"{message}\",\"type\":\"rate_limit_exceeded\",\"param\":null,\"code\":\"rate_limit_exceeded\"}}}}"
                    )
                );
                assert_eq!(
                    llm_denial_body(ErrorStyle::Anthropic, tier, requests, tokens),
                    format!(
                        "{{\"type\":\"error\",\"error\":{{\"type\":\"rate_limit_error\",\"message\":\"{message}\"}}}}"
                    )
                );
            }
        }
    }
}
