//! Builds the response text of one fixed decision in a loop, to count its instructions with
//! callgrind (BENCHMARKS.md, "Response text without `core::fmt`"): run it with 0 and with 1,000
//! iterations and divide the difference by 1,000.
//!
//! ```sh
//! cargo build --release -p policy-core --example response_text
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/response_text llm_fields 1000
//! ```
//!
//! Cases: `llm_fields` (an admitted LLM call's fields), `llm_refusal` (the fields and the
//! OpenAI-style body of a token refusal), `refusal` (a request-limit refusal's body and gRPC
//! message).

use std::hint::black_box;
use std::process::ExitCode;

use policy_core::decision::{Decision, LimitStatus};
use policy_core::headers::{self, ErrorStyle};
use policy_core::{Nanos, Policy};

const POLICY: &[u8] = br#"{"tiers":[{"name":"free","identity":{"header":"x-user-id"},
    "limits":[{"requests":10,"per":"minute"}],"tokens":[{"tokens":100000,"per":"hour"}]}]}"#;

fn status(allowed: bool, remaining: u64, reset: u64, retry: u64) -> LimitStatus {
    LimitStatus {
        allowed,
        remaining,
        reset_after: Nanos(reset),
        retry_after: Nanos(retry),
    }
}

fn decision(limit: LimitStatus, applied: Vec<usize>) -> Decision {
    Decision::from_limits(vec![limit]).with_applied(applied)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(case), Some(Ok(n))) = (args.next(), args.next().map(|n| n.parse::<u64>())) else {
        eprintln!("usage: response_text llm_fields|llm_refusal|refusal ITERATIONS");
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
    let requests = decision(status(true, 7, 18_000_000_000, 0), Vec::new());
    let tokens_left = decision(status(true, 98_765, 44_387_123_000_000, 0), vec![0]);
    let tokens_spent = decision(
        status(false, 0, 3_600_000_000_000, 1_234_567_000_000),
        vec![0],
    );
    let refused = decision(status(false, 0, 60_000_000_000, 6_000_000_000), Vec::new());
    let mut bytes = 0usize;
    for _ in 0..n {
        bytes += match case.as_str() {
            "llm_fields" => {
                let fields = headers::llm_fields(
                    tier,
                    Some(black_box(&requests)),
                    Some(black_box(&tokens_left)),
                );
                fields.iter().map(|(_, v)| v.len()).sum::<usize>()
            }
            "llm_refusal" => {
                let tokens = Some(black_box(&tokens_spent));
                let fields = headers::llm_fields(tier, Some(&requests), tokens);
                let body = headers::llm_denial_body(ErrorStyle::OpenAi, tier, None, tokens);
                fields.iter().map(|(_, v)| v.len()).sum::<usize>() + body.len()
            }
            "refusal" => {
                let d = black_box(&refused);
                headers::denial_body(tier, d).len() + headers::denial_grpc_message(tier, d).len()
            }
            _ => {
                eprintln!("unknown case {case}");
                return ExitCode::FAILURE;
            }
        };
    }
    println!("{bytes} bytes of text");
    ExitCode::SUCCESS
}
