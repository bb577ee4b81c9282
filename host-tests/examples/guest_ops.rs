//! Wasm operators the filter executes per request, counted by wasmtime's fuel: exact and
//! independent of the machine's load, so a change to the request path can be measured on a busy
//! machine (BENCHMARKS.md §2). Runs the cases of `benches/count-hostcalls` (one user's first and
//! second request, a refusal, another user) through the wasmtime host and prints, per case, the
//! guest's operators and host calls; with `--trace`, the operators each callback spent before
//! each host call it made and before returning.
//!
//! ```sh
//! scripts/build-wasm
//! cargo run -p host-tests --example guest_ops [-- [--trace] POLICY.json]   # TOLLGATE_WASM=… for another module
//! ```

use std::collections::BTreeMap;

use host_tests::{Harness, Plugin, Request};

/// `benches/count-hostcalls`'s policy: 2 requests a minute per `x-user-id`.
const POLICY: &str = r#"{"tiers":[{"name":"users","identity":{"header":"x-user-id"},
    "limits":[{"requests":2,"per":"minute"}]}]}"#;

/// `benches/count-hostcalls`' request with the headers Envoy adds. `Request::get` already has
/// `:authority` and `:scheme`, so those two appear twice (11 header lines; BENCHMARKS.md's
/// figures were taken with this request).
fn request(user: &str, id: &str) -> Request {
    Request::get("/api/v1/tasks")
        .header(":authority", "127.0.0.1:10000")
        .header(":scheme", "http")
        .header("accept-encoding", "identity")
        .header("user-agent", "Python-urllib/3.13")
        .header("x-user-id", user)
        .header("x-forwarded-proto", "http")
        .header("x-request-id", id)
}

/// What each name's count grew by from `before` to `after`, without the zeros.
fn since(
    before: &BTreeMap<&'static str, u64>,
    after: &BTreeMap<&'static str, u64>,
) -> BTreeMap<&'static str, u64> {
    after
        .iter()
        .map(|(name, n)| (*name, n - before.get(name).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<_> = std::env::args_os().skip(1).collect();
    let trace = args.iter().any(|a| a == "--trace");
    args.retain(|a| a != "--trace");
    let policy = match args.first() {
        Some(path) => std::fs::read_to_string(path)?,
        None => POLICY.to_owned(),
    };
    let plugin = Plugin::tollgate()?;
    let h = Harness::new(&plugin).workers(1).configure(&policy)?;
    // The VM's first request pays one-off set-up (allocator growth, lazy tables): not counted.
    h.send(
        0,
        &request("warm-up", "00000000-0000-0000-0000-000000000000"),
    )?;
    if trace {
        h.shared().trace_fuel();
    }
    let cases = [
        ("allowed", "a"),
        ("allowed2", "a"),
        ("denied", "a"),
        ("other", "b"),
    ];
    for (i, (case, user)) in cases.into_iter().enumerate() {
        let shared = h.shared();
        let (fuel, calls) = (shared.fuel().snapshot(), shared.calls().snapshot());
        let id = format!("6a3c1f0e-8d2b-4c5a-9e7f-00000000000{i}");
        let outcome = h.send(0, &request(user, &id))?;
        let ops = since(&fuel, &shared.fuel().snapshot());
        let made = since(&calls, &shared.calls().snapshot());
        let status = if outcome.is_continue() {
            200
        } else {
            outcome.status()
        };
        println!(
            "{case} (HTTP {status}): {} Wasm operators, {} host calls",
            ops.values().sum::<u64>(),
            made.values().sum::<u64>()
        );
        for (name, n) in made {
            println!("    {n} × {name}");
        }
        for (name, n) in ops {
            println!("    {n} operators in {name}");
        }
        if trace {
            // Where each export's fuel went: up to each host call it made, then to its return.
            for (what, used) in shared.take_fuel_trace() {
                if used == 0 && what.starts_with("proxy_on_") {
                    println!("      {what}:");
                } else {
                    println!("        {used:>6} → {what}");
                }
            }
        }
    }
    Ok(())
}
