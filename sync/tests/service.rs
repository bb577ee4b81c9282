//! tollgate-sync against a real redis-server: the counting, the faults, AUTH, and the binary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use envoy_types::pb::envoy::r#type::v3::RateLimitUnit::{self, Hour, Minute, Second};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use policy_core::bucket::Tat;
use redis::AsyncCommands;
use tollgate_sync::descriptor::{self, Bucket};
use tollgate_sync::model;
use tonic::Code as GrpcCode;

const OK: i32 = Code::Ok as i32;
const OVER: i32 = Code::OverLimit as i32;
const TIMEOUT: Duration = Duration::from_millis(300);

fn d(
    entries: &[(&str, &str)],
    rate: u32,
    unit: RateLimitUnit,
    hits: Option<u64>,
) -> envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor {
    desc(entries, rate, unit, hits)
}

macro_rules! redis_or_skip {
    ($($arg:expr),*) => {
        match Redis::start(&[$($arg),*]) {
            Some(r) => r,
            None => return,
        }
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_admits_exactly_burst_then_over_limit_with_the_time_to_full() {
    let redis = redis_or_skip!();
    let svc = Service::start(&redis.url(), None, TIMEOUT).await;
    let mut c = svc.client().await;
    let dom = domain("burst");
    for i in 0..10u32 {
        let r = call(
            &mut c,
            &dom,
            vec![d(&[("user", "alice")], 10, Minute, None)],
        )
        .await
        .unwrap();
        assert_eq!((r.overall_code, r.statuses[0].code), (OK, OK), "call {i}");
        assert_eq!(r.statuses[0].limit_remaining, 9 - i);
        // GCRA: after i+1 cells of 10/minute the bucket is full again in (i+1) × 6 s.
        let want = Duration::from_secs(6 * u64::from(i + 1));
        let got = until_reset(&r, 0);
        assert!(
            got <= want && got > want - Duration::from_secs(2),
            "call {i}: {got:?}"
        );
        let limit = r.statuses[0].current_limit.clone().unwrap();
        assert_eq!((limit.requests_per_unit, limit.unit), (10, 2));
    }
    let r = call(
        &mut c,
        &dom,
        vec![d(&[("user", "alice")], 10, Minute, None)],
    )
    .await
    .unwrap();
    assert_eq!((r.overall_code, r.statuses[0].code), (OVER, OVER));
    assert_eq!(r.statuses[0].limit_remaining, 0);
    let got = until_reset(&r, 0);
    assert!(
        got <= Duration::from_secs(60) && got > Duration::from_secs(58),
        "{got:?}"
    );
    // Another user is untouched.
    let r = call(&mut c, &dom, vec![d(&[("user", "bob")], 10, Minute, None)])
        .await
        .unwrap();
    assert_eq!((r.statuses[0].code, r.statuses[0].limit_remaining), (OK, 9));
    assert_eq!(
        svc.stats
            .model_mismatches
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_bucket_refills_at_its_rate() {
    let redis = redis_or_skip!();
    let svc = Service::start(&redis.url(), None, TIMEOUT).await;
    let mut c = svc.client().await;
    let dom = domain("refill");
    let one = || vec![d(&[("user", "alice")], 10, Second, None)];
    let mut admitted = 0;
    for _ in 0..15 {
        if call(&mut c, &dom, one()).await.unwrap().overall_code == OK {
            admitted += 1;
        }
    }
    // 10 at once, plus at most what refilled (one per 100 ms) while the calls ran.
    assert!((10..=11).contains(&admitted), "{admitted}");
    let r = call(&mut c, &dom, one()).await.unwrap();
    assert_eq!(r.overall_code, OVER);
    // Wait for the bucket to be full again, as the answer says, and a burst passes once more.
    tokio::time::sleep(until_reset(&r, 0) + Duration::from_millis(20)).await;
    let mut again = 0;
    for _ in 0..10 {
        if call(&mut c, &dom, one()).await.unwrap().overall_code == OK {
            again += 1;
        }
    }
    assert_eq!(again, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_adds_into_debt_never_refuses_and_reports_the_state() {
    let redis = redis_or_skip!();
    let svc = Service::start(&redis.url(), None, TIMEOUT).await;
    let mut c = svc.client().await;
    let dom = domain("sync");
    let sync = |hits| {
        vec![d(
            &[("user", "alice"), ("tollgate.op", "sync")],
            10,
            Minute,
            Some(hits),
        )]
    };
    let r = call(&mut c, &dom, sync(25)).await.unwrap();
    assert_eq!((r.overall_code, r.statuses[0].code), (OK, OK));
    assert_eq!(r.statuses[0].limit_remaining, 0);
    // 25 cells of 10/minute: full again in 150 s (15 s of debt past an empty bucket).
    let got = until_reset(&r, 0);
    assert!(
        got <= Duration::from_secs(150) && got > Duration::from_secs(148),
        "{got:?}"
    );
    let r = call(&mut c, &dom, sync(5)).await.unwrap();
    assert_eq!(r.overall_code, OK);
    assert!(until_reset(&r, 0) > Duration::from_secs(178));
    // A check now is refused and adds nothing.
    let check = call(
        &mut c,
        &dom,
        vec![d(&[("user", "alice")], 10, Minute, None)],
    )
    .await
    .unwrap();
    assert_eq!(check.overall_code, OVER);
    assert!(until_reset(&check, 0) <= until_reset(&r, 0));
    // The request-level hits_addend applies to a descriptor without its own.
    let mut req = request(
        &dom,
        vec![d(
            &[("user", "carol"), ("tollgate.op", "sync")],
            10,
            Minute,
            None,
        )],
    );
    req.hits_addend = 4;
    let r = c.should_rate_limit(req).await.unwrap().into_inner();
    assert_eq!(r.statuses[0].limit_remaining, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_racing_on_one_key_never_admit_more_than_the_burst() {
    let redis = redis_or_skip!();
    let a = Service::start(&redis.url(), None, Duration::from_secs(2)).await;
    let b = Service::start(&redis.url(), None, Duration::from_secs(2)).await;
    let dom = domain("race");
    let mut tasks = Vec::new();
    for i in 0..80 {
        let mut client = if i % 2 == 0 {
            a.client().await
        } else {
            b.client().await
        };
        let dom = dom.clone();
        tasks.push(tokio::spawn(async move {
            let descriptor = desc(&[("user", "alice")], 20, Hour, None);
            call(&mut client, &dom, vec![descriptor])
                .await
                .unwrap()
                .overall_code
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        if t.await.unwrap() == OK {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_gives_cells_back_but_never_beyond_full() {
    let redis = redis_or_skip!();
    let svc = Service::start(&redis.url(), None, TIMEOUT).await;
    let mut c = svc.client().await;
    let dom = domain("refund");
    let r = call(
        &mut c,
        &dom,
        vec![d(&[("user", "alice")], 10, Minute, Some(8))],
    )
    .await
    .unwrap();
    assert_eq!(r.statuses[0].limit_remaining, 2);
    let refund = |n: &str| {
        vec![d(
            &[("user", "alice"), ("tollgate.refund", n)],
            10,
            Minute,
            None,
        )]
    };
    let r = call(&mut c, &dom, refund("5")).await.unwrap();
    assert_eq!((r.statuses[0].code, r.statuses[0].limit_remaining), (OK, 7));
    // Settlement in one descriptor: give back a reservation of 7, charge the 3 really used.
    let settle = vec![d(
        &[
            ("user", "alice"),
            ("tollgate.refund", "7"),
            ("tollgate.op", "sync"),
        ],
        10,
        Minute,
        Some(3),
    )];
    let r = call(&mut c, &dom, settle).await.unwrap();
    assert_eq!(r.statuses[0].limit_remaining, 7);
    let r = call(&mut c, &dom, refund("100")).await.unwrap();
    assert_eq!(r.statuses[0].limit_remaining, 10);
    assert_eq!(until_reset(&r, 0), Duration::ZERO);
    let key = svc_key(&dom, "user=alice");
    let mut conn = svc.store.connection();
    let exists: bool = conn.exists(&key).await.unwrap();
    assert!(!exists, "a full bucket is no key");
}

/// The Redis key of a 10/minute bucket.
fn svc_key(domain: &str, entries: &str) -> String {
    format!("tollgate:{{{domain}}}:10/m:{entries}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_expires_when_the_bucket_is_full_again() {
    let redis = redis_or_skip!();
    let svc = Service::start(&redis.url(), None, TIMEOUT).await;
    let mut c = svc.client().await;
    let dom = domain("ttl");
    let mut conn = svc.store.connection();
    let key = svc_key(&dom, "user=alice");
    let sent = Instant::now();
    let r = call(
        &mut c,
        &dom,
        vec![d(&[("user", "alice")], 10, Minute, Some(3))],
    )
    .await
    .unwrap();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    // The script ran somewhere in `elapsed`; the TTL it set counts down from then.
    let elapsed = sent.elapsed().as_millis() as i64;
    let full_in = until_reset(&r, 0).as_millis() as i64; // 18 s for 3 cells of 10/minute
    assert!((17_900..=18_000).contains(&full_in), "{full_in}");
    assert!(
        pttl <= full_in + 2 && pttl >= full_in - elapsed - 2,
        "PTTL {pttl} ms, full in {full_in} ms"
    );
    // And on a fast bucket the key really goes away when it is full.
    let r = call(
        &mut c,
        &dom,
        vec![d(&[("user", "bob")], 10, Second, Some(2))],
    )
    .await
    .unwrap();
    let bob = format!("tollgate:{{{dom}}}:10/s:user=bob");
    assert!(conn.exists::<_, bool>(&bob).await.unwrap());
    tokio::time::sleep(until_reset(&r, 0) + Duration::from_millis(5)).await;
    assert!(!conn.exists::<_, bool>(&bob).await.unwrap());
    // What is stored is policy-core's TAT, in decimal.
    let value: String = conn.get(&key).await.unwrap();
    assert!(value.parse::<u128>().is_ok(), "{value}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_invalid_argument_naming_the_descriptor() {
    let redis = redis_or_skip!();
    let svc = Service::start(&redis.url(), None, TIMEOUT).await;
    let mut c = svc.client().await;
    let dom = domain("invalid");
    let mut no_limit = d(&[("user", "a")], 10, Minute, None);
    no_limit.limit = None;
    let err = call(
        &mut c,
        &dom,
        vec![d(&[("user", "a")], 10, Minute, None), no_limit],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), GrpcCode::InvalidArgument);
    assert!(
        err.message().starts_with("descriptors[1]: limit: missing"),
        "{}",
        err.message()
    );
    let err = call(
        &mut c,
        &dom,
        vec![d(
            &[("user", "a"), ("tollgate.burst", "x")],
            10,
            Minute,
            None,
        )],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), GrpcCode::InvalidArgument);
    assert!(
        err.message()
            .contains("descriptors[0]: entries: tollgate.burst='x'"),
        "{}",
        err.message()
    );
    let err = call(
        &mut c,
        &dom,
        vec![d(&[("user", "a")], 10, RateLimitUnit::Unknown, None)],
    )
    .await
    .unwrap_err();
    assert!(err.message().contains("limit.unit"), "{}", err.message());
    let many = vec![d(&[("user", "a")], 10, Minute, None); 10_001];
    let err = call(&mut c, &dom, many).await.unwrap_err();
    assert_eq!(err.code(), GrpcCode::InvalidArgument);
    assert!(
        err.message()
            .contains("10001 in one request, at most 10000"),
        "{}",
        err.message()
    );
    // Nothing was applied by any of them.
    let r = call(&mut c, &dom, vec![d(&[("user", "a")], 10, Minute, Some(0))])
        .await
        .unwrap();
    assert_eq!(r.statuses[0].limit_remaining, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_unavailable_within_the_timeout_and_recovers_by_itself() {
    let mut redis = redis_or_skip!();
    let svc = Service::start(&redis.url(), None, TIMEOUT).await;
    let mut c = svc.client().await;
    let dom = domain("down");
    let one = || vec![d(&[("user", "alice")], 100, Minute, None)];
    assert_eq!(call(&mut c, &dom, one()).await.unwrap().overall_code, OK);
    redis.kill();
    for _ in 0..3 {
        let started = Instant::now();
        let err = call(&mut c, &dom, one()).await.unwrap_err();
        assert_eq!(err.code(), GrpcCode::Unavailable, "{err:?}");
        // Bounded by the 300 ms timeout (with generous room for a loaded machine).
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let recovered = loop {
        match call(&mut c, &dom, one()).await {
            Ok(r) => break r,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.code(), GrpcCode::Unavailable);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no recovery after Redis came back: {e:?}"),
        }
    };
    assert_eq!(recovered.overall_code, OK);
    // A fresh Redis has no script cached: it was loaded again (NOSCRIPT → SCRIPT LOAD).
    assert_eq!(recovered.statuses[0].limit_remaining, 99);
    assert!(
        svc.stats
            .unavailable
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_is_unavailable_not_a_hang() {
    let redis = redis_or_skip!("--enable-debug-command", "local");
    let svc = Service::start(&redis.url(), None, TIMEOUT).await;
    let mut c = svc.client().await;
    let dom = domain("slow");
    // Freeze Redis for 1.5 s: every command waits behind DEBUG SLEEP.
    let url = redis.url();
    let sleeper = tokio::spawn(async move {
        let client = redis::Client::open(url).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        // This client gives up waiting after its own response timeout; Redis sleeps on.
        let _ = redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg("1.5")
            .query_async::<()>(&mut conn)
            .await;
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let err = call(&mut c, &dom, vec![d(&[("user", "a")], 10, Minute, None)])
        .await
        .unwrap_err();
    assert_eq!(err.code(), GrpcCode::Unavailable, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_millis(1_200),
        "{:?}",
        started.elapsed()
    );
    sleeper.await.unwrap();
    // Once Redis wakes up the service answers again on the same connection.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match call(&mut c, &dom, vec![d(&[("user", "a")], 10, Minute, None)]).await {
            Ok(r) => break assert_eq!(r.overall_code, OK),
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.code(), GrpcCode::Unavailable);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no recovery after Redis woke up: {e:?}"),
        }
    }
}

/// Random batches straight through the script, compared with policy-core's model: the same
/// states, the same decisions, including rates and costs that need more than 64 bits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lua_script_agrees_with_policy_core_on_random_batches() {
    let redis = redis_or_skip!();
    let svc = Service::start(&redis.url(), None, Duration::from_secs(5)).await;
    let dom = domain("model");
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let units = [
        Second,
        Minute,
        Hour,
        RateLimitUnit::Day,
        RateLimitUnit::Month,
        RateLimitUnit::Year,
    ];
    let mut checked = 0;
    let mut denied = 0;
    for round in 0..150 {
        let size = 1 + next(12) as usize;
        let mut descriptors = Vec::new();
        for _ in 0..size {
            let key = format!("k{}", next(4));
            let big = next(5) == 0;
            let rate = if big {
                u32::MAX - next(1000) as u32
            } else {
                1 + next(20) as u32
            };
            let unit = units[next(6) as usize];
            let mut entries: Vec<(String, String)> = vec![("user".into(), key)];
            if next(3) == 0 {
                entries.push(("tollgate.op".into(), "sync".into()));
            }
            if next(4) == 0 {
                let burst = if big {
                    (1u64 << 40) - next(1000)
                } else {
                    1 + next(30)
                };
                entries.push(("tollgate.burst".into(), burst.to_string()));
            }
            if next(5) == 0 {
                entries.push((
                    "tollgate.refund".into(),
                    next(if big { 1 << 40 } else { 40 }).to_string(),
                ));
            }
            let hits = if big { next(1 << 40) } else { next(12) };
            let refs: Vec<(&str, &str)> = entries
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            descriptors.push(desc(&refs, rate, unit, Some(hits)));
        }
        let req = request(&dom, descriptors);
        let buckets: Vec<Bucket> = descriptor::parse(&req, 100).unwrap();
        let reply = svc.store.run(&buckets).await.unwrap();
        let before: HashMap<&str, Tat> = reply.before(&buckets);
        let want = model::apply(reply.now, &buckets, &before);
        for (i, (w, got)) in want.iter().zip(&reply.rows).enumerate() {
            assert_eq!(
                (w.fits, w.tat),
                (got.fits, got.after),
                "round {round}, descriptor {i}: {:?}",
                buckets[i]
            );
            checked += 1;
            denied += usize::from(!got.fits);
        }
        if next(10) == 0 {
            tokio::time::sleep(Duration::from_millis(next(30))).await;
        }
    }
    assert!(
        checked > 500 && denied > 20,
        "checked {checked}, denied {denied}: the vectors must exercise both outcomes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_authenticates_with_a_password_file_and_stops_on_sigterm() {
    let redis = redis_or_skip!("--requirepass", "correct horse battery");
    let dir = std::env::temp_dir().join(format!("tollgate-sync-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("redis-password");
    std::fs::write(&file, "correct horse battery\n").unwrap();
    let url = redis.url();
    let mut bin = Binary::start(
        &[
            "--redis",
            &url,
            "--redis-password-file",
            file.to_str().unwrap(),
            "--timeout-ms",
            "500",
        ],
        &[],
    );
    let mut c = client(bin.addr).await;
    let dom = domain("auth");
    let r = call(&mut c, &dom, vec![d(&[("user", "a")], 10, Minute, None)])
        .await
        .unwrap();
    assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OK, 9));
    // Without the password the same Redis refuses, and the service says so rather than answer.
    let mut anonymous = Binary::start(&["--redis", &url, "--timeout-ms", "500"], &[]);
    let mut c2 = client(anonymous.addr).await;
    let err = call(&mut c2, &dom, vec![d(&[("user", "a")], 10, Minute, None)])
        .await
        .unwrap_err();
    assert_ne!(err.code(), GrpcCode::Ok);
    assert!(err.message().to_lowercase().contains("auth"), "{err:?}");
    // The environment variable works too.
    let mut from_env = Binary::start(
        &["--redis", &url],
        &[("TOLLGATE_REDIS_PASSWORD", "correct horse battery")],
    );
    let mut c3 = client(from_env.addr).await;
    let r = call(&mut c3, &dom, vec![d(&[("user", "a")], 10, Minute, None)])
        .await
        .unwrap();
    assert_eq!(r.statuses[0].limit_remaining, 8);
    for b in [&mut bin, &mut anonymous, &mut from_env] {
        let status = b.terminate().expect("exits within 10 s of SIGTERM");
        assert!(status.success(), "{status:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_binary_refuses_a_password_in_the_url() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate-sync"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--redis",
            "redis://:secret@127.0.0.1:1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--redis-password-file"), "{err}");
    assert!(!err.contains("secret"), "{err}");
}

/// A stock gRPC client (Python grpcio, with no tollgate code) calls the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_grpcio_client_can_call_it() {
    let redis = redis_or_skip!();
    let python = repo_root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} missing: run scripts/setup",
        python.display()
    );
    let svc = Service::start(&redis.url(), None, TIMEOUT).await;
    let script = repo_root().join("sync/tests/grpcio_client.py");
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(svc.addr.to_string())
        .arg(domain("grpcio"))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("admitted 5 of 7"), "{stdout}");
}

/// `rediss://`: the binary talks TLS to a redis-server with a certificate from a private CA,
/// trusted through `SSL_CERT_FILE` (which rustls-native-certs reads), together with AUTH.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_talks_tls_to_redis() {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: openssl is not installed (scripts/setup installs it)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("tollgate-sync-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=tollgate test CA",
        "-keyout",
        &path("ca.key"),
        "-out",
        &path("ca.pem"),
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        &path("redis.key"),
        "-out",
        &path("redis.csr"),
    ]);
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &path("redis.csr"),
        "-CA",
        &path("ca.pem"),
        "-CAkey",
        &path("ca.key"),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &path("ext"),
        "-out",
        &path("redis.pem"),
    ]);
    let tls_port = free_port().to_string();
    let redis = redis_or_skip!(
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &path("redis.pem"),
        "--tls-key-file",
        &path("redis.key"),
        "--tls-ca-cert-file",
        &path("ca.pem"),
        "--tls-auth-clients",
        "no",
        "--requirepass",
        "tls-secret"
    );
    let url = format!("rediss://localhost:{tls_port}");
    let mut bin = Binary::start(
        &["--redis", &url],
        &[
            ("SSL_CERT_FILE", &path("ca.pem")),
            ("TOLLGATE_REDIS_PASSWORD", "tls-secret"),
        ],
    );
    let mut c = client(bin.addr).await;
    let r = call(
        &mut c,
        &domain("tls"),
        vec![d(&[("user", "a")], 10, Minute, None)],
    )
    .await
    .unwrap();
    assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OK, 9));
    // Trusting another CA only, the same server is refused: the call fails, never goes in clear.
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=another CA",
        "-keyout",
        &path("other.key"),
        "-out",
        &path("other.pem"),
    ]);
    let other = path("other.pem");
    let mut untrusted = Binary::start(
        &["--redis", &url],
        &[
            ("SSL_CERT_FILE", other.as_str()),
            ("TOLLGATE_REDIS_PASSWORD", "tls-secret"),
        ],
    );
    let mut c2 = client(untrusted.addr).await;
    let err = call(
        &mut c2,
        &domain("tls"),
        vec![d(&[("user", "a")], 10, Minute, None)],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), GrpcCode::Unavailable, "{err:?}");
    for b in [&mut bin, &mut untrusted] {
        assert!(b.terminate().expect("exits on SIGTERM").success());
    }
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A sync round of alice (4 cells) and bob (3) of 10/minute, tagged with round `id` when given.
fn sync_round(
    id: Option<&str>,
) -> Vec<envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor> {
    let mut alice = vec![("user", "alice"), ("tollgate.op", "sync")];
    if let Some(id) = id {
        alice.push(("tollgate.round", id));
    }
    vec![
        d(&alice, 10, Minute, Some(4)),
        d(
            &[("user", "bob"), ("tollgate.op", "sync")],
            10,
            Minute,
            Some(3),
        ),
    ]
}

fn remaining(r: &envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse) -> Vec<u32> {
    r.statuses.iter().map(|s| s.limit_remaining).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_applied_twice_counts_once() {
    let redis = redis_or_skip!();
    let svc = Service::start(&redis.url(), None, TIMEOUT).await;
    let mut c = svc.client().await;
    let dom = domain("round");
    let first = call(&mut c, &dom, sync_round(Some("0123abcd-1")))
        .await
        .unwrap();
    assert_eq!(remaining(&first), [6, 7]);
    // The same round again (a resend after a lost answer): nothing added, the current state
    // answered, every status OK.
    let again = call(&mut c, &dom, sync_round(Some("0123abcd-1")))
        .await
        .unwrap();
    assert_eq!(remaining(&again), [6, 7]);
    assert_eq!(again.overall_code, OK);
    assert!(until_reset(&again, 0) <= until_reset(&first, 0));
    assert!(until_reset(&again, 0) + Duration::from_secs(1) > until_reset(&first, 0));
    assert_eq!(
        svc.stats.replays.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        svc.stats
            .model_mismatches
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    // The next round (a new id) adds again; so does a request without an id, every time.
    let next = call(&mut c, &dom, sync_round(Some("0123abcd-2")))
        .await
        .unwrap();
    assert_eq!(remaining(&next), [2, 4]);
    let plain = call(&mut c, &dom, sync_round(None)).await.unwrap();
    assert_eq!(remaining(&plain), [0, 1]);
    // The id is remembered under the domain's hash tag, for ten minutes.
    let mut conn = svc.store.connection();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(format!("tollgate:{{{dom}}}:round:0123abcd-1"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((590_000..=600_000).contains(&pttl), "{pttl}");
    // Ids that disagree, a round id on a check, and a malformed id are refused.
    let mut mixed = sync_round(Some("a"));
    mixed[1] = d(
        &[
            ("user", "bob"),
            ("tollgate.op", "sync"),
            ("tollgate.round", "b"),
        ],
        10,
        Minute,
        Some(1),
    );
    let err = call(&mut c, &dom, mixed).await.unwrap_err();
    assert_eq!(err.code(), GrpcCode::InvalidArgument);
    assert!(
        err.message()
            .contains("descriptors[1]: tollgate.round differs"),
        "{err:?}"
    );
    let check = vec![d(
        &[("user", "carol"), ("tollgate.round", "c")],
        10,
        Minute,
        None,
    )];
    let err = call(&mut c, &dom, check).await.unwrap_err();
    assert_eq!(err.code(), GrpcCode::InvalidArgument);
    assert!(
        err.message().contains("op=check is not replayable"),
        "{err:?}"
    );
    let bad = vec![d(
        &[
            ("user", "carol"),
            ("tollgate.op", "sync"),
            ("tollgate.round", "a b"),
        ],
        10,
        Minute,
        None,
    )];
    let err = call(&mut c, &dom, bad).await.unwrap_err();
    assert!(err.message().contains("tollgate.round='a b'"), "{err:?}");
    assert_eq!(
        remaining(
            &call(&mut c, &dom, sync_round(Some("0123abcd-2")))
                .await
                .unwrap()
        ),
        [0, 1]
    );
}

/// Freezes Redis for `secs` with DEBUG SLEEP (commands queue behind it), returning at once.
async fn freeze(redis: &Redis, secs: &str) -> tokio::task::JoinHandle<()> {
    let url = redis.url();
    let secs = secs.to_owned();
    let sleeper = tokio::spawn(async move {
        let client = redis::Client::open(url).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let _ = redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(secs)
            .query_async::<()>(&mut conn)
            .await;
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    sleeper
}

/// Calls until the service answers (Redis woke up), at most 5 s.
async fn call_until_answered(
    c: &mut envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient<
        tonic::transport::Channel,
    >,
    dom: &str,
    descriptors: Vec<
        envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor,
    >,
) -> envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match call(c, dom, descriptors.clone()).await {
            Ok(r) => return r,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.code(), GrpcCode::Unavailable, "{e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no answer after Redis woke up: {e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_round_resent_with_its_id_counts_once() {
    let redis = redis_or_skip!("--enable-debug-command", "local");
    let svc = Service::start(&redis.url(), None, TIMEOUT).await;
    let mut c = svc.client().await;
    let dom = domain("resent");
    // Redis frozen past the service's timeout: UNAVAILABLE, but the batch was sent, and Redis
    // runs it when it wakes up.
    let sleeper = freeze(&redis, "1").await;
    let err = call(&mut c, &dom, sync_round(Some("feed-1")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), GrpcCode::Unavailable, "{err:?}");
    sleeper.await.unwrap();
    let resent = call_until_answered(&mut c, &dom, sync_round(Some("feed-1"))).await;
    assert_eq!(remaining(&resent), [6, 7], "applied once, not twice");
    // Without an id (as before round ids), the same fault counts the round twice or more.
    let dom = domain("resent-plain");
    let sleeper = freeze(&redis, "1").await;
    let err = call(&mut c, &dom, sync_round(None)).await.unwrap_err();
    assert_eq!(err.code(), GrpcCode::Unavailable, "{err:?}");
    sleeper.await.unwrap();
    let resent = call_until_answered(&mut c, &dom, sync_round(None)).await;
    // (Every attempt that timed out while Redis slept was applied when it woke: twice at least.)
    assert!(
        resent.statuses[0].limit_remaining <= 2,
        "the timed-out batch was applied too: {:?}",
        remaining(&resent)
    );
}
