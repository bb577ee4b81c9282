//! Per-request costs (`costs` in a tier) through the compiled module: a costly request takes its
//! cost from the shared bucket on any worker, and its 429 and headers count in cells.

use std::time::Duration;

use host_tests::{Harness, HostError, Outcome, Request};

use crate::support::{assert_consistent_admission, json, number, tollgate, tollgate_with};

/// 20 per minute (a cell every 3 s); `POST /api/v1/tasks/bulk` costs 10.
const POLICY: &str = r#"{"tiers":[{"name":"api","identity":{"header":"x-user-id"},
    "limits":[{"requests":20,"per":"minute"}],
    "costs":[{"match":{"path_prefix":"/api/v1/tasks/bulk","methods":["POST"]},"cost":10}]}]}"#;

fn call(method: &str, path: &str) -> Request {
    Request::new(method, path).header("x-user-id", "alice")
}

/// A 429's Retry-After and the cells it says are left (not 0: fewer than the call costs), each
/// agreeing across the headers and the body.
fn denied(out: &Outcome) -> (u64, u64) {
    assert_eq!(out.status(), 429, "{out:?}");
    let retry = number(out, "retry-after");
    let remaining = number(out, "x-ratelimit-remaining");
    let reset = number(out, "x-ratelimit-reset");
    assert_eq!(
        out.header("ratelimit"),
        Some(format!("\"api\";r={remaining};t={reset}").as_str())
    );
    assert_eq!(json(out)["retry_after_seconds"], retry);
    (retry, remaining)
}

#[test]
fn a_bulk_call_costs_ten_cells_on_every_worker_and_its_429_waits_for_them() {
    let h = tollgate_with(2, POLICY);
    let bulk = call("POST", "/api/v1/tasks/bulk");
    let out = h.send(0, &bulk).unwrap();
    assert_eq!(assert_consistent_admission(&out, "api", 20), 10);
    let out = h.send(1, &call("GET", "/api/v1/tasks/bulk")).unwrap();
    assert_eq!(
        assert_consistent_admission(&out, "api", 20),
        9,
        "GET costs 1"
    );
    // 9 cells left, 10 asked: refused until one more cell is back (3 s), and nothing is taken.
    let out = h.send(1, &bulk).unwrap();
    assert_eq!(denied(&out), (3, 9));
    let out = h.send(0, &call("GET", "/api/v1/tasks")).unwrap();
    assert_eq!(assert_consistent_admission(&out, "api", 20), 8);
    // Now two cells short: 6 s.
    let out = h.send(0, &bulk).unwrap();
    assert_eq!(denied(&out), (6, 8));
    h.advance(Duration::from_secs(6)).unwrap();
    let out = h.send(1, &bulk).unwrap();
    assert_eq!(assert_consistent_admission(&out, "api", 20), 0);
    assert_eq!(h.send(0, &call("GET", "/")).unwrap().status(), 429);
}

#[test]
fn a_cost_above_the_burst_is_refused_at_load_with_its_path() {
    let bad = POLICY.replace("\"cost\":10", "\"cost\":21");
    let h = Harness::new(tollgate()).workers(1).start().unwrap();
    match h.configure(&bad) {
        Err(HostError::ConfigureRejected {
            reason: Some(reason),
            ..
        }) => assert!(
            reason.starts_with(
                "tollgate: invalid configuration: tiers[0].costs[0].cost: 21 is more than limit \
                 \"api\" can ever admit at once (its burst is 20)"
            ),
            "{reason}"
        ),
        other => panic!("a cost of 21 against a burst of 20 was not refused: {other:?}"),
    }
}
