"""Shadow mode in real Envoy: a tier with `"mode": "shadow"` lets every request through, over 4
workers, adds no rate-limit headers, and its `would_deny` counter shows exactly what enforcing
would have refused. 5 requests per hour: nothing refills while the test runs.
"""

from __future__ import annotations

from client import status_counts
from conftest import unique, wait_until

POLICY = {
    "tiers": [{
        "name": "watched",
        "mode": "shadow",
        "identity": {"header": "x-user-id"},
        "limits": [{"requests": 5, "per": "hour"}],
    }]
}


def counters(envoy) -> dict[str, int]:
    prefix = "wasmcustom.tollgate.watched."
    return {k.removeprefix(prefix): int(v) for k, _, v in
            (line.partition(": ") for line in envoy.admin("/stats").splitlines())
            if k.startswith(prefix)}


def test_a_shadow_tier_lets_everything_through_and_counts_would_deny(envoy_factory):
    envoy = envoy_factory(POLICY, https=False)
    replies = envoy.burst(12, {"x-user-id": unique("shadowed")}, concurrency=4)
    assert status_counts(replies) == {200: 12}
    assert all(r.header("x-ratelimit-remaining") is None and r.header("ratelimit") is None
               for r in replies), [r.head() for r in replies if r.header("ratelimit")]
    want = {"allowed": 5, "would_deny": 7, "denied": 0}
    seen: dict[str, int] = {}

    def flushed() -> bool:  # counters reach Envoy on each worker's next tick
        seen.update(counters(envoy))
        return all(seen.get(k) == v for k, v in want.items())

    wait_until(flushed, 10, lambda: f"counters {seen}, want {want}")


def test_shadow_headers_show_the_limit_but_never_a_wait(envoy_factory):
    policy = {"tiers": [{**POLICY["tiers"][0], "shadow_headers": True}]}
    envoy = envoy_factory(policy, https=False)
    user = {"x-user-id": unique("shown")}
    replies = [envoy.request(headers=user) for _ in range(7)]
    assert [r.status for r in replies] == [200] * 7
    assert [r.header("x-ratelimit-remaining") for r in replies] == ["4", "3", "2", "1", "0", "0", "0"]
    assert all(r.header("retry-after") is None for r in replies), [r.head() for r in replies]
