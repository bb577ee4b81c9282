//! Runs the built `tollgate` binary on the examples, in both directions: each example policy
//! passes its test file, and deliberately wrong copies of it (generated here from the example)
//! fail with a diff naming the case and the numbers. Needs the module (`scripts/build-wasm`,
//! or `$TOLLGATE_WASM`), which scripts/test builds before this step.

// allow-*-in-tests covers `#[test]` functions only, not the helpers they share.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tollgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A scratch directory for generated files, unique per test.
fn scratch(name: &str) -> PathBuf {
    let dir = root().join("target/tmp/cli-tests").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes a copy of `examples/<example>` edited by `edit`, returning its path.
fn wrong_copy(name: &str, example: &str, edit: impl FnOnce(&mut Value)) -> String {
    let text = std::fs::read(root().join("examples").join(example)).unwrap();
    let mut policy: Value = serde_json::from_slice(&text).unwrap();
    edit(&mut policy);
    let path = scratch(name).join(example);
    std::fs::write(&path, serde_json::to_vec_pretty(&policy).unwrap()).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn task_api_example_passes() {
    let out = tollgate(&[
        "test",
        "examples/task-api-policy.json",
        "examples/task-api-policy.tests.yaml",
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("sha256 "), "{stdout}");
    assert!(
        stdout.contains("case user test gets exactly 100 a minute, then 429s ... ok"),
        "{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l == "6 passed, 0 failed"),
        "{stdout}"
    );
}

/// The Task API tiers in global mode (envoy/gateway/global/tollgate-global.yaml embeds it).
#[test]
fn global_example_checks() {
    let out = tollgate(&["check", "examples/global-policy.json"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("global (sync, cluster tollgate-sync,"),
        "{stdout}"
    );
}

#[test]
fn llm_example_passes() {
    let out = tollgate(&[
        "test",
        "examples/llm-policy.json",
        "examples/llm-policy.tests.yaml",
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.lines().any(|l| l == "6 passed, 0 failed"),
        "{stdout}"
    );
}

#[test]
fn team_spend_example_passes() {
    let out = tollgate(&[
        "test",
        "examples/team-spend-policy.json",
        "examples/team-spend-policy.tests.yaml",
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.lines().any(|l| l == "5 passed, 0 failed"),
        "{stdout}"
    );
}

#[test]
fn a_team_budget_a_call_larger_fails_the_team_spend_example() {
    // 55 USD a team instead of 50: Bob's call after the team's ten is admitted.
    let policy = wrong_copy("team-55", "team-spend-policy.json", |p| {
        p["tiers"][1]["tokens"][1]["spend"] = json!("55");
    });
    let out = tollgate(&["test", &policy, "examples/team-spend-policy.tests.yaml"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("teammates spend the team's month together"),
        "{stdout}"
    );
}

#[test]
fn a_limit_off_by_one_fails_naming_the_case_and_the_numbers() {
    let policy = wrong_copy("off-by-one", "task-api-policy.json", |p| {
        p["tiers"][1]["limits"][0]["requests"] = json!(101);
    });
    let junit = scratch("off-by-one").join("junit.xml");
    let out = tollgate(&[
        "test",
        "--junit",
        junit.to_str().unwrap(),
        &policy,
        "examples/task-api-policy.tests.yaml",
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("case user test gets exactly 100 a minute, then 429s ... FAILED"),
        "{stdout}"
    );
    assert!(
        stdout.contains("---- examples/task-api-policy.tests.yaml: user test gets exactly 100 a minute, then 429s ----"),
        "{stdout}"
    );
    assert!(
        stdout.contains("step 1 (send 110 × GET / {x-user-id: test}):"),
        "{stdout}"
    );
    assert!(
        stdout.contains("expected: 200 × 100, 429 × 10\n      actual:   200 × 101, 429 × 9"),
        "{stdout}"
    );
    assert!(stdout
        .lines()
        .any(|l| l.ends_with(" failed") && !l.starts_with("5 passed")));
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("<failure message="), "{xml}");
    assert!(xml.contains("200 × 101, 429 × 9"), "{xml}");
}

#[test]
fn a_halved_budget_fails_naming_the_case_and_the_numbers() {
    let policy = wrong_copy("halved", "llm-policy.json", |p| {
        p["tiers"][1]["tokens"][1]["tokens"] = json!(1000);
    });
    let out = tollgate(&["test", &policy, "examples/llm-policy.tests.yaml"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("---- examples/llm-policy.tests.yaml: gpt-4o has 2000 tokens an hour per free user, ten concurrent max_tokens 300 calls admit six ----"),
        "{stdout}"
    );
    assert!(
        stdout.contains("expected: 200 × 6, 429 × 4\n      actual:   200 × 3, 429 × 7"),
        "{stdout}"
    );
}

#[test]
fn a_removed_tier_is_an_error_naming_the_yaml_path() {
    let policy = wrong_copy("tier-removed", "task-api-policy.json", |p| {
        p["tiers"].as_array_mut().unwrap().remove(0);
    });
    let out = tollgate(&["test", &policy, "examples/task-api-policy.tests.yaml"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("examples/task-api-policy.tests.yaml: cases[3].steps[0].send.headers.x-api-key: the policy reads no request header `x-api-key`"),
        "{stderr}"
    );
}

#[test]
fn an_unknown_tier_or_header_in_a_test_is_an_error() {
    let dir = scratch("unknown");
    let tier = dir.join("tier.yaml");
    std::fs::write(
        &tier,
        "cases:\n  - name: t\n    steps:\n      - send: { headers: { x-user-id: a } }\n        expect: { tier: authenticatd }\n",
    )
    .unwrap();
    let out = tollgate(&[
        "test",
        "examples/task-api-policy.json",
        tier.to_str().unwrap(),
    ]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cases[0].steps[0].expect.tier: the policy has no tier `authenticatd`"),
        "{stderr}"
    );
    let header = dir.join("header.yaml");
    std::fs::write(
        &header,
        "cases:\n  - name: t\n    steps:\n      - send: { headers: { x-user-idd: a } }\n",
    )
    .unwrap();
    let out = tollgate(&[
        "test",
        "examples/task-api-policy.json",
        header.to_str().unwrap(),
    ]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "cases[0].steps[0].send.headers.x-user-idd: the policy reads no request header"
        ),
        "{stderr}"
    );
    let response = dir.join("response.yaml");
    std::fs::write(
        &response,
        "cases:\n  - name: t\n    steps:\n      - send: { headers: { x-user-id: a } }\n        expect: { last: { remaining_tokens: 3 } }\n",
    )
    .unwrap();
    let out = tollgate(&[
        "test",
        "examples/task-api-policy.json",
        response.to_str().unwrap(),
    ]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cases[0].steps[0].expect.last.remaining_tokens: tollgate writes no response header `x-ratelimit-remaining-tokens`"),
        "{stderr}"
    );
}

#[test]
fn malformed_yaml_names_the_line() {
    let path = scratch("malformed").join("bad.yaml");
    std::fs::write(
        &path,
        "cases:\n  - name: t\n    steps:\n      - send: { count: many }\n",
    )
    .unwrap();
    let out = tollgate(&[
        "test",
        "examples/task-api-policy.json",
        path.to_str().unwrap(),
    ]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("bad.yaml: line 4 column"), "{stderr}");
}

#[test]
fn a_module_with_another_checksum_is_refused() {
    let out = tollgate(&[
        "test",
        "--sha256",
        &"0".repeat(64),
        "examples/task-api-policy.json",
        "examples/task-api-policy.tests.yaml",
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("refusing to test another module"),
        "{stderr}"
    );
    assert!(!stdout.contains("passed"), "{stdout}");
}

#[test]
fn a_module_pinned_by_its_checksum_runs() {
    // Learn the module and its checksum from a run's header, then pin exactly that.
    let out = tollgate(&[
        "test",
        "examples/task-api-policy.json",
        "examples/task-api-policy.tests.yaml",
    ]);
    let (stdout, _) = text(&out);
    let header = stdout.lines().next().unwrap();
    let (path, rest) = header
        .strip_prefix("tollgate test: module ")
        .unwrap()
        .split_once(" (sha256 ")
        .unwrap();
    let sha = rest.trim_end_matches(')');
    let pinned = format!("{path}@sha256:{sha}");
    let out = tollgate(&[
        "test",
        "--wasm",
        &pinned,
        "examples/task-api-policy.json",
        "examples/task-api-policy.tests.yaml",
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
}

#[test]
fn check_prints_what_tollgate_check_prints() {
    let out = tollgate(&["check", "examples/task-api-policy.json"]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stdout,
        "examples/task-api-policy.json: valid: 3 tiers; at most 16385 shared-data keys, 3277000 bytes of values\n"
    );
    let bad = wrong_copy("check", "task-api-policy.json", |p| {
        p["tiers"][1]["limits"][0]["requests"] = json!(0);
    });
    let out = tollgate(&["check", &bad]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.ends_with(": tiers[1].limits[0].requests: must be greater than 0\n"),
        "{stderr}"
    );
}

/// The fields of `simulate --json` that do not depend on timing.
fn stable(report: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for key in [
        "statuses",
        "tiers",
        "callers",
        "callers_refused",
        "most_affected",
    ] {
        out.insert(key.to_owned(), report[key].clone());
    }
    Value::Object(out)
}

fn simulate_json(policy: &str, trace: &str) -> Value {
    let out = tollgate(&["simulate", "--json", policy, trace]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    serde_json::from_str(&stdout).unwrap()
}

#[test]
fn simulate_reports_the_small_trace_as_expected() {
    let report = simulate_json(
        "examples/task-api-policy.json",
        "examples/traces/task-api-small.jsonl",
    );
    let expected: Value = serde_json::from_slice(
        &std::fs::read(root().join("examples/traces/task-api-small.expected.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(stable(&report), expected);
    assert_eq!(report["requests"], json!(233));
    assert!(report["requests_per_second"].as_f64().unwrap() > 0.0);
}

#[test]
fn simulate_with_a_limit_off_by_one_reports_other_numbers() {
    let policy = wrong_copy("simulate-off-by-one", "task-api-policy.json", |p| {
        p["tiers"][1]["limits"][0]["requests"] = json!(101);
    });
    let report = simulate_json(&policy, "examples/traces/task-api-small.jsonl");
    assert_eq!(report["tiers"]["authenticated"]["admitted"], json!(102));
    assert_eq!(report["tiers"]["authenticated"]["refused"], json!(9));
}

#[test]
fn simulate_reads_csv_and_draws_a_chart() {
    let dir = scratch("csv");
    let jsonl =
        std::fs::read_to_string(root().join("examples/traces/task-api-small.jsonl")).unwrap();
    let mut csv = String::from("time,client,header:x-user-id,header:x-api-key\n");
    for line in jsonl.lines() {
        let r: Value = serde_json::from_str(line).unwrap();
        let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
        csv.push_str(&format!(
            "{},{},{},{}\n",
            s(&r["t"]),
            s(&r["client"]),
            s(&r["headers"]["x-user-id"]),
            s(&r["headers"]["x-api-key"])
        ));
    }
    let trace = dir.join("trace.csv");
    std::fs::write(&trace, csv).unwrap();
    let chart = dir.join("chart.svg");
    let out = tollgate(&[
        "simulate",
        "--chart",
        chart.to_str().unwrap(),
        "examples/task-api-policy.json",
        trace.to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("statuses: 200 × 221, 429 × 12"), "{stdout}");
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(svg.starts_with("<svg"), "{svg}");
    assert!(
        svg.contains("authenticated — admitted 101, refused 10"),
        "{svg}"
    );
    assert!(svg.contains("anonymous — admitted 10, refused 2"), "{svg}");
}
