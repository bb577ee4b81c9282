//! Global mode's sync rounds, in the filter: the glue between policy-core's arithmetic
//! ([`policy_core::global`]) and Envoy (a timer, a shared queue, a lease in shared data and one
//! gRPC callout per round).
//!
//! - **Request path:** a stream admitted by a global tier records its cells in this worker's
//!   ledger ([`SyncRounds::record`]): a map update in the VM's memory, no host call. Tokens are recorded
//!   when the call is settled (the real charge, not the reservation).
//! - **Every tick, every worker:** its ledger becomes one message on the Envoy process's shared
//!   queue, then it tries to take or renew the lease (a compare-and-swap in shared data, with an
//!   expiry, so a worker that stops ticking loses it to the next worker that ticks).
//! - **Every `sync_interval`, the lease holder:** drains the queue into its own ledger, sends the
//!   merged deltas as one `ShouldRateLimit` (`tollgate.op=sync`) and folds each answer into the
//!   shared table (`tat = max(local, now + duration_until_reset)`), so every worker of this Envoy
//!   sees what the other replicas admitted. Each round carries an id (`tollgate.round`: this
//!   holder's random base and a counter) that `tollgate-sync` applies once; a failed or timed-out
//!   round is kept whole and resent verbatim, same id, at the next due time (Redis may have
//!   executed the first attempt: the id makes the resend count once), while new deltas wait in
//!   the ledger for the round after it. Beyond `max_pending_keys` buckets, new deltas are
//!   dropped and counted. The call's timeout grows with the round's size
//!   ([`policy_core::global::round_timeout`]), so a round of 10,000 keys finishes too.
//!
//! Strict mode runs the same rounds when a strict tier has token budgets: they carry each
//! settled call's correction (`tollgate.refund` = what its check reserved, `hits_addend` = the
//! real charge, [`SyncRounds::settle`]), and the LLM tiers' request limits, which strict mode
//! does not check per request, as sync mode would. A settlement that cannot reach the service
//! is kept and resent like any delta.
//!
//! Keys (queue name, lease) carry a fingerprint of the policy text, so a reconfigured policy
//! (whose tier numbers may mean other tiers) never reads the previous policy's deltas.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use policy_core::global::descriptor::BucketKey;
use policy_core::global::fold::{Folded, Round};
use policy_core::global::ledger::{decode, Delta, Ledger};
use policy_core::global::strict_tokens;
use policy_core::global::{
    proto, round_timeout, GlobalMode, GlobalSettings, MAX_DESCRIPTORS_PER_CALL,
};
use policy_core::hash::Seed;
use policy_core::{Cas, Nanos, Policy, Store, StoreError};
use proxy_wasm::types::{BufferType, LogLevel, MetricType};

use crate::host;
use crate::shared::SharedData;

/// How many ticks a lease outlives its last renewal.
const LEASE_TICKS: u64 = 3;
/// Queue messages one round reads at most (each is one worker's tick): a bound on the work of
/// one tick, the rest is read next round.
const MAX_MESSAGES_PER_ROUND: usize = 4_096;

/// gRPC status INVALID_ARGUMENT: the service refused the round itself, not just this attempt.
const GRPC_INVALID_ARGUMENT: u32 = 3;

/// The global counters and gauges (`wasmcustom.tollgate.global.*`).
#[derive(Debug, Clone, Copy)]
enum Stat {
    /// Rounds whose answer was folded.
    Rounds,
    /// Rounds that failed (no cluster, error status, timeout, bad answer); their deltas are kept.
    Failures,
    /// Buckets whose global state was folded in.
    KeysSynced,
    /// Of those, buckets whose local state moved.
    KeysChanged,
    /// Deltas dropped because `max_pending_keys` buckets were already pending.
    Dropped,
    /// Queue messages that could not be read (or enqueued), counted, not retried.
    BadMessages,
    /// Gauge: buckets with unsent deltas at the lease holder.
    Pending,
    /// Gauge: milliseconds since the last folded answer, or since nothing was waiting.
    LagMs,
    /// Gauge: the largest overshoot (cells beyond a bucket's capacity) in the last answer.
    Overshoot,
}

const STATS: [(Stat, &str, MetricType); 9] = [
    (Stat::Rounds, "sync_rounds", MetricType::Counter),
    (Stat::Failures, "sync_failures", MetricType::Counter),
    (Stat::KeysSynced, "keys_synced", MetricType::Counter),
    (Stat::KeysChanged, "keys_changed", MetricType::Counter),
    (Stat::Dropped, "deltas_dropped", MetricType::Counter),
    (Stat::BadMessages, "bad_messages", MetricType::Counter),
    (Stat::Pending, "deltas_pending", MetricType::Gauge),
    (Stat::LagMs, "sync_lag_ms", MetricType::Gauge),
    (Stat::Overshoot, "overshoot_observed", MetricType::Gauge),
];

/// A round on the wire.
#[derive(Debug)]
struct InFlight {
    token: u32,
    round: Round,
    /// When it is given up on if no reply comes (its timeout plus two ticks).
    deadline: Nanos,
}

/// What only the lease holder uses.
#[derive(Debug)]
struct Leader {
    pending: Ledger,
    in_flight: Option<InFlight>,
    /// A round that failed, to be resent as it is (same id, same deltas) before any new one:
    /// the service may have applied it already, and only the same id lets it tell.
    retry: Option<Round>,
    last_round: Option<Nanos>,
    /// This holder's round ids: `base` (hex) `-` `next` (hex).
    ids: RoundIds,
}

/// Round ids unique per lease holder and round: a base drawn once per worker from what differs
/// between workers and Envoys (the wall clock in ns at start, the worker's number, the policy's
/// fingerprint; a VM has no random source), and a counter.
#[derive(Debug)]
struct RoundIds {
    base: u64,
    next: u64,
}

impl RoundIds {
    fn new(now: Nanos, worker: u64, tag: u64) -> RoundIds {
        let base = Seed([0; 16])
            .slot(
                &[
                    &now.0.to_le_bytes(),
                    &worker.to_le_bytes(),
                    &tag.to_le_bytes(),
                ],
                1,
            )
            .fingerprint;
        RoundIds { base, next: 0 }
    }

    fn take(&mut self) -> String {
        self.next = self.next.wrapping_add(1);
        format!("{:016x}-{:x}", self.base, self.next)
    }
}

/// One worker's part of sync mode.
#[derive(Debug)]
pub struct SyncRounds {
    settings: GlobalSettings,
    /// This worker's deltas since its last tick.
    ledger: RefCell<Ledger>,
    queue: Option<u32>,
    lease_key: String,
    worker: u64,
    tick: Nanos,
    leader: RefCell<Leader>,
    /// When this worker started, or last folded an answer.
    last_ok: Cell<Nanos>,
    metrics: [Option<u32>; STATS.len()],
}

/// Why sync mode could not start on this worker (the policy is then refused: a global policy
/// that silently stays local is a limit N times too loose).
#[derive(Debug)]
pub struct StartError(String);

impl core::fmt::Display for StartError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

impl SyncRounds {
    /// Sync mode for `policy` (whose text was `config`), when it has a `global` section in sync
    /// mode and at least one global tier, or in strict mode and a strict tier with token
    /// budgets (whose settlements the rounds carry).
    pub fn start(
        policy: &Policy,
        config: &[u8],
        now: Nanos,
    ) -> Result<Option<SyncRounds>, StartError> {
        let Some(settings) = policy.global() else {
            return Ok(None);
        };
        let needed = match settings.mode {
            GlobalMode::Sync => policy.tiers().iter().any(|t| t.global),
            GlobalMode::Strict => {
                (0..policy.tiers().len()).any(|i| strict_tokens::applies(policy, i))
            }
        };
        if !needed {
            return Ok(None);
        }
        let tag = Seed([0; 16]).slot(&[config], 1).fingerprint;
        let queue_name = format!("tollgate/global/{tag:016x}/deltas");
        let queue = host::register_shared_queue(&queue_name)
            .map_err(|e| StartError(format!("global: cannot register the shared queue: {e}")))?;
        let lease_key = format!("tollgate/global/{tag:016x}/lease");
        let worker = next_worker_id()
            .map_err(|e| StartError(format!("global: cannot number this worker: {e:?}")))?;
        // Created up front, so that taking the lease is always a compare-and-swap.
        let mut store = SharedData;
        if matches!(store.get(&lease_key), Ok(None)) {
            let _ = store.set(&lease_key, &lease(0, Nanos::ZERO), None);
        }
        let tick = Nanos(settings.sync_interval.0.min(Nanos::SECOND.0));
        let mut metrics = [None; STATS.len()];
        for (slot, (_, name, kind)) in metrics.iter_mut().zip(STATS) {
            *slot = host::define_metric(kind, &format!("tollgate.global.{name}")).ok();
        }
        Ok(Some(SyncRounds {
            ledger: RefCell::new(Ledger::new(settings.max_pending_keys)),
            leader: RefCell::new(Leader {
                pending: Ledger::new(settings.max_pending_keys),
                in_flight: None,
                retry: None,
                last_round: None,
                ids: RoundIds::new(now, worker, tag),
            }),
            settings: settings.clone(),
            queue: Some(queue),
            lease_key,
            worker,
            tick,
            last_ok: Cell::new(now),
            metrics,
        }))
    }

    /// The tick period sync mode needs (the sync interval, at most a second so metrics flush).
    pub fn tick_period(&self) -> Duration {
        Duration::from_nanos(self.tick.0)
    }

    /// Records `cells` admitted for `key` (request path: memory only, no host call).
    pub fn record(&self, key: BucketKey, cells: u64) {
        self.ledger.borrow_mut().record(key, cells);
    }

    /// Records strict mode's settlement corrections (request path: memory only). A bucket the
    /// ledger has no room for is dropped and counted as any delta.
    pub fn settle(&self, deltas: Vec<(BucketKey, Delta)>) {
        let mut ledger = self.ledger.borrow_mut();
        for (key, delta) in deltas {
            ledger.add(key, delta);
        }
    }

    /// The mode of the policy's `global` section.
    pub fn mode(&self) -> GlobalMode {
        self.settings.mode
    }

    fn add(&self, stat: Stat, n: u64) {
        if let (Some(Some(id)), true) = (self.metrics.get(stat as usize), n > 0) {
            let _ = host::increment_metric(*id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    fn gauge(&self, stat: Stat, value: u64) {
        if let Some(Some(id)) = self.metrics.get(stat as usize) {
            let _ = host::record_metric(*id, value);
        }
    }

    /// The worker's tick: hand this worker's deltas to the queue; if this worker holds the
    /// lease and a round is due, start it.
    pub fn on_tick(&self, policy: &Policy, now: Nanos) {
        self.enqueue_own();
        let dropped = self.ledger.borrow_mut().take_dropped();
        self.add(Stat::Dropped, dropped);
        let Some(taken) = self.hold_lease(now) else {
            return;
        };
        let mut leader = self.leader.borrow_mut();
        if taken {
            // A new holder first lets every worker tick once, so that its first round carries
            // all of their deltas rather than its own alone.
            leader.last_round = Some(now);
        }
        if let Some(f) = &leader.in_flight {
            // Envoy closes a callout at its timeout; this is for a reply that never comes.
            if now < f.deadline {
                return;
            }
            if let Some(f) = leader.in_flight.take() {
                leader.retry = Some(f.round);
                self.add(Stat::Failures, 1);
            }
        }
        self.drain_queue(&mut leader.pending);
        let dropped = leader.pending.take_dropped();
        self.add(Stat::Dropped, dropped);
        let retrying = leader.retry.as_ref().map_or(0, |r| r.batch.len());
        self.gauge(Stat::Pending, (leader.pending.len() + retrying) as u64);
        if leader.pending.is_empty() && leader.retry.is_none() {
            // Nothing waits to be sent: an idle Envoy is not lagging.
            self.last_ok.set(now);
        }
        self.gauge(
            Stat::LagMs,
            now.0.saturating_sub(self.last_ok.get().0) / 1_000_000,
        );
        let due = leader
            .last_round
            .is_none_or(|last| now.0 >= last.0.saturating_add(self.settings.sync_interval.0));
        if !due || (leader.pending.is_empty() && leader.retry.is_none()) {
            return;
        }
        leader.last_round = Some(now);
        let round = match leader.retry.take() {
            // Resent verbatim: new deltas stay in `pending` for the round after it.
            Some(round) => round,
            None => {
                let max_keys = MAX_DESCRIPTORS_PER_CALL / cells_per_key(policy).max(1);
                let mut round = Round::new(policy, leader.pending.take(max_keys));
                round.set_id(&leader.ids.take());
                round
            }
        };
        if round.descriptors() == 0 {
            return;
        }
        let timeout = round_timeout(self.settings.timeout, round.descriptors());
        match dispatch_within(&self.settings, &round.encode(), timeout) {
            Ok(token) => {
                leader.in_flight = Some(InFlight {
                    token,
                    round,
                    deadline: Nanos(
                        now.0
                            .saturating_add(timeout.0)
                            .saturating_add(self.tick.0.saturating_mul(2)),
                    ),
                })
            }
            Err(e) => {
                leader.retry = Some(round);
                self.add(Stat::Failures, 1);
                let _ = host::log(
                    LogLevel::Warn,
                    &format!(
                        "tollgate: global sync to cluster {}: {e}; deltas kept",
                        self.settings.cluster
                    ),
                );
            }
        }
    }

    /// A callout's answer (`status` 0: `size` bytes of message; else the gRPC status).
    pub fn on_reply(&self, policy: &Policy, token: u32, status: u32, size: usize, now: Nanos) {
        let mut leader = self.leader.borrow_mut();
        let Some(f) = leader.in_flight.take_if(|f| f.token == token) else {
            // A reply to a round given up on: its deltas were put back already.
            return;
        };
        let answer = match status {
            0 => host::buffer(BufferType::GrpcReceiveBuffer, 0, size)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    f.round
                        .fold(policy, &bytes.unwrap_or_default(), now, &mut SharedData)
                        .map_err(|e| e.to_string())
                }),
            status => Err(format!("gRPC status {status}")),
        };
        match answer {
            Ok(folded) => self.folded(folded, now),
            Err(_) if status == GRPC_INVALID_ARGUMENT => {
                // The service can never apply this round (it names what it refused in its
                // log): resent verbatim it would block every later round, so it is dropped
                // and its deltas counted as dropped.
                self.add(Stat::Failures, 1);
                self.add(Stat::Dropped, f.round.batch.len() as u64);
                let _ = host::log(
                    LogLevel::Error,
                    &format!(
                        "tollgate: global sync to cluster {}: the service refused the round as \
                         invalid (INVALID_ARGUMENT: is tollgate-sync older than the filter?); \
                         its {} deltas are dropped",
                        self.settings.cluster,
                        f.round.batch.len()
                    ),
                );
            }
            Err(why) => {
                leader.retry = Some(f.round);
                self.add(Stat::Failures, 1);
                let _ = host::log(
                    LogLevel::Warn,
                    &format!(
                        "tollgate: global sync to cluster {}: {why}; deltas kept",
                        self.settings.cluster
                    ),
                );
            }
        }
    }

    fn folded(&self, folded: Folded, now: Nanos) {
        self.last_ok.set(now);
        self.add(Stat::Rounds, 1);
        self.add(Stat::KeysSynced, folded.keys);
        self.add(Stat::KeysChanged, folded.changed);
        self.gauge(Stat::Overshoot, folded.overshoot);
        self.gauge(Stat::LagMs, 0);
    }

    fn enqueue_own(&self) {
        let Some(queue) = self.queue else {
            return;
        };
        let message = self.ledger.borrow_mut().drain_encoded();
        if message.is_empty() {
            return;
        }
        if host::enqueue_shared_queue(queue, &message).is_err() {
            // Kept for the next tick rather than lost.
            if let Ok(batch) = decode(&message) {
                self.ledger.borrow_mut().restore(batch);
            }
            self.add(Stat::BadMessages, 1);
        }
    }

    fn drain_queue(&self, into: &mut Ledger) {
        let Some(queue) = self.queue else {
            return;
        };
        for _ in 0..MAX_MESSAGES_PER_ROUND {
            match host::dequeue_shared_queue(queue) {
                Ok(Some(message)) => match decode(&message) {
                    Ok(batch) => into.restore(batch),
                    Err(_) => self.add(Stat::BadMessages, 1),
                },
                Ok(None) => return,
                Err(_) => {
                    self.add(Stat::BadMessages, 1);
                    return;
                }
            }
        }
    }

    /// Takes the lease if it is free or lapsed, renews it if it is ours: `Some(true)` when it
    /// was just taken, `Some(false)` when renewed, `None` when another worker holds it (or the
    /// compare-and-swap lost to one).
    fn hold_lease(&self, now: Nanos) -> Option<bool> {
        let mut store = SharedData;
        let Ok(Some((value, cas))) = store.get(&self.lease_key) else {
            return None;
        };
        let (owner, expiry) = read_lease(&value);
        if owner != self.worker && owner != 0 && now < expiry {
            return None;
        }
        let until = Nanos(now.0.saturating_add(LEASE_TICKS * self.tick.0));
        store
            .set(&self.lease_key, &lease(self.worker, until), cas)
            .ok()?;
        let taken = owner != self.worker;
        if taken {
            let _ = host::log(
                LogLevel::Info,
                &format!(
                    "tollgate: global sync: worker {} holds the lease",
                    self.worker
                ),
            );
        }
        Some(taken)
    }
}

/// Descriptors per bucket key at most: a tier's limits, or 1 for a budget.
fn cells_per_key(policy: &Policy) -> usize {
    policy
        .tiers()
        .iter()
        .map(|t| t.limits.len().max(1))
        .max()
        .unwrap_or(1)
}

/// Sends one `ShouldRateLimit` to the policy's cluster.
///
/// Through the SDK (only a callout it registered is delivered back to this context), whose
/// wrapper panics on any status but OK, ParseFailure and InternalFailure. Envoy answers
/// BadArgument when a *bare cluster name* names no cluster; given a serialized `GrpcService`
/// instead it does not look the cluster up at dispatch, and an unknown cluster fails the call
/// asynchronously (a gRPC status, counted as a failed round), so that is what is passed.
pub fn dispatch(settings: &GlobalSettings, message: &[u8]) -> Result<u32, String> {
    dispatch_within(settings, message, settings.timeout)
}

/// [`dispatch`] with a timeout of its own (a sync round's grows with its size).
pub fn dispatch_within(
    settings: &GlobalSettings,
    message: &[u8],
    timeout: Nanos,
) -> Result<u32, String> {
    let service = proto::grpc_service(&settings.cluster);
    // ASCII by construction (config caps the cluster name at 120 characters, so every length
    // byte is below 0x80); refuse rather than pass a name Envoy would read differently.
    let upstream = core::str::from_utf8(&service)
        .map_err(|_| String::from("the cluster name does not encode as ASCII"))?;
    let timeout = Duration::from_nanos(timeout.0);
    proxy_wasm::hostcalls::dispatch_grpc_call(
        upstream,
        proto::SERVICE,
        proto::METHOD,
        Vec::new(),
        Some(message),
        timeout,
    )
    .map_err(|status| format!("dispatch_grpc_call returned {status:?}"))
}

fn lease(owner: u64, expiry: Nanos) -> [u8; 16] {
    let mut out = [0u8; 16];
    let (a, b) = out.split_at_mut(8);
    a.copy_from_slice(&owner.to_le_bytes());
    b.copy_from_slice(&expiry.0.to_le_bytes());
    out
}

/// (owner, expiry); a value of another shape reads as free.
fn read_lease(value: &[u8]) -> (u64, Nanos) {
    let word = |range: core::ops::Range<usize>| {
        value
            .get(range)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map_or(0, u64::from_le_bytes)
    };
    if value.len() != 16 {
        return (0, Nanos::ZERO);
    }
    (word(0..8), Nanos(word(8..16)))
}

/// A number no other worker of this Envoy process has (a CAS-incremented counter in shared
/// data), so that the lease can tell its holder apart.
fn next_worker_id() -> Result<u64, StoreError> {
    const KEY: &str = "tollgate/global/workers";
    let mut store = SharedData;
    for _ in 0..64 {
        let (current, cas): (u64, Option<Cas>) = match store.get(KEY)? {
            Some((value, cas)) => (
                <[u8; 8]>::try_from(value.as_slice()).map_or(0, u64::from_le_bytes),
                cas,
            ),
            None => (0, None),
        };
        let next = current.wrapping_add(1).max(1);
        match store.set(KEY, &next.to_le_bytes(), cas) {
            Ok(()) => return Ok(next),
            Err(StoreError::CasMismatch) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::CasMismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_reads_back_and_anything_else_reads_as_free() {
        assert_eq!(read_lease(&lease(7, Nanos(99))), (7, Nanos(99)));
        assert_eq!(read_lease(&[1, 2, 3]), (0, Nanos::ZERO));
        assert_eq!(read_lease(&[]), (0, Nanos::ZERO));
    }

    #[test]
    fn the_grpc_target_is_ascii_for_the_longest_cluster_name() {
        let settings = "c".repeat(120);
        let bytes = proto::grpc_service(&settings);
        assert!(bytes.is_ascii(), "{bytes:?}");
    }
}
