//! Refill is exact to the nanosecond, and Retry-After names the first second that passes.

use std::time::Duration;

use crate::support::{assert_consistent_denial, send_as, tollgate_with, users_policy};

const SECOND: u64 = 1_000_000_000;

#[test]
fn a_token_returns_exactly_at_its_boundary_and_not_a_nanosecond_before() {
    // 5 per minute: one token every 12 s.
    let h = tollgate_with(2, &users_policy(5, "minute", ""));
    let t0 = h.now();
    for i in 0..5 {
        assert!(send_as(&h, i % 2, "carol").unwrap().is_continue());
    }
    let denied = send_as(&h, 0, "carol").unwrap();
    assert_eq!(assert_consistent_denial(&denied, "users", 5, 60), 12);
    assert_eq!(denied.header("x-ratelimit-reset"), Some("60"));

    h.set_time(t0 + SECOND);
    let denied = send_as(&h, 1, "carol").unwrap();
    assert_eq!(assert_consistent_denial(&denied, "users", 5, 60), 11);

    // Half a second before: rounded up to 1.
    h.set_time(t0 + 11 * SECOND + SECOND / 2);
    let denied = send_as(&h, 0, "carol").unwrap();
    assert_eq!(assert_consistent_denial(&denied, "users", 5, 60), 1);

    h.set_time(t0 + 12 * SECOND - 1);
    let denied = send_as(&h, 1, "carol").unwrap();
    assert_eq!(assert_consistent_denial(&denied, "users", 5, 60), 1);

    h.set_time(t0 + 12 * SECOND);
    assert!(send_as(&h, 0, "carol").unwrap().is_continue());
    let denied = send_as(&h, 1, "carol").unwrap();
    assert_eq!(assert_consistent_denial(&denied, "users", 5, 60), 12);
}

#[test]
fn denials_do_not_push_the_next_token_further_away() {
    let h = tollgate_with(1, &users_policy(5, "minute", ""));
    for _ in 0..5 {
        send_as(&h, 0, "dave").unwrap();
    }
    for _ in 0..50 {
        assert!(!send_as(&h, 0, "dave").unwrap().is_continue());
    }
    h.advance(Duration::from_secs(12)).unwrap();
    assert!(send_as(&h, 0, "dave").unwrap().is_continue());
}

#[test]
fn an_idle_user_refills_to_the_full_burst_and_no_more() {
    let h = tollgate_with(2, &users_policy(5, "minute", ""));
    for _ in 0..5 {
        send_as(&h, 0, "erin").unwrap();
    }
    h.advance(Duration::from_secs(3600)).unwrap();
    let admitted = (0..10)
        .filter(|i| send_as(&h, i % 2, "erin").unwrap().is_continue())
        .count();
    assert_eq!(admitted, 5);
}

#[test]
fn retry_after_is_the_first_whole_second_that_passes_at_any_instant() {
    // 7 per hour: a token every 3600/7 s = 514_285_714_285.714… ns, not a whole nanosecond, so
    // the boundary and every Retry-After are checked against exact fractions.
    let h = tollgate_with(1, &users_policy(7, "hour", ""));
    let t0 = h.now();
    for _ in 0..7 {
        send_as(&h, 0, "frank").unwrap();
    }
    let hour = 3600 * SECOND;
    let boundary = hour.div_ceil(7); // the first whole nanosecond at or after the token
    for offset in [
        0,
        1,
        SECOND - 1,
        200 * SECOND + 7,
        boundary - SECOND - 1,
        boundary - SECOND,
        boundary - 1,
    ] {
        h.set_time(t0 + offset);
        let out = send_as(&h, 0, "frank").unwrap();
        let retry = assert_consistent_denial(&out, "users", 7, 3600);
        // ceil((hour / 7 - offset) / SECOND), in sevenths of a nanosecond.
        let expected = (hour - 7 * offset).div_ceil(7 * SECOND);
        assert_eq!(retry, expected, "at +{offset} ns");
    }
    h.set_time(t0 + boundary);
    assert!(send_as(&h, 0, "frank").unwrap().is_continue());
}
