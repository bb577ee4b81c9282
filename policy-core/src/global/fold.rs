//! One sync round: the batch as a `RateLimitRequest`, and its answer folded into the local
//! buckets.
//!
//! The service answers each descriptor with `duration_until_reset`: the time until the global
//! bucket is full again, on the service's clock. That is the whole GCRA state relative to "now",
//! so a replica folds it in as `local_tat = max(local_tat, local_now + duration_until_reset)`
//! ([`Rate::full_after`]) and never compares its clock with anyone's: a replica whose clock is
//! hours ahead or behind folds the same answer into the same remaining cells. `max` because the
//! global state already includes this replica's own cells: adding would count them twice, and a
//! local state that is ahead (cells admitted since the batch left) must not be rolled back.
//!
//! A bucket whose key the local table no longer holds (its way was reclaimed while it was full
//! locally) gets a way again with the global state: another replica's traffic makes it active.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use prost::Message;

use crate::bucket::{Rate, Tat};
use crate::global::descriptor::{describe, with_refund, BucketKey, Op, TableId, ROUND};
use crate::global::ledger::Delta;
use crate::global::proto::{Code, Entry, RateLimitRequest, RateLimitResponse};
use crate::global::strict_tokens;
use crate::policy::Policy;
use crate::store::Store;
use crate::table::{TableError, Update};
use crate::time::Nanos;

/// A bucket's state after folding the global one in, and the cells the global state was
/// beyond the bucket's capacity (0 when within).
pub fn fold_bucket(rate: &Rate, local: Tat, now: Nanos, reset: Nanos) -> (Tat, u64) {
    fold_state(rate, local, now, rate.full_after(now, reset))
}

/// What the service answered for one descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answered {
    /// `duration_until_reset`: until the bucket is full again (a calendar quota: until its
    /// period ends).
    pub until_reset: Nanos,
    /// `limit_remaining`: what a calendar quota's state is read from (a refilling bucket's
    /// follows from `until_reset`).
    pub remaining: u64,
}

/// [`fold_bucket`] for any rate: a calendar quota's answer is read with what is left in its
/// period ([`Rate::state_of_answer`]).
pub fn fold_answer(rate: &Rate, local: Tat, now: Nanos, answered: Answered) -> (Tat, u64) {
    let global = rate.state_of_answer(now, answered.until_reset, answered.remaining);
    fold_state(rate, local, now, global)
}

fn fold_state(rate: &Rate, local: Tat, now: Nanos, global: Tat) -> (Tat, u64) {
    if rate.is_full(global, now) {
        // A full global bucket says nothing new: the local state stays as it is (moving a
        // past TAT up to "now" would change nothing but count as a change).
        return (local, 0);
    }
    (local.max(global), rate.overshoot(global, now))
}

/// One round: the deltas sent and the descriptors they became.
#[derive(Debug)]
pub struct Round {
    /// The deltas, to be put back into the ledger if the round fails.
    pub batch: Vec<(BucketKey, Delta)>,
    /// The request.
    pub request: RateLimitRequest,
    /// For each descriptor, the bucket and cell it names.
    sent: Vec<(BucketKey, usize, Rate)>,
}

/// What folding a round's answer did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Folded {
    /// Buckets whose answer was folded.
    pub keys: u64,
    /// Of those, buckets whose local state moved (another replica admitted more).
    pub changed: u64,
    /// The largest overshoot seen: cells a global bucket was beyond its capacity.
    pub overshoot: u64,
    /// Buckets the local table could not be updated for (store failure, contention).
    pub failed: u64,
}

/// Why an answer could not be folded (the round counts as failed; its deltas are resent).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AnswerError {
    /// Not a `RateLimitResponse`.
    Decode,
    /// Not one status per descriptor.
    Statuses {
        /// Descriptors sent.
        sent: usize,
        /// Statuses received.
        got: usize,
    },
    /// A status without `duration_until_reset`, or with a code other than OK: not tollgate-sync
    /// answering `op=sync` (which never answers OVER_LIMIT).
    NotSync {
        /// The descriptor's index.
        index: usize,
    },
}

impl fmt::Display for AnswerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AnswerError::Decode => f.write_str("the answer is not a RateLimitResponse"),
            AnswerError::Statuses { sent, got } => {
                write!(f, "{got} statuses for {sent} descriptors")
            }
            AnswerError::NotSync { index } => write!(
                f,
                "statuses[{index}]: no duration_until_reset or not OK (is the cluster tollgate-sync?)"
            ),
        }
    }
}

impl core::error::Error for AnswerError {}

impl Round {
    /// The round for `batch` under `policy` (whose `global` section gives the domain). Deltas of
    /// buckets the policy no longer has are left out of the request (and of `batch`).
    pub fn new(policy: &Policy, batch: Vec<(BucketKey, Delta)>) -> Round {
        let domain = policy
            .global()
            .map(|g| g.domain.clone())
            .unwrap_or_default();
        let mut kept = Vec::with_capacity(batch.len());
        let mut descriptors = Vec::new();
        let mut sent = Vec::new();
        for (key, delta) in batch {
            // The service refuses a cost above the buckets' range (and with it the whole
            // round, which would then be resent for ever): a larger charge (an upstream
            // reporting absurd usage) is sent as the most a bucket can owe, as refunds are.
            let cells = delta.cells.min(crate::bucket::MAX_AMOUNT);
            let described = describe(policy, &key, Op::Sync, cells);
            if described.is_empty() {
                continue;
            }
            for mut d in described {
                with_refund(&mut d.descriptor, delta.refund);
                sent.push((key, d.cell, d.rate));
                descriptors.push(d.descriptor);
            }
            kept.push((key, delta));
        }
        Round {
            batch: kept,
            request: RateLimitRequest {
                domain,
                descriptors,
                hits_addend: 0,
            },
            sent,
        }
    }

    /// Tags the round with `id` (a [`ROUND`] entry on its first descriptor), so that
    /// `tollgate-sync` applies it once however often it is sent. A second call replaces the id.
    pub fn set_id(&mut self, id: &str) {
        let Some(first) = self.request.descriptors.first_mut() else {
            return;
        };
        first.entries.retain(|e| e.key != ROUND);
        first.entries.push(Entry {
            key: String::from(ROUND),
            value: String::from(id),
        });
    }

    /// The id [`Round::set_id`] gave the round.
    pub fn id(&self) -> Option<&str> {
        self.request
            .descriptors
            .first()?
            .entries
            .iter()
            .find(|e| e.key == ROUND)
            .map(|e| e.value.as_str())
    }

    /// Descriptors in the request.
    pub fn descriptors(&self) -> usize {
        self.sent.len()
    }

    /// The request's bytes, for `dispatch_grpc_call`.
    pub fn encode(&self) -> Vec<u8> {
        self.request.encode_to_vec()
    }

    /// Folds the answer `bytes` into the local buckets at `now`.
    ///
    /// # Errors
    /// The answer is not one OK status with a duration per descriptor; nothing is folded.
    pub fn fold<S: Store>(
        &self,
        policy: &Policy,
        bytes: &[u8],
        now: Nanos,
        store: &mut S,
    ) -> Result<Folded, AnswerError> {
        let answer = RateLimitResponse::decode(bytes).map_err(|_| AnswerError::Decode)?;
        if answer.statuses.len() != self.sent.len() {
            return Err(AnswerError::Statuses {
                sent: self.sent.len(),
                got: answer.statuses.len(),
            });
        }
        let mut resets = Vec::with_capacity(self.sent.len());
        for (index, status) in answer.statuses.iter().enumerate() {
            match (Code::from_wire(status.code), status.duration_until_reset) {
                (Code::Ok, d) => resets.push(Answered {
                    // proto3 leaves a zero duration out: a full bucket.
                    until_reset: d.map_or(Nanos::ZERO, |d| d.to_nanos()),
                    remaining: u64::from(status.limit_remaining),
                }),
                _ => return Err(AnswerError::NotSync { index }),
            }
        }
        let answered: Vec<(BucketKey, usize, Rate, Answered)> = self
            .sent
            .iter()
            .zip(resets)
            .map(|((key, cell, rate), reset)| (*key, *cell, *rate, reset))
            .collect();
        let mut folded = Folded::default();
        // `describe` puts a key's descriptors next to each other: one table update per key.
        for group in answered.chunk_by(|a, b| a.0 == b.0) {
            let Some((key, ..)) = group.first() else {
                continue;
            };
            folded.keys += 1;
            // Strict mode's token budgets are not folded: the service's state includes other
            // replicas' reservations in flight, which their settlements give back later, and a
            // fold only ever raises a bucket, so they would stay and refuse calls that fit
            // (README "Strict mode"). Their settlements ride the rounds; every call is checked.
            if matches!(key.table, TableId::Budget(_))
                && strict_tokens::applies(policy, usize::from(key.tier))
            {
                continue;
            }
            match fold_key(policy, key, group, now, store) {
                Ok((changed, overshoot)) => {
                    folded.changed += u64::from(changed);
                    folded.overshoot = folded.overshoot.max(overshoot);
                }
                Err(_) => folded.failed += 1,
            }
        }
        Ok(folded)
    }
}

/// Folds one bucket key's answers (cell, rate, reset) into its way of the local table.
pub(crate) fn fold_key<S: Store>(
    policy: &Policy,
    key: &BucketKey,
    cells: &[(BucketKey, usize, Rate, Answered)],
    now: Nanos,
    store: &mut S,
) -> Result<(bool, u64), TableError> {
    let Some(tier) = policy.tiers().get(usize::from(key.tier)) else {
        return Ok((false, 0));
    };
    let mut overshoot = 0;
    // The answers' cells, folded into the way's states; `base` is where they start in the way
    // (a budget's one cell is its column in its budget set).
    let mut fold = |states: &[Tat], base: usize| {
        let mut next = states.to_vec();
        let mut changed = false;
        for (_, cell, rate, reset) in cells {
            let Some(state) = next.get_mut(base + *cell) else {
                continue;
            };
            let (tat, over) = fold_answer(rate, *state, now, *reset);
            overshoot = overshoot.max(over);
            if tat != *state {
                *state = tat;
                changed = true;
            }
        }
        if changed {
            Update::Write(next, true)
        } else {
            Update::Keep(false)
        }
    };
    let (changed, _) = match key.table {
        TableId::Limits | TableId::ScopedLimit(_) => {
            let table = match key.table {
                TableId::ScopedLimit(i) => match tier.scoping.limits.get(usize::from(i)) {
                    Some(Some(ls)) => &ls.table,
                    _ => return Ok((false, 0)),
                },
                _ => &tier.table,
            };
            let rates = limit_rates(tier, key.table);
            let is_idle =
                |states: &[Tat]| rates.iter().zip(states).all(|(r, s)| r.is_full(*s, now));
            table.update(store, key.slot(), is_idle, |states, _| fold(states, 0))?
        }
        TableId::Budget(b) => {
            let Some((set, column)) = tier.budget_set(usize::from(b)) else {
                return Ok((false, 0));
            };
            set.table.update(
                store,
                key.slot(),
                set.is_idle(&tier.budgets, now),
                |states, _| fold(states, column),
            )?
        }
    };
    Ok((changed, overshoot))
}

/// The rates of the request limits whose cells `table` of `tier` holds, in cell order.
fn limit_rates(tier: &crate::tier::Tier, table: TableId) -> Vec<Rate> {
    crate::global::scoped::table_limits(tier, table)
        .into_iter()
        .filter_map(|i| tier.limits.get(i).map(|l| l.rate))
        .collect()
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use alloc::vec;

    use super::*;
    use crate::global::ledger::Ledger;
    use crate::global::proto::{DescriptorStatus, Duration};
    use crate::policy::Outcome;
    use crate::request::HeaderList;
    use crate::store::MemoryStore;

    const T0: Nanos = Nanos(1_700_000_000_000_000_000);
    const MINUTE: Nanos = Nanos(60_000_000_000);

    fn per_minute(n: u64) -> Rate {
        Rate::new(n, MINUTE, n).unwrap()
    }

    fn secs(s: f64) -> Nanos {
        Nanos((s * 1e9) as u64)
    }

    #[test]
    fn a_global_state_folded_into_a_fresh_bucket_leaves_what_the_others_did_not_take() {
        let rate = per_minute(100);
        // 30 s until full again: 50 cells taken elsewhere.
        let (tat, over) = fold_bucket(&rate, Tat::default(), T0, secs(30.0));
        assert_eq!(rate.peek(tat, T0).remaining, 50);
        assert_eq!(over, 0);
    }

    #[test]
    fn a_local_state_ahead_of_the_answer_is_kept() {
        let rate = per_minute(100);
        let local = rate.charge(Tat::default(), T0, 60);
        let (tat, _) = fold_bucket(&rate, local, T0, secs(30.0));
        assert_eq!(
            tat, local,
            "the global state includes our own cells: max, never a sum"
        );
        assert_eq!(rate.peek(tat, T0).remaining, 40);
    }

    #[test]
    fn window_edges() {
        let rate = per_minute(100);
        let stale = rate.charge(Tat::default(), Nanos(T0.0 - MINUTE.0), 2);
        let (tat, _) = fold_bucket(&rate, stale, T0, Nanos::ZERO);
        assert_eq!(
            tat, stale,
            "a full global bucket leaves the local state alone"
        );
        assert!(rate.is_full(tat, T0));
        // Exactly one window ahead: empty, not in debt; the next cell after 0.6 s.
        let (tat, over) = fold_bucket(&rate, Tat::default(), T0, MINUTE);
        let c = rate.check(tat, T0, 1);
        assert!(!c.allowed);
        assert_eq!((c.remaining, c.retry_after, over), (0, secs(0.6), 0));
        assert!(!rate.check(tat, Nanos(T0.0 + secs(0.6).0 - 1), 1).allowed);
        assert!(rate.check(tat, Nanos(T0.0 + secs(0.6).0), 1).allowed);
        // A window and 3 cells: 3 cells of debt observed; 2.4 s before the next admission.
        let (tat, over) = fold_bucket(&rate, Tat::default(), T0, secs(61.8));
        assert_eq!(over, 3);
        assert_eq!(rate.check(tat, T0, 1).retry_after, secs(2.4));
        // 1 ns short of one cell beyond the window is not yet a whole cell of overshoot.
        let (_, over) = fold_bucket(&rate, Tat::default(), T0, Nanos(MINUTE.0 + secs(0.6).0 - 1));
        assert_eq!(over, 0);
    }

    #[test]
    fn replicas_whose_clocks_are_ahead_or_behind_fold_the_same_answer_the_same_way() {
        let rate = per_minute(100);
        let reset = secs(42.0);
        let seen: Vec<(u64, Nanos)> = [0i64, 3_600, -3_600, 1, -1]
            .into_iter()
            .map(|skew| {
                let now = Nanos(T0.0.wrapping_add_signed(skew * 1_000_000_000));
                let (tat, _) = fold_bucket(&rate, Tat::default(), now, reset);
                let p = rate.peek(tat, now);
                (p.remaining, p.reset_after)
            })
            .collect();
        assert!(seen.iter().all(|s| *s == seen[0]), "{seen:?}");
        assert_eq!(seen[0], (30, reset));
    }

    const POLICY: &[u8] = br#"{"global":{"cluster":"tollgate-sync"},"max_keys":16,"tiers":[
        {"name":"user","identity":{"header":"x-user-id"},
         "limits":[{"requests":100,"per":"minute"},{"requests":1000,"per":"hour"}]}]}"#;

    fn setup() -> (Policy, MemoryStore) {
        let p = Policy::from_json(POLICY).unwrap();
        let mut s = MemoryStore::new();
        p.init_store(&mut s).unwrap();
        (p, s)
    }

    /// Sends `n` requests for `user`; returns the last decision's remaining per limit.
    fn send(p: &Policy, s: &mut MemoryStore, user: &str, n: u32, now: Nanos) -> Vec<u64> {
        let h: HeaderList = [("x-user-id", user)].into_iter().collect();
        let mut last = Vec::new();
        for _ in 0..n {
            match p.check(&h, now, s) {
                Outcome::Decided { decision, .. } => {
                    last = decision.limits.iter().map(|l| l.remaining).collect()
                }
                other => panic!("{other:?}"),
            }
        }
        last
    }

    fn answer(resets: &[Nanos]) -> Vec<u8> {
        RateLimitResponse {
            overall_code: 1,
            statuses: resets
                .iter()
                .map(|r| DescriptorStatus {
                    code: 1,
                    current_limit: None,
                    limit_remaining: 0,
                    duration_until_reset: Some(Duration {
                        seconds: (r.0 / 1_000_000_000) as i64,
                        nanos: (r.0 % 1_000_000_000) as i32,
                    }),
                })
                .collect(),
        }
        .encode_to_vec()
    }

    #[test]
    fn a_round_sends_the_deltas_and_the_next_request_sees_the_global_state() {
        let (p, mut s) = setup();
        assert_eq!(send(&p, &mut s, "alice", 10, T0), [90, 990]);
        let key = BucketKey::limits(&p, 0, b"alice").unwrap();
        let mut ledger = Ledger::new(100);
        ledger.record(key, 10);
        let round = Round::new(&p, ledger.take(100));
        assert_eq!(round.descriptors(), 2, "one per limit");
        assert_eq!(round.request.domain, "tollgate");
        let hits: Vec<u64> = round
            .request
            .descriptors
            .iter()
            .map(|d| d.hits_addend.map_or(0, |h| h.value))
            .collect();
        assert_eq!(hits, [10, 10]);
        // Globally 40 of the minute's and 400 of the hour's were taken (other replicas too).
        let folded = round
            .fold(&p, &answer(&[secs(24.0), secs(1_440.0)]), T0, &mut s)
            .unwrap();
        assert_eq!(
            folded,
            Folded {
                keys: 1,
                changed: 1,
                overshoot: 0,
                failed: 0
            }
        );
        assert_eq!(send(&p, &mut s, "alice", 1, T0), [59, 599]);
        assert_eq!(
            send(&p, &mut s, "bob", 1, T0),
            [99, 999],
            "other keys untouched"
        );
    }

    #[test]
    fn a_reply_for_a_key_the_table_no_longer_holds_gives_it_a_way_with_the_global_state() {
        let (p, mut s) = setup();
        // Carol never came here (or her way was reclaimed): other replicas took 99.
        let key = BucketKey::limits(&p, 0, b"carol").unwrap();
        let mut ledger = Ledger::new(100);
        ledger.record(key, 1);
        let round = Round::new(&p, ledger.take(100));
        let folded = round
            .fold(&p, &answer(&[secs(59.4), secs(356.4)]), T0, &mut s)
            .unwrap();
        assert_eq!(folded.changed, 1);
        assert_eq!(send(&p, &mut s, "carol", 1, T0), [0, 900]);
        let h: HeaderList = [("x-user-id", "carol")].into_iter().collect();
        let Outcome::Decided { decision, .. } = p.check(&h, T0, &mut s) else {
            panic!()
        };
        assert!(!decision.allowed);
    }

    #[test]
    fn a_round_id_rides_on_the_first_descriptor_only_and_is_replaced_not_repeated() {
        let (p, _) = setup();
        let alice = BucketKey::limits(&p, 0, b"alice").unwrap();
        let bob = BucketKey::limits(&p, 0, b"bob").unwrap();
        let mut round = Round::new(&p, vec![(alice, Delta::cells(1)), (bob, Delta::cells(2))]);
        assert_eq!(round.id(), None);
        round.set_id("00000000000000ab-1");
        round.set_id("00000000000000ab-2");
        assert_eq!(round.id(), Some("00000000000000ab-2"));
        let tagged: Vec<usize> = round
            .request
            .descriptors
            .iter()
            .map(|d| d.entries.iter().filter(|e| e.key == ROUND).count())
            .collect();
        assert_eq!(tagged, [1, 0, 0, 0], "one entry, on the first descriptor");
        // The id is not a bucket: the descriptors' other entries are as before.
        let plain = Round::new(&p, vec![(alice, Delta::cells(1)), (bob, Delta::cells(2))]);
        for (a, b) in round
            .request
            .descriptors
            .iter()
            .zip(&plain.request.descriptors)
        {
            let kept: Vec<_> = a.entries.iter().filter(|e| e.key != ROUND).collect();
            assert_eq!(kept, b.entries.iter().collect::<Vec<_>>());
        }
        let mut empty = Round::new(&p, Vec::new());
        empty.set_id("x");
        assert_eq!(empty.id(), None);
    }

    #[test]
    fn an_answer_in_debt_is_observed_as_overshoot() {
        let (p, mut s) = setup();
        let key = BucketKey::limits(&p, 0, b"dave").unwrap();
        let round = Round::new(&p, vec![(key, Delta::cells(1))]);
        let folded = round
            .fold(&p, &answer(&[secs(63.0), secs(10.0)]), T0, &mut s)
            .unwrap();
        assert_eq!(
            folded.overshoot, 5,
            "3 s beyond a 60 s window at 0.6 s a cell"
        );
    }

    #[test]
    fn a_wrong_answer_folds_nothing() {
        let (p, mut s) = setup();
        let key = BucketKey::limits(&p, 0, b"erin").unwrap();
        let round = Round::new(&p, vec![(key, Delta::cells(1))]);
        assert_eq!(
            round.fold(&p, &answer(&[secs(59.0)]), T0, &mut s),
            Err(AnswerError::Statuses { sent: 2, got: 1 })
        );
        let mut over =
            RateLimitResponse::decode(answer(&[secs(1.0), secs(1.0)]).as_slice()).unwrap();
        over.statuses[1].code = 2;
        assert_eq!(
            round.fold(&p, &over.encode_to_vec(), T0, &mut s),
            Err(AnswerError::NotSync { index: 1 })
        );
        assert_eq!(
            round.fold(&p, b"\xff\xff", T0, &mut s),
            Err(AnswerError::Decode)
        );
        assert_eq!(
            send(&p, &mut s, "erin", 1, T0),
            [99, 999],
            "nothing was folded"
        );
    }

    #[test]
    fn keys_of_tiers_the_policy_no_longer_has_are_left_out() {
        let (p, _) = setup();
        let gone = BucketKey {
            tier: 5,
            table: TableId::Limits,
            set: 0,
            fingerprint: 1,
        };
        let round = Round::new(&p, vec![(gone, Delta::cells(3))]);
        assert_eq!((round.descriptors(), round.batch.len()), (0, 0));
    }
}

/// Sync mode across replicas, simulated with the real arithmetic: each replica decides with its
/// own table (`Policy::check`), records what it admitted, and every interval sends what it
/// recorded up to its previous tick (the filter's worst case: a worker's deltas reach the queue
/// at its next tick and go out with the lease holder's next round) to a service that applies
/// them as tollgate-sync does (`Rate::charge` on one global state) and answers the time until
/// full, which the replica folds in. Measures the most one user got over any window beyond what
/// one exact bucket allows (burst + rate × window).
#[cfg(test)]
mod bound {
    use alloc::collections::BTreeMap;
    use alloc::format;
    use alloc::string::String;
    use alloc::vec::Vec;

    use super::*;
    use crate::global::ledger::Ledger;
    use crate::global::proto::{DescriptorStatus, Duration};
    use crate::policy::Outcome;
    use crate::request::HeaderList;
    use crate::store::MemoryStore;

    const T0: u64 = 1_700_000_000_000_000_000;
    const MS: u64 = 1_000_000;

    struct Replica {
        policy: Policy,
        store: MemoryStore,
        recorded: Ledger,
        queued: Vec<(BucketKey, crate::global::ledger::Delta)>,
        next_tick: u64,
    }

    /// Runs `replicas` for `secs` seconds, each offering one request every `every_ms`; returns
    /// the largest excess over any window, in cells.
    fn simulate(replicas: usize, interval_ms: u64, every_ms: u64, secs: u64) -> i64 {
        let text = format!(
            r#"{{"global":{{"cluster":"c","sync_interval_ms":{interval_ms}}},"tiers":[
            {{"name":"u","identity":{{"header":"x-user-id"}},
              "limits":[{{"requests":100,"per":"minute"}}]}}]}}"#
        );
        let mut all: Vec<Replica> = (0..replicas)
            .map(|r| {
                let policy = Policy::from_json(text.as_bytes()).unwrap();
                let mut store = MemoryStore::new();
                policy.init_store(&mut store).unwrap();
                Replica {
                    policy,
                    store,
                    recorded: Ledger::new(1000),
                    queued: Vec::new(),
                    next_tick: T0 + interval_ms * MS * (r as u64 + 1) / replicas as u64,
                }
            })
            .collect();
        let rate = all[0].policy.tiers()[0].limits[0].rate;
        let mut global: BTreeMap<String, Tat> = BTreeMap::new();
        let headers: HeaderList = [("x-user-id", "alice")].into_iter().collect();
        let key = BucketKey::limits(&all[0].policy, 0, b"alice").unwrap();
        let mut admitted_at: Vec<u64> = Vec::new();
        let step = every_ms * MS;
        let mut now = T0;
        while now < T0 + secs * 1_000_000_000 {
            for (r, rep) in all.iter_mut().enumerate() {
                if now >= rep.next_tick {
                    rep.next_tick += interval_ms * MS;
                    let batch = core::mem::replace(&mut rep.queued, rep.recorded.take(usize::MAX));
                    if !batch.is_empty() {
                        let round = Round::new(&rep.policy, batch);
                        let statuses = round
                            .request
                            .descriptors
                            .iter()
                            .map(|d| {
                                let id = format!("{:?}", d.entries);
                                let hits = d.hits_addend.map_or(0, |h| h.value);
                                let tat = global.entry(id).or_default();
                                *tat = rate.charge(*tat, Nanos(now), hits);
                                let reset = rate.peek(*tat, Nanos(now)).reset_after;
                                DescriptorStatus {
                                    code: 1,
                                    current_limit: None,
                                    limit_remaining: 0,
                                    duration_until_reset: Some(Duration {
                                        seconds: (reset.0 / 1_000_000_000) as i64,
                                        nanos: (reset.0 % 1_000_000_000) as i32,
                                    }),
                                }
                            })
                            .collect();
                        let answer = RateLimitResponse {
                            overall_code: 1,
                            statuses,
                        };
                        round
                            .fold(
                                &rep.policy,
                                &answer.encode_to_vec(),
                                Nanos(now),
                                &mut rep.store,
                            )
                            .unwrap();
                    }
                }
                // Replicas offer their requests at staggered instants within the step.
                let at = now + step * r as u64 / replicas as u64;
                if let Outcome::Decided { decision, .. } =
                    rep.policy.check(&headers, Nanos(at), &mut rep.store)
                {
                    if decision.allowed {
                        rep.recorded.record(key, 1);
                        admitted_at.push(at);
                    }
                }
            }
            now += step;
        }
        admitted_at.sort_unstable();
        // Largest A(t2) - A(t1) - (burst + rate × (t2 - t1)) over windows [t1, t2].
        let per_ns = 100.0 / 60e9;
        let mut best = f64::MIN;
        let mut lowest = f64::MAX; // min over t1 of (admitted before t1) - rate × t1
        for (i, t) in admitted_at.iter().enumerate() {
            let t = (*t - T0) as f64;
            lowest = lowest.min(i as f64 - per_ns * t);
            best = best.max((i + 1) as f64 - per_ns * t - lowest - 100.0);
        }
        best.floor() as i64
    }

    #[test]
    fn sync_mode_overshoot_stays_within_the_documented_bound() {
        let mut report = String::new();
        for (replicas, interval_ms) in [(1, 1000), (2, 1000), (4, 1000), (2, 5000), (4, 200)] {
            let measured = simulate(replicas, interval_ms, 10, 300);
            // (replicas − 1) × (burst + rate × lag), lag = 2 intervals (see above).
            let lag_cells = (100 * 2 * interval_ms).div_ceil(60_000) as i64;
            let bound = (replicas as i64 - 1) * (100 + lag_cells);
            report.push_str(&format!(
                "{replicas} replicas, sync every {interval_ms} ms: {measured} over (bound {bound})\n"
            ));
            assert!(measured <= bound, "{report}");
            if replicas == 1 {
                assert!(measured <= 0, "one replica is exact: {report}");
            }
        }
        std::println!("{report}");
    }
}
