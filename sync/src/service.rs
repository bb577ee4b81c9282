//! The gRPC service: `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` over
//! [`Store`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit as ResponseUnit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as ProtoDuration;
use tonic::{Request, Response, Status};

use crate::descriptor::{self, Bucket, Unit};
use crate::model;
use crate::store::{Reply, Store};
use policy_core::bucket::{Check, Tat};
use policy_core::Nanos;

/// Counters of what the service has done since it started (logged every minute and at exit).
#[derive(Debug, Default)]
pub struct Stats {
    /// Batches answered from Redis.
    pub rounds: AtomicU64,
    /// Descriptors (keys) in those batches.
    pub keys: AtomicU64,
    /// Descriptors answered `OVER_LIMIT`.
    pub over_limit: AtomicU64,
    /// Requests refused as malformed (`INVALID_ARGUMENT`).
    pub invalid: AtomicU64,
    /// Batches Redis did not answer in time or at all (`UNAVAILABLE`).
    pub unavailable: AtomicU64,
    /// Batches Redis answered with something unexpected (`INTERNAL`).
    pub internal: AtomicU64,
    /// Batches whose round id had been applied before (answered, nothing added).
    pub replays: AtomicU64,
    /// Descriptors where the script's result differed from policy-core's (must stay 0).
    pub model_mismatches: AtomicU64,
}

impl Stats {
    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Logs the counters at info level.
    pub fn log(&self) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        tracing::info!(
            rounds = get(&self.rounds),
            keys = get(&self.keys),
            over_limit = get(&self.over_limit),
            invalid = get(&self.invalid),
            unavailable = get(&self.unavailable),
            internal = get(&self.internal),
            replays = get(&self.replays),
            model_mismatches = get(&self.model_mismatches),
            "stats"
        );
    }
}

/// The service's settings.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Bound on each call's Redis round trip for one descriptor; past it the call is answered
    /// `UNAVAILABLE`.
    pub timeout: Duration,
    /// What each further descriptor adds to that bound: Redis runs a batch in ~30–40 µs per key
    /// on a small machine, so a fixed bound that suits a strict check of one key would fail
    /// every sync round of thousands (and, the batch having been sent, Redis would still apply
    /// it). The filter's own call timeout grows faster (150 µs per descriptor), so the service
    /// answers first.
    pub per_descriptor: Duration,
    /// The most descriptors one request may carry.
    pub max_descriptors: usize,
}

/// `RateLimitService` backed by Redis.
#[derive(Debug, Clone)]
pub struct SyncService {
    store: Store,
    limits: Limits,
    stats: Arc<Stats>,
}

impl SyncService {
    /// A service over `store`.
    pub fn new(store: Store, limits: Limits, stats: Arc<Stats>) -> SyncService {
        SyncService {
            store,
            limits,
            stats,
        }
    }

    async fn answer(&self, request: &RateLimitRequest) -> Result<RateLimitResponse, Status> {
        let buckets = descriptor::parse(request, self.limits.max_descriptors).map_err(|e| {
            self.stats.invalid.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(domain = %request.domain, error = %e, "invalid request");
            Status::invalid_argument(e.to_string())
        })?;
        let round = descriptor::round_key(request, &buckets).map_err(|e| {
            self.stats.invalid.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(domain = %request.domain, error = %e, "invalid request");
            Status::invalid_argument(e.to_string())
        })?;
        let timeout = self.limits.timeout.saturating_add(
            self.limits
                .per_descriptor
                .saturating_mul(u32::try_from(buckets.len()).unwrap_or(u32::MAX)),
        );
        let started = Instant::now();
        let run = self.store.run_round(&buckets, round.as_deref());
        let reply = match tokio::time::timeout(timeout, run).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) if e.is_unavailable() => {
                self.stats.unavailable.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(domain = %request.domain, keys = buckets.len(), error = %e, "redis unavailable");
                return Err(Status::unavailable(e.to_string()));
            }
            Ok(Err(e)) => {
                self.stats.internal.fetch_add(1, Ordering::Relaxed);
                tracing::error!(domain = %request.domain, keys = buckets.len(), error = %e, "redis failed the batch");
                return Err(Status::internal(e.to_string()));
            }
            Err(_) => {
                self.stats.unavailable.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(domain = %request.domain, keys = buckets.len(), timeout_ms = timeout.as_millis(), "redis timed out");
                return Err(Status::unavailable(format!(
                    "redis did not answer within {} ms (the batch may or may not have been applied; resent with its tollgate.round id, it counts once)",
                    timeout.as_millis()
                )));
            }
        };
        if reply.applied {
            self.check_against_model(&buckets, &reply, &request.domain);
        } else {
            self.stats.replays.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(domain = %request.domain, keys = buckets.len(), "round applied before: answered, nothing added");
        }
        let response = respond(&buckets, &reply);
        let over = response
            .statuses
            .iter()
            .filter(|s| s.code == Code::OverLimit as i32)
            .count();
        self.stats.rounds.fetch_add(1, Ordering::Relaxed);
        Stats::add(&self.stats.keys, buckets.len());
        Stats::add(&self.stats.over_limit, over);
        tracing::debug!(
            domain = %request.domain,
            keys = buckets.len(),
            over_limit = over,
            elapsed_us = started.elapsed().as_micros(),
            "round"
        );
        Ok(response)
    }

    /// Replays the batch through policy-core from the states the script read; any difference is
    /// a bug in the script, logged loudly and counted (the answer still reports what Redis holds).
    fn check_against_model(&self, buckets: &[Bucket], reply: &Reply, domain: &str) {
        let expected = model::apply(reply.now, buckets, &reply.before(buckets));
        for (index, (want, got)) in expected.iter().zip(&reply.rows).enumerate() {
            if want.fits != got.fits || want.tat != got.after {
                self.stats.model_mismatches.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    domain,
                    index,
                    key = %buckets.get(index).map_or("", |b| b.key.as_str()),
                    script_tat = %got.after.0,
                    model_tat = %want.tat.0,
                    script_fits = got.fits,
                    model_fits = want.fits,
                    "the Redis script disagrees with policy-core"
                );
            }
        }
    }
}

/// The response for a batch: each descriptor's code and its bucket as seen at Redis's `now`.
pub fn respond(buckets: &[Bucket], reply: &Reply) -> RateLimitResponse {
    let statuses: Vec<DescriptorStatus> = buckets
        .iter()
        .zip(&reply.rows)
        .map(|(b, row)| {
            let seen = seen(b, row.after, reply.now);
            let code = if row.fits { Code::Ok } else { Code::OverLimit };
            DescriptorStatus {
                code: code as i32,
                current_limit: Some(RateLimit {
                    name: String::new(),
                    requests_per_unit: b.requests_per_unit,
                    unit: response_unit(b.unit) as i32,
                }),
                limit_remaining: u32::try_from(seen.remaining).unwrap_or(u32::MAX),
                duration_until_reset: Some(duration(seen.reset_after)),
                quota: None,
            }
        })
        .collect();
    let over = statuses.iter().any(|s| s.code == Code::OverLimit as i32);
    RateLimitResponse {
        overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
        statuses,
        ..RateLimitResponse::default()
    }
}

/// A bucket as seen at `now`: what is left and when it is full again. A calendar quota's
/// state is its period's count ([`crate::model`]): what is left of its amount, and the time to
/// its period's end (also when nothing is used: a client is told when the period turns).
fn seen(b: &Bucket, state: Tat, now: Nanos) -> Check {
    match b.calendar {
        Some(calendar) => {
            let used = u64::try_from(state.0).unwrap_or(u64::MAX);
            let reset_after = Nanos(calendar.end(now).0.saturating_sub(now.0));
            Check {
                allowed: used < b.rate.amount(),
                tat: state,
                remaining: b.rate.amount().saturating_sub(used),
                reset_after,
                retry_after: reset_after,
            }
        }
        None => b.rate.peek(state, now),
    }
}

fn response_unit(unit: Unit) -> ResponseUnit {
    match unit {
        Unit::Second => ResponseUnit::Second,
        Unit::Minute => ResponseUnit::Minute,
        Unit::Hour => ResponseUnit::Hour,
        Unit::Day => ResponseUnit::Day,
        Unit::Month => ResponseUnit::Month,
        Unit::Year => ResponseUnit::Year,
    }
}

fn duration(ns: policy_core::Nanos) -> ProtoDuration {
    ProtoDuration {
        seconds: i64::try_from(ns.0 / 1_000_000_000).unwrap_or(i64::MAX),
        nanos: i32::try_from(ns.0 % 1_000_000_000).unwrap_or(0),
    }
}

#[tonic::async_trait]
impl RateLimitService for SyncService {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        self.answer(request.get_ref()).await.map(Response::new)
    }
}
