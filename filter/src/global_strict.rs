//! Strict mode's glue (README "Global mode"): a request on a global-strict tier is held at its
//! headers while one `ShouldRateLimit` check goes to the policy's cluster through
//! `dispatch_grpc_call`; the answer admits it, refuses it with the tier's 429, or (an error, a
//! timeout, an answer that cannot be read) hands it to the configured fallback. What the answer
//! means is decided in [`policy_core::global::strict`]; this module sends and interprets.
//!
//! An LLM call on such a tier is checked once its local admission holds its tokens: the holds
//! become one check ([`policy_core::global::strict_tokens`]), the request is held at its last
//! event until the answer, and the settlement later goes to the service through the sync
//! rounds ([`crate::global`]).

use policy_core::global::strict::{self, Check, Verdict};
use policy_core::global::strict_tokens::{self, TokenCheck};
use policy_core::global::OnUnavailable;
use policy_core::{Decision, Nanos};

use crate::global;
use crate::plugin::Plugin;

/// A check in flight for a held request.
#[derive(Debug)]
pub struct Pending {
    /// The call's token.
    pub token: u32,
    /// What was asked.
    pub check: Check,
}

/// A token check in flight for a held LLM call.
#[derive(Debug)]
pub struct PendingTokens {
    /// The call's token.
    pub token: u32,
    /// What was asked.
    pub check: TokenCheck,
}

/// What becomes of the held request.
#[derive(Debug)]
pub enum Resolution {
    /// Admitted globally: continue, with headers from this decision.
    Admit(Decision),
    /// A limit is spent globally: the tier's 429 with this decision's numbers.
    Refuse(Decision),
    /// No usable answer (`reason`): what the policy's `on_unavailable` says.
    Unavailable {
        /// Why, for the log.
        reason: String,
        /// The fallback to apply.
        fallback: OnUnavailable,
    },
}

/// Sends `check` to the policy's cluster (through [`crate::global::dispatch`], as sync rounds
/// are); the call's token, or why it could not be sent, which the caller treats like a failed
/// call. An unknown cluster is not such a case: it fails the call afterwards, with a gRPC status.
pub fn send(plugin: &Plugin, check: &Check) -> Result<u32, String> {
    send_message(plugin, &check.message)
}

/// Sends an encoded check (see [`send`]).
pub fn send_message(plugin: &Plugin, message: &[u8]) -> Result<u32, String> {
    let settings = plugin
        .policy
        .global()
        .ok_or_else(|| String::from("the policy has no global section"))?;
    global::dispatch(settings, message).map_err(|e| {
        format!(
            "the call to cluster `{}` could not start: {e}",
            settings.cluster
        )
    })
}

/// The fallback configured for `plugin`'s policy (`local` when it has none, which cannot happen
/// for a strict tier).
pub fn fallback(plugin: &Plugin) -> OnUnavailable {
    plugin
        .policy
        .global()
        .map_or(OnUnavailable::Local, |g| g.on_unavailable)
}

/// Reads the answer to `pending`: gRPC `status` (0 = OK; 4 = DEADLINE_EXCEEDED is the timeout,
/// 14 = UNAVAILABLE a dead cluster or a service without Redis) and, on OK, its `body`.
pub fn resolve(
    plugin: &Plugin,
    pending: &Pending,
    status: u32,
    body: Option<&[u8]>,
    now: Nanos,
) -> Resolution {
    resolution(plugin, status, || {
        strict::verdict(&pending.check, body.unwrap_or_default(), now)
    })
}

/// Reads the answer to a token check, as [`resolve`] reads a request check.
pub fn resolve_tokens(
    plugin: &Plugin,
    pending: &PendingTokens,
    status: u32,
    body: Option<&[u8]>,
    now: Nanos,
) -> Resolution {
    resolution(plugin, status, || {
        strict_tokens::verdict(&pending.check, body.unwrap_or_default(), now)
    })
}

fn resolution(plugin: &Plugin, status: u32, verdict: impl FnOnce() -> Verdict) -> Resolution {
    let unavailable = |reason: String| Resolution::Unavailable {
        reason,
        fallback: fallback(plugin),
    };
    if status != 0 {
        return unavailable(format!(
            "the rate limit service call ended with gRPC status {status}"
        ));
    }
    match verdict() {
        Verdict::Admit(decision) => Resolution::Admit(decision),
        Verdict::Refuse(decision) => Resolution::Refuse(decision),
        Verdict::Unusable(why) => unavailable(format!("the rate limit service's answer: {why}")),
    }
}
