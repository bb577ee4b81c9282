"""Spend budgets in money across two Envoys in global sync mode (issue 12, README "Spend budgets"
and "Global mode"): real Redis, the real tollgate-sync, two Envoys with two workers each
(envoy/tests/global_stack.py), the LLM mock behind them.

A user has 0.02 USD a day (20,000 micro-units, 4.32 s of refill per micro-unit); a gpt-4o call of
the mock (100 prompt + 200 completion tokens) costs 2,250 micro-units and reserves 3,050 (a
20-token prompt estimate at 2.50 a million, 300 tokens of output at 10.00). Each Envoy decides
alone and sends what it charged at settlement to tollgate-sync, which adds it to one bucket in
Redis; each round's answer is folded back, so what one Envoy charged limits the user on the
other. What is checked: the calls admitted against what one Envoy alone and local mode admit;
Redis holding exactly what both Envoys charged (the key's PTTL is the time until the bucket is
full again: micro-units used × 4.32 s, less the refill since); the spend counters of both Envoys
adding up to it; the 429s' amounts and waits saying what Redis says once folded; and the
overshoot within README's bound, (replicas − 1) × (burst + rate × lag).
"""

from __future__ import annotations

import itertools
import json
import re
import socket
import threading
import time

from conftest import unique, wait_until
from global_stack import global_services, global_stack  # noqa: F401  (fixtures)
from test_global_sync import INTERVAL_MS, global_stat, wait_synced
from test_llm import CHAT
from test_llm import post as post_bytes
from test_spend import go_seconds

BUDGET = 20_000  # micro-units a day
SECONDS_PER_MICRO = 86_400 / BUDGET  # refill: 4.32 s per micro-unit
CALL = 100 * 2_500_000 // 1_000_000 + 200 * 10  # a mock call of gpt-4o: 2,250 micro-units
DOC = {"model": "gpt-4o", "max_tokens": 300, "messages": [{"role": "user", "content": "hi"}]}
RESERVED = 20 * 5 // 2 + 300 * 10  # what DOC reserves: 3,050 micro-units
# max_tokens 100: reserves 50 + 1,000 = 1,050; the mock is asked to answer 100 completion tokens.
SMALL_DOC = {**DOC, "max_tokens": 100}
SMALL_USAGE = {"x-mock-completion-tokens": "100"}
SMALL_CALL = 100 * 2_500_000 // 1_000_000 + 100 * 10  # 1,250 micro-units
_tiers = itertools.count()


def post(envoy, doc: dict, headers: dict[str, str]):
    """A chat completion through `envoy`: its `client.Reply`."""
    return post_bytes(envoy, CHAT, json.dumps(doc, separators=(",", ":")).encode(), headers)


def spend_policy() -> tuple[dict, str]:
    """A sync-mode policy whose one tier (a fresh name, so its Redis key is the test's own) has a
    spend budget of 0.02 USD a day per user; and the tier's name."""
    tier = f"spend{next(_tiers)}-{int(time.time())}"
    return {
        "global": {"cluster": "tollgate-sync", "mode": "sync", "sync_interval_ms": INTERVAL_MS},
        "tiers": [{"name": tier, "identity": {"header": "x-user-id"},
                   "tokens": [{"spend": "0.02", "per": "day", "name": "user-spend"}]}],
        "prices": {"currency": "USD", "unpriced": "refuse",
                   "models": [{"model": "gpt-4o", "input": "2.50", "output": "10.00"}]},
        "llm": {"mode": "reserve", "default_max_tokens": 1024},
    }, tier


def redis(port: int, *args: str):
    """One command to Redis over RESP (no client library needed); its reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"*{len(args)}\r\n".encode()
                  + b"".join(f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args))
        reader = s.makefile("rb")

        def read():
            line = reader.readline().rstrip(b"\r\n")
            kind, rest = line[:1], line[1:].decode()
            if kind in (b"+", b"-"):
                assert kind == b"+", rest
                return rest
            if kind == b":":
                return int(rest)
            if kind == b"$":
                n = int(rest)
                return None if n < 0 else reader.read(n + 2)[:-2].decode()
            assert kind == b"*", line
            return [read() for _ in range(int(rest))]

        return read()


def redis_used(stack, tier: str, since: float) -> tuple[float, float]:
    """The micro-units Redis says the tier's one spend bucket has used, as an interval: its key
    expires when the bucket is full again, so PTTL = used × 4.32 s less the refill since the
    first charge (at or after `since`, a monotonic time)."""
    keys = redis(stack.redis.port, "KEYS", f"tollgate:{{tollgate}}:*tier={tier}:*")
    assert len(keys) == 1, keys
    assert ":20000/d:" in keys[0] and "budget=user-spend" in keys[0], keys
    pttl = redis(stack.redis.port, "PTTL", keys[0]) / 1000
    elapsed = time.monotonic() - since
    return pttl / SECONDS_PER_MICRO, (pttl + elapsed) / SECONDS_PER_MICRO


def charged(stack, envoys, tier: str) -> int:
    """Micro-units the tier's `spend_charged` counters of all `envoys` add up to."""
    return sum(v for e in envoys for k, v in stack.stats(e).items()
               if k.endswith(f"tollgate.{tier}.spend_charged"))


def left_and_full(reply) -> tuple[int, float]:
    """A spend 429's micro-units left and seconds until full, from its body; the headers must
    agree with the body."""
    assert reply.status == 429, (reply.status, reply.head())
    message = json.loads(reply.body)["error"]["message"]
    left, of, full, _ = _amounts(message)
    assert of == "0.020000", message
    assert reply.header("x-ratelimit-limit-spend") == "0.020000 USD", reply.head()
    assert reply.header("x-ratelimit-remaining-spend") == f"0.{left:06d} USD", reply.head()
    assert abs(go_seconds(reply.header("x-ratelimit-reset-spend")) - full) < 1, reply.head()
    return left, full


def _amounts(message: str):
    m = re.search(r": 0\.(\d{6}) USD left of (\d+\.\d{6}) USD, full again in (\S+)\. "
                  r"Please try again in (\S+)\.$", message)
    assert m, message
    return int(m[1]), m[2], go_seconds(m[3]), go_seconds(m[4])


def test_one_users_calls_over_two_envoys_spend_one_budget_in_money(global_stack, mock):
    policy, tier = spend_policy()
    a, b = global_stack.start_envoys(policy, upstreams={"v1": mock, "v2": mock})
    user = {"x-user-id": unique("spender")}
    started = time.monotonic()
    statuses = []
    for i in range(12):
        envoy = (a, b)[i % 2]
        reply = post(envoy, DOC, user)
        statuses.append(reply.status)
        if reply.status == 200:
            # The charge (2,250) is recorded at settlement and sent in the next round.
            wait_synced(global_stack, envoy)
    # Each Envoy admits while what it last heard leaves room for a reservation (3,050), and it
    # hears the other's calls in its own next round: A 2,250 → B (had not heard of the user)
    # 4,500 → A 6,750 → … → A's fifth, the ninth call, decided on 15,750 (4,250 left): 20,250.
    # B then decides on 18,000 (2,000 left) and A on 20,250: both refuse from then on. One Envoy
    # alone admits eight (its ninth would see 2,000 left); local mode on two admits sixteen.
    assert statuses == [200] * 9 + [429] * 3, statuses

    # Redis holds what both Envoys charged, 9 × 2,250, and their counters add up to it.
    low, high = redis_used(global_stack, tier, started)
    assert low <= 9 * CALL <= high + 1, (low, high)
    wait_until(lambda: charged(global_stack, (a, b), tier) == 9 * CALL, 10,
               lambda: f"spend counters of both Envoys: {charged(global_stack, (a, b), tier)}")

    # A folded 20,250 in its last round: nothing left, full again when Redis's key expires.
    left, full = left_and_full(post(a, DOC, user))
    pttl = redis(global_stack.redis.port, "PTTL",
                 *redis(global_stack.redis.port, "KEYS", f"tollgate:{{tollgate}}:*tier={tier}:*")) / 1000
    assert left == 0 and abs(full - pttl) < 2, (left, full, pttl)
    # B last heard 18,000: it still shows 2,000 left (and a few of refill) and refuses this call,
    # whose 3,050 do not fit. Sync mode is eventually consistent: an Envoy learns the global
    # state for a bucket in its own round, which a refused call does not start.
    left, _ = left_and_full(post(b, DOC, user))
    assert BUDGET - 8 * CALL <= left <= BUDGET - 8 * CALL + 10, left
    # A smaller call fits B's view (1,050 reserved): admitted, charged 1,250, sent; B's round
    # folds the global state back, and from then on B says what Redis says.
    assert post(b, SMALL_DOC, {**user, **SMALL_USAGE}).status == 200
    wait_synced(global_stack, b)
    reply = post(b, SMALL_DOC, {**user, **SMALL_USAGE})
    left, full = left_and_full(reply)
    total = 9 * CALL + SMALL_CALL
    low, high = redis_used(global_stack, tier, started)
    assert low <= total <= high + 1, (low, high, total)
    assert left == 0 and abs(full - low * SECONDS_PER_MICRO) < 2, (left, full, low)
    # The 429's wait: a budget with nothing left is refused at the request headers, before the
    # call's cost is known (README "Limitations"), so it waits until the debt is paid back,
    # (total - 20,000) × 4.32 s.
    wait = int(reply.header("retry-after"))
    assert abs(wait - (total - BUDGET) * SECONDS_PER_MICRO) <= 30, (wait, total)
    # The overshoot: 21,500 charged on a budget of 20,000, 1,500 over — well within the bound,
    # (2 − 1) × (20,000 + rate × lag), and paid back by refill before anything is admitted again.
    print(f"sync mode, one user's calls alternating over 2 Envoys: 10 admitted, {total} "
          f"micro-units charged of {BUDGET} (over by {total - BUDGET}; bound {BUDGET})")
    assert total - BUDGET <= (2 - 1) * BUDGET


def test_concurrent_calls_on_both_envoys_are_all_counted_in_redis(global_stack, mock):
    policy, tier = spend_policy()
    a, b = global_stack.start_envoys(policy, upstreams={"v1": mock, "v2": mock})
    user = {"x-user-id": unique("both")}
    started = time.monotonic()
    statuses: dict[int, list[int]] = {0: [], 1: []}

    def run(i: int) -> None:
        for _ in range(12):
            statuses[i].append(post((a, b)[i], DOC, user).status)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    admitted = sum(s.count(200) for s in statuses.values())
    assert all(set(s) <= {200, 429} for s in statuses.values()), statuses
    # Each Envoy alone stops at 8; what the rounds carried between them can only lower that.
    assert all(s.count(200) <= 8 for s in statuses.values()), statuses
    assert admitted >= 8, statuses
    wait_synced(global_stack, a)
    wait_synced(global_stack, b)
    # Everything admitted on either Envoy is in Redis, exactly once, and in their counters.
    low, high = redis_used(global_stack, tier, started)
    assert low <= admitted * CALL <= high + 1, (admitted, low, high)
    wait_until(lambda: charged(global_stack, (a, b), tier) == admitted * CALL, 10,
               lambda: f"spend counters: {charged(global_stack, (a, b), tier)} of {admitted * CALL}")
    over = admitted * CALL - BUDGET
    print(f"sync mode, 12 calls at once on each of 2 Envoys: {statuses[0].count(200)} + "
          f"{statuses[1].count(200)} admitted, {admitted * CALL} micro-units of {BUDGET} "
          f"(over by {max(0, over)}; bound {BUDGET} + rate × lag)")
    assert over <= (2 - 1) * (BUDGET + 1), over
    # Both refuse from now on; each says no more than its own view allows.
    assert [post(e, DOC, user).status for e in (a, b)] == [429, 429]
    assert global_stat(global_stack, a, "sync_failures") == 0
