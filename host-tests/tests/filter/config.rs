//! A bad policy is refused at configure time, with one error line naming where and why.

use host_tests::{Harness, HostError, LogLevel};

use crate::support::tollgate;

const LIMIT: &str = r#""limits":[{"requests":1,"per":"minute"}]"#;

/// Configures two workers with `policy` and returns the reason the first one logged.
fn rejection(policy: &str) -> String {
    let h = Harness::new(tollgate()).workers(2).start().unwrap();
    match h.configure(policy) {
        Err(HostError::ConfigureRejected {
            worker: 0,
            reason: Some(reason),
        }) => {
            let errors: Vec<_> = h
                .logs(0)
                .unwrap()
                .into_iter()
                .filter(|l| l.level >= LogLevel::Error)
                .collect();
            assert_eq!(errors.len(), 1, "logged once: {errors:?}");
            reason
        }
        other => panic!("accepted or failed otherwise: {other:?} for {policy}"),
    }
}

fn assert_rejected(policy: &str, expected: &str) {
    let reason = rejection(policy);
    let expected = format!("tollgate: invalid configuration: {expected}");
    assert!(
        reason.starts_with(&expected),
        "{reason:?} does not start with {expected:?}"
    );
}

#[test]
fn invalid_json_is_refused_with_its_position() {
    assert_rejected(r#"{"tiers": [,]}"#, "$: invalid JSON at line 1 column");
}

#[test]
fn an_empty_configuration_is_refused() {
    assert_rejected("", "$:");
}

#[test]
fn an_unknown_field_is_refused_with_its_path() {
    let policy = r#"{"tiers":[{"name":"a","identity":"shared","limits":[{"requests":1,"per":"minute","burts":2}]}]}"#;
    assert_rejected(policy, "tiers[0].limits[0].burts: unknown field");
    assert_rejected(r#"{"tier":[]}"#, "tier: unknown field");
}

#[test]
fn a_zero_limit_is_refused_with_its_path() {
    let policy = format!(
        r#"{{"tiers":[{{"name":"a","identity":"shared",{LIMIT}}},
            {{"name":"b","identity":"shared","limits":[{{"requests":0,"per":"minute"}}]}}]}}"#
    );
    assert_rejected(
        &policy,
        "tiers[1].limits[0].requests: must be greater than 0",
    );
}

#[test]
fn an_invalid_regex_is_refused_with_its_path() {
    let policy = format!(
        r#"{{"tiers":[{{"name":"a","identity":"shared",{LIMIT},
            "match":{{"headers":[{{"name":"x","regex":"("}}]}}}}]}}"#
    );
    assert_rejected(
        &policy,
        "tiers[0].match.headers[0].regex: invalid regular expression",
    );
}

#[test]
fn an_empty_tier_list_is_refused() {
    assert_rejected(r#"{"tiers":[]}"#, "tiers: must not be empty");
}

#[test]
fn a_duplicate_tier_name_is_refused() {
    let policy = format!(
        r#"{{"tiers":[{{"name":"a","identity":"shared",{LIMIT}}},{{"name":"a","identity":"shared",{LIMIT}}}]}}"#
    );
    assert_rejected(&policy, "tiers[1].name: duplicate name \"a\"");
}

#[test]
fn a_refused_reconfiguration_leaves_the_error_in_the_log() {
    let h = Harness::new(tollgate())
        .configure(crate::support::TASK_API)
        .unwrap();
    let error = h.configure(r#"{"tiers":[]}"#).unwrap_err();
    assert!(
        error.to_string().contains("tiers: must not be empty"),
        "{error}"
    );
}
