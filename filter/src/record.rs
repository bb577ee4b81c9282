//! The per-request record for billing reconciliation: one line of `key=value` fields, set as the
//! stream's filter state `wasm.tollgate` for Envoy's access log
//! (`%FILTER_STATE(wasm.tollgate:PLAIN)%`).
//!
//! The caller's identity is never written: `scope` is a 64-bit keyed hash of the tier and the
//! identity (keyed by the policy's `hash_secret`), enough to join records of one caller without
//! revealing who it is. Values are tier names (`[A-Za-z0-9._-]`), numbers, fixed words and a
//! model name sanitised to the same characters, so a record never needs quoting.

use std::cell::RefCell;

use policy_core::decimal;

use crate::host;

/// The property (filter state `wasm.tollgate`).
pub const PROPERTY: &str = "tollgate";

/// What the filter did with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted.
    Allowed,
    /// Refused with 429.
    Denied,
    /// A shadow-mode tier would have refused it; let through.
    WouldDeny,
}

impl Verdict {
    fn word(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Denied => "denied",
            Verdict::WouldDeny => "would_deny",
        }
    }
}

/// The record of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    tier: String,
    scope: u64,
    verdict: Verdict,
    cost: u64,
    /// Each scope the request was counted in: its label and keyed hash (never the identity).
    scopes: Vec<(String, u64)>,
    /// An LLM call's model, tokens reserved and charged, once settled.
    tokens: Option<(String, u64, u64)>,
    /// What it was charged in money (micro-units) and the currency, with a price table.
    spend: Option<(u64, String)>,
}

impl Record {
    /// A request the tier decided on: `tier=… scope=… decision=… cost=…`.
    pub fn new(tier: &str, scope: u64, verdict: Verdict, cost: u64) -> Record {
        Record {
            tier: tier.to_owned(),
            scope,
            verdict,
            cost,
            scopes: Vec::new(),
            tokens: None,
            spend: None,
        }
    }

    /// The same record naming the scopes it was counted in: `scope.<label>=…` each.
    pub fn with_scopes(self, scopes: Vec<(String, u64)>) -> Record {
        Record { scopes, ..self }
    }

    /// The same record, which a token budget of a shadow tier would have refused.
    pub fn would_deny(&self) -> Record {
        Record {
            verdict: Verdict::WouldDeny,
            ..self.clone()
        }
    }

    /// The same record, refused later (an LLM call whose token budget is spent).
    pub fn denied(&self) -> Record {
        Record {
            verdict: Verdict::Denied,
            ..self.clone()
        }
    }

    /// The same record with an LLM call's settlement: `model=… reserved=… charged=…`.
    pub fn with_tokens(&self, model: Option<&str>, reserved: u64, charged: u64) -> Record {
        let model: String = model
            .unwrap_or("-")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/') {
                    c
                } else {
                    '_'
                }
            })
            .take(128)
            .collect();
        Record {
            tokens: Some((model, reserved, charged)),
            ..self.clone()
        }
    }

    /// The same record with the call's charge in money: `spend=0.000660 currency=USD` (six
    /// decimals, exact; the currency code is the price table's, `[A-Z]` only).
    pub fn with_spend(&self, micros: u64, currency: &str) -> Record {
        Record {
            spend: Some((micros, currency.to_owned())),
            ..self.clone()
        }
    }

    /// The line as the access log prints it (what [`publish`](Self::publish) sets).
    #[cfg(test)]
    fn line(&self) -> String {
        let mut text = String::new();
        self.write(&mut text);
        text
    }

    /// Writes the line into `text`. Without `core::fmt`: it is built for every decided request,
    /// and the formatting machinery costs more than the text (BENCHMARKS.md §2).
    fn write(&self, text: &mut String) {
        let scopes = self
            .scopes
            .iter()
            .map(|(label, hash)| (label.as_str(), *hash));
        write_head(
            text,
            &self.tier,
            self.scope,
            self.verdict,
            self.cost,
            scopes,
        );
        if let Some((model, reserved, charged)) = &self.tokens {
            text.push_str(" model=");
            text.push_str(model);
            text.push_str(" reserved=");
            decimal::push_u64(text, *reserved);
            text.push_str(" charged=");
            decimal::push_u64(text, *charged);
        }
        if let Some((micros, currency)) = &self.spend {
            text.push_str(" spend=");
            policy_core::llm::price::push_money(text, *micros);
            text.push_str(" currency=");
            text.push_str(currency);
        }
    }

    /// Sets it as the stream's filter state. A host that refuses only loses the record (the
    /// request is decided either way), so the error is dropped.
    pub fn publish(&self) {
        with_line(|text| self.write(text));
    }
}

/// Sets the record of a request its tier decided and that nothing follows (no LLM call whose
/// settlement adds to it): the same line as [`Record::new`]`(…).with_scopes(…)` would publish,
/// written from borrowed parts, so the request path copies neither the tier's name nor the
/// scopes into a record it would only drop (BENCHMARKS.md §2, "the record and the stream's own
/// cost").
pub fn publish_decided(
    tier: &str,
    scope: u64,
    verdict: Verdict,
    cost: u64,
    scopes: &[(String, u64)],
) {
    let scopes = scopes.iter().map(|(label, hash)| (label.as_str(), *hash));
    with_line(|text| write_head(text, tier, scope, verdict, cost, scopes));
}

/// `tier=… scope=… decision=… cost=…`, then `scope.<label>=…` for each scope.
fn write_head<'a>(
    text: &mut String,
    tier: &str,
    scope: u64,
    verdict: Verdict,
    cost: u64,
    scopes: impl Iterator<Item = (&'a str, u64)>,
) {
    text.push_str("tier=");
    text.push_str(tier);
    text.push_str(" scope=");
    push_hex16(text, scope);
    text.push_str(" decision=");
    text.push_str(verdict.word());
    text.push_str(" cost=");
    decimal::push_u64(text, cost);
    for (label, hash) in scopes {
        text.push_str(" scope.");
        text.push_str(label);
        text.push('=');
        push_hex16(text, hash);
    }
}

thread_local! {
    /// The worker's record line, reused: a record is written and handed to the host at once, so
    /// one buffer (one VM is one worker thread) serves every request without an allocation.
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Writes a line with `write` into the worker's buffer and sets it as the stream's filter
/// state. A host that refuses only loses the record, so the error is dropped.
fn with_line(write: impl FnOnce(&mut String)) {
    LINE.with(|line| {
        let Ok(mut text) = line.try_borrow_mut() else {
            // Only a record written while writing one could get here; none is.
            return;
        };
        text.clear();
        write(&mut text);
        let _ = host::set_property(&[PROPERTY], text.as_bytes());
    });
}

/// Appends `n` as 16 lowercase hex digits (as `format!("{n:016x}")` would), written on the
/// stack and appended in one copy.
fn push_hex16(out: &mut String, n: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [b'0'; 16];
    for (i, d) in digits.iter_mut().rev().enumerate() {
        let nibble = (n >> (4 * i)) & 0xf;
        *d = HEX.get(nibble as usize).copied().unwrap_or(b'0');
    }
    // ASCII hex digits only: always valid UTF-8.
    out.push_str(core::str::from_utf8(&digits).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_one_unquoted_line() {
        let r = Record::new("free", 0xab, Verdict::Denied, 10);
        assert_eq!(
            r.line(),
            "tier=free scope=00000000000000ab decision=denied cost=10"
        );
        let r = Record::new("llm", 1, Verdict::Allowed, 1).with_tokens(Some("gpt 4\"o"), 300, 42);
        assert_eq!(
            r.line(),
            "tier=llm scope=0000000000000001 decision=allowed cost=1 model=gpt_4_o reserved=300 charged=42"
        );
        let r = r.with_spend(660, "USD");
        assert!(
            r.line()
                .ends_with(" charged=42 spend=0.000660 currency=USD"),
            "{}",
            r.line()
        );
    }

    #[test]
    fn scopes_and_numbers_are_written_as_format_would() {
        for n in [
            0,
            1,
            9,
            10,
            0xab,
            0xdead_beef,
            u64::MAX / 3,
            u64::MAX - 1,
            u64::MAX,
        ] {
            let r = Record::new("t", n, Verdict::WouldDeny, n).with_tokens(None, n, n);
            assert_eq!(
                r.line(),
                format!("tier=t scope={n:016x} decision=would_deny cost={n} model=- reserved={n} charged={n}")
            );
            // The request path's line, written from borrowed parts, is the record's.
            let scopes = vec![("x-team-id".to_owned(), n), ("org".to_owned(), !n)];
            let mut head = String::from("stale text");
            head.clear();
            write_head(
                &mut head,
                "t",
                n,
                Verdict::Allowed,
                n,
                scopes.iter().map(|(l, h)| (l.as_str(), *h)),
            );
            let m = !n;
            assert_eq!(
                head,
                format!("tier=t scope={n:016x} decision=allowed cost={n} scope.x-team-id={n:016x} scope.org={m:016x}")
            );
            assert_eq!(
                head,
                Record::new("t", n, Verdict::Allowed, n)
                    .with_scopes(scopes)
                    .line()
            );
        }
    }
}
