//! The filter (wasm32) gives every case of policy-core's regex corpus the verdict the corpus
//! states, the same one `tollgate-check` gives natively (policy-core/tests/regex_corpus.rs), and
//! every accepted pattern matches a hostile 64 KiB header in linear time.

use std::time::{Duration, Instant};

use host_tests::{Harness, HostError, Request};

use crate::support::tollgate;

fn corpus() -> Vec<(String, String)> {
    let text = include_str!("../../../policy-core/tests/regex-corpus.json");
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["regex"].as_str().unwrap().to_owned(),
                c["expect"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// One tier for requests whose `authorization` matches, 1000 per minute.
fn policy(regex: &str) -> String {
    let regex = serde_json::Value::String(regex.to_owned());
    format!(
        r#"{{"tiers":[{{"name":"a","identity":"shared","limits":[{{"requests":1000,"per":"minute"}}],
            "match":{{"headers":[{{"name":"authorization","regex":{regex}}}]}}}}]}}"#
    )
}

#[test]
fn the_filter_gives_every_case_the_validators_verdict() {
    for (regex, expect) in corpus() {
        let t = Instant::now();
        let result = Harness::new(tollgate()).configure(policy(&regex));
        eprintln!("{regex}: configured in {:?}", t.elapsed());
        match (expect.as_str(), result) {
            ("valid", Ok(_)) => {}
            ("valid", Err(e)) => panic!("{regex}: refused by the filter: {e}"),
            (
                _,
                Err(HostError::ConfigureRejected {
                    reason: Some(reason),
                    ..
                }),
            ) => {
                let want = format!(
                    "tollgate: invalid configuration: tiers[0].match.headers[0].regex: {expect}"
                );
                assert!(
                    reason.starts_with(&want),
                    "{regex}: {reason:?} is not {want:?}"
                );
            }
            (_, other) => panic!("{regex}: expected a refusal, got {other:?}"),
        }
    }
}

#[test]
fn accepted_patterns_match_a_64_kib_header_in_linear_time() {
    let hostile: [String; 2] = [
        "a".repeat(64 << 10),
        (0..64 << 10)
            .map(|i| if i % 100 == 99 { '.' } else { 'a' })
            .collect(),
    ];
    for (regex, expect) in corpus() {
        if expect != "valid" {
            continue;
        }
        let h = Harness::new(tollgate()).configure(policy(&regex)).unwrap();
        let mut slowest = Duration::ZERO;
        for value in &hostile {
            // Warm up once (compilation, first allocations), then time a request.
            let request = Request::get("/").header("authorization", value);
            h.send(0, &request).unwrap();
            let t = Instant::now();
            h.send(0, &request).unwrap();
            slowest = slowest.max(t.elapsed());
        }
        eprintln!("{regex}: slowest request with a 64 KiB header: {slowest:?}");
        // A whole request (host calls included); the JWT-shaped pattern took ~2.6 s in Envoy.
        assert!(slowest < Duration::from_millis(50), "{regex}: {slowest:?}");
    }
}
