//! The example host test that README.md shows, kept here so that it compiles and passes.

use std::time::Duration;

use crate::support::{send_as, tollgate_with, users_policy};

#[test]
fn a_user_gets_two_per_second_across_workers() {
    let h = tollgate_with(4, &users_policy(2, "second", "")); // 4 workers, one shared store
    assert!(send_as(&h, 0, "alice").unwrap().is_continue());
    assert!(send_as(&h, 1, "alice").unwrap().is_continue());
    let refused = send_as(&h, 2, "alice").unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.header("retry-after"), Some("1"));
    h.advance(Duration::from_millis(500)).unwrap(); // the virtual clock; ticks fire on the way
    assert!(send_as(&h, 3, "alice").unwrap().is_continue());
}
