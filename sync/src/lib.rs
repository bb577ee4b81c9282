//! `tollgate-sync`: the service between tollgate's global mode and Redis.
//!
//! A Wasm filter cannot open a TCP connection to Redis; it can call an Envoy cluster. This
//! stateless service is that cluster: it speaks Envoy's rate limit service protocol,
//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` (gRPC), and keeps every bucket
//! as one GCRA number in Redis. Run as many replicas as you like; they share nothing but Redis.
//!
//! # Protocol
//!
//! A `RateLimitRequest` is one **batch**, executed atomically by one Lua script call
//! ([`store::SCRIPT`]) on Redis's own clock (`TIME`), so replicas' clocks never matter.
//!
//! - `domain` (required, non-empty) namespaces the keys.
//! - Each **descriptor is one bucket**. Its counter key is the domain plus its entries in order,
//!   except entries whose key starts with `tollgate.`, which are parameters (below). The Redis key
//!   is `tollgate:{DOMAIN}:RATE/UNIT:k1=v1:k2=v2…` with every component percent-encoded outside
//!   `[A-Za-z0-9._-]`; the `{DOMAIN}` hash tag puts a domain's keys in one Redis Cluster slot, so
//!   a batch is valid on Cluster (at the cost that one domain lives on one shard). The rate is
//!   part of the key: changing a limit starts its buckets afresh, as it does locally.
//! - **The rate is the descriptor's `limit`** (`requests_per_unit` per `unit`; required — the
//!   service has no limits of its own). Units: SECOND 1 s, MINUTE 60 s, HOUR 3,600 s, DAY
//!   86,400 s, MONTH 30 days (tollgate's `month`), YEAR 365 days; UNKNOWN is refused.
//! - **The cost** is the descriptor's `hits_addend` if set (0 is allowed: a read), else the
//!   request's `hits_addend`, else 1 — except that a descriptor with `tollgate.refund` and no
//!   `hits_addend` of its own costs 0.
//! - Parameters (an unknown `tollgate.*` key, a repeated one or a bad value is refused):
//!   - `tollgate.burst` = N (1..=2^40): the bucket's capacity; default `requests_per_unit`.
//!   - `tollgate.op` = `check` (default) — plain rate limit service semantics, what strict mode
//!     and a stock Envoy `ratelimit` filter use: the cost is added if it fits, else the
//!     descriptor is `OVER_LIMIT` and nothing is added. If any `check` of a request does not fit,
//!     no `check` of that request adds anything (all or nothing).
//!   - `tollgate.op` = `sync` — the cost was already admitted by a filter deciding locally: it is
//!     added unconditionally, into debt if need be, and the descriptor is never `OVER_LIMIT`.
//!   - `tollgate.refund` = N (0..=2^40): first give back N cells of an earlier reservation
//!     (never fuller than full); RLS hits are unsigned, so this is how a settlement returns an
//!     over-estimate. Refunds and syncs apply even when a check in the same request fails.
//! - Several descriptors may name the same bucket; they apply in order.
//!
//! The **answer** per descriptor, computed by policy-core's `Rate::peek` on the stored state at
//! Redis's `now`: `code` (`OK`, or `OVER_LIMIT` for a check that did not fit), `current_limit`
//! (the rate, echoed), `limit_remaining` (whole cells left, saturating at `u32::MAX`) and
//! `duration_until_reset` = the time until the bucket is full again, i.e. the GCRA state
//! relative to Redis's clock: a filter folds it into its local bucket as
//! `tat = max(local_tat, local_now + duration_until_reset)` without comparing clocks.
//! `overall_code` is `OVER_LIMIT` if any descriptor is.
//!
//! # State in Redis
//!
//! One string per bucket: its theoretical arrival time in units of 1/`requests_per_unit`
//! nanoseconds since the Unix epoch (policy-core's `Tat`), in decimal. A full bucket is no key;
//! every write sets the key to expire (`PXAT`) within one millisecond after the instant the
//! bucket is full again — never before — so Redis memory is bounded by the active keys.
//!
//! # Errors
//!
//! - `INVALID_ARGUMENT`: a malformed request, naming the descriptor index and the reason
//!   (`descriptors[2]: limit.unit: 0 is not one of …`). Nothing is applied.
//! - `UNAVAILABLE`: Redis unreachable, failing over, or slower than `--timeout-ms`. Never a hang
//!   and never `OK` by accident. After a timeout the batch **may or may not** have been applied
//!   (the script can still run after the service stopped waiting): a `sync` caller that resends
//!   counts that delta at most twice — stricter, never looser.
//! - `INTERNAL`: Redis answered something the script never returns (a key of the `tollgate:`
//!   prefix holding a non-TAT value).

pub mod descriptor;
pub mod model;
pub mod service;
pub mod store;

use std::future::Future;
use std::sync::Arc;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

pub use service::{Limits, Stats, SyncService};
pub use store::{RedisConfig, Store};

/// The name under which `grpc.health.v1.Health/Check` reports the rate limit service (the
/// empty name reports the whole server; both have the same status).
pub const RATE_LIMIT_SERVICE_NAME: &str = "envoy.service.ratelimit.v3.RateLimitService";

/// Serves `ShouldRateLimit` on `listener` until `shutdown` completes, then finishes the calls in
/// flight and returns.
///
/// The same port serves the standard gRPC health service, `grpc.health.v1.Health`, so that
/// Kubernetes' `grpc` probes and Envoy's gRPC health checks need nothing else: `SERVING` while
/// calls are accepted, `NOT_SERVING` from the moment `shutdown` completes (callers still connected
/// then see the drain coming). It reports the process, not Redis: with Redis down every replica
/// would turn unready at once, and callers would lose the service's fast, counted `UNAVAILABLE`
/// answer for a "no healthy upstream" from Envoy; the fallback they apply is the same either way.
pub async fn serve(
    listener: TcpListener,
    store: Store,
    limits: Limits,
    stats: Arc<Stats>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let service = SyncService::new(store, limits, stats);
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<RateLimitServiceServer<SyncService>>()
        .await;
    let shutdown = async move {
        shutdown.await;
        for name in ["", RATE_LIMIT_SERVICE_NAME] {
            reporter
                .set_service_status(name, tonic_health::ServingStatus::NotServing)
                .await;
        }
    };
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(RateLimitServiceServer::new(service))
        // TCP_NODELAY: a multi-segment answer must not wait for the client's delayed ACK.
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
}
