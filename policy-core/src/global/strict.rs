//! Strict mode: one `ShouldRateLimit` check per request of a global-strict tier, before it is
//! admitted, so the limit holds exactly across replicas (README "Global mode").
//!
//! The filter asks [`check`] for the message to send, sends it with `dispatch_grpc_call`, holds
//! the request until the answer, and turns the answer into a [`Verdict`] with [`verdict`]. This
//! module is pure (no clock, no I/O): the time is a parameter and the answer is bytes.
//!
//! The check has plain RLS semantics (`hits_addend` = the request's cost, no `tollgate.op`): the
//! service adds the cost if it fits and answers `OK`, else adds nothing and answers `OVER_LIMIT`,
//! so a stock envoyproxy/ratelimit or Limitador can answer it too. The local buckets of a strict
//! tier are not used while the service answers; they decide only when it does not and the
//! fallback is `local`.

use alloc::vec::Vec;
use core::fmt;

use prost::Message;

use crate::bucket::{Rate, Tat};
use crate::decision::{Decision, LimitStatus};
use crate::global::descriptor::{self, BucketKey, Op};
use crate::global::fold::{fold_key, Answered};
use crate::global::proto::{Code, DescriptorStatus, RateLimitRequest, RateLimitResponse};
use crate::global::scoped;
use crate::global::GlobalMode;
use crate::policy::Policy;
use crate::request::Attributes;
use crate::scope::{Caller, CallerRef};
use crate::store::Store;
use crate::table::TableError;
use crate::time::Nanos;

/// One check on its way: the message to send and what is needed to read the answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// The tier's index in the policy.
    pub tier: usize,
    /// Cells asked of each bucket.
    pub cost: u64,
    /// Each descriptor, in the message's order: which limit and bucket it asks.
    pub cells: Vec<Cell>,
    /// The rates of all the tier's limits, in the tier's order: a limit whose scope the request
    /// lacks and skips is not asked, and shows as untouched.
    pub rates: Vec<Rate>,
    /// The encoded `RateLimitRequest`.
    pub message: Vec<u8>,
}

/// One descriptor of a check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cell {
    /// The tier's limit index.
    pub limit: usize,
    /// Its rate.
    pub rate: Rate,
    /// The caller's bucket it names: the tier's table, or a scoped limit's table.
    pub key: BucketKey,
    /// The limit's cell in that key's way.
    pub cell: usize,
}

/// Whether the tier at `tier` is checked globally on every request: the policy's `global`
/// section is in strict mode and the tier did not opt out.
pub fn is_strict(policy: &Policy, tier: usize) -> bool {
    let strict = policy
        .global()
        .is_some_and(|g| g.mode == GlobalMode::Strict);
    strict && policy.tiers().get(tier).is_some_and(|t| t.global)
}

/// The tier that [`Policy::check`] would decide `attrs` with, and the caller in it (its identity
/// and its scopes' identities), when that tier is global-strict and has request limits only;
/// `None` otherwise (a local or sync tier, an LLM tier, no tier, an ambiguous identity or a
/// missing scope the tier refuses without, which `check` answers locally before counting).
pub fn select<A: Attributes>(policy: &Policy, attrs: &A) -> Option<(usize, Caller)> {
    policy.global().filter(|g| g.mode == GlobalMode::Strict)?;
    for (index, tier) in policy.tiers().iter().enumerate() {
        if !tier.matches(attrs) {
            continue;
        }
        // The same walk as `Policy::check`: the first matching tier with an identity decides.
        return match tier.identity.derive(attrs) {
            Ok(Some(id)) => {
                let strict = is_strict(policy, index) && tier.budgets.is_empty();
                if !strict || tier.limits.is_empty() {
                    return None;
                }
                let scopes = if tier.scoping.is_empty() {
                    Vec::new()
                } else {
                    tier.scoping.derive(attrs).ok()?.ok()?
                };
                Some((
                    index,
                    Caller {
                        id: id.into(),
                        scopes,
                    },
                ))
            }
            Ok(None) => continue,
            Err(_) => None,
        };
    }
    None
}

/// The check of `cost` cells from the request limits of `caller` (as the tier derived it: a
/// bare identity, or a [`Caller`] with its scopes) on the strict tier `tier`: one descriptor per
/// limit that applies, each in its scope's bucket, so the service takes from all or from none;
/// `None` when the tier is not strict or has no limit the service can express (then the local
/// decision stands).
pub fn check<'c>(
    policy: &Policy,
    tier: usize,
    caller: impl Into<CallerRef<'c>>,
    cost: u64,
) -> Option<Check> {
    if !is_strict(policy, tier) {
        return None;
    }
    let settings = policy.global()?;
    let t = policy.tiers().get(tier)?;
    let mut cells = Vec::new();
    let mut descriptors = Vec::new();
    for key in scoped::limit_keys(policy, tier, caller.into()) {
        let limits = scoped::table_limits(t, key.table);
        for d in descriptor::describe(policy, &key, Op::Check, cost) {
            cells.push(Cell {
                limit: limits.get(d.cell).copied()?,
                rate: d.rate,
                key,
                cell: d.cell,
            });
            descriptors.push(d.descriptor);
        }
    }
    if cells.is_empty() {
        return None;
    }
    let request = RateLimitRequest {
        domain: settings.domain.clone(),
        descriptors,
        hits_addend: 0,
    };
    Some(Check {
        tier,
        cost,
        cells,
        rates: t.limits.iter().map(|l| l.rate).collect(),
        message: request.encode_to_vec(),
    })
}

/// What the answer means for the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every limit had room: the cells are taken globally; the decision carries the headers'
    /// numbers (what is left and when each bucket is full again, globally).
    Admit(Decision),
    /// A limit is spent globally: refuse with the tier's usual 429, waiting as the decision says.
    Refuse(Decision),
    /// The answer cannot be used: the configured fallback applies.
    Unusable(Unusable),
}

/// Why an answer could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unusable {
    /// Not a `RateLimitResponse`.
    Malformed,
    /// The overall code is neither `OK` nor `OVER_LIMIT`.
    NoCode,
    /// A status per descriptor was expected.
    Statuses {
        /// Descriptors sent.
        sent: usize,
        /// Statuses received.
        received: usize,
    },
    /// `OVER_LIMIT` overall, but no descriptor over its limit (or the other way round).
    Inconsistent,
}

impl fmt::Display for Unusable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unusable::Malformed => f.write_str("the answer is not a RateLimitResponse"),
            Unusable::NoCode => {
                f.write_str("the answer's overall_code is neither OK nor OVER_LIMIT")
            }
            Unusable::Statuses { sent, received } => {
                write!(f, "{received} descriptor statuses for {sent} descriptors")
            }
            Unusable::Inconsistent => {
                f.write_str("the overall code disagrees with the descriptors' codes")
            }
        }
    }
}

/// Reads the service's answer `body` to `check` at `now`.
///
/// Each status's `duration_until_reset` is the time until that bucket is full again (what
/// tollgate-sync answers); as a bucket state that is `tat = now + duration_until_reset`, from
/// which the same arithmetic as local mode gives what is left and, when refused, how long until
/// the request's cells fit (so Retry-After means the same in every mode). A service that counts
/// fixed windows (envoyproxy/ratelimit, Limitador) answers the time until its window resets
/// instead; the numbers then describe a GCRA bucket that is full at that instant.
pub fn verdict(check: &Check, body: &[u8], now: Nanos) -> Verdict {
    let asked: Vec<(Rate, u64)> = check.cells.iter().map(|c| (c.rate, check.cost)).collect();
    match read_answer(&asked, body, now) {
        Verdict::Admit(d) => Verdict::Admit(in_tier_order(check, d, now)),
        Verdict::Refuse(d) => Verdict::Refuse(in_tier_order(check, d, now)),
        unusable => unusable,
    }
}

/// The answer's limits (in the message's order) in the tier's order, as the headers name them;
/// a limit the check did not ask (its scope skipped) shows as an untouched bucket. The most
/// restrictive limit decides, as locally.
fn in_tier_order(check: &Check, answered: Decision, now: Nanos) -> Decision {
    let unchanged = check.cells.iter().enumerate().all(|(i, c)| c.limit == i)
        && check.cells.len() == check.rates.len();
    if unchanged {
        return answered;
    }
    let mut limits: Vec<LimitStatus> = check
        .rates
        .iter()
        .map(|r| LimitStatus::from(r.peek(Tat::default(), now)))
        .collect();
    for (cell, status) in check.cells.iter().zip(answered.limits) {
        if let Some(slot) = limits.get_mut(cell.limit) {
            *slot = status;
        }
    }
    Decision::from_limits(limits)
}

/// Reads an answer to a plain check of `asked` (each descriptor's rate and the cells it asked,
/// in the message's order) at `now`: request limits ([`verdict`]) and token budgets
/// ([`crate::global::strict_tokens`]) alike.
pub(crate) fn read_answer(asked: &[(Rate, u64)], body: &[u8], now: Nanos) -> Verdict {
    let Ok(response) = RateLimitResponse::decode(body) else {
        return Verdict::Unusable(Unusable::Malformed);
    };
    if response.statuses.len() != asked.len() {
        return Verdict::Unusable(Unusable::Statuses {
            sent: asked.len(),
            received: response.statuses.len(),
        });
    }
    let overall = Code::from_wire(response.overall_code);
    if overall == Code::Unknown {
        return Verdict::Unusable(Unusable::NoCode);
    }
    let limits: Vec<LimitStatus> = asked
        .iter()
        .zip(&response.statuses)
        .map(|((rate, cost), status)| limit_status(rate, status, now, *cost))
        .collect();
    let decision = Decision::from_limits(limits);
    match (overall, decision.allowed) {
        (Code::Ok, true) => Verdict::Admit(decision),
        (Code::OverLimit, false) => Verdict::Refuse(decision),
        _ => Verdict::Unusable(Unusable::Inconsistent),
    }
}

/// Folds the global state an answer reported (`decision`, from [`verdict`]) into the caller's
/// local buckets: `local_tat = max(local_tat, now + time until full)`, as a sync round does
/// ([`crate::global::fold`]). Strict mode does not decide from them while the service answers;
/// this keeps them as full as the last answer said, so that the `local` fallback continues from
/// the global state this replica last saw instead of from a full bucket.
///
/// # Errors
/// The local table could not be written (a failing store, or contention): only the `local`
/// fallback's starting point is older.
pub fn fold<S: Store>(
    policy: &Policy,
    check: &Check,
    decision: &Decision,
    now: Nanos,
    store: &mut S,
) -> Result<(), TableError> {
    let cells: Vec<(BucketKey, usize, Rate, Answered)> = check
        .cells
        .iter()
        .filter_map(|c| {
            let limit = decision.limits.get(c.limit)?;
            let answered = Answered {
                until_reset: limit.reset_after,
                remaining: limit.remaining,
            };
            Some((c.key, c.cell, c.rate, answered))
        })
        .collect();
    // `check` puts a key's descriptors next to each other: one table update per key.
    let mut result = Ok(());
    for group in cells.chunk_by(|a, b| a.0 == b.0) {
        if let Some((key, ..)) = group.first() {
            if let Err(e) = fold_key(policy, key, group, now, store) {
                result = Err(e);
            }
        }
    }
    result
}

/// One descriptor's answer as a limit's state.
fn limit_status(rate: &Rate, status: &DescriptorStatus, now: Nanos, cost: u64) -> LimitStatus {
    let until_full = status
        .duration_until_reset
        .map_or(Nanos::ZERO, |d| d.to_nanos());
    let remaining = u64::from(status.limit_remaining);
    let tat = rate.state_of_answer(now, until_full, remaining);
    match Code::from_wire(status.code) {
        // A calendar quota refused is refused until its period ends, whatever it asked.
        Code::OverLimit if rate.calendar_of().is_some() => LimitStatus {
            allowed: false,
            remaining,
            reset_after: until_full,
            retry_after: until_full,
        },
        Code::OverLimit => {
            // Nothing was taken: how long until `cost` cells fit in a bucket in this state.
            let c = rate.check(tat, now, cost);
            LimitStatus {
                allowed: false,
                remaining: u64::from(status.limit_remaining),
                reset_after: until_full,
                // A bucket in this state would take them (a window-counting service's answer):
                // wait for the reset it announced.
                retry_after: if c.allowed { until_full } else { c.retry_after },
            }
        }
        // OK (and Unknown, which `verdict` refuses overall): the cost is taken already.
        _ => LimitStatus {
            allowed: true,
            remaining: u64::from(status.limit_remaining),
            reset_after: until_full,
            retry_after: Nanos::ZERO,
        },
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use alloc::string::String;
    use alloc::vec;

    use super::*;
    use crate::global::proto::Duration;
    use crate::request::HeaderList;
    use crate::{MemoryStore, Outcome};

    const T0: Nanos = Nanos(1_700_000_000_000_000_000);
    const MS: u64 = 1_000_000;

    fn policy(global: &str) -> Policy {
        let text = alloc::format!(
            r#"{{{global}"tiers":[
                {{"name":"llm","match":{{"headers":[{{"name":"x-llm","present":true}}]}},
                  "identity":{{"header":"x-user-id"}},
                  "limits":[{{"requests":10,"per":"minute"}}],
                  "tokens":[{{"tokens":1000,"per":"hour"}}]}},
                {{"name":"local","global":false,"match":{{"headers":[{{"name":"x-local","present":true}}]}},
                  "identity":{{"header":"x-user-id"}},"limits":[{{"requests":5,"per":"second"}}]}},
                {{"name":"users","identity":{{"header":"x-user-id"}},
                  "limits":[{{"requests":100,"per":"minute"}},
                            {{"name":"daily","requests":1000,"per":"day","burst":50}}]}}]}}"#
        );
        Policy::from_json(text.as_bytes()).unwrap()
    }

    fn strict() -> Policy {
        policy(r#""global":{"cluster":"rls","mode":"strict","domain":"api"},"#)
    }

    fn user(id: &str) -> HeaderList {
        [("x-user-id", id)].into_iter().collect()
    }

    /// One descriptor's answer: `code`, `remaining` left, full again in `until_full_ms`.
    pub(crate) fn status(code: i32, remaining: u32, until_full_ms: u64) -> DescriptorStatus {
        DescriptorStatus {
            code,
            current_limit: None,
            limit_remaining: remaining,
            duration_until_reset: Some(Duration {
                seconds: (until_full_ms / 1000) as i64,
                nanos: ((until_full_ms % 1000) * MS) as i32,
            }),
        }
    }

    /// A `RateLimitResponse`'s bytes.
    pub(crate) fn answer(overall: i32, statuses: Vec<DescriptorStatus>) -> Vec<u8> {
        RateLimitResponse {
            overall_code: overall,
            statuses,
        }
        .encode_to_vec()
    }

    fn users_check(p: &Policy) -> Check {
        let (tier, id) = select(p, &user("alice")).unwrap();
        check(p, tier, &id, 1).unwrap()
    }

    #[test]
    fn only_a_strict_tier_with_request_limits_only_is_checked() {
        let p = strict();
        // The tier `Policy::check` would pick, with the caller's identity.
        assert_eq!(
            select(&p, &user("alice")),
            Some((2, Caller::from(b"alice".to_vec())))
        );
        let mut store = MemoryStore::new();
        p.init_store(&mut store).unwrap();
        match p.check(&user("alice"), T0, &mut store) {
            Outcome::Decided { tier, .. } => assert_eq!(tier.name, "users"),
            _ => panic!("undecided"),
        }
        // An LLM tier (its budgets are reserved and settled locally), a tier that opted out, a
        // request without an identity: no check.
        let llm: HeaderList = [("x-user-id", "a"), ("x-llm", "1")].into_iter().collect();
        assert_eq!(select(&p, &llm), None);
        let local: HeaderList = [("x-user-id", "a"), ("x-local", "1")].into_iter().collect();
        assert_eq!(select(&p, &local), None);
        assert_eq!(select(&p, &HeaderList::new(vec![])), None);
        // A repeated identity header: `Policy::check` answers it (Ambiguous), not a call.
        let twice: HeaderList = [("x-user-id", "a"), ("x-user-id", "b")]
            .into_iter()
            .collect();
        assert_eq!(select(&p, &twice), None);
        // Sync mode and local mode: never.
        let sync = policy(r#""global":{"cluster":"rls"},"#);
        assert_eq!(select(&sync, &user("alice")), None);
        assert_eq!(select(&policy(""), &user("alice")), None);
        assert_eq!(check(&sync, 2, b"alice", 1), None);
    }

    #[test]
    fn the_check_asks_each_limit_for_the_cost_with_plain_rls_semantics() {
        let p = strict();
        let c = users_check(&p);
        assert_eq!((c.tier, c.cost), (2, 1));
        assert_eq!(c.cells.len(), 2);
        let request = RateLimitRequest::decode(c.message.as_slice()).unwrap();
        assert_eq!(request.domain, "api");
        assert_eq!(request.descriptors.len(), 2);
        for d in &request.descriptors {
            assert_eq!(d.hits_addend.map(|h| h.value), Some(1));
            // A check, not a sync: no `tollgate.op`; and never the raw identity.
            assert!(d.entries.iter().all(|e| e.key != descriptor::OP));
            assert!(d.entries.iter().all(|e| !e.value.contains("alice")));
        }
        // The daily limit's burst differs from its rate: carried.
        assert!(request.descriptors[1]
            .entries
            .iter()
            .any(|e| e.key == descriptor::BURST && e.value == "50"));
        // Every replica asks about the same bucket: the same bytes for the same caller.
        assert_eq!(users_check(&strict()).message, c.message);
        let (tier, id) = select(&p, &user("bob")).unwrap();
        assert_ne!(check(&p, tier, &id, 1).unwrap().message, c.message);
    }

    #[test]
    fn ok_admits_with_the_global_numbers() {
        let c = users_check(&strict());
        let body = answer(1, vec![status(1, 41, 35_400), status(1, 7, 40_000_000)]);
        let Verdict::Admit(d) = verdict(&c, &body, T0) else {
            panic!("not admitted")
        };
        assert_eq!(d.limits[0].remaining, 41);
        assert_eq!(d.limits[0].reset_after, Nanos(35_400 * MS));
        // The decisive limit is the one with the fewest left.
        assert_eq!(d.decisive, 1);
    }

    #[test]
    fn over_limit_refuses_until_the_cost_fits_again() {
        let c = users_check(&strict());
        // 100 a minute, empty (full again in 60 s): one cell is back in 0.6 s. The daily limit
        // still had room: it is reported allowed, untouched.
        let body = answer(2, vec![status(2, 0, 60_000), status(1, 30, 1_000)]);
        let Verdict::Refuse(d) = verdict(&c, &body, T0) else {
            panic!("not refused")
        };
        assert!(!d.allowed);
        assert_eq!(d.decisive, 0);
        assert_eq!(d.retry_after(), Some(Nanos(600 * MS)));
        assert!(d.limits[1].allowed);
        // In debt (a sync round pushed it past empty): 90 s to full, 30.6 s to one cell.
        let body = answer(2, vec![status(2, 0, 90_000), status(1, 30, 1_000)]);
        let Verdict::Refuse(d) = verdict(&c, &body, T0) else {
            panic!("not refused")
        };
        assert_eq!(d.retry_after(), Some(Nanos(30_600 * MS)));
        // A window-counting service says OVER_LIMIT with a bucket that would still have room:
        // wait for the reset it announced.
        let body = answer(2, vec![status(2, 0, 5_000), status(1, 30, 1_000)]);
        let Verdict::Refuse(d) = verdict(&c, &body, T0) else {
            panic!("not refused")
        };
        assert_eq!(d.retry_after(), Some(Nanos(5_000 * MS)));
    }

    #[test]
    fn an_answer_folds_into_the_local_bucket_for_the_local_fallback() {
        let p = strict();
        let mut store = MemoryStore::new();
        p.init_store(&mut store).unwrap();
        let c = users_check(&p);
        // Other replicas spent the 100 a minute: empty, full again in 60 s.
        let body = answer(2, vec![status(2, 0, 60_000), status(1, 30, 1_000)]);
        let Verdict::Refuse(d) = verdict(&c, &body, T0) else {
            panic!("not refused")
        };
        fold(&p, &c, &d, T0, &mut store).unwrap();
        // Locally, as the `local` fallback would decide: refused, one request back in 0.6 s.
        match p.check(&user("alice"), T0, &mut store) {
            Outcome::Decided { decision, .. } => {
                assert!(!decision.allowed);
                assert_eq!(decision.retry_after(), Some(Nanos(600 * MS)));
            }
            _ => panic!("undecided"),
        }
        // A state behind the local one never rolls it back.
        let body = answer(1, vec![status(1, 99, 600), status(1, 30, 1_000)]);
        let Verdict::Admit(d) = verdict(&c, &body, T0) else {
            panic!("not admitted")
        };
        fold(&p, &c, &d, T0, &mut store).unwrap();
        match p.check(&user("alice"), T0, &mut store) {
            Outcome::Decided { decision, .. } => assert!(!decision.allowed),
            _ => panic!("undecided"),
        }
        // Another caller's bucket is untouched.
        match p.check(&user("bob"), T0, &mut store) {
            Outcome::Decided { decision, .. } => assert!(decision.allowed),
            _ => panic!("undecided"),
        }
    }

    #[test]
    fn an_answer_that_cannot_be_used_says_why() {
        let c = users_check(&strict());
        let cases: [(Vec<u8>, Unusable); 4] = [
            (vec![0xff, 0xff, 0xff], Unusable::Malformed),
            (
                answer(1, vec![status(1, 1, 1)]),
                Unusable::Statuses {
                    sent: 2,
                    received: 1,
                },
            ),
            (
                answer(0, vec![status(1, 1, 1), status(1, 1, 1)]),
                Unusable::NoCode,
            ),
            (
                answer(2, vec![status(1, 1, 1), status(1, 1, 1)]),
                Unusable::Inconsistent,
            ),
        ];
        for (body, why) in cases {
            assert_eq!(verdict(&c, &body, T0), Verdict::Unusable(why));
        }
        assert_eq!(
            String::from("2 descriptor statuses for 3 descriptors"),
            alloc::format!(
                "{}",
                Unusable::Statuses {
                    sent: 3,
                    received: 2
                }
            )
        );
    }
}
