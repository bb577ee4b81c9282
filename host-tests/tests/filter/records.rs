//! The access-log record (filter state `wasm.tollgate`, set as property `tollgate`) through the
//! compiled module: what each decision writes, and that the identity never appears.

use host_tests::Harness;

use crate::support::tollgate_with;

/// `bulk` calls cost 5 of a 6-a-minute limit; `watch` callers are in shadow mode.
const POLICY: &str = r#"{"hash_secret":"s3cret","tiers":[
    {"name":"watch","mode":"shadow","match":{"headers":[{"name":"x-watch","present":true}]},
     "identity":{"header":"x-user-id"},"limits":[{"requests":1,"per":"minute"}]},
    {"name":"api","identity":{"header":"x-user-id"},"limits":[{"requests":6,"per":"minute"}],
     "costs":[{"match":{"path_prefix":"/bulk"},"cost":5}]}]}"#;

/// The record a request's headers leave on its stream.
fn record(h: &Harness, path: &str, headers: &[(&str, &str)]) -> Option<String> {
    let mut s = h.stream(0).unwrap();
    let mut all = vec![(":method", "GET"), (":path", path), (":authority", "x")];
    all.extend_from_slice(headers);
    s.request_headers(all.as_slice(), true).unwrap();
    let props = s.record().unwrap().properties;
    props
        .get(&["tollgate"])
        .map(|v| String::from_utf8(v.to_vec()).unwrap())
}

#[test]
fn each_decision_leaves_its_record_and_never_the_identity() {
    let h = tollgate_with(1, POLICY);
    let alice = [("x-user-id", "alice")];
    let first = record(&h, "/bulk", &alice).unwrap();
    let scope = first
        .split(' ')
        .find_map(|f| f.strip_prefix("scope="))
        .unwrap()
        .to_owned();
    assert_eq!(scope.len(), 16, "{first}");
    assert_eq!(
        first,
        format!("tier=api scope={scope} decision=allowed cost=5")
    );
    assert_eq!(
        record(&h, "/bulk", &alice).unwrap(),
        format!("tier=api scope={scope} decision=denied cost=5")
    );
    let bob = record(&h, "/", &[("x-user-id", "bob")]).unwrap();
    assert!(!bob.contains(&scope) && !bob.contains("bob"), "{bob}");
    let watched = [("x-user-id", "carol"), ("x-watch", "1")];
    assert!(record(&h, "/", &watched)
        .unwrap()
        .ends_with("decision=allowed cost=1"));
    assert!(record(&h, "/", &watched)
        .unwrap()
        .ends_with("decision=would_deny cost=1"));
    assert_eq!(
        record(&h, "/", &[]),
        None,
        "no identity, no tier, no record"
    );
    assert!(!first.contains("alice"));
}
