//! The regex corpus (`regex-corpus.json`) through `tollgate-check`, natively: every case gets the
//! verdict the corpus states. host-tests/tests/filter/regex_corpus.rs holds the filter (wasm32)
//! to the same corpus, so the validator and the filter accept exactly the same policies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use policy_core::pattern::{Pattern, MAX_INPUT_BYTES};

fn corpus() -> Vec<(String, String)> {
    let text = include_str!("regex-corpus.json");
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

fn policy(regex: &str) -> String {
    let regex = serde_json::Value::String(regex.to_owned());
    format!(
        r#"{{"tiers":[{{"name":"a","identity":"shared","limits":[{{"requests":1,"per":"minute"}}],
            "match":{{"headers":[{{"name":"authorization","regex":{regex}}}]}}}}]}}"#
    )
}

#[test]
fn tollgate_check_gives_every_case_its_verdict() {
    for (regex, expect) in corpus() {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate-check"))
            .arg("-")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(policy(&regex).as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if expect == "valid" {
            assert!(out.status.success(), "{regex}: {stderr}");
            assert!(stdout.starts_with("-: valid"), "{regex}: {stdout}");
        } else {
            assert_eq!(out.status.code(), Some(1), "{regex}: {stdout}");
            let want = format!("-: tiers[0].match.headers[0].regex: {expect}");
            assert!(
                stderr.starts_with(&want),
                "{regex}: {stderr:?} is not {want:?}"
            );
        }
    }
}

/// Every accepted pattern of the corpus matches a hostile 64 KiB value in linear time: the
/// JWT-shaped pattern took seconds on 50 KB before it was refused. Generous bound (a debug
/// build on a shared machine); the figures are printed.
#[test]
fn accepted_patterns_match_64_kib_in_linear_time() {
    let hostile: [Vec<u8>; 3] = [
        vec![b'a'; MAX_INPUT_BYTES],
        (0..MAX_INPUT_BYTES)
            .map(|i| if i % 100 == 99 { b'.' } else { b'a' })
            .collect(),
        (0..MAX_INPUT_BYTES)
            .map(|i| if (i * 7919) % 3 == 0 { b'a' } else { b'b' })
            .collect(),
    ];
    for (regex, expect) in corpus() {
        if expect != "valid" {
            continue;
        }
        let p = Pattern::new(&regex).unwrap();
        for value in &hostile {
            let t = Instant::now();
            let _ = p.is_match(value);
            let took = t.elapsed();
            eprintln!("{regex}: {took:?} on {} bytes", value.len());
            assert!(took.as_millis() < 100, "{regex}: {took:?}");
        }
    }
}
