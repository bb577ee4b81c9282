//! A header identity's case is folded in every script, in the compiled filter.

use crate::support::{send_as, tollgate_with, users_policy};

#[test]
fn unicode_case_variants_are_one_caller() {
    let h = tollgate_with(2, &users_policy(3, "hour", ""));
    for (worker, spelling) in ["Äpfel", "äpfel", "ÄPFEL"].into_iter().enumerate() {
        let out = send_as(&h, worker % 2, spelling).unwrap();
        assert!(out.is_continue(), "{spelling}: {out:?}");
        assert_eq!(
            out.header("x-ratelimit-remaining"),
            Some((2 - worker).to_string().as_str()),
            "{spelling} counts against the same caller"
        );
    }
    let refused = send_as(&h, 1, "äPfEl").unwrap();
    assert_eq!(refused.status(), 429, "{refused:?}");
    // Another caller, and a case-sensitive tier still tells them apart.
    assert!(send_as(&h, 0, "apfel").unwrap().is_continue());
    let sensitive = users_policy(1, "hour", "").replace(
        r#"{"header":"x-user-id"}"#,
        r#"{"header":"x-user-id","case_sensitive":true}"#,
    );
    let h = tollgate_with(1, &sensitive);
    assert!(send_as(&h, 0, "Äpfel").unwrap().is_continue());
    assert!(send_as(&h, 0, "äpfel").unwrap().is_continue());
}
