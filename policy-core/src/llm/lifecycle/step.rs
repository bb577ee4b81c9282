//! What a call's events answer: the steps the filter applies.

use alloc::string::String;
use alloc::vec::Vec;

use super::super::RewriteError;

/// What happens to the stream after an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Let it go on.
    Continue,
    /// Stop iteration: Envoy holds (and buffers) it until a later event lets it go.
    Hold,
    /// Refuse it with a local reply (which resets a request already partly upstream).
    Refuse(Refusal),
}

/// Why a call is refused, which says how the filter answers.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A budget has no room: 429 with the budgets' states
    /// ([`LlmCall::tokens`](super::LlmCall::tokens)).
    Denied,
    /// Every compare-and-swap race was lost: refused rather than let through unmetered.
    Contended,
    /// The store failed and `on_store_failure` is `deny`: 503.
    Unavailable,
    /// The body cannot be rewritten within the `content-length` announced: 400.
    BadBody(RewriteError),
    /// The model has no price in `prices`, which refuses unpriced models, and a spend budget
    /// applies to it: 400 naming the model.
    Unpriced(String),
}

/// The event to count in the tier's metrics, at most one per step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Count {
    /// The call was admitted (its last admission).
    Allowed,
    /// A budget refused it.
    Denied,
    /// A budget would have refused it, but its tier is in shadow mode: it went on.
    WouldDeny,
    /// Every CAS race was lost.
    Contended,
    /// The store failed (whatever `on_store_failure` then decided).
    StoreFailure,
}

/// What the filter does with a request event.
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub struct RequestStep {
    /// Go on, hold or refuse (applied last).
    pub verdict: Verdict,
    /// Bytes to put in place of the body Envoy offered (applied first).
    pub replace: Option<Vec<u8>>,
    /// The request's `content-length` to set (applied second).
    pub content_length: Option<u64>,
    /// What to count.
    pub count: Option<Count>,
}

impl RequestStep {
    pub(super) fn go() -> RequestStep {
        RequestStep::verdict(Verdict::Continue)
    }

    pub(super) fn verdict(verdict: Verdict) -> RequestStep {
        RequestStep {
            verdict,
            replace: None,
            content_length: None,
            count: None,
        }
    }
}

/// What the filter does with a response event.
#[derive(Debug, Default, PartialEq, Eq)]
#[must_use]
pub struct ResponseStep {
    /// Hold the response (its headers, or its body until its end).
    pub hold: bool,
    /// Bytes to put in place of the body chunk Envoy offered.
    pub replace: Option<Vec<u8>>,
    /// Remove the response's `content-length`: the client gets fewer bytes than were sent.
    pub drop_content_length: bool,
    /// The call was settled at this event: count it.
    pub settled: Option<Settlement>,
    /// Add the call's rate-limit fields ([`LlmCall::fields`](super::LlmCall::fields)) to the
    /// response headers now.
    pub decorate: bool,
}

/// A call's settlement: its hold replaced by what it cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settlement {
    /// The tokens held for it (the largest hold over its token budgets).
    pub reserved: u64,
    /// The tokens it was charged.
    pub charged: u64,
    /// What it was charged in money, in micro-units of the price table's currency (0 without
    /// a price table).
    pub spent: u64,
    /// The charge was written to the store. When it was not (the store failed or every CAS
    /// race was lost), the hold stays until it refills and the charge is not counted as charged.
    pub landed: bool,
}

/// What the response headers say, as the call needs it.
#[derive(Clone, Copy, Debug, Default)]
pub struct ResponseHead<'a> {
    /// `:status`.
    pub status: Option<&'a [u8]>,
    /// `content-type`.
    pub content_type: Option<&'a [u8]>,
    /// `content-length`, when it parses.
    pub content_length: Option<u64>,
    /// A `content-encoding` other than `identity`: the body cannot be read.
    pub encoded: bool,
    /// The response has no body.
    pub end_of_stream: bool,
}
