//! tollgate-sync's throughput in batched keys per second, against a local redis-server.
//!
//! `cargo bench -p tollgate-sync --bench throughput [-- SECONDS]`
//!
//! Starts its own redis-server (no persistence) and the service in-process, then for batches of
//! 1, 100 and 1,000 descriptors (`op=sync` over 10,000 distinct users, the shape of a sync
//! round; and `op=check`, the shape of strict mode) runs 1 and 4 concurrent gRPC clients for
//! SECONDS (default 3) each and prints batches/s, keys/s, the mean batch latency and how much of
//! it Redis spent executing the script (`INFO commandstats`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{desc, request, Redis, Service};
use envoy_types::pb::envoy::r#type::v3::RateLimitUnit;

const USERS: usize = 10_000;

fn batch(
    domain: &str,
    size: usize,
    offset: usize,
    op: &str,
) -> envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest {
    let descriptors = (0..size)
        .map(|i| {
            let user = format!("user-{}", (offset + i) % USERS);
            desc(
                &[("user", &user), ("tollgate.op", op)],
                1_000,
                RateLimitUnit::Minute,
                Some(1),
            )
        })
        .collect();
    request(domain, descriptors)
}

/// Redis's own mean time per EVALSHA (the script's execution) from `INFO commandstats`.
fn evalsha_usec(info: &str) -> f64 {
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:"))
        .and_then(|l| l.split(',').find_map(|f| f.strip_prefix("usec_per_call=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

fn main() {
    let seconds: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(3);
    let Some(redis) = Redis::start(&[]) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let svc = Service::start(&redis.url(), None, Duration::from_secs(5)).await;
        println!("| op | batch | clients | batches/s | keys/s | mean batch latency | of which in Redis |");
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
        let mut redis_conn = svc.store.connection();
        for op in ["sync", "check"] {
            for size in [1usize, 100, 1_000] {
                for clients in [1usize, 4] {
                    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut redis_conn).await.unwrap();
                    let deadline = Instant::now() + Duration::from_secs(seconds);
                    let started = Instant::now();
                    let mut tasks = Vec::new();
                    for c in 0..clients {
                        let mut client = svc.client().await;
                        let domain = format!("bench-{op}");
                        tasks.push(tokio::spawn(async move {
                            let (mut batches, mut busy) = (0u64, Duration::ZERO);
                            let mut offset = c * 2_500;
                            while Instant::now() < deadline {
                                let req = batch(&domain, size, offset, op);
                                offset += size;
                                let t = Instant::now();
                                client.should_rate_limit(req).await.unwrap();
                                busy += t.elapsed();
                                batches += 1;
                            }
                            (batches, busy)
                        }));
                    }
                    let (mut batches, mut busy) = (0u64, Duration::ZERO);
                    for t in tasks {
                        let (b, d) = t.await.unwrap();
                        batches += b;
                        busy += d;
                    }
                    let wall = started.elapsed().as_secs_f64();
                    let keys = batches as f64 * size as f64;
                    let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut redis_conn).await.unwrap();
                    println!(
                        "| {op} | {size} | {clients} | {:.0} | {:.0} | {:.2} ms | {:.2} ms |",
                        batches as f64 / wall,
                        keys / wall,
                        busy.as_secs_f64() * 1e3 / batches.max(1) as f64,
                        evalsha_usec(&info) / 1e3
                    );
                }
            }
        }
        let mismatches = svc
            .stats
            .model_mismatches
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(mismatches, 0, "the script disagreed with policy-core");
    });
}
