//! Scopes: one request counted against several identities at once.
//!
//! A tier's identity says whom its limits count by default (the user). A limit or token budget
//! may instead count against a *scope* of its own — the team in `x-team-id`, the organisation in
//! a verified JWT claim, the whole tier (`"shared"`), the client address — so "each user 100k
//! tokens a day, each team 1M, the whole organisation 500k requests a month" is one tier. Every
//! scope that applies must admit the request: the request limits are taken all-or-nothing across
//! the scopes' tables (a refusal anywhere gives back what was taken elsewhere), and token budgets
//! already are (see [`crate::policy::Policy::admit_tokens`]).
//!
//! A scope's buckets never meet the user buckets: each scoped limit or budget has a table of its
//! own, and its key is hashed with the scope's source (`header:x-team-id`), so a team called
//! `alice` is not the user `alice`, nor the organisation `alice`.
//!
//! A request without a scope's identity is refused (400, `missing_scope`) unless the limit says
//! `"on_missing": "skip"`; there is no default that silently means unlimited.

use alloc::string::String;
use alloc::vec::Vec;

use crate::bucket::Tat;
use crate::decision::{Decision, LimitStatus};
use crate::hash::{Seed, Slot};
use crate::id::Id;
use crate::identity::{IdentityError, IdentitySource};
use crate::request::Attributes;
use crate::store::Store;
use crate::table::{Placement, Table, TableError, Update};
use crate::tier::Tier;
use crate::time::Nanos;

/// What a limit or budget does with a request that does not carry its scope's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnMissing {
    /// Refuse the request with 400 (`missing_scope`): the default, so a forgotten header is a
    /// visible error, not a limit that silently stopped counting.
    #[default]
    Refuse,
    /// Leave this limit out for that request (the other scopes still count it).
    Skip,
}

/// One identity source a tier's limits or budgets count against, besides the tier's own.
#[derive(Debug)]
pub struct Scope {
    /// Where the identity is read.
    pub source: IdentitySource,
    /// The scope's name in access-log records (`scope.<label>=…`): the header name, the last
    /// key of the metadata path, `shared` or `client_address`.
    pub label: String,
    /// The source as bytes, hashed into every key of this scope.
    tag: Vec<u8>,
}

impl Scope {
    /// A scope reading `source`.
    pub fn new(source: IdentitySource) -> Scope {
        let (label, tag) = match &source {
            IdentitySource::Header {
                name,
                case_sensitive,
            } => (
                name.clone(),
                alloc::format!("header:{name}:{}", u8::from(*case_sensitive)),
            ),
            IdentitySource::Metadata { filter, path } => (
                path.last().cloned().unwrap_or_default(),
                alloc::format!("metadata:{filter}:{}", path.join("\u{0}")),
            ),
            IdentitySource::Shared => (String::from("shared"), String::from("shared")),
            IdentitySource::ClientAddress => (
                String::from("client_address"),
                String::from("client_address"),
            ),
        };
        let label = label
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        Scope {
            source,
            label,
            tag: tag.into_bytes(),
        }
    }

    /// The key parts of identity `id` in this scope: the source is part of the key, so the same
    /// value in another scope (or as the tier's own identity) is another key.
    pub fn key<'a>(&'a self, id: &'a [u8]) -> [&'a [u8]; 3] {
        [b"scope", &self.tag, id]
    }
}

/// Which scope a limit or budget counts against, and what a request without it gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScopeUse {
    /// Index into [`Scoping::scopes`].
    pub scope: usize,
    /// A request without the scope's identity.
    pub on_missing: OnMissing,
}

/// A request limit counted against a scope: its use and its own table (one state a way).
#[derive(Debug)]
pub struct LimitScope {
    /// The scope.
    pub using: ScopeUse,
    /// Where its buckets live.
    pub table: Table,
}

/// The scopes of a tier. Empty (the default) when every limit counts the tier's identity.
#[derive(Debug, Default)]
pub struct Scoping {
    /// The distinct scopes the tier's limits and budgets use.
    pub scopes: Vec<Scope>,
    /// Aligned with [`Tier::limits`] (empty when no limit is scoped): `None` counts the tier's
    /// identity, in the tier's table.
    pub limits: Vec<Option<LimitScope>>,
    /// Aligned with [`Tier::budgets`] (empty when no budget is scoped).
    pub budgets: Vec<Option<ScopeUse>>,
}

/// A request that lacks an identity a limit of its tier refuses without.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingScope {
    /// What the request must carry (`header x-team-id`, `metadata …`).
    pub needs: String,
}

impl core::fmt::Display for MissingScope {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "this request must carry {} (a limit of its tier counts against it)",
            self.needs
        )
    }
}

/// One request's identity in each scope of its tier (`None`: absent, skipped).
pub type ScopeIds = Vec<Option<Vec<u8>>>;

/// Who one request is: the tier's identity and, per scope of the tier, the scope's identity
/// (`None` when the request carries none and every use of the scope skips it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    /// The tier's identity (in place when short: see [`Id`]).
    pub id: Id,
    /// Aligned with [`Scoping::scopes`].
    pub scopes: Vec<Option<Vec<u8>>>,
}

impl From<Vec<u8>> for Caller {
    fn from(id: Vec<u8>) -> Caller {
        Caller {
            id: Id::from(id),
            scopes: Vec::new(),
        }
    }
}

/// A borrowed [`Caller`], which the token-budget calls take: a bare identity (`&[u8]`, a
/// `&Vec<u8>`, a literal) is a caller with no scopes.
#[derive(Clone, Copy, Debug)]
pub struct CallerRef<'a> {
    /// The tier's identity.
    pub id: &'a [u8],
    /// Aligned with [`Scoping::scopes`] (empty: no scope known).
    pub scopes: &'a [Option<Vec<u8>>],
}

impl<'a> From<&'a Caller> for CallerRef<'a> {
    fn from(c: &'a Caller) -> CallerRef<'a> {
        CallerRef {
            id: &c.id,
            scopes: &c.scopes,
        }
    }
}

impl<'a> From<&'a [u8]> for CallerRef<'a> {
    fn from(id: &'a [u8]) -> CallerRef<'a> {
        CallerRef { id, scopes: &[] }
    }
}

impl<'a> From<&'a Vec<u8>> for CallerRef<'a> {
    fn from(id: &'a Vec<u8>) -> CallerRef<'a> {
        CallerRef { id, scopes: &[] }
    }
}

impl<'a, const N: usize> From<&'a [u8; N]> for CallerRef<'a> {
    fn from(id: &'a [u8; N]) -> CallerRef<'a> {
        CallerRef { id, scopes: &[] }
    }
}

impl Scoping {
    /// Whether any limit or budget has a scope.
    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty()
    }

    /// Reads every scope's identity from the request.
    ///
    /// # Errors
    /// `Err` for a repeated scope header (ambiguous, as a tier identity would be);
    /// `Ok(Err(_))` when a scope some limit refuses without is missing.
    pub fn derive<A: Attributes>(
        &self,
        attrs: &A,
    ) -> Result<Result<ScopeIds, MissingScope>, IdentityError> {
        let mut out = Vec::with_capacity(self.scopes.len());
        for (i, scope) in self.scopes.iter().enumerate() {
            let id = scope.source.derive(attrs)?;
            if id.is_none() && self.refuses_without(i) {
                return Ok(Err(MissingScope {
                    needs: describe(&scope.source),
                }));
            }
            out.push(id);
        }
        Ok(Ok(out))
    }

    fn refuses_without(&self, scope: usize) -> bool {
        let refuse = |u: &ScopeUse| u.scope == scope && u.on_missing == OnMissing::Refuse;
        self.limits.iter().flatten().any(|l| refuse(&l.using))
            || self.budgets.iter().flatten().any(refuse)
    }

    /// The identity budget number `budget` counts against for `caller`, `None` to leave the
    /// budget out (its scope is missing and it skips). Unscoped budgets count the tier's
    /// identity; a scoped one a key that no tier identity can equal.
    pub fn budget_key(&self, budget: usize, caller: CallerRef<'_>) -> Option<Vec<u8>> {
        let Some(Some(using)) = self.budgets.get(budget) else {
            return Some(caller.id.to_vec());
        };
        let scope = self.scopes.get(using.scope)?;
        let id = caller.scopes.get(using.scope)?.as_deref()?;
        let mut key = Vec::new();
        for part in scope.key(id) {
            key.extend_from_slice(&(part.len() as u64).to_le_bytes());
            key.extend_from_slice(part);
        }
        Some(key)
    }
}

fn describe(source: &IdentitySource) -> String {
    match source {
        IdentitySource::Header { name, .. } => alloc::format!("header {name}"),
        IdentitySource::Metadata { filter, path } => {
            alloc::format!("metadata {filter}/{}", path.join("/"))
        }
        IdentitySource::Shared => String::from("nothing"),
        IdentitySource::ClientAddress => String::from("a client address"),
    }
}

/// One table's worth of a tier's request limits, for one caller: the tier's own table (every
/// unscoped limit) or a scoped limit's.
struct Group<'t> {
    table: &'t Table,
    slot: Slot,
    limits: Vec<usize>,
}

/// Decides the request limits of a tier some of whose limits are scoped: `cost` cells from every
/// limit that applies (each in its scope's table), from all of them or from none.
///
/// Tables are taken one after another; when one refuses, the rest are only checked and what was
/// taken is given back, so a refused request costs no scope anything (as with token budgets,
/// a concurrent request may briefly see the taken cells). A limit whose scope the request lacks
/// and skips shows as a full bucket.
///
/// # Errors
/// The store failed (what was taken is given back, best effort).
pub fn check_scoped<S: Store>(
    seed: &Seed,
    tier: &Tier,
    caller: &Caller,
    cost: u64,
    now: Nanos,
    store: &mut S,
) -> Result<(Decision, Placement), TableError> {
    let n = tier.limits.len();
    let scoping = &tier.scoping;
    let mut statuses: Vec<Option<LimitStatus>> = alloc::vec![None; n];
    let mut groups: Vec<Group<'_>> = Vec::new();
    let own: Vec<usize> = (0..n)
        .filter(|i| matches!(scoping.limits.get(*i), None | Some(None)))
        .collect();
    if !own.is_empty() {
        groups.push(Group {
            table: &tier.table,
            slot: seed.slot(&[tier.name.as_bytes(), &caller.id], tier.table.sets()),
            limits: own,
        });
    }
    for (i, ls) in scoping.limits.iter().enumerate() {
        let Some(ls) = ls else { continue };
        let id = caller.scopes.get(ls.using.scope).and_then(Option::as_deref);
        match (scoping.scopes.get(ls.using.scope), id) {
            (Some(scope), Some(id)) => {
                let [a, b, c] = scope.key(id);
                groups.push(Group {
                    table: &ls.table,
                    slot: seed.slot(&[tier.name.as_bytes(), a, b, c], ls.table.sets()),
                    limits: alloc::vec![i],
                });
            }
            _ => {
                // Skipped for this request: untouched, so shown as full.
                if let (Some(limit), Some(s)) = (tier.limits.get(i), statuses.get_mut(i)) {
                    *s = Some(LimitStatus::from(limit.rate.peek(Tat::default(), now)));
                }
            }
        }
    }
    let mut placement = Placement::Owned;
    let mut taken: Vec<usize> = Vec::new();
    let mut refused = false;
    for (g, group) in groups.iter().enumerate() {
        let rates: Vec<_> = group
            .limits
            .iter()
            .filter_map(|i| tier.limits.get(*i).map(|l| l.rate))
            .collect();
        let is_idle = |s: &[Tat]| rates.iter().zip(s).all(|(r, t)| r.is_full(*t, now));
        let write = !refused;
        let decide = |states: &mut [Tat], _: Placement| {
            let checks: Vec<_> = rates
                .iter()
                .enumerate()
                .map(|(j, r)| r.check(states.get(j).copied().unwrap_or_default(), now, cost))
                .collect();
            let all = checks.iter().all(|c| c.allowed);
            let shown: Vec<LimitStatus> = checks
                .iter()
                .enumerate()
                .map(|(j, c)| match (all && write, rates.get(j)) {
                    // Not taken: what is left as it stands.
                    (false, Some(r)) if c.allowed => LimitStatus {
                        allowed: true,
                        ..LimitStatus::from(r.peek(states.get(j).copied().unwrap_or_default(), now))
                    },
                    _ => LimitStatus::from(*c),
                })
                .collect();
            if all && write {
                Update::Write(checks.iter().map(|c| c.tat).collect(), (true, shown))
            } else {
                Update::Keep((all, shown))
            }
        };
        let ((all, shown), p) = match group.table.update(store, group.slot, is_idle, decide) {
            Ok(out) => out,
            Err(e) => {
                give_back(tier, &groups, &taken, cost, now, store, &mut statuses);
                return Err(e);
            }
        };
        if p == Placement::Shared {
            placement = p;
        }
        for (i, s) in group.limits.iter().zip(shown) {
            if let Some(slot) = statuses.get_mut(*i) {
                *slot = Some(s);
            }
        }
        if all && write {
            taken.push(g);
        } else if !all {
            refused = true;
        }
    }
    if refused {
        give_back(tier, &groups, &taken, cost, now, store, &mut statuses);
    }
    let limits: Vec<LimitStatus> = statuses
        .into_iter()
        .zip(&tier.limits)
        .map(|(s, l)| s.unwrap_or_else(|| LimitStatus::from(l.rate.peek(Tat::default(), now))))
        .collect();
    Ok((Decision::from_limits(limits), placement))
}

/// Gives back `cost` cells to each taken group (a later scope refused), and shows those limits
/// as they are again. Best effort: a failed give-back leaves the cells taken until they refill.
fn give_back<S: Store>(
    tier: &Tier,
    groups: &[Group<'_>],
    taken: &[usize],
    cost: u64,
    now: Nanos,
    store: &mut S,
    statuses: &mut [Option<LimitStatus>],
) {
    for group in taken.iter().filter_map(|g| groups.get(*g)) {
        let rates: Vec<_> = group
            .limits
            .iter()
            .filter_map(|i| tier.limits.get(*i).map(|l| l.rate))
            .collect();
        let is_idle = |s: &[Tat]| rates.iter().zip(s).all(|(r, t)| r.is_full(*t, now));
        let decide = |states: &mut [Tat], _: Placement| {
            let back: Vec<Tat> = rates
                .iter()
                .enumerate()
                .map(|(j, r)| r.refund(states.get(j).copied().unwrap_or_default(), cost))
                .collect();
            let shown: Vec<LimitStatus> = rates
                .iter()
                .zip(&back)
                .map(|(r, t)| LimitStatus::from(r.peek(*t, now)))
                .collect();
            Update::Write(back, shown)
        };
        if let Ok((shown, _)) = group.table.update(store, group.slot, is_idle, decide) {
            for (i, s) in group.limits.iter().zip(shown) {
                if let Some(slot) = statuses.get_mut(*i) {
                    *slot = Some(s);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use alloc::format;
    use alloc::string::ToString;

    #[cfg(not(target_arch = "wasm32"))]
    use proptest::prelude::*;

    use super::*;
    use crate::policy::{Outcome, TokenOutcome};
    use crate::request::HeaderList;
    use crate::store::MemoryStore;
    use crate::Policy;

    const T0: Nanos = Nanos(1_700_000_000_000_000_000);

    /// Each user `user` requests a minute, each team (`x-team-id`) `team`; `on_missing` is
    /// spliced into the team limit.
    fn teams(user: u64, team: u64, on_missing: &str) -> (Policy, MemoryStore) {
        let json = format!(
            r#"{{"max_keys":256,"tiers":[{{"name":"users","identity":{{"header":"x-user-id"}},
                "limits":[{{"requests":{user},"per":"minute","name":"user"}},
                          {{"requests":{team},"per":"minute","name":"team",
                            "scope":{{"header":"x-team-id"}}{on_missing}}}]}}]}}"#
        );
        let p = Policy::from_json(json.as_bytes()).unwrap();
        let mut s = MemoryStore::new();
        p.init_store(&mut s).unwrap();
        (p, s)
    }

    fn send<'p>(p: &'p Policy, s: &mut MemoryStore, user: &str, team: Option<&str>) -> Outcome<'p> {
        let mut h = alloc::vec![("x-user-id", user)];
        if let Some(t) = team {
            h.push(("x-team-id", t));
        }
        let h: HeaderList = h.into_iter().collect();
        p.check(&h, T0, s)
    }

    fn decided(o: Outcome<'_>) -> Decision {
        match o {
            Outcome::Decided { decision, .. } => decision,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_spent_team_refuses_a_user_with_room_and_takes_nothing_from_the_user() {
        let (p, mut s) = teams(10, 3, "");
        for _ in 0..3 {
            assert!(decided(send(&p, &mut s, "alice", Some("red"))).allowed);
        }
        // Bob has all 10 of his own left, but his team has none.
        let d = decided(send(&p, &mut s, "bob", Some("red")));
        assert!(!d.allowed);
        assert_eq!(d.decisive, 1, "the team limit decides: {d:?}");
        assert_eq!((d.limits[0].remaining, d.limits[1].remaining), (10, 0));
        assert!(d.limits[0].allowed && !d.limits[1].allowed);
        // Nothing was taken from Bob: in another team he still has all 10.
        for i in 0..3 {
            let d = decided(send(&p, &mut s, "bob", Some("blue")));
            assert!(d.allowed);
            assert_eq!(d.limits[0].remaining, 9 - i);
        }
        // The team stays refused together, whoever asks.
        assert!(!decided(send(&p, &mut s, "carol", Some("red"))).allowed);
        assert!(!decided(send(&p, &mut s, "carol", Some("blue"))).allowed);
    }

    #[test]
    fn a_spent_user_is_refused_while_the_team_has_room_and_the_team_keeps_it() {
        let (p, mut s) = teams(2, 5, "");
        assert!(decided(send(&p, &mut s, "alice", Some("red"))).allowed);
        assert!(decided(send(&p, &mut s, "alice", Some("red"))).allowed);
        let d = decided(send(&p, &mut s, "alice", Some("red")));
        assert!(!d.allowed);
        assert_eq!(d.decisive, 0, "the user limit decides: {d:?}");
        // The team lost nothing to the refused request: 5 - 2 = 3 left before Bob's.
        assert_eq!(d.limits[1].remaining, 3);
        let d = decided(send(&p, &mut s, "bob", Some("red")));
        assert!(d.allowed);
        assert_eq!(d.limits[1].remaining, 2);
    }

    #[test]
    fn a_missing_team_is_refused_by_default_and_skipped_when_the_limit_says_so() {
        let (p, mut s) = teams(10, 3, "");
        match send(&p, &mut s, "alice", None) {
            Outcome::MissingScope { missing, .. } => assert_eq!(
                missing.to_string(),
                "this request must carry header x-team-id (a limit of its tier counts against it)"
            ),
            other => panic!("{other:?}"),
        }
        // Refused before anything was counted: Alice still has all 10.
        assert_eq!(
            decided(send(&p, &mut s, "alice", Some("red"))).limits[0].remaining,
            9
        );
        let (p, mut s) = teams(10, 3, r#","on_missing":"refuse""#);
        assert!(matches!(
            send(&p, &mut s, "alice", None),
            Outcome::MissingScope { .. }
        ));
        let (p, mut s) = teams(10, 3, r#","on_missing":"skip""#);
        for i in 0..5 {
            // Only the user limit counts; the team's shows as untouched.
            let d = decided(send(&p, &mut s, "alice", Some("  ").filter(|_| i % 2 == 0)));
            assert!(d.allowed);
            assert_eq!((d.limits[0].remaining, d.limits[1].remaining), (9 - i, 3));
        }
        assert_eq!(
            decided(send(&p, &mut s, "bob", Some("red"))).limits[1].remaining,
            2
        );
    }

    #[test]
    fn a_repeated_team_header_is_ambiguous() {
        let (p, mut s) = teams(10, 3, r#","on_missing":"skip""#);
        let h: HeaderList = [("x-user-id", "a"), ("x-team-id", "r"), ("x-team-id", "b")]
            .into_iter()
            .collect();
        assert!(matches!(p.check(&h, T0, &mut s), Outcome::Ambiguous { .. }));
    }

    #[test]
    fn a_team_called_alice_is_not_the_user_alice() {
        // The same rate in both, so only the keys tell them apart.
        let json = br#"{"tiers":[{"name":"u","identity":{"header":"x-user-id"},
            "limits":[{"requests":2,"per":"minute","name":"user"},
                      {"requests":2,"per":"minute","name":"team","scope":{"header":"x-team-id"}},
                      {"requests":2,"per":"minute","name":"org","scope":{"header":"x-org-id"}}]}]}"#;
        let p = Policy::from_json(json).unwrap();
        let mut s = MemoryStore::new();
        p.init_store(&mut s).unwrap();
        let h: HeaderList = [
            ("x-user-id", "alice"),
            ("x-team-id", "alice"),
            ("x-org-id", "alice"),
        ]
        .into_iter()
        .collect();
        let d = decided(p.check(&h, T0, &mut s));
        assert_eq!(
            d.limits.iter().map(|l| l.remaining).collect::<Vec<_>>(),
            [1, 1, 1],
            "each counted once, in its own bucket"
        );
        let tier = &p.tiers()[0];
        let Outcome::Decided { caller, .. } = p.check(&h, T0, &mut s) else {
            panic!()
        };
        let hashes = p.scope_hashes(tier, &caller);
        assert_eq!(hashes.len(), 2);
        assert_eq!(
            (hashes[0].0.as_str(), hashes[1].0.as_str()),
            ("x-team-id", "x-org-id")
        );
        let user = p.scope_hash(tier, b"alice");
        assert!(hashes[0].1 != hashes[1].1 && hashes[0].1 != user && hashes[1].1 != user);
        // The slots differ too, by the source in the key.
        let team = &tier.scoping.scopes[0];
        let [a, b, c] = team.key(b"alice");
        assert_ne!(
            p.seed().slot(&[b"u", a, b, c], 1 << 20),
            p.seed().slot(&[b"u", b"alice"], 1 << 20)
        );
    }

    #[test]
    fn scoped_token_budgets_are_shared_by_a_team_and_apart_from_other_teams() {
        let json = br#"{"tiers":[{"name":"llm","identity":{"header":"x-user-id"},
            "tokens":[{"tokens":1000,"per":"day","name":"user"},
                      {"tokens":300,"per":"day","name":"team","scope":{"header":"x-team-id"}},
                      {"tokens":10000,"per":"day","name":"org","scope":"shared"}]}]}"#;
        let p = Policy::from_json(json).unwrap();
        let mut s = MemoryStore::new();
        p.init_store(&mut s).unwrap();
        let tier = &p.tiers()[0];
        assert_eq!(
            tier.budget_set(2).unwrap().0.table.sets(),
            1,
            "one organisation: one set"
        );
        let caller = |user: &str, team: &str| Caller {
            id: user.as_bytes().into(),
            scopes: alloc::vec![Some(team.as_bytes().to_vec()), Some(Vec::new())],
        };
        let admit = |s: &mut MemoryStore, c: &Caller| {
            p.admit_tokens(tier, c, None, crate::budget::Amount::tokens(100), T0, s)
        };
        let (alice, bob, carol) = (
            caller("alice", "red"),
            caller("bob", "red"),
            caller("carol", "blue"),
        );
        assert!(matches!(
            admit(&mut s, &alice),
            TokenOutcome::Admitted { .. }
        ));
        assert!(matches!(admit(&mut s, &bob), TokenOutcome::Admitted { .. }));
        assert!(matches!(
            admit(&mut s, &alice),
            TokenOutcome::Admitted { .. }
        ));
        // Red has spent its 300 between Alice and Bob: both refused, Carol (blue) is not.
        for c in [&alice, &bob] {
            let TokenOutcome::Denied { decision } = admit(&mut s, c) else {
                panic!("red is spent")
            };
            assert_eq!(
                decision.applied[decision.decisive], 1,
                "the team budget decides"
            );
        }
        let TokenOutcome::Admitted { decision, .. } = admit(&mut s, &carol) else {
            panic!("blue has room")
        };
        // All-or-nothing: the refusals took nothing from the users or the organisation.
        assert_eq!(
            decision
                .limits
                .iter()
                .map(|l| l.remaining)
                .collect::<Vec<_>>(),
            [900, 200, 9600]
        );
        // A team budget that skips a missing team leaves it out; the others still count.
        let no_team = Caller {
            id: b"dave"[..].into(),
            scopes: alloc::vec![None, Some(Vec::new())],
        };
        let TokenOutcome::Admitted { decision, .. } = admit(&mut s, &no_team) else {
            panic!()
        };
        assert_eq!(decision.applied, [0, 2]);
    }

    #[test]
    fn scope_config_errors_name_their_path() {
        let err = |json: &str| Policy::from_json(json.as_bytes()).unwrap_err().to_string();
        let tier = |limit: &str| {
            format!(
                r#"{{"tiers":[{{"name":"u","identity":{{"header":"x-user-id"}},"limits":[{limit}]}}]}}"#
            )
        };
        assert_eq!(
            err(&tier(
                r#"{"requests":1,"per":"minute","on_missing":"skip"}"#
            )),
            "tiers[0].limits[0].on_missing: applies only to a limit with a \"scope\""
        );
        assert!(err(&tier(
            r#"{"requests":1,"per":"minute","scope":{"header":"x-team-id"},"on_missing":"ignore"}"#
        ))
        .starts_with("tiers[0].limits[0].on_missing: "));
        assert!(err(&tier(
            r#"{"requests":1,"per":"minute","scope":{"header":"X Team"}}"#
        ))
        .starts_with("tiers[0].limits[0].scope.header: "));
        assert!(
            err(&tier(r#"{"requests":1,"per":"minute","scope":"everyone"}"#))
                .starts_with("tiers[0].limits[0].scope: ")
        );
        // Global tiers take scopes (see `global::scoped`); their rates must still be global.
        let global = r#"{"global":{"cluster":"rls"},"tiers":[{"name":"u","identity":{"header":"x-user-id"},
            "limits":[{"requests":1,"per":"minute","scope":"shared"}]}]}"#;
        assert!(Policy::from_json(global.as_bytes()).unwrap().tiers()[0].global);
        let weekly = r#"{"global":{"cluster":"rls"},"tiers":[{"name":"u","identity":{"header":"x-user-id"},
            "limits":[{"requests":1000,"per":"week","scope":"shared"}]}]}"#;
        assert!(err(weekly).starts_with("tiers[0].limits[0].requests: cannot be global"));
    }

    #[test]
    fn a_tier_without_scopes_keeps_its_table_and_layout() {
        let plain = br#"{"tiers":[{"name":"u","identity":{"header":"x-user-id"},
            "limits":[{"requests":5,"per":"second"},{"requests":7,"per":"minute"}]}]}"#;
        let scoped = br#"{"tiers":[{"name":"u","identity":{"header":"x-user-id"},
            "limits":[{"requests":5,"per":"second"},{"requests":7,"per":"minute"},
                      {"requests":9,"per":"minute","name":"t","scope":"shared"}]}]}"#;
        let (a, b) = (
            Policy::from_json(plain).unwrap(),
            Policy::from_json(scoped).unwrap(),
        );
        let (ta, tb) = (&a.tiers()[0].table, &b.tiers()[0].table);
        // The user buckets stay where they were: adding a scoped limit resets nobody's.
        assert_eq!(
            (ta.sets(), ta.set_bytes(), ta.key(3)),
            (tb.sets(), tb.set_bytes(), tb.key(3))
        );
        assert!(a.tiers()[0].scoping.is_empty());
        // The shared scope's table is one set.
        assert_eq!(b.footprint().0, a.footprint().0 + 1);
    }

    #[cfg(not(target_arch = "wasm32"))]
    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Any traffic of users across teams, within one instant (nothing refills): exactly
        /// the requests that both the user's and the team's counts allow are admitted, and a
        /// refused one takes nothing from either, as a pair of counters taken together would.
        #[test]
        fn scopes_admit_all_or_nothing(
            user in 1u64..6,
            team in 1u64..10,
            traffic in proptest::collection::vec((0usize..5, 0usize..3), 1..60),
        ) {
            let (p, mut s) = teams(user, team, "");
            let mut used_user = [0u64; 5];
            let mut used_team = [0u64; 3];
            for (u, t) in traffic {
                let (uid, tid) = (format!("u{u}"), format!("t{t}"));
                let d = decided(send(&p, &mut s, &uid, Some(&tid)));
                let fits = used_user[u] < user && used_team[t] < team;
                prop_assert_eq!(d.allowed, fits);
                if fits {
                    used_user[u] += 1;
                    used_team[t] += 1;
                }
                prop_assert_eq!(d.limits[0].remaining, user - used_user[u]);
                prop_assert_eq!(d.limits[1].remaining, team - used_team[t]);
            }
        }
    }
}

#[cfg(test)]
mod example_tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use crate::policy::Outcome;
    use crate::request::HeaderList;
    use crate::store::MemoryStore;
    use crate::tier::Enforcement;
    use crate::{Nanos, Policy};

    const TEAM: &str = include_str!("../../examples/team-policy.json");

    #[test]
    fn the_team_example_parses_with_its_scopes() {
        let p = Policy::from_json(TEAM.as_bytes()).unwrap();
        let members = &p.tiers()[1];
        let labels: alloc::vec::Vec<&str> = members
            .scoping
            .scopes
            .iter()
            .map(|s| s.label.as_str())
            .collect();
        assert_eq!(labels, ["x-team-id", "shared", "x-api-key"]);
        assert_eq!(p.tiers()[0].enforcement, Enforcement::Shadow);
        let mut s = MemoryStore::new();
        p.init_store(&mut s).unwrap();
        let now = Nanos(1_700_000_000_000_000_000);
        let ask = |h: &[(&str, &str)], s: &mut MemoryStore| {
            let h: HeaderList = h.iter().copied().collect();
            match p.check(&h, now, s) {
                Outcome::Decided { tier, decision, .. } => (tier.name.clone(), decision.allowed),
                Outcome::MissingScope { .. } => (alloc::string::String::from("missing"), false),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            ask(&[("x-user-id", "a"), ("x-team-id", "t")], &mut s),
            ("members".into(), true)
        );
        assert_eq!(
            ask(&[("x-user-id", "a")], &mut s),
            ("missing".into(), false)
        );
    }
}
