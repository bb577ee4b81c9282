//! The filter's messages (policy-core's prost types) against Envoy's own (`envoy-types`, generated
//! from Envoy's `.proto` files): a batch the filter encodes decodes to the expected
//! `RateLimitRequest` and is accepted by this service's parser as the buckets it means; an answer
//! this service encodes decodes to the statuses the filter folds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use envoy_types::pb::envoy::service::ratelimit::v3 as rls;
use policy_core::global::descriptor::{describe, BucketKey, Op, TableId};
use policy_core::global::proto;
use policy_core::{Nanos, Policy};
use prost::Message;
use tollgate_sync::descriptor::{self, Unit};

const POLICY: &str = r#"{"hash_secret":"s3cret","global":{"cluster":"tollgate-sync","domain":"api"},
  "tiers":[
    {"name":"user","identity":{"header":"x-user-id"},
     "limits":[{"requests":100,"per":"minute"},{"requests":7000,"per":"week","burst":50,"name":"weekly"}]},
    {"name":"llm","identity":{"header":"x-user-id"},"tokens":[{"tokens":100000,"per":"day"}]}]}"#;

fn policy() -> Policy {
    Policy::from_json(POLICY.as_bytes()).expect("valid policy")
}

fn batch(policy: &Policy) -> (proto::RateLimitRequest, u64) {
    let user = &policy.tiers()[0];
    let slot = policy
        .seed()
        .slot(&[user.name.as_bytes(), b"alice"], user.table.sets());
    let llm = &policy.tiers()[1];
    // Budget 0's slot: its budget set's.
    let (set, _) = llm.budget_set(0).expect("budget 0 has a set");
    let tokens = set.slot(policy.seed(), &llm.name, b"alice", None);
    let mut descriptors: Vec<proto::RateLimitDescriptor> = describe(
        policy,
        &BucketKey::new(0, TableId::Limits, slot),
        Op::Sync,
        3,
    )
    .into_iter()
    .map(|d| d.descriptor)
    .collect();
    descriptors.extend(
        describe(
            policy,
            &BucketKey::new(1, TableId::Budget(0), tokens),
            Op::Sync,
            1234,
        )
        .into_iter()
        .map(|d| d.descriptor),
    );
    let request = proto::RateLimitRequest {
        domain: "api".into(),
        descriptors,
        hits_addend: 0,
    };
    (request, slot.fingerprint)
}

fn entries(
    d: &envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor,
) -> Vec<(String, String)> {
    d.entries
        .iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect()
}

#[test]
fn a_sync_batch_decodes_to_the_expected_rate_limit_request() {
    let policy = policy();
    let (request, fingerprint) = batch(&policy);
    let bytes = request.encode_to_vec();
    let decoded = rls::RateLimitRequest::decode(bytes.as_slice()).expect("decodes");
    assert_eq!(decoded.domain, "api");
    assert_eq!(decoded.hits_addend, 0);
    assert_eq!(decoded.descriptors.len(), 3);
    let id = format!("{fingerprint:016x}");
    assert!(!POLICY.contains(&id) && !id.contains("alice"));
    let want = |extra: &[(&str, &str)], limit: &str| {
        let mut e: Vec<(String, String)> = vec![
            ("tier".into(), "user".into()),
            ("limit".into(), limit.into()),
            ("id".into(), id.clone()),
        ];
        e.extend(extra.iter().map(|(k, v)| ((*k).into(), (*v).into())));
        e
    };
    let d0 = &decoded.descriptors[0];
    assert_eq!(entries(d0), want(&[("tollgate.op", "sync")], "user-minute"));
    let limit = d0.limit.expect("limit");
    assert_eq!(
        (limit.requests_per_unit, limit.unit),
        (100, Unit::Minute.to_wire())
    );
    assert_eq!(d0.hits_addend.map(|h| h.value), Some(3));
    // 7,000 per week travels as 1,000 per day, its own burst said explicitly.
    let d1 = &decoded.descriptors[1];
    assert_eq!(
        entries(d1),
        want(
            &[("tollgate.burst", "50"), ("tollgate.op", "sync")],
            "weekly"
        )
    );
    let limit = d1.limit.expect("limit");
    assert_eq!(
        (limit.requests_per_unit, limit.unit),
        (1000, Unit::Day.to_wire())
    );
    let d2 = &decoded.descriptors[2];
    assert_eq!(entries(d2)[0], ("tier".into(), "llm".into()));
    assert_eq!(entries(d2)[1], ("budget".into(), "llm-tokens-day".into()));
    assert_eq!(d2.hits_addend.map(|h| h.value), Some(1234));
    // Encoding the decoded message again gives the same bytes: no field was lost or renumbered.
    assert_eq!(decoded.encode_to_vec(), bytes);
}

#[test]
fn the_service_reads_the_batch_as_the_buckets_the_policy_means() {
    let policy = policy();
    let (request, _) = batch(&policy);
    let decoded =
        rls::RateLimitRequest::decode(request.encode_to_vec().as_slice()).expect("decodes");
    let buckets = descriptor::parse(&decoded, 10).expect("accepted");
    let user = &policy.tiers()[0];
    for (bucket, limit) in buckets.iter().zip(&user.limits) {
        assert_eq!(bucket.op, descriptor::Op::Sync);
        // The same GCRA bucket: same capacity, same time per cell.
        assert_eq!(bucket.rate.burst(), limit.rate.burst());
        assert_eq!(
            u128::from(bucket.rate.period().0) * u128::from(limit.rate.amount()),
            u128::from(limit.rate.period().0) * u128::from(bucket.rate.amount()),
        );
    }
    assert_eq!(buckets[0].cost, 3);
    assert_eq!((buckets[2].cost, buckets[2].rate.amount()), (1234, 100_000));
    assert_ne!(buckets[0].key, buckets[1].key);
}

#[test]
fn a_check_descriptor_has_no_op_entry_so_stock_services_read_it_plainly() {
    let policy = policy();
    let user = &policy.tiers()[0];
    let slot = policy.seed().slot(&[b"user", b"bob"], user.table.sets());
    let d = describe(
        &policy,
        &BucketKey::new(0, TableId::Limits, slot),
        Op::Check,
        1,
    );
    assert!(d[0]
        .descriptor
        .entries
        .iter()
        .all(|e| !e.key.starts_with("tollgate.")));
    let request = proto::RateLimitRequest {
        domain: "api".into(),
        descriptors: vec![d[0].descriptor.clone()],
        hits_addend: 0,
    };
    let decoded =
        rls::RateLimitRequest::decode(request.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!(
        descriptor::parse(&decoded, 1).expect("accepted")[0].op,
        descriptor::Op::Check
    );
}

#[test]
fn an_answer_of_the_service_decodes_to_what_the_filter_folds() {
    use rls::rate_limit_response::{Code, DescriptorStatus, RateLimit};
    let answer = rls::RateLimitResponse {
        overall_code: Code::OverLimit as i32,
        statuses: vec![
            DescriptorStatus {
                code: Code::Ok as i32,
                current_limit: Some(RateLimit {
                    name: String::new(),
                    requests_per_unit: 100,
                    unit: Unit::Minute.to_wire(),
                }),
                limit_remaining: 97,
                duration_until_reset: Some(envoy_types::pb::google::protobuf::Duration {
                    seconds: 1,
                    nanos: 800_000_000,
                }),
                ..Default::default()
            },
            DescriptorStatus {
                code: Code::OverLimit as i32,
                ..Default::default()
            },
        ],
        raw_body: b"ignored".to_vec(),
        ..Default::default()
    };
    let ours =
        proto::RateLimitResponse::decode(answer.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!(
        proto::Code::from_wire(ours.overall_code),
        proto::Code::OverLimit
    );
    assert_eq!(ours.statuses.len(), 2);
    let s = &ours.statuses[0];
    assert_eq!(proto::Code::from_wire(s.code), proto::Code::Ok);
    assert_eq!(s.limit_remaining, 97);
    assert_eq!(
        s.current_limit.as_ref().map(|l| l.requests_per_unit),
        Some(100)
    );
    assert_eq!(
        s.duration_until_reset.map(proto::Duration::to_nanos),
        Some(Nanos(1_800_000_000))
    );
    assert_eq!(
        proto::Code::from_wire(ours.statuses[1].code),
        proto::Code::OverLimit
    );
    assert_eq!(ours.statuses[1].duration_until_reset, None);
}
