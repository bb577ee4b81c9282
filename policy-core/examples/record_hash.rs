//! Computes the access-log record's scope hash in a loop, to count its instructions with
//! callgrind (BENCHMARKS.md §2, "Issue 14: the record and the stream's own cost"): run it with 0
//! and with N iterations and divide the difference by N.
//!
//! ```sh
//! cargo build --release -p policy-core --example record_hash
//! for n in 0 1000; do valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/record_hash kept $n 2>&1 | grep Collected; done
//! ```
//!
//! Cases: `whole` hashes `"record"`, the tier's name and the identity on every call
//! ([`Policy::scope_hash`], as every record did before), `kept` finishes the tier's head hashed
//! at configure time with the identity ([`Policy::record_hash`], what the filter calls). Both
//! give the same value (checked before the loop).
#![allow(missing_docs)]

use std::hint::black_box;
use std::process::ExitCode;

use policy_core::Policy;

/// `benches/count-hostcalls`' policy: one tier of 2 requests a minute per `x-user-id`.
const POLICY: &[u8] = br#"{"tiers":[{"name":"users","identity":{"header":"x-user-id"},
    "limits":[{"requests":2,"per":"minute"}]}]}"#;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(case), Some(Ok(n))) = (args.first(), args.get(1).map(|n| n.parse::<u64>())) else {
        eprintln!("usage: record_hash whole|kept ITERATIONS");
        return ExitCode::FAILURE;
    };
    let policy = match Policy::from_json(POLICY) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(tier) = policy.tiers().first() else {
        return ExitCode::FAILURE;
    };
    let id: &[u8] = b"alice";
    if policy.scope_hash(tier, id) != policy.record_hash(0, id) {
        eprintln!("the two ways give different hashes");
        return ExitCode::FAILURE;
    }
    let mut acc = 0u64;
    for _ in 0..n {
        acc ^= match case.as_str() {
            "whole" => policy.scope_hash(black_box(tier), black_box(id)),
            _ => policy.record_hash(black_box(0), black_box(id)),
        };
    }
    println!("{acc:016x}");
    ExitCode::SUCCESS
}
