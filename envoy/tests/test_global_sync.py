"""Sync global mode end to end (issue 10, README "Global mode"): every Envoy decides locally, as in
local mode, and one worker per Envoy sends what was admitted to tollgate-sync every
`sync_interval_ms` and folds the global state back, so a user's limit holds across two Envoys
within the documented bound, survives a restart of both, and no request ever waits for the
service. Real Redis, the real tollgate-sync, two Envoys with two workers each
(envoy/tests/global_stack.py).
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections import Counter

from client import status_counts
from conftest import ROOT, unique, wait_until
from global_stack import global_services, global_stack  # noqa: F401  (fixtures)

GLOBAL_POLICY = ROOT / "examples/global-policy.json"
INTERVAL_MS = 250


def sync_policy() -> dict:
    """examples/global-policy.json (sync mode), rounds every 250 ms, the authenticated tier at
    100 requests an hour: nothing refills during a test (one request's worth takes 36 s), so
    every count is exact but for what the bound allows."""
    policy = copy.deepcopy(json.loads(GLOBAL_POLICY.read_text()))
    policy["global"].update(mode="sync", sync_interval_ms=INTERVAL_MS)
    (tier,) = [t for t in policy["tiers"] if t["name"] == "authenticated"]
    tier["limits"] = [{"requests": 100, "per": "hour"}]
    return policy


def global_stat(stack, envoy, name: str) -> int:
    """Envoy's `tollgate.global.<name>` (summed if several stats end so)."""
    return sum(v for k, v in stack.stats(envoy).items() if k.endswith(f"tollgate.global.{name}"))


def wait_rounds(stack, envoy, n: int = 2, timeout: float = 15) -> None:
    """Waits until `envoy` completed `n` more successful sync rounds than now (for traffic that
    keeps flowing: a round is sent only when there are deltas)."""
    start = global_stat(stack, envoy, "sync_rounds")
    wait_until(lambda: global_stat(stack, envoy, "sync_rounds") >= start + n, timeout,
               lambda: f"{n} sync rounds on :{envoy.port} (from {start}: "
                       f"{global_stat(stack, envoy, 'sync_rounds')})")


def wait_synced(stack, envoy, timeout: float = 15) -> None:
    """Waits until everything `envoy` admitted so far was sent and its answer folded: at least
    one successful round, none pending, and no further round for a second (four intervals, in
    which any delta still in a worker's ledger would have been sent)."""
    def quiet() -> bool:
        rounds = global_stat(stack, envoy, "sync_rounds")
        time.sleep(1.0)
        return (rounds >= 1 and global_stat(stack, envoy, "sync_rounds") == rounds
                and global_stat(stack, envoy, "deltas_pending") == 0)

    wait_until(quiet, timeout, lambda: f"sync rounds on :{envoy.port} to settle")


def test_what_one_envoy_admitted_limits_the_user_on_the_other(global_stack):
    a, b = global_stack.start_envoys(sync_policy())
    user = {"x-user-id": unique("sync")}
    # The whole limit spent on A, locally, at once.
    assert status_counts(a.burst(110, user)) == {200: 100, 429: 10}
    wait_synced(global_stack, a)
    # B has never seen the user: its first request is decided locally (admitted) and sent in
    # B's next round, whose answer says the bucket is spent.
    assert b.request(headers=user).status == 200
    wait_synced(global_stack, b)
    # From then on B refuses too: 101 admitted in all, where local mode admits 200.
    assert status_counts(b.burst(50, user)) == {429: 50}
    refused = b.request(headers=user)
    assert refused.status == 429
    # B's bucket went one request into debt (101 cells in a bucket of 100): the wait is up to
    # 2 × 36 s from the fold, less the seconds since; more than one request's worth (36 s).
    assert 36 < int(refused.header("retry-after")) <= 72, refused.head()
    # The same user on A: still refused; another user is not affected.
    assert a.request(headers=user).status == 429
    assert b.request(headers={"x-user-id": unique("other")}).status == 200
    assert global_stat(global_stack, b, "overshoot_observed") >= 0


def test_simultaneous_traffic_on_both_envoys_stays_within_the_bound(global_stack):
    a, b = global_stack.start_envoys(sync_policy())
    user = {"x-user-id": unique("both")}
    # 10 rounds of 11 requests to each Envoy at once, one sync interval apart: 220 requests
    # over about 2.5 s.
    admitted = 0
    for _ in range(10):
        admitted += sum(status_counts(r).get(200, 0) for r in global_stack.spread(11, user))
        time.sleep(INTERVAL_MS / 1000)
    # The bound: 100 + (replicas − 1) × (burst + rate × interval) = 100 + 100 + 0.007 (an hour's
    # rate over 250 ms); with rounds in between, far less is admitted than local mode's 200.
    print(f"sync mode, 2 Envoys, 110 requests each in 10 rounds: {admitted} admitted")
    assert 100 <= admitted <= 200, admitted
    # Once the rounds have folded it all in, both refuse.
    wait_synced(global_stack, a)
    wait_synced(global_stack, b)
    assert [e.request(headers=user).status for e in (a, b)] == [429, 429]


def test_a_user_who_spent_the_limit_is_still_limited_after_both_envoys_restart(global_stack):
    a, _ = global_stack.start_envoys(sync_policy())
    user = {"x-user-id": unique("restart")}
    assert status_counts(a.burst(100, user)) == {200: 100}
    wait_synced(global_stack, a)

    a, b = global_stack.restart_envoys()
    # New processes, empty shared data: each admits the user's first request locally (the bound
    # allows it), learns the global state in its next round and refuses from then on.
    assert [e.request(headers=user).status for e in (a, b)] == [200, 200]
    wait_synced(global_stack, a)
    wait_synced(global_stack, b)
    replies = [r for rs in global_stack.spread(10, user) for r in rs]
    assert status_counts(replies) == {429: 20}


def test_redis_then_tollgate_sync_killed_while_traffic_flows(global_stack):
    a, b = global_stack.start_envoys(sync_policy())
    stop = threading.Event()
    statuses: list[int] = []
    slowest = [0.0]

    def traffic() -> None:
        # A new user every 50 requests, so nobody runs out: every request should be a 200.
        n = 0
        while not stop.is_set():
            user = {"x-user-id": f"flow-{n // 50}-{id(stop)}"}
            envoy = (a, b)[n % 2]
            t0 = time.monotonic()
            statuses.append(envoy.request(headers=user).status)
            slowest[0] = max(slowest[0], time.monotonic() - t0)
            n += 1
            time.sleep(0.005)

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        wait_rounds(global_stack, a)
        failures = [global_stat(global_stack, e, "sync_failures") for e in (a, b)]

        # Redis dies: the rounds fail (tollgate-sync answers UNAVAILABLE), the deltas are kept.
        global_stack.redis.kill()
        wait_until(lambda: all(global_stat(global_stack, e, "sync_failures") > f
                               for e, f in zip((a, b), failures)), 15, "failed rounds counted")
        wait_until(lambda: global_stat(global_stack, a, "deltas_pending") > 0, 10,
                   "deltas kept while Redis is down")
        # Then tollgate-sync dies too.
        global_stack.sync.kill()
        failures = [global_stat(global_stack, e, "sync_failures") for e in (a, b)]
        wait_until(lambda: all(global_stat(global_stack, e, "sync_failures") > f
                               for e, f in zip((a, b), failures)), 15,
                   "failed rounds counted with tollgate-sync down")

        # Both back: the rounds succeed again by themselves and the kept deltas are sent.
        global_stack.redis.start()
        global_stack.sync.start()
        wait_rounds(global_stack, a, timeout=30)
        wait_rounds(global_stack, b, timeout=30)
    finally:
        stop.set()
        thread.join(timeout=10)
    # Everything kept through the outage is sent (nothing pending, nothing dropped).
    wait_synced(global_stack, a)
    wait_synced(global_stack, b)
    assert [global_stat(global_stack, e, "deltas_dropped") for e in (a, b)] == [0, 0]
    counts = dict(Counter(statuses))
    print(f"sync mode through both outages: {len(statuses)} requests, {counts}, "
          f"slowest {slowest[0] * 1000:.1f} ms")
    # No request failed or waited because of the outages.
    assert set(counts) == {200}, counts
    assert slowest[0] < 1.0, f"a request took {slowest[0]:.3f}s"


def test_token_budget_calls_spread_over_two_envoys_spend_one_budget(global_stack, mock):
    """1,000 tokens a day, charged after each call (the LLM mock reports 300 tokens a call), one
    user's calls alternating between the Envoys with a sync round after each admitted call. One
    Envoy alone admits four (the fourth goes 200 into debt); local mode on two admits eight."""
    from test_llm import CHAT, body, post  # the LLM tests' helpers

    policy = {
        "global": {"cluster": "tollgate-sync", "sync_interval_ms": INTERVAL_MS},
        "tiers": [{"name": "free", "identity": {"header": "x-user-id"},
                   "tokens": [{"tokens": 1000, "per": "day"}]}],
        "llm": {"mode": "charge_after", "default_max_tokens": 1000,
                "on_missing_usage": "nothing"},
    }
    a, b = global_stack.start_envoys(policy, upstreams={"v1": mock, "v2": mock})
    user = {"x-user-id": unique("tokens")}
    statuses = []
    for i in range(8):
        envoy = (a, b)[i % 2]
        reply = post(envoy, CHAT, body(), user)
        statuses.append(reply.status)
        if reply.status == 200:
            # The real charge (300) is recorded at settlement and sent in the next round.
            wait_synced(global_stack, envoy)
    # A 300 → B (had not heard of the user) 600 → A 900 → B 1200 → A 1500: each Envoy admits
    # while what it last heard leaves room; one call more than one Envoy alone would admit, which
    # the bound allows (burst + rate × lag of one replica), then both refuse.
    assert statuses == [200, 200, 200, 200, 200, 429, 429, 429], statuses
