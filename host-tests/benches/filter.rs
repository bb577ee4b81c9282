//! tollgate.wasm through the wasmtime host: the whole request path of the real module
//! (callbacks, host calls, guest allocation), without Envoy.
//!
//! One criterion entry (STYLE.md item 11), a virtual clock the loop advances (never a real clock
//! read), explicit throughput. Needs `target/wasm32-unknown-unknown/release/tollgate.wasm`
//! (`scripts/build-wasm`; `$TOLLGATE_WASM` overrides the path).
//!
//! Run: `cargo bench -p host-tests --bench filter`. CI only builds it (`cargo bench --no-run`).
//!
//! Groups:
//! - `filter/allowed/<users>`: a GET through one worker, rotating among 1 and 10,000 users (each
//!   back every 20 ms of virtual time, under its 100/s), all admitted: request headers, the upstream's 200, response headers, done/log/delete.
//! - `filter/denied`: one user far over its limit: the filter's 429 local reply.
//!
//! What wasmtime (Cranelift) costs per request is not what V8 in Envoy costs; the point is the
//! guest's own work, and how it moves when the filter changes. Envoy's figures are in
//! BENCHMARKS.md (benches/envoy-load).
#![allow(
    missing_docs,
    missing_debug_implementations,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)] // a benchmark harness, not the request path

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use host_tests::{Harness, Outcome, Plugin};

/// 2023-11-14, so that times are as large as in production.
const T0: u64 = 1_700_000_000_000_000_000;

fn policy(per_minute: u32, burst: u32) -> String {
    format!(
        r#"{{"tiers":[{{"name":"users","identity":{{"header":"x-user-id"}},
            "limits":[{{"requests":{per_minute},"per":"minute","burst":{burst}}}]}}]}}"#
    )
}

fn allowed(c: &mut Criterion, plugin: &Plugin) {
    let mut g = c.benchmark_group("filter/allowed");
    g.throughput(Throughput::Elements(1));
    for users in [1u32, 10_000] {
        let h = Harness::new(plugin)
            .configure(policy(6000, 100))
            .expect("configure");
        let ids: Vec<String> = (0..users).map(|u| format!("user-{u:06}")).collect();
        // Every user comes back once per 20 ms of virtual time (50/s, under its 100/s).
        let step = 20_000_000 / u64::from(users);
        let mut now = T0;
        let mut next = 0usize;
        g.bench_function(BenchmarkId::from_parameter(users), |b| {
            b.iter(|| {
                now += step;
                h.set_time(now);
                let id = &ids[next];
                next = (next + 1) % ids.len();
                let out = h
                    .request(0, &[("x-user-id", id.as_str())])
                    .expect("request");
                assert!(matches!(out, Outcome::Continue { .. }), "{out:?}");
                black_box(out)
            })
        });
    }
    g.finish();
}

fn denied(c: &mut Criterion, plugin: &Plugin) {
    let mut g = c.benchmark_group("filter");
    g.throughput(Throughput::Elements(1));
    let h = Harness::new(plugin)
        .configure(policy(1, 1))
        .expect("configure");
    h.set_time(T0);
    let _ = h.request(0, &[("x-user-id", "greedy")]).expect("request");
    let mut now = T0;
    g.bench_function("denied", |b| {
        b.iter(|| {
            now += 1_000; // a microsecond: the bucket never refills during the run
            h.set_time(now);
            let out = h.request(0, &[("x-user-id", "greedy")]).expect("request");
            assert!(
                matches!(out, Outcome::LocalReply { status: 429, .. }),
                "{out:?}"
            );
            black_box(out)
        })
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    let plugin = Plugin::tollgate().expect("tollgate.wasm: run scripts/build-wasm");
    allowed(c, &plugin);
    denied(c, &plugin);
}

criterion_group! {
    name = filter;
    // Short runs: the machine is shared. Raise with --measurement-time for publication.
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = benches
}
criterion_main!(filter);
