//! Scopes on global tiers: which buckets a request of a scoped tier counts in, and how each is
//! named on the wire (README "Scopes", "Global mode").
//!
//! Locally, a tier's unscoped request limits share the tier's table (one cell per unscoped
//! limit), and each scoped limit has a table of its own, keyed by the scope's source and
//! identity ([`crate::scope`]). Globally each of those buckets is its own descriptor: the tier's
//! table is [`TableId::Limits`] (its cells are the unscoped limits only), a scoped limit's is
//! [`TableId::ScopedLimit`]. A scoped token budget already has its own table, keyed by the
//! scope, so its holds name its bucket as any budget's do.
//!
//! A scoped bucket's descriptor carries a `scope` entry (the scope's label: `x-team-id`,
//! `shared`, …) beside `tier`, `limit` (or `budget`) and `id`, and its `id` is the fingerprint of
//! the scoped key (the scope's source and identity, hashed with the policy's seed), never the raw
//! identity: a team `alice` and a user `alice` are two Redis keys, as they are two local buckets.

use alloc::vec::Vec;

use crate::global::descriptor::{BucketKey, TableId};
use crate::hash::Slot;
use crate::policy::Policy;
use crate::scope::CallerRef;
use crate::tier::Tier;

/// The limits whose cells `table` of `tier` holds, in cell order (limit indices into
/// [`Tier::limits`]): the tier's own table holds its unscoped limits, a scoped limit's table
/// that limit alone, a budget's table no request limit.
pub fn table_limits(tier: &Tier, table: TableId) -> Vec<usize> {
    match table {
        TableId::Limits => (0..tier.limits.len())
            .filter(|i| !is_scoped(tier, *i))
            .collect(),
        TableId::ScopedLimit(i) => {
            let i = usize::from(i);
            if is_scoped(tier, i) {
                alloc::vec![i]
            } else {
                Vec::new()
            }
        }
        TableId::Budget(_) => Vec::new(),
    }
}

/// Whether the tier's limit number `limit` counts against a scope of its own.
pub fn is_scoped(tier: &Tier, limit: usize) -> bool {
    matches!(tier.scoping.limits.get(limit), Some(Some(_)))
}

/// The label of the scope `table` of `tier` counts against (a scoped limit's or a scoped
/// budget's), `None` for the tier's own identity.
pub fn scope_label(tier: &Tier, table: TableId) -> Option<&str> {
    let scoping = &tier.scoping;
    let scope = match table {
        TableId::Limits => return None,
        TableId::ScopedLimit(i) => scoping.limits.get(usize::from(i))?.as_ref()?.using.scope,
        TableId::Budget(b) => scoping.budgets.get(usize::from(b))?.as_ref()?.scope,
    };
    scoping.scopes.get(scope).map(|s| s.label.as_str())
}

/// The slot of `caller`'s bucket of the scoped limit number `limit` of `tier`: the one
/// [`crate::scope::check_scoped`] decides in. `None` when the limit is not scoped or the caller
/// has no identity in its scope (skipped).
pub fn scoped_limit_slot(
    policy: &Policy,
    tier: &Tier,
    limit: usize,
    caller: CallerRef<'_>,
) -> Option<Slot> {
    let ls = tier.scoping.limits.get(limit)?.as_ref()?;
    let scope = tier.scoping.scopes.get(ls.using.scope)?;
    let id = caller.scopes.get(ls.using.scope)?.as_deref()?;
    let [a, b, c] = scope.key(id);
    Some(
        policy
            .seed()
            .slot(&[tier.name.as_bytes(), a, b, c], ls.table.sets()),
    )
}

/// Every bucket of request limits the request of `caller` counts in on tier number `tier`: the
/// tier's own table (when it has an unscoped limit) and each scoped limit whose scope the caller
/// has (a skipped scope counts nowhere). What a sync round records and a strict check asks.
pub fn limit_keys(policy: &Policy, tier: usize, caller: CallerRef<'_>) -> Vec<BucketKey> {
    let Some(t) = policy.tiers().get(tier) else {
        return Vec::new();
    };
    let mut keys = Vec::new();
    if !table_limits(t, TableId::Limits).is_empty() {
        keys.extend(BucketKey::limits(policy, tier, caller.id));
    }
    for limit in 0..t.limits.len() {
        let (Ok(index), Some(slot)) = (
            u8::try_from(limit),
            scoped_limit_slot(policy, t, limit, caller),
        ) else {
            continue;
        };
        keys.push(BucketKey::new(tier, TableId::ScopedLimit(index), slot));
    }
    keys
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use alloc::string::String;
    use alloc::vec;

    use prost::Message;

    use super::*;
    use crate::budget::Amount;
    use crate::global::descriptor::{self, describe, Op};
    use crate::global::fold::Round;
    use crate::global::ledger::{self, Ledger};
    use crate::global::proto::{Code, DescriptorStatus, Duration, RateLimitRequest};
    use crate::global::strict::{self, tests::answer, tests::status, Verdict};
    use crate::global::strict_tokens;
    use crate::policy::{Outcome, TokenOutcome};
    use crate::request::HeaderList;
    use crate::scope::Caller;
    use crate::store::MemoryStore;
    use crate::time::Nanos;

    const T0: Nanos = Nanos(1_700_000_000_000_000_000);

    /// One global tier: each user 10 requests a minute, each team (`x-team-id`) 3, and a token
    /// budget shared by the whole organisation; `on_missing` is spliced into the team limit.
    fn policy(mode: &str, on_missing: &str) -> Policy {
        let text = alloc::format!(
            r#"{{"global":{{"cluster":"rls","mode":"{mode}","domain":"api"}},
              "tiers":[{{"name":"members","identity":{{"header":"x-user-id"}},
                "limits":[{{"requests":10,"per":"minute","name":"user"}},
                          {{"requests":3,"per":"minute","name":"team",
                            "scope":{{"header":"x-team-id"}}{on_missing}}}]}},
                {{"name":"llm","match":{{"headers":[{{"name":"x-llm","present":true}}]}},
                  "identity":{{"header":"x-user-id"}},
                  "tokens":[{{"tokens":1000,"per":"hour","name":"user-tokens"}},
                            {{"tokens":5000,"per":"day","name":"org-tokens","scope":"shared"}}]}}]}}"#
        );
        Policy::from_json(text.as_bytes()).unwrap()
    }

    fn caller(user: &str, team: Option<&str>) -> Caller {
        Caller {
            id: user.as_bytes().to_vec().into(),
            scopes: vec![team.map(|t| t.as_bytes().to_vec())],
        }
    }

    fn headers(user: &str, team: Option<&str>) -> HeaderList {
        let mut h = vec![("x-user-id", user)];
        h.extend(team.map(|t| ("x-team-id", t)));
        h.into_iter().collect()
    }

    /// Each entry of a descriptor as `key=value`.
    fn entries(d: &crate::global::proto::RateLimitDescriptor) -> Vec<String> {
        d.entries
            .iter()
            .map(|e| alloc::format!("{}={}", e.key, e.value))
            .collect()
    }

    #[test]
    fn a_user_limit_and_a_team_limit_are_two_buckets_and_two_descriptors() {
        let p = policy("sync", "");
        let keys = limit_keys(&p, 0, (&caller("alice", Some("alice"))).into());
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].table, TableId::Limits);
        assert_eq!(keys[1].table, TableId::ScopedLimit(1));
        // The tier's table holds the user limit only; the team's its own.
        let user = describe(&p, &keys[0], Op::Sync, 1);
        let team = describe(&p, &keys[1], Op::Sync, 1);
        assert_eq!((user.len(), team.len()), (1, 1));
        assert_eq!((user[0].cell, team[0].cell), (0, 0));
        let (u, t) = (entries(&user[0].descriptor), entries(&team[0].descriptor));
        assert_eq!(&u[..2], ["tier=members", "limit=user"]);
        assert_eq!(&t[..3], ["tier=members", "limit=team", "scope=x-team-id"]);
        assert_eq!(
            t[3],
            alloc::format!("id={}", descriptor::hex(keys[1].fingerprint))
        );
        // A team called `alice` is not the user `alice`: another id, and no raw identity.
        assert_ne!(keys[0].fingerprint, keys[1].fingerprint);
        assert!(u.iter().chain(&t).all(|e| !e.contains("alice")));
        // Teammates share the team's bucket; another team has its own.
        let bob = limit_keys(&p, 0, (&caller("bob", Some("alice"))).into());
        let carol = limit_keys(&p, 0, (&caller("carol", Some("blue"))).into());
        assert_eq!(bob[1], keys[1]);
        assert_ne!(carol[1], keys[1]);
        // The slot is the one the local check decides in.
        let t = &p.tiers()[0];
        let [a, b, c] = t.scoping.scopes[0].key(b"alice");
        let local = p.seed().slot(
            &[b"members", a, b, c],
            t.scoping.limits[1].as_ref().unwrap().table.sets(),
        );
        assert_eq!(keys[1].slot(), local);
    }

    #[test]
    fn a_shared_budget_names_its_one_bucket_with_its_scope() {
        let p = policy("strict", "");
        let tier = &p.tiers()[1];
        let mut s = MemoryStore::new();
        p.init_store(&mut s).unwrap();
        let holds = |user: &str, s: &mut MemoryStore| {
            let c = Caller {
                id: user.as_bytes().to_vec().into(),
                scopes: vec![Some(Vec::new())],
            };
            match p.admit_tokens(tier, &c, None, Amount::tokens(100), T0, s) {
                TokenOutcome::Admitted { reservation, .. } => reservation.holds,
                other => panic!("{other:?}"),
            }
        };
        let (alice, bob) = (holds("alice", &mut s), holds("bob", &mut s));
        let check = strict_tokens::check(&p, 1, &alice, None).unwrap();
        let request = RateLimitRequest::decode(check.message.as_slice()).unwrap();
        let org = entries(&request.descriptors[1]);
        assert_eq!(&org[..3], ["tier=llm", "budget=org-tokens", "scope=shared"]);
        assert!(entries(&request.descriptors[0])
            .iter()
            .all(|e| !e.starts_with("scope=")));
        // One organisation, one bucket: Bob's org hold names the same key as Alice's.
        let bob_check = strict_tokens::check(&p, 1, &bob, None).unwrap();
        assert_eq!(bob_check.held[1].key, check.held[1].key);
        assert_ne!(bob_check.held[0].key, check.held[0].key);
    }

    #[test]
    fn a_team_spend_budget_is_global_in_micro_units_under_its_scope() {
        // $2 a day per team, in micro-units per day: within what the protocol carries.
        let p = Policy::from_json(
            br#"{"global":{"cluster":"rls","mode":"sync"},
                "prices":{"currency":"USD","models":[{"model":"m","input":"1","output":"1"}]},
                "tiers":[{"name":"llm","identity":{"header":"x-user-id"},
                  "tokens":[{"spend":"2","per":"day","name":"team-spend",
                             "scope":{"header":"x-team-id"}}]}]}"#,
        )
        .unwrap();
        let tier = &p.tiers()[0];
        let mut s = MemoryStore::new();
        p.init_store(&mut s).unwrap();
        let c = caller("alice", Some("red"));
        let holds = match p.admit_tokens(tier, &c, None, Amount::tokens(100), T0, &mut s) {
            TokenOutcome::Admitted { reservation, .. } => reservation.holds,
            other => panic!("{other:?}"),
        };
        let key = BucketKey::new(0, TableId::Budget(0), holds[0].slot);
        let d = describe(&p, &key, Op::Sync, 1);
        assert_eq!(d.len(), 1);
        let e = entries(&d[0].descriptor);
        assert_eq!(
            &e[..3],
            ["tier=llm", "budget=team-spend", "scope=x-team-id"]
        );
        assert_eq!(
            d[0].descriptor.limit.map(|l| l.requests_per_unit),
            Some(2_000_000)
        );
        // A teammate's hold names the same bucket.
        let bob = caller("bob", Some("red"));
        let TokenOutcome::Admitted { reservation, .. } =
            p.admit_tokens(tier, &bob, None, Amount::tokens(100), T0, &mut s)
        else {
            panic!("bob")
        };
        assert_eq!(reservation.holds[0].slot, holds[0].slot);
    }

    #[test]
    fn strict_asks_every_scope_and_the_team_refuses_for_all_its_members() {
        let p = policy("strict", "");
        let mut s = MemoryStore::new();
        p.init_store(&mut s).unwrap();
        let (tier, alice) = strict::select(&p, &headers("alice", Some("red"))).unwrap();
        assert_eq!((tier, &alice), (0, &caller("alice", Some("red"))));
        let c = strict::check(&p, 0, &alice, 1).unwrap();
        let request = RateLimitRequest::decode(c.message.as_slice()).unwrap();
        assert_eq!(
            request.descriptors.len(),
            2,
            "the user's bucket and the team's"
        );
        assert!(entries(&request.descriptors[1]).contains(&String::from("scope=x-team-id")));
        // Other replicas spent the team's 3: over limit there, the user has room.
        let body = answer(
            Code::OverLimit as i32,
            vec![status(1, 9, 6_000), status(2, 0, 60_000)],
        );
        let Verdict::Refuse(d) = strict::verdict(&c, &body, T0) else {
            panic!("not refused")
        };
        assert_eq!(d.decisive, 1, "the team decides: {d:?}");
        assert_eq!(d.retry_after(), Some(Nanos(20_000_000_000)));
        assert!(d.limits[0].allowed && !d.limits[1].allowed);
        // Folded into the team's local bucket: a teammate on this Envoy, decided locally (the
        // `local` fallback), is refused by the team; a member of another team is not.
        strict::fold(&p, &c, &d, T0, &mut s).unwrap();
        let local = |user: &str, team: &str, s: &mut MemoryStore| match p.check(
            &headers(user, Some(team)),
            T0,
            s,
        ) {
            Outcome::Decided { decision, .. } => decision,
            other => panic!("{other:?}"),
        };
        let bob = local("bob", "red", &mut s);
        assert!(!bob.allowed);
        assert_eq!(bob.decisive, 1);
        assert!(local("carol", "blue", &mut s).allowed);
    }

    #[test]
    fn a_missing_team_is_refused_locally_or_skipped_as_the_limit_says() {
        // Refuse (the default): no check; `Policy::check` answers 400 before counting.
        let p = policy("strict", "");
        assert_eq!(strict::select(&p, &headers("alice", None)), None);
        let mut s = MemoryStore::new();
        p.init_store(&mut s).unwrap();
        assert!(matches!(
            p.check(&headers("alice", None), T0, &mut s),
            Outcome::MissingScope { .. }
        ));
        // Skip: only the user's bucket is asked, and the team limit shows untouched.
        let p = policy("strict", r#","on_missing":"skip""#);
        let (tier, alice) = strict::select(&p, &headers("alice", None)).unwrap();
        assert_eq!(limit_keys(&p, tier, (&alice).into()).len(), 1);
        let c = strict::check(&p, tier, &alice, 1).unwrap();
        assert_eq!(c.cells.len(), 1);
        let body = answer(Code::Ok as i32, vec![status(1, 4, 36_000)]);
        let Verdict::Admit(d) = strict::verdict(&c, &body, T0) else {
            panic!("not admitted")
        };
        assert_eq!(d.limits.len(), 2, "named as the tier's limits");
        assert_eq!((d.limits[0].remaining, d.limits[1].remaining), (4, 3));
        assert_eq!(d.decisive, 1, "the fewest left");
        // In sync mode, a skipped scope records nothing.
        let p = policy("sync", r#","on_missing":"skip""#);
        assert_eq!(limit_keys(&p, 0, (&caller("a", None)).into()).len(), 1);
    }

    #[test]
    fn a_sync_round_carries_the_team_bucket_and_folds_it_for_every_member() {
        let p = policy("sync", "");
        let mut s = MemoryStore::new();
        p.init_store(&mut s).unwrap();
        let Outcome::Decided { caller, .. } = p.check(&headers("alice", Some("red")), T0, &mut s)
        else {
            panic!("undecided")
        };
        let mut ledger = Ledger::new(100);
        for key in limit_keys(&p, 0, (&caller).into()) {
            ledger.record(key, 1);
        }
        let batch = ledger.take(100);
        // The queue between workers keeps the scoped table.
        assert_eq!(ledger::decode(&ledger::encode(&batch)).unwrap(), batch);
        let round = Round::new(&p, batch);
        assert_eq!(round.descriptors(), 2);
        let team: Vec<_> = round
            .request
            .descriptors
            .iter()
            .map(entries)
            .filter(|e| e.contains(&String::from("scope=x-team-id")))
            .collect();
        assert_eq!(team.len(), 1);
        assert!(team[0].contains(&String::from("tollgate.op=sync")));
        // Other replicas' members spent the rest of the team's 3: full again in 60 s.
        let full_in = |secs: i64| DescriptorStatus {
            code: Code::Ok as i32,
            current_limit: None,
            limit_remaining: 0,
            duration_until_reset: Some(Duration {
                seconds: secs,
                nanos: 0,
            }),
        };
        let body = answer(Code::Ok as i32, vec![full_in(6), full_in(60)]);
        let folded = round.fold(&p, &body, T0, &mut s).unwrap();
        assert_eq!(folded.keys, 2);
        let d = match p.check(&headers("bob", Some("red")), T0, &mut s) {
            Outcome::Decided { decision, .. } => decision,
            other => panic!("{other:?}"),
        };
        assert!(!d.allowed, "the team is spent globally: {d:?}");
        assert_eq!((d.decisive, d.limits[0].remaining), (1, 10));
    }
}
