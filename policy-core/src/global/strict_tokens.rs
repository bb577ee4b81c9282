//! Strict mode for token budgets: an LLM call's reservation checked with the service at
//! admission, and its settlement sent as the correction (README "Global mode", "Strict mode").
//!
//! Local admission runs first, as in local mode: it computes the estimate and takes the local
//! holds. The local budgets count this replica's calls only: an answer is not folded into them
//! (it includes other replicas' reservations in flight, which their settlements give back
//! later; a fold only ever raises a bucket, so they would stay and refuse calls that fit). So a
//! local refusal means the service would refuse too. The holds then become one
//! `ShouldRateLimit` ([`check`]): one descriptor per budget held (`budget` = its name, `id`, its
//! rate), `hits_addend` = the tokens held on it, plain RLS semantics (no `tollgate.op`), so the
//! service takes every reservation or none. [`verdict`] reads the answer as strict mode's request
//! checks do. The call admitted, its settlement goes to the service through the sync rounds
//! ([`settlement`]): per budget, `tollgate.refund` = what the check reserved, `op=sync`,
//! `hits_addend` = the real charge, so the global budget ends at exactly the real usage.
//!
//! Pure, as the rest of [`crate::global`]: the time is a parameter and the answer is bytes.

use alloc::vec::Vec;

use prost::Message;

use crate::bucket::Rate;
use crate::budget::{Amount, Hold};
use crate::global::calendar as global_calendar;
use crate::global::descriptor::{self, BucketKey, Op, TableId};
use crate::global::ledger::Delta;
use crate::global::proto::RateLimitRequest;
use crate::global::strict::{is_strict, read_answer, Verdict};
use crate::policy::Policy;
use crate::time::Nanos;

/// One budget the check reserves on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// The budget's index in its tier.
    pub budget: usize,
    /// The caller's bucket of that budget (the descriptor's `id`, and what the answer is folded
    /// into).
    pub key: BucketKey,
    /// The budget's rate.
    pub rate: Rate,
    /// Tokens asked of the service: the local hold, at least 1 (a charge-after call holds
    /// nothing locally, but must still find room: 1 token is asked, and given back at
    /// settlement).
    pub reserved: u64,
    /// When the local hold was taken: a calendar quota's settlement belongs to its period.
    pub at: Nanos,
}

/// One check of a call's reservation on its way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenCheck {
    /// The tier's index in the policy.
    pub tier: usize,
    /// The budgets, in the message's order.
    pub held: Vec<Held>,
    /// The encoded `RateLimitRequest`.
    pub message: Vec<u8>,
}

/// Whether calls on tier `tier` reserve their tokens with the service: the policy is in strict
/// mode, the tier is global and has token budgets.
pub fn applies(policy: &Policy, tier: usize) -> bool {
    is_strict(policy, tier)
        && policy
            .tiers()
            .get(tier)
            .is_some_and(|t| !t.budgets.is_empty())
}

/// The check of the local `holds` a call on tier `tier` was admitted with; `None` when the tier
/// does not reserve globally ([`applies`]) or nothing held can be expressed (no hold).
///
/// `cap`, when given, bounds what is asked of each budget (in its unit): a call whose input is
/// stored upstream holds all that is left locally, and asks the service for its estimate
/// ([`crate::llm::lifecycle::LlmCall::global_ask_cap`]); the settlement refunds what was asked.
pub fn check(
    policy: &Policy,
    tier: usize,
    holds: &[Hold],
    cap: Option<Amount>,
) -> Option<TokenCheck> {
    if !applies(policy, tier) {
        return None;
    }
    let settings = policy.global()?;
    let budgets = &policy.tiers().get(tier)?.budgets;
    let mut held = Vec::with_capacity(holds.len());
    let mut descriptors = Vec::with_capacity(holds.len());
    for hold in holds {
        let table = TableId::Budget(u8::try_from(hold.budget).ok()?);
        let key = BucketKey::new(tier, table, hold.slot);
        let meter = budgets.get(hold.budget)?.meter;
        let asked = cap.map_or(hold.reserved, |c| hold.reserved.min(c.of(meter)));
        let reserved = asked.max(1);
        for d in descriptor::describe(policy, &key, Op::Check, reserved) {
            held.push(Held {
                budget: hold.budget,
                key,
                rate: d.rate,
                reserved,
                at: hold.at,
            });
            descriptors.push(d.descriptor);
        }
    }
    if held.is_empty() {
        return None;
    }
    let request = RateLimitRequest {
        domain: settings.domain.clone(),
        descriptors,
        hits_addend: 0,
    };
    Some(TokenCheck {
        tier,
        held,
        message: request.encode_to_vec(),
    })
}

/// Reads the service's answer `body` to `check` at `now`, as strict mode reads a request check
/// ([`crate::global::strict::verdict`]): admitted, the decision is the budgets' global states
/// (for the headers); refused, how long until the call's tokens fit (Retry-After). The
/// decision names the budgets (`applied`) as a local admission's does.
pub fn verdict(check: &TokenCheck, body: &[u8], now: Nanos) -> Verdict {
    let asked: Vec<(Rate, u64)> = check.held.iter().map(|h| (h.rate, h.reserved)).collect();
    let applied: Vec<usize> = check.held.iter().map(|h| h.budget).collect();
    match read_answer(&asked, body, now) {
        Verdict::Admit(d) => Verdict::Admit(d.with_applied(applied)),
        Verdict::Refuse(d) => Verdict::Refuse(d.with_applied(applied)),
        unusable => unusable,
    }
}

/// The correction to send once the call admitted by `check` is settled at `charged` (tokens
/// and money, each budget taking its own unit): per budget, give back what the check reserved
/// and add the real charge (`op=sync`: into debt if the call cost more than its estimate, as
/// locally). For the sync rounds' ledger.
///
/// A calendar quota's correction belongs to the period the hold was taken in: settled at `now`
/// in a later period (on this Envoy's clock), it is not sent, as locally ([`Rate::settle`]):
/// the service counts in its current period, which must not get back a reservation it never
/// held.
pub fn settlement(
    policy: &Policy,
    check: &TokenCheck,
    charged: Amount,
    now: Nanos,
) -> Vec<(BucketKey, Delta)> {
    let budgets = policy.tiers().get(check.tier).map(|t| &t.budgets[..]);
    check
        .held
        .iter()
        .filter(|h| global_calendar::same_period(&h.rate, h.at, now))
        .filter_map(|h| {
            let meter = budgets?.get(h.budget)?.meter;
            Some((h.key, Delta::settlement(h.reserved, charged.of(meter))))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use alloc::string::String;
    use alloc::vec;

    use super::*;
    use crate::budget::Ask;
    use crate::global::fold::Round;
    use crate::global::strict::tests::{answer, status};
    use crate::global::strict::Unusable;
    use crate::policy::TokenOutcome;
    use crate::MemoryStore;

    const T0: Nanos = Nanos(1_700_000_000_000_000_000);
    const MS: u64 = 1_000_000;

    /// `llm`: 1,000 tokens an hour for every model, and 600 a day for model `big` only; `users`:
    /// request limits only; `local`: budgets, but not global.
    fn policy(mode: &str, llm_mode: &str) -> Policy {
        let text = alloc::format!(
            r#"{{"global":{{"cluster":"rls","mode":"{mode}","domain":"api"}},
              "llm":{{"mode":"{llm_mode}"}},
              "tiers":[
                {{"name":"llm","match":{{"headers":[{{"name":"x-llm","present":true}}]}},
                  "identity":{{"header":"x-user-id"}},
                  "tokens":[{{"tokens":1000,"per":"hour"}},
                            {{"name":"big-daily","tokens":600,"per":"day","model":"big"}}]}},
                {{"name":"local","global":false,"match":{{"headers":[{{"name":"x-local","present":true}}]}},
                  "identity":{{"header":"x-user-id"}},"tokens":[{{"tokens":50,"per":"minute"}}]}},
                {{"name":"users","identity":{{"header":"x-user-id"}},
                  "limits":[{{"requests":100,"per":"minute"}}]}}]}}"#
        );
        Policy::from_json(text.as_bytes()).unwrap()
    }

    /// Admits `ask` tokens locally for `user` on tier `tier`, for `model`: the holds.
    fn hold(
        p: &Policy,
        s: &mut MemoryStore,
        tier: usize,
        user: &str,
        model: &str,
        ask: u64,
    ) -> Vec<Hold> {
        let t = &p.tiers()[tier];
        match p.admit_tokens_where(
            t,
            user.as_bytes(),
            Some(model),
            Ask::Tokens(Amount::tokens(ask)),
            T0,
            s,
            |_, _| true,
        ) {
            TokenOutcome::Admitted { reservation, .. } => reservation.holds,
            other => panic!("{other:?}"),
        }
    }

    fn store(p: &Policy) -> MemoryStore {
        let mut s = MemoryStore::new();
        p.init_store(&mut s).unwrap();
        s
    }

    fn entries(d: &crate::global::proto::RateLimitDescriptor) -> Vec<(String, String)> {
        d.entries
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect()
    }

    #[test]
    fn a_cap_bounds_what_is_asked_of_the_service_and_what_the_settlement_refunds() {
        // A call whose input is stored upstream holds all that is left here (500 of `big`'s
        // budgets); the service is asked for its estimate only, and refunded that.
        let p = policy("strict", "reserve");
        let mut s = store(&p);
        let holds = hold(&p, &mut s, 0, "dave", "big", 500);
        let c = check(&p, 0, &holds, Some(Amount::tokens(120))).unwrap();
        assert!(c.held.iter().all(|h| h.reserved == 120), "{:?}", c.held);
        let request = RateLimitRequest::decode(c.message.as_slice()).unwrap();
        assert!(request
            .descriptors
            .iter()
            .all(|d| d.hits_addend.map(|h| h.value) == Some(120)));
        let settled = settlement(&p, &c, Amount::tokens(90), T0);
        assert!(settled
            .iter()
            .all(|(_, d)| *d == Delta::settlement(120, 90)));
        // A cap above the hold asks the hold.
        let c = check(&p, 0, &holds, Some(Amount::tokens(10_000))).unwrap();
        assert!(c.held.iter().all(|h| h.reserved == 500));
    }

    #[test]
    fn one_descriptor_per_budget_held_asking_its_hold_as_a_plain_check() {
        let p = policy("strict", "reserve");
        let mut s = store(&p);
        let holds = hold(&p, &mut s, 0, "alice", "big", 500);
        let c = check(&p, 0, &holds, None).unwrap();
        let request = RateLimitRequest::decode(c.message.as_slice()).unwrap();
        assert_eq!(request.domain, "api");
        assert_eq!(request.descriptors.len(), 2, "both budgets apply to `big`");
        let id = descriptor::hex(
            BucketKey::budget(&p, 0, 0, b"alice", Some("big"))
                .unwrap()
                .fingerprint,
        );
        let first = &request.descriptors[0];
        assert_eq!(
            entries(first),
            [
                ("tier".into(), "llm".into()),
                ("budget".into(), "llm-tokens-hour".into()),
                ("id".into(), id.clone())
            ]
        );
        assert_eq!(first.hits_addend.map(|h| h.value), Some(500));
        let limit = first.limit.unwrap();
        assert_eq!((limit.requests_per_unit, limit.unit), (1000, 3)); // 3 = HOUR
        let second = &request.descriptors[1];
        assert_eq!(entries(second)[1], ("budget".into(), "big-daily".into()));
        assert_eq!(second.hits_addend.map(|h| h.value), Some(500));
        assert!(
            request
                .descriptors
                .iter()
                .all(|d| !d.entries.iter().any(|e| e.key.starts_with("tollgate.op"))),
            "plain check: all or nothing"
        );
        // The raw identity never leaves.
        assert!(!c.message.windows(5).any(|w| w == b"alice"));
        assert_eq!(
            c.held
                .iter()
                .map(|h| (h.budget, h.reserved))
                .collect::<Vec<_>>(),
            [(0, 500), (1, 500)]
        );
        // Another model: only the budget counting every model applies.
        let holds = hold(&p, &mut s, 0, "alice", "small", 200);
        let c = check(&p, 0, &holds, None).unwrap();
        assert_eq!(c.held.len(), 1);
        // The descriptor names the same bucket a sync round would (same `id`).
        let synced = Round::new(&p, vec![(c.held[0].key, Delta::cells(1))]);
        let request = RateLimitRequest::decode(c.message.as_slice()).unwrap();
        assert_eq!(
            entries(&synced.request.descriptors[0])[..3],
            entries(&request.descriptors[0])[..3]
        );
    }

    #[test]
    fn a_charge_after_call_asks_for_one_token_and_only_strict_budget_tiers_check() {
        let p = policy("strict", "charge_after");
        let mut s = store(&p);
        let holds = hold(&p, &mut s, 0, "bob", "small", 300);
        assert_eq!(holds[0].reserved, 0, "charge-after holds nothing locally");
        let c = check(&p, 0, &holds, None).unwrap();
        assert_eq!(c.held[0].reserved, 1);
        // A tier that opts out, a tier without budgets, sync mode, no holds: no check.
        let local = hold(&p, &mut s, 1, "bob", "small", 10);
        assert!(check(&p, 1, &local, None).is_none());
        assert!(!applies(&p, 2));
        assert!(check(&p, 0, &[], None).is_none());
        let sync = policy("sync", "reserve");
        assert!(check(&sync, 0, &holds, None).is_none());
        assert!(applies(&p, 0) && !applies(&sync, 0));
    }

    #[test]
    fn the_answer_admits_or_refuses_naming_the_budgets_and_waiting_for_the_calls_tokens() {
        let p = policy("strict", "reserve");
        let mut s = store(&p);
        let holds = hold(&p, &mut s, 0, "carol", "big", 500);
        let c = check(&p, 0, &holds, None).unwrap();
        // OK: 300 left of the hour's 1,000 (full again in 42 min), 100 of the day's 600.
        let body = answer(
            1,
            vec![status(1, 300, 2_520_000), status(1, 100, 72_000_000)],
        );
        let Verdict::Admit(d) = verdict(&c, &body, T0) else {
            panic!("not admitted")
        };
        assert_eq!(d.applied, [0, 1]);
        assert_eq!((d.limits[0].remaining, d.limits[1].remaining), (300, 100));
        assert_eq!(d.decisive, 1, "the fewest left");
        // OVER_LIMIT on the hour's budget: 200 left (full again in 48 min); 500 fit once 300
        // more are back: 300 × 3.6 s = 18 min.
        let body = answer(2, vec![status(2, 200, 2_880_000), status(1, 600, 0)]);
        let Verdict::Refuse(d) = verdict(&c, &body, T0) else {
            panic!("not refused")
        };
        assert_eq!(d.applied, [0, 1]);
        assert_eq!(d.decisive, 0);
        assert_eq!(d.retry_after(), Some(Nanos(1_080_000 * MS)));
        // Not one status per budget: the fallback decides.
        assert_eq!(
            verdict(&c, &answer(1, vec![status(1, 1, 1)]), T0),
            Verdict::Unusable(Unusable::Statuses {
                sent: 2,
                received: 1
            })
        );
    }

    #[test]
    fn the_settlement_gives_back_the_reservation_and_adds_the_real_charge() {
        let p = policy("strict", "reserve");
        let mut s = store(&p);
        let holds = hold(&p, &mut s, 0, "erin", "big", 500);
        let c = check(&p, 0, &holds, None).unwrap();
        let settled = settlement(&p, &c, Amount::tokens(13), T0);
        assert_eq!(
            settled.iter().map(|(_, d)| *d).collect::<Vec<_>>(),
            [Delta::settlement(500, 13), Delta::settlement(500, 13)]
        );
        let round = Round::new(&p, settled);
        let checked = RateLimitRequest::decode(c.message.as_slice()).unwrap();
        assert_eq!(round.request.descriptors.len(), 2);
        for (sent, asked) in round.request.descriptors.iter().zip(&checked.descriptors) {
            let e = entries(sent);
            // The same bucket as the check, then the correction's parameters.
            assert_eq!(e[..3], entries(asked)[..3]);
            assert_eq!(
                e[3..],
                [
                    ("tollgate.op".into(), "sync".into()),
                    ("tollgate.refund".into(), "500".into())
                ]
            );
            assert_eq!(sent.hits_addend.map(|h| h.value), Some(13));
            assert_eq!(sent.limit, asked.limit);
        }
        // A huge summed refund is capped where the service would refuse the whole round.
        let huge = Round::new(&p, vec![(c.held[0].key, Delta::settlement(u64::MAX, 0))]);
        assert!(entries(&huge.request.descriptors[0])
            .contains(&("tollgate.refund".into(), "1099511627776".into())));
    }
}
