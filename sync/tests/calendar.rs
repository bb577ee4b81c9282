//! Calendar quotas in tollgate-sync against a real redis-server: one counter per period, a new
//! period from zero, the answer pointing to the period's end, and the script against the model.
//!
//! The boundary tests run the script on a clock they give it ([`Store::run_at`]; the service
//! itself always runs on Redis's `TIME`), so a period's end is exact and needs no waiting. Their
//! clocks are in 2030: a key expires by the clock of the host (a counter written for a period
//! already past would be gone at once).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use envoy_types::pb::envoy::r#type::v3::RateLimitUnit::{Day, Minute, Month};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse;
use policy_core::bucket::Tat;
use policy_core::calendar::days_from_civil;
use policy_core::Nanos;
use redis::AsyncCommands;
use tollgate_sync::descriptor::{self, Bucket};
use tollgate_sync::model;
use tollgate_sync::service::respond;
use tollgate_sync::store::Store;
use tonic::Code as GrpcCode;

const OK: i32 = Code::Ok as i32;
const OVER: i32 = Code::OverLimit as i32;
const TIMEOUT: Duration = Duration::from_millis(500);
const SEC: u64 = 1_000_000_000;

macro_rules! redis_or_skip {
    () => {
        match Redis::start(&[]) {
            Some(r) => r,
            None => return,
        }
    };
}

fn at(y: i64, m: u32, d: u32, h: u64, min: u64, s: u64) -> Nanos {
    let days = days_from_civil(y, m, d) as u64;
    Nanos::from_secs(days * 86_400 + h * 3_600 + min * 60 + s)
}

/// Runs `descriptors` (as `tollgate.op` says) on `clock`, checks the script against the model,
/// and answers as the service would.
async fn run(
    store: &Store,
    dom: &str,
    descriptors: Vec<
        envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor,
    >,
    clock: Nanos,
) -> (Vec<Bucket>, RateLimitResponse) {
    let buckets = descriptor::parse(&request(dom, descriptors), 100).unwrap();
    let reply = store.run_at(&buckets, None, Some(clock)).await.unwrap();
    assert_eq!(reply.now, clock);
    let before: HashMap<&str, Tat> = reply.before(&buckets);
    let want = model::apply(reply.now, &buckets, &before);
    for (i, (w, got)) in want.iter().zip(&reply.rows).enumerate() {
        assert_eq!((w.fits, w.tat), (got.fits, got.after), "descriptor {i}");
    }
    let response = respond(&buckets, &reply);
    (buckets, response)
}

fn quota(
    user: &str,
    extra: &[(&str, &str)],
    hits: u64,
) -> envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor {
    let mut entries = vec![("user", user), ("tollgate.reset", "minute")];
    entries.extend_from_slice(extra);
    desc(&entries, 3, Minute, Some(hits))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_quota_refuses_until_the_minutes_end_and_the_next_minute_starts_from_zero() {
    let redis = redis_or_skip!();
    let svc = Service::start(&redis.url(), None, TIMEOUT).await;
    let dom = domain("cal-minute");
    let minute = at(2030, 12, 2, 21, 0, 0);
    let late = Nanos(minute.0 + 59 * SEC + 900_000_000);
    // Three cells from two "replicas" (one sync of 2, one check of 1) fill the minute.
    let (_, r) = run(
        &svc.store,
        &dom,
        vec![quota("alice", &[("tollgate.op", "sync")], 2)],
        Nanos(minute.0 + 10 * SEC),
    )
    .await;
    assert_eq!(r.statuses[0].limit_remaining, 1);
    assert_eq!(until_reset(&r, 0), Duration::from_secs(50));
    let (_, r) = run(
        &svc.store,
        &dom,
        vec![quota("alice", &[], 1)],
        Nanos(minute.0 + 30 * SEC),
    )
    .await;
    assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OK, 0));
    // No refill within the minute: 100 ms before its end still refused, the wait its end.
    let (buckets, r) = run(&svc.store, &dom, vec![quota("alice", &[], 1)], late).await;
    assert_eq!((r.overall_code, r.statuses[0].code), (OVER, OVER));
    assert_eq!(until_reset(&r, 0), Duration::from_millis(100));
    let limit = r.statuses[0].current_limit.clone().unwrap();
    assert_eq!((limit.requests_per_unit, limit.unit), (3, Minute as i32));
    // The minute's counter is its own key, kept until the minute ends plus the margin.
    let old_key = buckets[0].period_key(late).unwrap();
    assert!(
        old_key.ends_with(&format!(":@{}", minute.0 / SEC)),
        "{old_key}"
    );
    let mut con = svc.store.connection();
    let used: String = con.get(&old_key).await.unwrap();
    assert_eq!(used, "3");
    let expire_at: i64 = redis::cmd("PEXPIRETIME")
        .arg(&old_key)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(expire_at as u64, (minute.0 + 120 * SEC) / 1_000_000);
    // At exactly 21:01:00.000 the next minute admits, from zero, with the old counter untouched.
    let next = Nanos(minute.0 + 60 * SEC);
    let (buckets, r) = run(&svc.store, &dom, vec![quota("alice", &[], 1)], next).await;
    assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OK, 2));
    assert_eq!(until_reset(&r, 0), Duration::from_secs(60));
    assert_ne!(buckets[0].period_key(next).unwrap(), old_key);
    let still: String = con.get(&old_key).await.unwrap();
    assert_eq!(still, "3");
    // Another user's quota is another counter.
    let (_, r) = run(&svc.store, &dom, vec![quota("bob", &[], 3)], late).await;
    assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OK, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_sync_debt_and_all_or_nothing_checks_count_in_the_period() {
    let redis = redis_or_skip!();
    let svc = Service::start(&redis.url(), None, TIMEOUT).await;
    let dom = domain("cal-mixed");
    let t = Nanos(at(2030, 1, 31, 23, 59, 0).0);
    let month = |user: &str, extra: &[(&str, &str)], hits: u64| {
        let mut entries = vec![
            ("user", user),
            ("tollgate.reset", "month"),
            ("tollgate.utc_offset", "3600"),
        ];
        entries.extend_from_slice(extra);
        desc(&entries, 1_000, Month, Some(hits))
    };
    // A reservation of 800, then its settlement: 800 given back, 100 charged.
    let (_, r) = run(&svc.store, &dom, vec![month("carol", &[], 800)], t).await;
    assert_eq!(r.statuses[0].limit_remaining, 200);
    let (_, r) = run(
        &svc.store,
        &dom,
        vec![month(
            "carol",
            &[("tollgate.refund", "800"), ("tollgate.op", "sync")],
            100,
        )],
        t,
    )
    .await;
    assert_eq!(r.statuses[0].limit_remaining, 900);
    // At +01:00 it is February already: 2026-01-31 23:00 UTC began the period.
    assert_eq!(
        until_reset(&r, 0),
        Duration::from_secs(28 * 86_400 - 60 * 60 + 60)
    );
    // Sync adds into debt, and a check beside a refused one adds nothing (all or nothing).
    let (_, r) = run(
        &svc.store,
        &dom,
        vec![month("carol", &[("tollgate.op", "sync")], 1_500)],
        t,
    )
    .await;
    assert_eq!(r.statuses[0].limit_remaining, 0);
    let day = desc(
        &[("user", "carol"), ("tollgate.reset", "day")],
        10,
        Day,
        Some(1),
    );
    let (_, r) = run(
        &svc.store,
        &dom,
        vec![day.clone(), month("carol", &[], 1)],
        t,
    )
    .await;
    assert_eq!((r.statuses[0].code, r.statuses[1].code), (OK, OVER));
    let (_, r) = run(&svc.store, &dom, vec![day], t).await;
    assert_eq!(
        r.statuses[0].limit_remaining, 9,
        "the refused batch took nothing from the day"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_time_the_answer_points_to_the_end_of_the_current_minute() {
    let redis = redis_or_skip!();
    let svc = Service::start(&redis.url(), None, TIMEOUT).await;
    let mut c = svc.client().await;
    let dom = domain("cal-time");
    let d = desc(
        &[("user", "dave"), ("tollgate.reset", "minute")],
        2,
        Minute,
        None,
    );
    let r = call(&mut c, &dom, vec![d.clone(), d.clone()])
        .await
        .unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    assert_eq!(r.overall_code, OK);
    let to_end =
        Duration::from_secs(60) - Duration::from_nanos((now.as_nanos() % 60_000_000_000) as u64);
    let got = until_reset(&r, 1);
    // The same host's clock: within the call's time, unless the minute turned in between.
    assert!(
        got.abs_diff(to_end) < Duration::from_secs(2)
            || got.abs_diff(to_end) > Duration::from_secs(58),
        "{got:?} vs {to_end:?}"
    );
    assert_eq!(r.statuses[1].limit_remaining, 0);
    let mut con = svc.store.connection();
    let keys: Vec<String> = con
        .keys(format!("tollgate:{{{dom}}}:2/minute+0:*"))
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let start = keys[0].rsplit_once(":@").unwrap().1.parse::<u64>().unwrap();
    assert_eq!(start % 60, 0, "{keys:?}");
    let ttl_ms: i64 = con.pttl(&keys[0]).await.unwrap();
    assert!(ttl_ms > 60_000 && ttl_ms <= 120_000, "{ttl_ms}");
    // The service replayed the batch through policy-core's quota and agreed with the script.
    let stats = &svc.stats;
    assert_eq!(
        stats
            .model_mismatches
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(stats.rounds.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_period_is_refused_by_name() {
    let redis = redis_or_skip!();
    let svc = Service::start(&redis.url(), None, TIMEOUT).await;
    let mut c = svc.client().await;
    let dom = domain("cal-bad");
    for (entries, want) in [
        (
            vec![("user", "e"), ("tollgate.reset", "fortnight")],
            "tollgate.reset='fortnight': expected minute, hour, day, week, month or year",
        ),
        (
            vec![
                ("user", "e"),
                ("tollgate.reset", "day"),
                ("tollgate.utc_offset", "+3600"),
            ],
            "tollgate.utc_offset='+3600': expected whole seconds",
        ),
        (
            vec![("user", "e"), ("tollgate.utc_offset", "3600")],
            "'tollgate.utc_offset' applies only to a calendar quota",
        ),
        (
            vec![
                ("user", "e"),
                ("tollgate.reset", "day"),
                ("tollgate.burst", "5"),
            ],
            "'tollgate.burst' does not apply to a calendar quota",
        ),
    ] {
        let err = call(&mut c, &dom, vec![desc(&entries, 5, Day, None)])
            .await
            .unwrap_err();
        assert_eq!(err.code(), GrpcCode::InvalidArgument);
        assert!(err.message().contains(want), "{}", err.message());
    }
}
