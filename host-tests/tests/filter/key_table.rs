//! Shared data has no delete: the key table is fixed at configure time and a flood of new
//! identities must neither grow it nor free a user who keeps sending.

use std::time::Duration;

use crate::support::{send_as, tollgate_with};

const MAX_KEYS: u64 = 1024;

/// The ideal GCRA count for requests at `times` (ns) against `burst` with one token per
/// `interval` ns: what the steady user would get with the table to itself.
fn ideal_admissions(times: &[u64], burst: u64, interval: u64) -> usize {
    let mut tat = 0u64;
    let mut admitted = 0;
    for &t in times {
        if tat <= t + (burst - 1) * interval {
            tat = tat.max(t) + interval;
            admitted += 1;
        }
    }
    admitted
}

#[test]
fn a_flood_of_100k_new_ids_keeps_the_table_bounded_and_a_steady_user_limited() {
    let policy = format!(
        r#"{{"max_keys":{MAX_KEYS},"tiers":[{{"name":"users","identity":{{"header":"x-user-id"}},
            "limits":[{{"requests":100,"per":"minute"}}]}}]}}"#
    );
    let h = tollgate_with(4, &policy);
    let keys = h.key_count();
    let bytes = h.total_bytes();
    assert!(keys as u64 <= MAX_KEYS / 8 + 2, "{keys} keys at start-up");

    // 100k new ids at 1000 per second (100 s), round-robin over 4 workers; every 100 ms the
    // steady user sends one request.
    let t0 = h.now();
    let mut steady_times = Vec::new();
    let mut steady_admitted = 0;
    for i in 0..100_000u64 {
        let id = format!("flood-{i}");
        send_as(&h, (i % 4) as usize, &id).unwrap();
        if i % 100 == 0 {
            steady_times.push(h.now() - t0);
            if send_as(&h, (i / 100 % 4) as usize, "steady")
                .unwrap()
                .is_continue()
            {
                steady_admitted += 1;
            }
        }
        h.advance(Duration::from_millis(1)).unwrap();
        if i % 10_000 == 0 {
            h.clear_logs().unwrap();
        }
    }
    assert_eq!(h.key_count(), keys, "no key was created after start-up");
    assert_eq!(h.total_bytes(), bytes);

    // Never looser than the limit; sharing a way with a newcomer may only make it stricter.
    let ideal = ideal_admissions(&steady_times, 100, 600_000_000);
    assert!(
        steady_admitted <= ideal,
        "{steady_admitted} > ideal {ideal}"
    );
    assert!(
        steady_admitted + 5 >= ideal,
        "{steady_admitted} far below ideal {ideal}"
    );
}
