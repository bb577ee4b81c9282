//! policy-core benchmarks: one criterion entry, several groups (STYLE.md item 11).
//!
//! Time is a fake clock: a `Nanos` the loop advances by a fixed step, never a real clock read.
//! Every group declares its throughput (decisions, or bytes for usage parsing).
//!
//! Run: `cargo bench -p policy-core --bench policy` (all groups, about three minutes) or
//! `cargo bench -p policy-core --bench policy -- keyed/` for one group. CI only builds them
//! (`cargo bench --no-run`). Results and their reading are in BENCHMARKS.md.
//!
//! Groups:
//! - `bucket`: one GCRA decision, `Rate::check`, allowed and denied.
//! - `keyed/<store>`: `Policy::check` for one per-user tier over a state store, with 1 user (hot
//!   key), 10,000 and 1,000,000 users visited round-robin. `<store>` is policy-core's
//!   `MemoryStore` (a `BTreeMap<String, _>`), `hash` (a `HashMap<String, _>` updated in place,
//!   the shape of Envoy's shared-data map) and `vec` (a vector indexed by the set number parsed
//!   from the key: the store's cost taken out, what is left is policy-core's own).
//! - `decide`: issue 14's figures over the `vec` store: one known key (`known_key`), and keys
//!   picked at random over a populated table of 10,000, 100,000 and 1,000,000 users.
//! - `tiers`: choosing the tier in a five-tier policy with exact, prefix, present and regex
//!   matches, for requests that stop at the first, second, fourth and fifth tier.
//! - `llm`: reading token usage from a typical non-streaming OpenAI response (`usage_from_json`)
//!   and from a 200-chunk SSE stream fed in 1 KiB and 16 KiB pieces (`SseScanner`), in bytes/s.
#![allow(
    missing_docs,
    missing_debug_implementations,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)] // a benchmark harness, not the request path

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
criterion::criterion_main!(native::benches);

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::collections::HashMap;
    use std::hint::black_box;
    use std::num::NonZeroU32;
    use std::time::Duration;

    use criterion::{criterion_group, BatchSize, BenchmarkId, Criterion, Throughput};
    use policy_core::bucket::{Rate, Tat};
    use policy_core::store::{copy_if_fits, Versioned};
    use policy_core::table::Placement;
    use policy_core::tier::Tier;
    use policy_core::{
        Attributes, Cas, HeaderList, MemoryStore, Nanos, Outcome, Policy, Store, StoreError,
    };

    /// An arbitrary instant (2023-11-14) so that scaled times are as large as in production.
    const T0: Nanos = Nanos(1_700_000_000_000_000_000);

    /// A fake clock: each `tick` moves time forward by `step`.
    struct FakeClock {
        now: Nanos,
        step: Nanos,
    }

    impl FakeClock {
        fn new(step: Nanos) -> FakeClock {
            FakeClock { now: T0, step }
        }

        fn tick(&mut self) -> Nanos {
            self.now = Nanos(self.now.0 + self.step.0);
            self.now
        }
    }

    // ---------------------------------------------------------------------------------------
    // bucket

    fn bucket(c: &mut Criterion) {
        let mut g = c.benchmark_group("bucket");
        g.throughput(Throughput::Elements(1));
        // 100 per minute; one request every 0.6 s keeps it admitting forever.
        let rate = Rate::new(100, Nanos::from_secs(60), 100).unwrap();
        g.bench_function("check/allowed", |b| {
            let mut clock = FakeClock::new(Nanos(600_000_000));
            let mut tat = Tat::default();
            b.iter(|| {
                let c = black_box(&rate).check(black_box(tat), clock.tick(), black_box(1));
                tat = c.tat;
                black_box(c)
            })
        });
        g.bench_function("check/denied", |b| {
            let mut clock = FakeClock::new(Nanos(1));
            let tat = rate.charge(Tat::default(), T0, 1_000);
            b.iter(|| black_box(&rate).check(black_box(tat), clock.tick(), black_box(1)))
        });
        g.finish();
    }

    // ---------------------------------------------------------------------------------------
    // stores

    /// A `HashMap<String, _>` updated in place: no allocation on lookup or on overwrite, as
    /// Envoy's `absl::flat_hash_map<std::string, std::pair<std::string, uint32_t>>` behaves.
    /// The value is copied out into the caller's buffer (`get_into`), as the ABI copies it.
    #[derive(Default)]
    struct HashStore {
        map: HashMap<String, (Vec<u8>, NonZeroU32)>,
        next_cas: u32,
    }

    impl HashStore {
        fn take_cas(&mut self) -> NonZeroU32 {
            self.next_cas = self.next_cas.wrapping_add(1).max(1);
            NonZeroU32::new(self.next_cas).unwrap()
        }
    }

    impl Store for HashStore {
        fn get(&mut self, key: &str) -> Result<Option<Versioned>, StoreError> {
            Ok(self.map.get(key).map(|(v, c)| (v.clone(), Some(Cas(*c)))))
        }

        fn get_into(
            &mut self,
            key: &str,
            buf: &mut [u8],
        ) -> Result<Option<(usize, Option<Cas>)>, StoreError> {
            Ok(self.map.get(key).map(|(v, c)| {
                copy_if_fits(v, buf);
                (v.len(), Some(Cas(*c)))
            }))
        }

        fn set(&mut self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), StoreError> {
            let next = self.take_cas();
            match self.map.get_mut(key) {
                Some((v, c)) => {
                    if cas.is_some_and(|Cas(expected)| expected != *c) {
                        return Err(StoreError::CasMismatch);
                    }
                    v.clear();
                    v.extend_from_slice(value);
                    *c = next;
                }
                None => {
                    self.map.insert(key.to_owned(), (value.to_vec(), next));
                }
            }
            Ok(())
        }
    }

    /// Sets in a vector indexed by the number after the key's last `/` (the set index): the
    /// cheapest store the `Store` trait allows. Only for policies with one table.
    #[derive(Default)]
    struct VecStore {
        sets: Vec<Option<(Vec<u8>, NonZeroU32)>>,
        next_cas: u32,
    }

    /// The decimal number at the end of `key`.
    fn set_index(key: &str) -> usize {
        let mut n = 0usize;
        let mut scale = 1usize;
        for &d in key.as_bytes().iter().rev() {
            if !d.is_ascii_digit() {
                break;
            }
            n += usize::from(d - b'0') * scale;
            scale *= 10;
        }
        n
    }

    impl Store for VecStore {
        fn get(&mut self, key: &str) -> Result<Option<Versioned>, StoreError> {
            Ok(self
                .sets
                .get(set_index(key))
                .and_then(|s| s.as_ref())
                .map(|(v, c)| (v.clone(), Some(Cas(*c)))))
        }

        fn get_into(
            &mut self,
            key: &str,
            buf: &mut [u8],
        ) -> Result<Option<(usize, Option<Cas>)>, StoreError> {
            Ok(self
                .sets
                .get(set_index(key))
                .and_then(|s| s.as_ref())
                .map(|(v, c)| {
                    copy_if_fits(v, buf);
                    (v.len(), Some(Cas(*c)))
                }))
        }

        fn set(&mut self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), StoreError> {
            let i = set_index(key);
            if self.sets.len() <= i {
                self.sets.resize(i + 1, None);
            }
            self.next_cas = self.next_cas.wrapping_add(1).max(1);
            let next = NonZeroU32::new(self.next_cas).unwrap();
            match &mut self.sets[i] {
                Some((v, c)) => {
                    if cas.is_some_and(|Cas(expected)| expected != *c) {
                        return Err(StoreError::CasMismatch);
                    }
                    v.clear();
                    v.extend_from_slice(value);
                    *c = next;
                }
                slot @ None => *slot = Some((value.to_vec(), next)),
            }
            Ok(())
        }
    }

    // ---------------------------------------------------------------------------------------
    // keyed

    /// A request as Envoy hands it to the filter: pseudo-headers, what wrk sends, and what the
    /// HCM adds before the filter runs, with the identity header among them (not first).
    fn request(user: &str) -> HeaderList {
        [
            (":authority", "127.0.0.1:10000"),
            (":path", "/api/v1/tasks"),
            (":method", "GET"),
            (":scheme", "http"),
            ("x-user-id", user),
            ("x-forwarded-proto", "http"),
            ("x-request-id", "0b5ad1a6-6f0d-4c7e-9f4b-3c1de2a1f00d"),
        ]
        .into_iter()
        .collect()
    }

    /// One per-user tier: 5 per second, burst 5 (one request costs 200 ms of refill).
    ///
    /// Every user is visited once per 250 ms of fake time, round-robin, so every request is
    /// admitted while each bucket stays partly drained (not idle) 80% of the time: the sets hold
    /// active ways, which is the expensive case for placement, never the trivial all-idle one.
    fn keyed_policy(max_keys: u32) -> Policy {
        let json = format!(
            r#"{{"max_keys":{max_keys},"tiers":[{{"name":"users",
                "identity":{{"header":"x-user-id"}},
                "limits":[{{"requests":5,"per":"second"}}]}}]}}"#
        );
        Policy::from_json(json.as_bytes()).unwrap()
    }

    const VISIT: Nanos = Nanos(250_000_000);

    /// Max keys for `users` users: twice the users (four keys per 8-way set on average), so that
    /// a set overflows with every way active for about 2% of sets instead of 40%.
    fn max_keys_for(users: u32) -> u32 {
        (users * 2).max(8)
    }

    /// Runs `Policy::check` once per user and counts placements: proves the benchmark measures
    /// what it says (all admitted, few shared ways).
    fn sanity<S: Store>(
        policy: &Policy,
        store: &mut S,
        users: u32,
        clock: &mut FakeClock,
    ) -> [u32; 4] {
        let mut counts = [0u32; 4]; // owned, fresh, shared, denied
        for round in 0..2 {
            for u in 0..users {
                let h = request(&format!("user-{u}"));
                match policy.check(&h, clock.tick(), store) {
                    Outcome::Decided {
                        decision,
                        placement,
                        ..
                    } if round == 1 => {
                        counts[match placement {
                            Placement::Owned => 0,
                            Placement::Fresh => 1,
                            Placement::Shared => 2,
                        }] += 1;
                        if !decision.allowed {
                            counts[3] += 1;
                        }
                    }
                    Outcome::Decided { .. } => {}
                    other => panic!("{other:?}"),
                }
            }
        }
        counts
    }

    /// One keyed case's state, built on first use (so a filtered run skips the setup of the
    /// cases it does not time) and kept from bench to bench: time never goes backwards and the
    /// round-robin cursor never restarts.
    struct Case<S> {
        store: S,
        clock: FakeClock,
        next: u32,
        /// Decisions made in timed loops, and how many of them were denials.
        decided: u64,
        denied: u64,
    }

    fn case<'c, S: Store + Default>(
        slot: &'c mut Option<Case<S>>,
        policy: &Policy,
        label: &str,
        users: u32,
    ) -> &'c mut Case<S> {
        slot.get_or_insert_with(|| {
            let mut store = S::default();
            policy.init_store(&mut store).unwrap();
            let mut clock = FakeClock::new(Nanos(VISIT.0 / u64::from(users)));
            let [owned, fresh, shared, denied] = sanity(policy, &mut store, users, &mut clock);
            eprintln!(
                "{label}: {users} users, max_keys {}; second pass over the users: \
                 {owned} owned, {fresh} fresh, {shared} shared, {denied} denied",
                max_keys_for(users),
            );
            Case {
                store,
                clock,
                next: 0,
                decided: 0,
                denied: 0,
            }
        })
    }

    fn keyed_on<S: Store + Default>(c: &mut Criterion, store_name: &str) {
        let label = format!("keyed/{store_name}");
        let mut g = c.benchmark_group(&label);
        g.throughput(Throughput::Elements(1));
        for users in [1u32, 10_000, 1_000_000] {
            let policy = keyed_policy(max_keys_for(users));
            let mut state: Option<Case<S>> = None;
            if users == 1 {
                let h = request("user-0");
                g.bench_function(BenchmarkId::new("hot_allowed", users), |b| {
                    let Case { store, clock, .. } = case(&mut state, &policy, &label, users);
                    b.iter(|| {
                        let now = clock.tick();
                        matches!(
                            policy.check(black_box(&h), now, store),
                            Outcome::Decided { decision, .. } if decision.allowed
                        )
                    })
                });
                // The same key with time nearly standing still: drained, every request denied
                // (a read and no write).
                g.bench_function(BenchmarkId::new("hot_denied", users), |b| {
                    let Case { store, clock, .. } = case(&mut state, &policy, &label, users);
                    clock.step = Nanos(1);
                    for _ in 0..10 {
                        policy.check(&h, clock.now, store);
                    }
                    b.iter(|| {
                        let now = clock.tick();
                        matches!(
                            policy.check(black_box(&h), now, store),
                            Outcome::Decided { decision, .. } if decision.allowed
                        )
                    })
                });
            } else {
                // Requests are built in batches outside the timed loop (the filter builds its
                // header list from one host call before it calls the policy).
                g.bench_function(BenchmarkId::new("round_robin", users), |b| {
                    let Case {
                        store,
                        clock,
                        next,
                        decided,
                        denied,
                    } = case(&mut state, &policy, &label, users);
                    b.iter_batched(
                        || {
                            let h = request(&format!("user-{next}"));
                            *next = (*next + 1) % users;
                            (h, clock.tick())
                        },
                        |(h, now)| {
                            let allowed = matches!(
                                policy.check(&h, now, store),
                                Outcome::Decided { decision, .. } if decision.allowed
                            );
                            *decided += 1;
                            *denied += u64::from(!allowed);
                            h // dropped outside the timing
                        },
                        BatchSize::SmallInput,
                    )
                });
                if let Some(c) = &state {
                    eprintln!(
                        "{label}/round_robin/{users}: {} of {} timed decisions were denials",
                        c.denied, c.decided
                    );
                }
            }
        }
        g.finish();
    }

    fn keyed(c: &mut Criterion) {
        keyed_on::<MemoryStore>(c, "btree");
        keyed_on::<HashStore>(c, "hash");
        keyed_on::<VecStore>(c, "vec");
    }

    // ---------------------------------------------------------------------------------------
    // decide

    /// `Policy::check` over the vector store (the store's cost taken out) for issue 14's
    /// targets: one known key, and keys picked at random over a populated table of 10,000,
    /// 100,000 and 1,000,000 users (every set placed before timing; at 1,000,000 the table is
    /// ~70 MB, so nearly every decision misses the cache, as the shared-data map would).
    fn decide(c: &mut Criterion) {
        let mut g = c.benchmark_group("decide");
        g.throughput(Throughput::Elements(1));
        g.measurement_time(Duration::from_secs(1));
        let policy = keyed_policy(max_keys_for(1));
        let mut state: Option<Case<VecStore>> = None;
        let h = request("user-0");
        g.bench_function("known_key", |b| {
            let Case { store, clock, .. } = case(&mut state, &policy, "decide", 1);
            b.iter(|| {
                let now = clock.tick();
                matches!(
                    policy.check(black_box(&h), now, store),
                    Outcome::Decided { decision, .. } if decision.allowed
                )
            })
        });
        for users in [10_000u32, 100_000, 1_000_000] {
            let policy = keyed_policy(max_keys_for(users));
            let mut state: Option<Case<VecStore>> = None;
            // xorshift64: the same sequence of users in every run and build.
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            g.bench_function(BenchmarkId::new("random", users), |b| {
                let Case {
                    store,
                    clock,
                    decided,
                    denied,
                    ..
                } = case(&mut state, &policy, "decide", users);
                b.iter_batched(
                    || {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        (
                            request(&format!("user-{}", x % u64::from(users))),
                            clock.tick(),
                        )
                    },
                    |(h, now)| {
                        let allowed = matches!(
                            policy.check(&h, now, store),
                            Outcome::Decided { decision, .. } if decision.allowed
                        );
                        *decided += 1;
                        *denied += u64::from(!allowed);
                        h // dropped outside the timing
                    },
                    BatchSize::SmallInput,
                )
            });
            if let Some(c) = &state {
                eprintln!(
                    "decide/random/{users}: {} of {} timed decisions were denials",
                    c.denied, c.decided
                );
            }
        }
        g.finish();
    }

    // ---------------------------------------------------------------------------------------
    // tiers

    /// Five tiers as an API gateway would have them.
    const FIVE_TIERS: &str = r#"{
      "tiers": [
        { "name": "internal",
          "match": { "path_prefix": "/internal",
                     "headers": [{ "name": "x-internal-token", "exact": "s3cr3t-token" }] },
          "identity": "shared",
          "limits": [{ "requests": 10000, "per": "second" }] },
        { "name": "premium",
          "match": { "headers": [{ "name": "x-api-key", "regex": "^premium-[a-z0-9]{8,32}$" }] },
          "identity": { "header": "x-api-key" },
          "limits": [{ "requests": 1000, "per": "minute" }, { "requests": 100000, "per": "day" }] },
        { "name": "partner",
          "match": { "methods": ["GET", "POST"],
                     "headers": [{ "name": "x-partner", "prefix": "acme-" }] },
          "identity": { "header": "x-partner" },
          "limits": [{ "requests": 500, "per": "minute" }] },
        { "name": "authenticated",
          "match": { "headers": [{ "name": "x-user-id", "present": true }] },
          "identity": { "header": "x-user-id" },
          "limits": [{ "requests": 100, "per": "minute" }] },
        { "name": "anonymous", "identity": "shared",
          "limits": [{ "requests": 10, "per": "minute" }] }
      ]
    }"#;

    /// The tier `Policy::check` would pick, without touching a store: the same loop.
    fn select<'p, A: Attributes>(policy: &'p Policy, attrs: &A) -> Option<(&'p Tier, Vec<u8>)> {
        for tier in policy.tiers() {
            if !tier.matches(attrs) {
                continue;
            }
            match tier.identity.derive(attrs) {
                Ok(Some(id)) => return Some((tier, id)),
                Ok(None) => continue,
                Err(_) => return None,
            }
        }
        None
    }

    fn tiers(c: &mut Criterion) {
        let policy = Policy::from_json(FIVE_TIERS.as_bytes()).unwrap();
        let base = [
            (":authority", "api.example.com"),
            (":path", "/api/v1/tasks?limit=20"),
            (":method", "GET"),
            (":scheme", "https"),
            ("user-agent", "curl/8.5.0"),
            ("accept", "application/json"),
            ("x-forwarded-proto", "https"),
            ("x-request-id", "0b5ad1a6-6f0d-4c7e-9f4b-3c1de2a1f00d"),
        ];
        let with = |extra: &[(&'static str, &'static str)], path: Option<&'static str>| {
            let mut v: Vec<(&str, &str)> = base.to_vec();
            if let Some(p) = path {
                v[1].1 = p;
            }
            v.extend_from_slice(extra);
            v.into_iter().collect::<HeaderList>()
        };
        let cases = [
            (
                "internal",
                with(
                    &[("x-internal-token", "s3cr3t-token")],
                    Some("/internal/jobs"),
                ),
            ),
            (
                "premium",
                with(&[("x-api-key", "premium-4f9a2c71d0")], None),
            ),
            (
                "authenticated",
                with(&[("x-api-key", "basic-77aa"), ("x-user-id", "alice")], None),
            ),
            ("anonymous", with(&[("x-partner", "other-co")], None)),
        ];
        let mut g = c.benchmark_group("tiers");
        g.throughput(Throughput::Elements(1));
        for (want, h) in &cases {
            let got = select(&policy, h).map(|(t, _)| t.name.clone());
            assert_eq!(got.as_deref(), Some(*want));
            g.bench_with_input(BenchmarkId::new("select", want), h, |b, h| {
                b.iter(|| select(&policy, black_box(h)).map(|(t, id)| (t.name.len(), id)))
            });
        }
        g.finish();
    }

    // ---------------------------------------------------------------------------------------
    // llm

    /// A typical non-streaming OpenAI chat completion (usage with both detail objects).
    fn openai_json() -> Vec<u8> {
        let content = "Prince Hamlet seeks to avenge his father's murder by his uncle Claudius, \
            who has married Hamlet's mother and taken the throne. Feigning madness, Hamlet \
            confirms the guilt with a play but hesitates to act. A chain of deaths follows, \
            ending in a duel in which nearly everyone dies.";
        format!(
            r#"{{"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion","created":1741570283,"model":"gpt-4o-2024-08-06","choices":[{{"index":0,"message":{{"role":"assistant","content":"{content}","refusal":null,"annotations":[]}},"logprobs":null,"finish_reason":"stop"}}],"usage":{{"prompt_tokens":1117,"completion_tokens":46,"total_tokens":1163,"prompt_tokens_details":{{"cached_tokens":0,"audio_tokens":0}},"completion_tokens_details":{{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}},"service_tier":"default","system_fingerprint":"fp_fc9f1d7035"}}"#
        )
        .into_bytes()
    }

    /// An OpenAI chat completion stream with `stream_options.include_usage`: a role chunk, one
    /// chunk per word of a 200-word answer, a finish chunk, the usage chunk and `[DONE]`.
    fn openai_sse() -> Vec<u8> {
        let head = r#"data: {"id":"chatcmpl-AbC","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":"#;
        let mut s = String::new();
        s.push_str(head);
        s.push_str(r#"{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}"#);
        s.push_str("\n\n");
        for i in 0..200 {
            s.push_str(head);
            s.push_str(&format!(
                r#"{{"content":" word{i}"}},"logprobs":null,"finish_reason":null}}],"usage":null}}"#
            ));
            s.push_str("\n\n");
        }
        s.push_str(head);
        s.push_str(r#"{},"logprobs":null,"finish_reason":"stop"}],"usage":null}"#);
        s.push_str("\n\n");
        s.push_str(r#"data: {"id":"chatcmpl-AbC","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_44709d6fcb","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":200,"total_tokens":209,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}"#);
        s.push_str("\n\ndata: [DONE]\n\n");
        s.into_bytes()
    }

    fn llm(c: &mut Criterion) {
        use policy_core::llm::{usage_from_json, SseLimits, SseScanner};

        let mut g = c.benchmark_group("llm");
        let json = openai_json();
        assert_eq!(usage_from_json(&json).map(|u| u.total()), Ok(1163));
        g.throughput(Throughput::Bytes(json.len() as u64));
        g.bench_function(BenchmarkId::new("usage_from_json", "openai_chat"), |b| {
            b.iter(|| usage_from_json(black_box(&json)))
        });

        let sse = openai_sse();
        g.throughput(Throughput::Bytes(sse.len() as u64));
        // Envoy hands the body over in whatever pieces arrive: 1 KiB here, cutting events.
        for chunk in [1024usize, 16 * 1024] {
            let scan = || {
                let mut s = SseScanner::new(SseLimits::default());
                for piece in black_box(&sse).chunks(chunk) {
                    s.feed(piece);
                }
                s.finish();
                s.usage()
            };
            assert_eq!(scan().map(|u| u.total()), Some(209));
            g.bench_function(
                BenchmarkId::new("sse_stream", format!("{chunk}B_chunks")),
                |b| b.iter(scan),
            );
        }

        // The request rewriter over a 32 KiB and a 1 MiB chat body, passing in 16 KiB chunks
        // (what it costs to ask a large or chunked stream for its usage).
        use policy_core::llm::UsageRewriter;
        for size in [32 * 1024usize, 1024 * 1024] {
            let content = "x".repeat(size);
            let body = format!(
                r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{content}"}}],"stream":true}}"#
            )
            .into_bytes();
            g.throughput(Throughput::Bytes(body.len() as u64));
            let rewrite = || {
                let mut r = UsageRewriter::exact();
                let mut out = Vec::with_capacity(body.len() + 64);
                for piece in black_box(&body).chunks(16 * 1024) {
                    let _ = r.feed(piece, &mut out);
                }
                let _ = r.finish(&mut out);
                out.len()
            };
            assert_eq!(rewrite(), body.len() + 40);
            g.bench_function(
                BenchmarkId::new("rewrite_request", format!("{}KiB", size / 1024)),
                |b| b.iter(rewrite),
            );
        }
        g.finish();
    }

    fn config() -> Criterion {
        // Short runs: the machine is shared. Raise with --measurement-time for publication.
        Criterion::default()
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2))
            .sample_size(50)
    }

    criterion_group! {
        name = benches;
        config = config();
        targets = bucket, keyed, decide, tiers, llm
    }
}
