//! One LLM call's budget work in a loop, to count its instructions and store calls with
//! callgrind (BENCHMARKS.md §2, "Issue 14: the LLM call's budgets"): the peek at the request
//! headers, the admission at the body's end and the settlement, against `benches/count-hostcalls
//! --llm`'s policy (two token budgets of the caller), over an in-process store. Run it with 0
//! and with 1,000 iterations and divide the difference by 1,000.
//!
//! ```sh
//! cargo build --release -p policy-core --example llm_budgets
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/llm_budgets 1000
//! ```
//!
//! It prints the store's gets and sets per call: in Envoy each is a host call.

use std::hint::black_box;
use std::process::ExitCode;

use policy_core::budget::Amount;
use policy_core::policy::TokenOutcome;
use policy_core::store::Versioned;
use policy_core::{Cas, MemoryStore, Nanos, Policy, Store, StoreError};

const POLICY: &[u8] = br#"{"tiers":[{"name":"users","identity":{"header":"x-user-id"},
    "limits":[{"requests":6000,"per":"minute","burst":100}],
    "tokens":[{"tokens":1000000000,"per":"hour","model":"gpt-4o-mini"},
              {"tokens":1000000000,"per":"day"}]}],
    "llm":{"mode":"reserve","count":"total","default_max_tokens":1024}}"#;

/// The store, counting calls as the host would see them.
struct Counted {
    store: MemoryStore,
    gets: u64,
    sets: u64,
}

impl Store for Counted {
    fn get(&mut self, key: &str) -> Result<Option<Versioned>, StoreError> {
        self.gets += 1;
        self.store.get(key)
    }
    fn set(&mut self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), StoreError> {
        self.sets += 1;
        self.store.set(key, value, cas)
    }
}

fn main() -> ExitCode {
    let Some(n) = std::env::args().nth(1).and_then(|a| a.parse::<u64>().ok()) else {
        eprintln!("usage: llm_budgets ITERATIONS");
        return ExitCode::FAILURE;
    };
    let Ok(policy) = Policy::from_json(POLICY) else {
        eprintln!("the policy does not parse");
        return ExitCode::FAILURE;
    };
    let mut store = Counted {
        store: MemoryStore::new(),
        gets: 0,
        sets: 0,
    };
    if policy.init_store(&mut store.store).is_err() {
        return ExitCode::FAILURE;
    }
    let Some(tier) = policy.tiers().first() else {
        return ExitCode::FAILURE;
    };
    let id: Vec<u8> = b"alice".to_vec();
    let mut now = Nanos(1_700_000_000_000_000_000);
    let mut charged = 0u64;
    for _ in 0..n {
        now = Nanos(now.0 + 1_000_000);
        let early = policy.peek_tokens(tier, &id, Amount::tokens(1), now, &mut store);
        black_box(&early);
        let admitted = policy.admit_tokens(
            tier,
            &id,
            Some(black_box("gpt-4o-mini")),
            Amount::tokens(black_box(304)),
            now,
            &mut store,
        );
        let TokenOutcome::Admitted { reservation, .. } = admitted else {
            eprintln!("refused: {admitted:?}");
            return ExitCode::FAILURE;
        };
        if let Ok(d) =
            policy.settle_tokens(tier, &reservation, Amount::tokens(300), now, &mut store)
        {
            charged += black_box(d).limits.len() as u64;
        }
    }
    if let (Some(gets), Some(sets)) = (store.gets.checked_div(n), store.sets.checked_div(n)) {
        println!("{charged} settlements; per call: {gets} gets, {sets} sets");
    }
    ExitCode::SUCCESS
}
