"""Strict global mode end to end (issue 10, README "Global mode"): every request of a
global-strict tier is checked with tollgate-sync (one ShouldRateLimit call, the request held
until the answer), so a user's limit holds exactly across two Envoys; when tollgate-sync or
Redis is down, `on_unavailable` decides, counted, and checking resumes by itself when they are
back. Real Redis, the real tollgate-sync, two Envoys with two workers each
(envoy/tests/global_stack.py).
"""

from __future__ import annotations

import copy
import json
import time

from client import status_counts
from conftest import ROOT, unique, wait_until
from global_stack import global_services, global_stack  # noqa: F401  (fixtures)

GLOBAL_POLICY = ROOT / "examples/global-policy.json"


def strict_policy(on_unavailable: str = "local", timeout_ms: int = 250) -> dict:
    """examples/global-policy.json in strict mode, the authenticated tier at 100 requests an
    hour: nothing refills during a test (one request's worth takes 36 s), so counts are exact."""
    policy = copy.deepcopy(json.loads(GLOBAL_POLICY.read_text()))
    policy["global"].update(mode="strict", on_unavailable=on_unavailable, timeout_ms=timeout_ms)
    (tier,) = [t for t in policy["tiers"] if t["name"] == "authenticated"]
    tier["limits"] = [{"requests": 100, "per": "hour"}]
    return policy


def counters(stack, name: str) -> int:
    """The sum over the Envoys of tollgate's counter `authenticated.<name>` (flushed once a
    second by each worker)."""
    total = 0
    for envoy in stack.envoys:
        for stat, value in stack.stats(envoy).items():
            if stat.endswith(f"tollgate.authenticated.{name}"):
                total += value
    return total


def test_strict_mode_admits_exactly_the_limit_across_two_envoys(global_stack):
    global_stack.start_envoys(strict_policy())
    user = {"x-user-id": unique("strict")}
    # 55 requests to each Envoy at once (110 in all), four in flight on each.
    per_envoy = global_stack.spread(55, user)
    replies = [r for replies in per_envoy for r in replies]
    assert status_counts(replies) == {200: 100, 429: 10}
    # Both Envoys admitted some of the 100: one bucket, shared through Redis.
    assert all(status_counts(r).get(200, 0) > 0 for r in per_envoy), \
        [status_counts(r) for r in per_envoy]
    # The global numbers in the headers: the 429s name the tier and the time to wait (one
    # request's worth of 100 an hour: 36 s).
    refused = [r for r in replies if r.status == 429]
    assert {r.header("retry-after") for r in refused} == {"36"}
    assert {r.header("x-ratelimit-remaining") for r in refused} == {"0"}
    remaining = sorted(int(r.header("x-ratelimit-remaining")) for r in replies if r.status == 200)
    assert remaining == list(range(100)), remaining
    # One check per request, none failed.
    wait_until(lambda: counters(global_stack, "global_checks") == 110, 10,
               lambda: f"110 checks counted (have {counters(global_stack, 'global_checks')})")
    assert counters(global_stack, "global_over_limit") == 10
    assert counters(global_stack, "global_unavailable") == 0
    # Another user is not affected; tiers that are not global-strict make no call either
    # (anonymous is global too: its 10 a minute hold across both Envoys).
    assert global_stack.envoys[1].request(headers={"x-user-id": unique("other")}).status == 200
    anonymous = global_stack.spread(8, {})
    assert status_counts([r for rs in anonymous for r in rs]) == {200: 10, 429: 6}


def timed(stack, n: int, headers: dict[str, str]) -> tuple[dict[int, int], float]:
    """`n` requests to each Envoy, one at a time; the status counts and the slowest request's
    seconds."""
    slowest = 0.0
    replies = []
    for _ in range(n):
        for envoy in stack.envoys:
            t0 = time.monotonic()
            replies.append(envoy.request(headers=headers))
            slowest = max(slowest, time.monotonic() - t0)
    counts = status_counts(replies)
    print(f"{n} requests to each Envoy: {counts}, slowest {slowest * 1000:.1f} ms")
    return counts, slowest


def test_a_dead_service_gets_the_configured_fallback_then_checking_resumes(global_stack):
    global_stack.start_envoys(strict_policy(on_unavailable="deny"))
    spent = {"x-user-id": unique("spent")}
    assert status_counts([r for rs in global_stack.spread(55, spent) for r in rs]) == \
        {200: 100, 429: 10}

    # tollgate-sync killed: every check fails at once (connection refused), `deny` answers 503.
    global_stack.sync.kill()
    fresh = {"x-user-id": unique("fresh")}
    counts, slowest = timed(global_stack, 5, fresh)
    assert counts == {503: 10}, counts
    assert slowest < 2.0, f"a request waited {slowest:.2f}s"
    wait_until(lambda: counters(global_stack, "global_unavailable") >= 10, 10,
               "the failed checks counted")

    # Back: checks resume by themselves, and Redis kept what was spent.
    global_stack.sync.start()
    wait_until(lambda: global_stack.envoys[0].request(headers=fresh).status == 200, 20,
               "the first check to succeed after tollgate-sync restarted")
    counts, _ = timed(global_stack, 3, spent)
    assert counts == {429: 6}, counts
    counts, _ = timed(global_stack, 3, fresh)
    assert counts == {200: 6}, counts


def test_redis_down_is_unavailable_too_and_an_empty_redis_starts_afresh(global_stack):
    global_stack.start_envoys(strict_policy(on_unavailable="deny", timeout_ms=500))
    spent = {"x-user-id": unique("spent")}
    assert status_counts([r for rs in global_stack.spread(55, spent) for r in rs]) == \
        {200: 100, 429: 10}

    # Redis killed: tollgate-sync answers UNAVAILABLE (within its own timeout), `deny` answers
    # 503, quickly.
    global_stack.redis.kill()
    fresh = {"x-user-id": unique("fresh")}
    counts, slowest = timed(global_stack, 5, fresh)
    assert counts == {503: 10}, counts
    assert slowest < 2.0, f"a request waited {slowest:.2f}s"
    wait_until(lambda: counters(global_stack, "global_unavailable") >= 10, 10,
               "the failed checks counted")

    # Redis back, empty (it keeps nothing on disk here): tollgate-sync reconnects by itself and
    # checks resume; the user who had spent the limit starts from a full bucket, because the only
    # copy of the state was lost (README: run Redis with persistence or a replica).
    global_stack.redis.start()
    wait_until(lambda: global_stack.envoys[0].request(headers=fresh).status == 200, 20,
               "the first check to succeed after Redis restarted")
    counts, _ = timed(global_stack, 3, spent)
    assert counts == {200: 6}, counts


def test_the_local_fallback_continues_from_the_global_state_each_envoy_last_saw(global_stack):
    global_stack.start_envoys(strict_policy(on_unavailable="local"))
    spent = {"x-user-id": unique("spent")}
    assert status_counts([r for rs in global_stack.spread(55, spent) for r in rs]) == \
        {200: 100, 429: 10}
    # One more through each Envoy: each sees the service say "spent" and keeps it locally.
    assert [e.request(headers=spent).status for e in global_stack.envoys] == [429, 429]

    global_stack.sync.kill()
    # Every check fails: each Envoy decides locally, from what the service last told it.
    counts, slowest = timed(global_stack, 3, spent)
    assert counts == {429: 6}, counts
    assert slowest < 2.0, f"a request waited {slowest:.2f}s"
    fresh = {"x-user-id": unique("fresh")}
    counts, _ = timed(global_stack, 3, fresh)
    assert counts == {200: 6}, counts
    wait_until(lambda: counters(global_stack, "global_unavailable") >= 12, 10,
               "the failed checks counted")

    # Back: the checks succeed again by themselves (no new unavailable count).
    global_stack.sync.start()
    wait_until(lambda: _all_checked(global_stack, fresh), 30,
               "checks to succeed again after tollgate-sync restarted")
    counts, _ = timed(global_stack, 2, spent)
    assert counts == {429: 4}, counts


def _all_checked(stack, headers: dict[str, str]) -> bool:
    """Sends one request to each Envoy and waits for a counter flush; true when neither check
    failed."""
    before = counters(stack, "global_unavailable")
    for envoy in stack.envoys:
        envoy.request(headers=headers)
    time.sleep(1.2)  # each worker flushes its counters once a second
    return counters(stack, "global_unavailable") == before


def test_token_budget_calls_spread_over_two_envoys_spend_one_budget_exactly(global_stack, mock):
    """2,000 tokens a day in strict mode, reserve mode: each call reserves its estimate (500
    max_tokens plus the prompt's) with tollgate-sync before it goes upstream, and its settlement
    gives the reservation back and charges what the LLM mock reported (100 prompt tokens plus a
    completion chosen per call). One user's calls alternate between the two Envoys, each waiting
    for its settlement to reach Redis: the calls that fit are admitted, the first that does not
    is refused by the service on both Envoys, and the budget left in Redis is exactly 2,000 minus
    the usage reported (43 s a token: nothing refills during the test)."""
    from test_global_sync import global_stat, wait_synced
    from test_llm import CHAT, body, post  # the LLM tests' helpers

    policy = {
        "global": {"cluster": "tollgate-sync", "mode": "strict", "sync_interval_ms": 250,
                   "on_unavailable": "deny"},
        "tiers": [{"name": "free", "identity": {"header": "x-user-id"},
                   "tokens": [{"tokens": 2000, "per": "day"}]}],
        "llm": {"mode": "reserve"},
    }
    a, b = global_stack.start_envoys(policy, upstreams={"v1": mock, "v2": mock})
    user = {"x-user-id": unique("strict-tokens")}
    data = body(max_tokens=500)
    # Usage 300, 400, 350, 300, 250: 1,600 in all. Each call asks ~510–600 (its estimate): the
    # fifth still fits (650 left), the sixth does not (400 left). Without the settlements'
    # refunds the fourth would be refused (four reservations exceed 2,000); without the checks
    # each Envoy would see only its own calls and admit the sixth.
    completions = [200, 300, 250, 200, 150]
    used = 0
    for i, completion in enumerate(completions):
        envoy = (a, b)[i % 2]
        reply = post(envoy, CHAT, data, {**user, "x-mock-completion-tokens": str(completion)})
        assert reply.status == 200, (i, reply.status, reply.body[:300])
        usage = json.loads(reply.body)["usage"]
        used += usage["prompt_tokens"] + usage["completion_tokens"]
        # The settlement (refund the estimate, charge the usage) goes out with the next round.
        wait_synced(global_stack, envoy)
    assert used == 1600
    # The call that no longer fits is refused on either Envoy, by the service (each Envoy's
    # own calls leave it 1,100 or 900 locally), in OpenAI's error format, and the budget the
    # service reports left is exactly what the usage left.
    refused = [post(envoy, CHAT, data, user) for envoy in (a, b)]
    assert [r.status for r in refused] == [429, 429], [r.body[:300] for r in refused]
    for r in refused:
        assert json.loads(r.body)["error"]["code"] == "rate_limit_exceeded", r.body
        assert r.headers["x-ratelimit-remaining-tokens"] == str(2000 - used), r.headers
        assert int(r.headers["retry-after"]) > 0
    def free(name: str) -> int:
        """The sum over both Envoys of the tier's counter `name` (flushed once a second)."""
        return sum(v for e in (a, b) for k, v in global_stack.stats(e).items()
                   if k.endswith(f"tollgate.free.{name}"))

    # Five checks answered OK, two OVER_LIMIT, none failed.
    wait_until(lambda: free("global_checks") == 7, 10,
               lambda: f"7 token checks counted (have {free('global_checks')}; "
               f"{[{k: v for k, v in global_stack.stats(e).items() if 'tollgate.' in k} for e in (a, b)]})")
    assert (free("global_over_limit"), free("global_unavailable")) == (2, 0)
    assert (free("allowed"), free("denied")) == (5, 2)
    assert sum(global_stat(global_stack, e, "sync_failures") for e in (a, b)) == 0
