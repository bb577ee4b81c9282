//! The standard gRPC health service (`grpc.health.v1.Health`) that Kubernetes' `grpc` probes and
//! Envoy's gRPC health checks call, on the same port as `ShouldRateLimit`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use tonic::Code as GrpcCode;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

fn ask(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.to_owned(),
    }
}

/// Serving for the whole server and for the rate limit service by name, unknown names are
/// NOT_FOUND (as the protocol says), and the status is the process's: it stays SERVING with
/// Redis unreachable (port 1), where the calls themselves answer UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_serving_for_the_server_and_the_rate_limit_service() {
    let svc = Service::start("redis://127.0.0.1:1", None, Duration::from_millis(200)).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", svc.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for name in ["", tollgate_sync::RATE_LIMIT_SERVICE_NAME] {
        let status = health.check(ask(name)).await.unwrap().into_inner().status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {name:?}");
    }
    let err = health.check(ask("no.such.Service")).await.unwrap_err();
    assert_eq!(err.code(), GrpcCode::NotFound);
    let mut rls = svc.client().await;
    let err = call(
        &mut rls,
        &domain("health"),
        vec![desc(
            &[("user", "a")],
            10,
            envoy_types::pb::envoy::r#type::v3::RateLimitUnit::Minute,
            None,
        )],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), GrpcCode::Unavailable, "{err:?}");
}

/// On shutdown the status turns NOT_SERVING before the server drains: a caller watching it
/// (`Health/Watch`, as a load balancer does) learns it before its connection goes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_turns_not_serving_when_shutdown_begins() {
    let svc = Service::start("redis://127.0.0.1:1", None, Duration::from_millis(200)).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", svc.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let mut watch = health
        .watch(ask(tollgate_sync::RATE_LIMIT_SERVICE_NAME))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("the first status within 5 s")
        .unwrap()
        .expect("a status");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    drop(svc); // completes the shutdown future
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("a status change within 5 s of shutdown")
        .unwrap()
        .expect("a status, not the end of the stream");
    assert_eq!(next.status, ServingStatus::NotServing as i32);
}
