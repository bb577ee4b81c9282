//! The shared store under contention and failure: conflict storms, a failing store, the
//! first-insert race and real concurrent workers.

use std::sync::atomic::{AtomicUsize, Ordering};

use host_tests::{FailFor, Harness, HostError, Outcome};

use crate::support::{
    assert_consistent_admission, json, send_as, tollgate, tollgate_with, users_policy, TASK_API,
};

/// `policy_core::table::MAX_ATTEMPTS`: how many CAS attempts a decision makes before giving up.
const MAX_ATTEMPTS: u64 = 16;

#[test]
fn a_conflict_storm_below_the_retry_bound_never_over_admits() {
    let h = tollgate_with(4, TASK_API);
    let mut admitted = 0;
    for i in 0..110 {
        h.store().inject_cas_conflicts(MAX_ATTEMPTS - 1);
        let out = send_as(&h, i % 4, "alice").unwrap();
        if out.is_continue() {
            admitted += 1;
            assert_eq!(
                assert_consistent_admission(&out, "authenticated", 100),
                100 - admitted
            );
        } else {
            assert_eq!(out.status(), 429);
        }
    }
    assert_eq!(admitted, 100);
}

#[test]
fn a_conflict_storm_beyond_the_retry_bound_is_refused_not_let_through() {
    let h = tollgate_with(2, TASK_API);
    for i in 0..99 {
        send_as(&h, i % 2, "alice").unwrap();
    }
    h.store().inject_cas_conflicts(MAX_ATTEMPTS);
    let out = send_as(&h, 0, "alice").unwrap();
    // Every CAS lost: heavy traffic on one key must not become unmetered traffic.
    assert_eq!(out.status(), 429, "{out:?}");
    assert_eq!(out.header("retry-after"), Some("1"), "{out:?}");
    assert_eq!(h.store().pending_cas_conflicts(), 0);
    // Nothing was charged for the refused request: one left.
    let out = send_as(&h, 1, "alice").unwrap();
    assert_eq!(assert_consistent_admission(&out, "authenticated", 100), 0);
    assert_eq!(send_as(&h, 0, "alice").unwrap().status(), 429);
    // Counted as contention, apart from the one denial of a spent limit.
    h.advance(std::time::Duration::from_secs(1)).unwrap();
    let counter = |name: &str| h.metrics().value(&format!("tollgate.authenticated.{name}"));
    assert_eq!(counter("contended"), Some(1));
    assert_eq!(counter("denied"), Some(1));
    assert_eq!(counter("allowed"), Some(100));
}

/// Counted against the tier whose store failed (the second of three), and logged with the
/// error's text, not its Rust name.
#[test]
fn a_store_failure_is_counted_against_its_own_tier_and_logged_readably() {
    let h = tollgate_with(1, TASK_API);
    h.store().fail_gets(FailFor::Always);
    for _ in 0..3 {
        assert!(send_as(&h, 0, "alice").unwrap().is_continue());
    }
    let warning = h
        .all_logs()
        .unwrap()
        .into_iter()
        .find(|l| l.message.contains("state store failed"))
        .map(|l| l.message);
    assert_eq!(
        warning.as_deref(),
        Some("tollgate[2]: state store failed for tier authenticated: shared data refused the read or the write (logged at most once a second per worker)")
    );
    h.advance(std::time::Duration::from_secs(1)).unwrap();
    let counter = |tier: &str| {
        h.metrics()
            .value(&format!("tollgate.{tier}.store_failures"))
    };
    assert_eq!(counter("authenticated"), Some(3));
    assert_eq!(counter("premium"), Some(0));
    assert_eq!(counter("anonymous"), Some(0));
}

#[test]
fn a_failing_store_lets_requests_through_by_default() {
    let h = tollgate_with(2, TASK_API);
    h.store().fail_gets(FailFor::Always);
    for i in 0..150 {
        let out = send_as(&h, i % 2, "alice").unwrap();
        assert!(out.is_continue(), "{out:?}");
    }
    let warnings = h
        .all_logs()
        .unwrap()
        .into_iter()
        .filter(|l| l.message.contains("state store failed"))
        .count();
    // Logged at most once a second per worker, not once per request.
    assert_eq!(warnings, 2);
    // Healed: counting resumes from a clean slate (failed requests were not charged).
    h.store().clear_faults();
    let out = send_as(&h, 0, "alice").unwrap();
    assert_eq!(assert_consistent_admission(&out, "authenticated", 100), 99);
}

#[test]
fn a_failing_store_refuses_with_503_when_on_store_failure_is_deny() {
    let h = tollgate_with(
        2,
        &users_policy(100, "minute", r#""on_store_failure":"deny","#),
    );
    h.store().fail_sets(FailFor::Next(1));
    let out = send_as(&h, 0, "alice").unwrap();
    assert_eq!(out.status(), 503, "{out:?}");
    assert_eq!(json(&out)["error"], "rate_limiter_unavailable");
    assert!(send_as(&h, 1, "alice").unwrap().is_continue());

    h.store().fail_gets(FailFor::Always);
    let grpc = [("content-type", "application/grpc"), ("x-user-id", "alice")];
    match h.request(1, &grpc).unwrap() {
        Outcome::LocalReply { grpc_status, .. } => assert_eq!(grpc_status, Some(14)),
        other => panic!("expected UNAVAILABLE, got {other:?}"),
    }
}

#[test]
fn a_store_that_fails_at_start_up_makes_configure_fail_with_the_reason() {
    let builder = Harness::new(tollgate()).workers(2);
    let h = builder.start().unwrap();
    h.store().fail_sets(FailFor::Always);
    match h.configure(TASK_API) {
        Err(HostError::ConfigureRejected { reason, .. }) => {
            let reason = reason.unwrap_or_default();
            assert!(
                reason.starts_with("tollgate: invalid configuration: $:"),
                "{reason}"
            );
            assert!(reason.contains("shared data"), "{reason}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn configuring_more_workers_later_keeps_the_counts() {
    let h = tollgate_with(1, TASK_API);
    for _ in 0..60 {
        send_as(&h, 0, "alice").unwrap();
    }
    let later = Harness::new(tollgate())
        .workers(2)
        .shared(h.shared().clone())
        .configure(TASK_API)
        .unwrap();
    let out = send_as(&later, 1, "alice").unwrap();
    assert_eq!(assert_consistent_admission(&out, "authenticated", 100), 39);
    // And reconfiguring the first worker with the same policy keeps them too.
    h.configure(TASK_API).unwrap();
    let out = send_as(&h, 0, "alice").unwrap();
    assert_eq!(assert_consistent_admission(&out, "authenticated", 100), 38);
}

#[test]
fn two_workers_meeting_a_new_user_at_once_admit_no_extra_request() {
    // One request per minute: whoever writes second must see the first's admission.
    let h = tollgate_with(2, &users_policy(1, "minute", ""));
    for round in 0..20 {
        let user = format!("newcomer-{round}");
        h.store().rendezvous_next_gets(2);
        let admitted = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for worker in 0..2 {
                let (h, user, admitted) = (&h, &user, &admitted);
                scope.spawn(move || {
                    if send_as(h, worker, user).unwrap().is_continue() {
                        admitted.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        assert_eq!(admitted.load(Ordering::SeqCst), 1, "{user}");
        assert!(!send_as(&h, round % 2, &user).unwrap().is_continue());
    }
    let stats = h.store().stats();
    assert_eq!(stats.rendezvous_timeouts, 0);
    assert!(stats.cas_mismatches >= 20, "{stats:?}");
}

#[test]
fn four_workers_on_four_threads_admit_exactly_the_limit() {
    let h = tollgate_with(4, TASK_API);
    let admitted = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for worker in 0..4 {
            let (h, admitted) = (&h, &admitted);
            scope.spawn(move || {
                for _ in 0..50 {
                    if send_as(h, worker, "alice").unwrap().is_continue() {
                        admitted.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    assert_eq!(admitted.load(Ordering::SeqCst), 100);
}
