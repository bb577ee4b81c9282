//! Editing the policy keeps every caller's state unless the edit is one README says resets it.
//!
//! Envoy keeps shared data per `vm_id` for the life of the process: a new policy for the same
//! `vm_id` either reconfigures the running VMs (a new root context in the same VM) or starts new
//! VMs over the surviving shared data. Both are played here: `h.configure(new)` on the running
//! workers, and fresh workers built over `h.shared()`.

use host_tests::{Harness, Outcome};

use crate::support::tollgate;

/// `users` gives each `x-user-id` 5 per hour.
const USERS_TIER: &str = r#"{"name":"users","match":{"headers":[{"name":"x-user-id","present":true}]},
   "identity":{"header":"x-user-id"},"limits":[{"requests":5,"per":"hour"}]}"#;
const ADMINS: &str = r#"{"name":"admins","match":{"headers":[{"name":"x-admin","present":true}]},
   "identity":{"header":"x-admin"},"limits":[{"requests":50,"per":"minute"}]}"#;
const ANONYMOUS: &str =
    r#"{"name":"anonymous","identity":"shared","limits":[{"requests":10,"per":"minute"}]}"#;

/// A policy of `tiers` in this order, with `top` (e.g. `"max_keys":1024,`) spliced in front.
fn policy(top: &str, tiers: &[&str]) -> String {
    format!(r#"{{{top}"tiers":[{}]}}"#, tiers.join(","))
}

fn base() -> String {
    policy("", &[USERS_TIER, ANONYMOUS])
}

const USERS: [&str; 3] = ["alice", "bob", "carol"];

fn remaining(out: &Outcome) -> u64 {
    assert!(out.is_continue(), "expected admission, got {out:?}");
    out.header("x-ratelimit-remaining")
        .unwrap_or_else(|| panic!("no x-ratelimit-remaining in {out:?}"))
        .parse()
        .unwrap()
}

fn send(h: &Harness, worker: usize, user: &str) -> Outcome {
    h.request(worker, &[("x-user-id", user)]).unwrap()
}

/// Spends 3 of each user's 5 under `BASE`, applies `edited` both ways Envoy can, and returns the
/// `x-ratelimit-remaining` each user sees on their next request, per way.
fn after_edit(edited: &str) -> Vec<u64> {
    let mut seen = Vec::new();
    for restart in [false, true] {
        let h = Harness::new(tollgate())
            .workers(2)
            .configure(base())
            .unwrap();
        for user in USERS {
            for i in 0..3u64 {
                assert_eq!(remaining(&send(&h, (i % 2) as usize, user)), 4 - i);
            }
        }
        let h = if restart {
            Harness::new(tollgate())
                .workers(2)
                .shared(h.shared().clone())
                .configure(edited)
                .unwrap()
        } else {
            h.configure(edited).unwrap();
            h
        };
        for user in USERS {
            seen.push(remaining(&send(&h, 1, user)));
        }
    }
    seen
}

fn assert_kept(edited: &str) {
    // 3 of 5 spent before the edit, one more after: 1 left.
    assert_eq!(after_edit(edited), [1; 6], "for {edited}");
}

#[test]
fn whitespace_keeps_every_users_count() {
    assert_kept(&base().replace(',', ",\n    ").replace(':', " : "));
}

#[test]
fn an_unrelated_field_keeps_every_users_count() {
    assert_kept(&policy(
        r#""on_store_failure":"deny","#,
        &[USERS_TIER, ANONYMOUS],
    ));
    // Another tier's limits changed.
    assert_kept(&base().replace(r#""requests":10"#, r#""requests":20"#));
}

#[test]
fn an_added_tier_keeps_every_users_count() {
    assert_kept(&policy("", &[ADMINS, USERS_TIER, ANONYMOUS]));
}

#[test]
fn reordered_tiers_keep_every_users_count() {
    // `anonymous` takes every request, so it stays last; `admins` moves from last to first.
    let before = policy("", &[USERS_TIER, ADMINS, ANONYMOUS]);
    let after = policy("", &[ADMINS, USERS_TIER, ANONYMOUS]);
    let h = Harness::new(tollgate()).configure(&before).unwrap();
    for user in USERS {
        for i in 0..3u64 {
            assert_eq!(remaining(&send(&h, 0, user)), 4 - i);
        }
    }
    h.configure(&after).unwrap();
    for user in USERS {
        assert_eq!(remaining(&send(&h, 0, user)), 1);
    }
}

#[test]
fn renaming_the_tier_starts_it_afresh() {
    let renamed = base().replace(r#""name":"users""#, r#""name":"members""#);
    // 5 per hour, one spent after the edit.
    assert_eq!(after_edit(&renamed), [4; 6]);
}

#[test]
fn changing_the_tiers_limits_starts_it_afresh() {
    let more = base().replace(r#""requests":5"#, r#""requests":6"#);
    assert_eq!(after_edit(&more), [5; 6]);
}

#[test]
fn changing_the_tiers_size_starts_it_afresh() {
    assert_eq!(
        after_edit(&policy(r#""max_keys":1024,"#, &[USERS_TIER, ANONYMOUS])),
        [4; 6]
    );
}

#[test]
fn changing_the_hash_secret_moves_every_caller() {
    let secret = policy(r#""hash_secret":"s3cret","#, &[USERS_TIER, ANONYMOUS]);
    assert_eq!(after_edit(&secret), [4; 6]);
}
