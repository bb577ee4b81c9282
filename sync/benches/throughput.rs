//! tollgate-sync's throughput in batched keys per second, against a local redis-server, and the
//! CPU it and Redis spend per 1,000 keys.
//!
//! `cargo bench -p tollgate-sync --bench throughput [-- SECONDS]`
//!
//! Starts its own redis-server (no persistence) and the real `tollgate-sync` binary (as built
//! for this bench: the release profile) in front of it, then for batches of 1, 100, 1,000 and
//! 10,000 descriptors (`op=sync` over 10,000 distinct users, the shape of a sync round, 10,000
//! being the service's default `--max-descriptors`; and `op=check`, the shape of strict mode)
//! runs 1 and 4 concurrent gRPC clients for SECONDS (default 3) each and prints batches/s,
//! keys/s, the mean batch latency, how much of it Redis spent executing the script (`INFO
//! commandstats`), and the CPU time (utime + stime from `/proc`) of the `tollgate-sync` and
//! `redis-server` processes per 1,000 keys. The clients run in this process, apart from both.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{desc, request, Binary, Redis};
use envoy_types::pb::envoy::r#type::v3::RateLimitUnit;
use tollgate_sync::{RedisConfig, Store};

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

/// Clock ticks per second, the unit of `/proc/PID/stat`'s CPU times.
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A process's CPU time so far (utime + stime), in seconds.
fn cpu_seconds(pid: u32, ticks: f64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name (which may contain spaces) in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks_used: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks_used / ticks
}

fn main() {
    let seconds: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(3);
    let Some(redis) = Redis::start(&[]) else {
        return;
    };
    let redis_pid = redis.pid().unwrap();
    // A batch of 10,000 waits behind the other clients' in Redis (one script at a time): a
    // timeout well above that, so that every batch is answered.
    let service = Binary::start(&["--redis", &redis.url(), "--timeout-ms", "30000"], &[]);
    let service_pid = service.child.id();
    let ticks = clock_ticks();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let config = RedisConfig::new(&redis.url(), None, Duration::from_secs(5)).unwrap();
        let mut redis_conn = Store::new(&config).unwrap().connection();
        println!(
            "| op | batch | clients | batches/s | keys/s | mean batch latency | of which in Redis \
             | tollgate-sync CPU per 1,000 keys | redis-server CPU per 1,000 keys |"
        );
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        for op in ["sync", "check"] {
            for size in [1usize, 100, 1_000, 10_000] {
                for clients in [1usize, 4] {
                    let _: () = redis::cmd("CONFIG")
                        .arg("RESETSTAT")
                        .query_async(&mut redis_conn)
                        .await
                        .unwrap();
                    let mut connected = Vec::new();
                    for _ in 0..clients {
                        connected.push(common::client(service.addr).await);
                    }
                    let (service_cpu, redis_cpu) = (
                        cpu_seconds(service_pid, ticks),
                        cpu_seconds(redis_pid, ticks),
                    );
                    let deadline = Instant::now() + Duration::from_secs(seconds);
                    let started = Instant::now();
                    let mut tasks = Vec::new();
                    for (c, mut client) in connected.into_iter().enumerate() {
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
                    // CPU seconds per key × 1e6 = milliseconds per 1,000 keys.
                    let per_1k = |cpu: f64| cpu / keys * 1e6;
                    let service_cpu = per_1k(cpu_seconds(service_pid, ticks) - service_cpu);
                    let redis_cpu = per_1k(cpu_seconds(redis_pid, ticks) - redis_cpu);
                    let info: String = redis::cmd("INFO")
                        .arg("commandstats")
                        .query_async(&mut redis_conn)
                        .await
                        .unwrap();
                    println!(
                        "| {op} | {size} | {clients} | {:.0} | {:.0} | {:.2} ms | {:.2} ms \
                         | {service_cpu:.1} ms | {redis_cpu:.1} ms |",
                        batches as f64 / wall,
                        keys / wall,
                        busy.as_secs_f64() * 1e3 / batches.max(1) as f64,
                        evalsha_usec(&info) / 1e3
                    );
                }
            }
        }
    });
    // tollgate-sync replays every batch through policy-core and counts disagreements: its exit
    // line (stderr) must say model_mismatches=0.
    let mut service = service;
    let status = service.terminate();
    assert!(
        status.is_some_and(|s| s.success()),
        "tollgate-sync did not stop cleanly: {status:?}"
    );
}
