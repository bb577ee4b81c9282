"""Calendar quotas on global tiers end to end (issue 12, README "Calendar quotas" and "Global
mode"): a minute quota (`"reset": "minute"`) shared by two Envoys through the real tollgate-sync
and Redis, in strict mode (every request checked: exact) and in sync mode (decided locally, the
global count folded back every 250 ms, within sync mode's bound), refuses across both Envoys once
the minute's quota is spent, with `Retry-After`, `X-RateLimit-Reset` and the IETF `t=` pointing to the minute's end,
and admits again once the minute has turned.

Both pairs of Envoys run at once, so the test waits for one minute boundary (at most ~70 s in
all). Envoy, tollgate-sync and Redis read the same system clock as the test; each expected wait
is bracketed by the instants just before and just after the request (test_calendar.wait_bounds).
"""

from __future__ import annotations

import time

from conftest import start_envoy, unique
from global_stack import CONCURRENCY, global_services, global_stack  # noqa: F401  (fixtures)
from test_calendar import wait_bounds
from test_global_sync import wait_synced

QUOTA = 3


def minute_policy(mode: str) -> dict:
    """One global tier, "minute": 3 requests per calendar minute per user, in `mode`; its own
    RLS domain per mode, so the two pairs of Envoys never share a counter."""
    settings = {"cluster": "tollgate-sync", "mode": mode, "domain": f"calendar-{mode}"}
    if mode == "strict":
        # A failed check answers 503: a refusal below is the service's, never a fallback's.
        settings.update(on_unavailable="deny", timeout_ms=1000)
    else:
        settings.update(sync_interval_ms=250)
    return {
        "global": settings,
        "tiers": [{
            "name": "minute",
            "identity": {"header": "x-user-id"},
            "limits": [{"requests": QUOTA, "reset": "minute"}],
        }],
    }


def assert_refused_until(reply, before: float, after: float, end: float) -> None:
    """`reply` is a 429 whose headers all say the quota is back at `end` (the minute's end)."""
    assert reply.status == 429, reply.head()
    low, high = wait_bounds(before, after, lambda t: end)
    retry = int(reply.header("retry-after"))
    assert low <= retry <= high, (low, high, reply.head())
    assert reply.header("x-ratelimit-reset") == str(retry), reply.head()
    assert reply.header("x-ratelimit-remaining") == "0", reply.head()
    assert reply.header("ratelimit") == f'"minute";r=0;t={retry}', reply.head()


def refused(envoy, user: dict[str, str], end: float) -> None:
    before = time.time()
    reply = envoy.request(headers=user)
    assert_refused_until(reply, before, time.time(), end)


def admitted(envoy, user: dict[str, str], left: int) -> None:
    reply = envoy.request(headers=user)
    assert reply.status == 200, reply.head()
    assert reply.header("x-ratelimit-remaining") == str(left), reply.head()


def test_a_minute_quota_shared_by_two_envoys_refuses_on_both_until_the_minutes_end(global_stack):
    stack = global_stack
    sync_a, sync_b = stack.start_envoys(minute_policy("sync"))
    strict = [start_envoy(minute_policy("strict"), stack.upstreams, stack.tmp,
                          concurrency=CONCURRENCY, https=False, sync_cluster=stack.sync.addr)
              for _ in range(2)]
    try:
        strict_a, strict_b = strict
        # Spending and the refusals take a few seconds and must land in one minute: start
        # just after a boundary if less than 10 s of this one are left.
        if 60 - time.time() % 60 < 10:
            time.sleep(60 - time.time() % 60 + 0.05)
        end = (time.time() // 60 + 1) * 60
        started = time.monotonic()

        # Strict: every request is checked, so the quota holds exactly across both Envoys.
        user = {"x-user-id": unique("strict")}
        admitted(strict_a, user, 2)
        admitted(strict_b, user, 1)
        admitted(strict_a, user, 0)
        refused(strict_b, user, end)
        refused(strict_a, user, end)

        # Sync: each Envoy decides locally and learns the global count of a key from the answer
        # to its own round. The quota spent on one Envoy, that Envoy refuses; the other has not
        # heard of this user, so its first request passes (sync mode's documented bound: what
        # one sync interval admits), its round brings the minute's count back, and from then on
        # it refuses too, until the minute's end.
        other = {"x-user-id": unique("sync")}
        for left in (2, 1, 0):
            admitted(sync_a, other, left)
        wait_synced(stack, sync_a)
        refused(sync_a, other, end)
        admitted(sync_b, other, 2)
        wait_synced(stack, sync_b)
        refused(sync_b, other, end)
        refused(sync_a, other, end)
        assert time.time() < end, "spending took longer than the rest of the minute"
        print(f"spent and refused on all four Envoys in {time.monotonic() - started:.1f} s, "
              f"{end - time.time():.1f} s before the minute's end")

        # The minute turns: the whole quota is back on every Envoy at once, no key deleted.
        time.sleep(max(0.0, end - time.time() + 0.1))
        admitted(strict_b, user, 2)
        admitted(strict_a, user, 1)
        admitted(sync_b, other, 2)
        admitted(sync_a, other, 2)
    finally:
        for envoy in strict:
            envoy.process.stop()
