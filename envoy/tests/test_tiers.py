"""Tiers from examples/task-api-policy.json, enforced across 4 Envoy workers.

Exact counts hold while no request refills: a limit of 100 a minute gives one back every 0.6 s,
5 a second every 0.2 s. A round of requests that took longer than that says nothing exact about
the limit, so `in_one_window` repeats it with a fresh identity (up to a deadline) until one fits;
the assertions on that round stay exact.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

from client import Client, status_counts
from conftest import TASK_POLICY, unique, wait_until

T = TypeVar("T")
AUTHENTICATED_WINDOW = 0.6  # 100 per minute: one request back every 0.6 s
ANONYMOUS_WINDOW = 6.0  # 10 per minute


def in_one_window(window: float, what: str, round_: Callable[[], T], timeout: float = 60) -> T:
    """Runs `round_` (which starts from a fresh identity) until one run takes less than `window`
    seconds, and returns what that run returned."""
    slow: list[float] = []

    def attempt() -> tuple[T] | None:
        started = time.monotonic()
        result = round_()
        took = time.monotonic() - started
        if took < window:
            return (result,)
        slow.append(round(took, 3))
        return None

    return wait_until(attempt, timeout, lambda: f"{what} within {window}s ({len(slow)} rounds; the last took {slow[-5:]} s)", interval=0)[0]


def test_authenticated_user_gets_exactly_100_of_110(task_envoy):
    replies = in_one_window(AUTHENTICATED_WINDOW, "a burst of 110",
                            lambda: task_envoy.burst(110, {"x-user-id": unique("test")}, concurrency=16))  # fmt: skip
    assert status_counts(replies) == {200: 100, 429: 10}


def test_a_second_user_is_unaffected_by_the_first(task_envoy):
    def round_() -> tuple[dict, dict, int]:
        first, second = unique("alice"), unique("bob")
        return (
            status_counts(task_envoy.burst(110, {"x-user-id": first})),
            status_counts(task_envoy.burst(100, {"x-user-id": second})),
            task_envoy.request(headers={"x-user-id": first}).status,
        )

    first, second, first_again = in_one_window(AUTHENTICATED_WINDOW, "bursts of 110 and 100 and one more", round_)
    assert first == {200: 100, 429: 10}
    assert second == {200: 100}
    assert first_again == 429


def test_premium_key_is_not_limited_at_110(task_envoy):
    replies = task_envoy.burst(110, {"x-api-key": unique("premium")}, concurrency=16)
    assert status_counts(replies) == {200: 110}


def test_anonymous_requests_share_one_bucket_of_10(envoy_factory):
    # Its own Envoy: the anonymous bucket is shared by every request without credentials.
    # A slow round is repeated on a fresh Envoy (a fresh shared bucket); only the burst is timed.
    took: list[float] = []

    def round_():
        envoy = envoy_factory(TASK_POLICY)
        started = time.monotonic()
        replies = envoy.burst(15, concurrency=8)
        took.append(round(time.monotonic() - started, 3))
        if took[-1] < ANONYMOUS_WINDOW:
            return (replies,)
        envoy.process.stop()
        return None

    (replies,) = wait_until(round_, 120, lambda: f"a burst of 15 within {ANONYMOUS_WINDOW}s ({len(took)} rounds; the last took {took[-5:]} s)", interval=0)
    assert status_counts(replies) == {200: 10, 429: 5}


def test_routes_reach_their_upstream_and_are_all_limited(task_envoy):
    def round_():
        user = unique("routes")
        paths = (("/api/tasks", "v1"), ("/api/v1/tasks", "v1"), ("/api/v2/tasks", "v2"))
        replies = [(version, task_envoy.request(path, {"x-user-id": user})) for path, version in paths]
        return replies, task_envoy.request(headers={"x-user-id": user})

    replies, fourth = in_one_window(AUTHENTICATED_WINDOW, "four requests", round_)
    for version, reply in replies:
        assert reply.status == 200, reply.head()
        assert reply.text().startswith(f'{{"version":"{version}","tasks":[')
        assert reply.header("x-ratelimit-limit") == "100", reply.head()
    # The three routes drew from one bucket.
    assert fourth.header("x-ratelimit-remaining") == "96"


def test_filter_is_off_on_routes_that_do_not_enable_it(task_envoy):
    # /healthz has no typed_per_filter_config: anonymous requests there never count.
    for _ in range(30):
        reply = task_envoy.request("/healthz")
        assert reply.status == 200
        assert reply.header("x-ratelimit-limit") is None


def test_requests_pass_again_once_the_bucket_has_refilled(envoy_factory):
    policy = {"tiers": [{
        "name": "authenticated",
        "match": {"headers": [{"name": "x-user-id", "present": True}]},
        "identity": {"header": "x-user-id"},
        "limits": [{"requests": 5, "per": "second"}],
    }]}
    envoy = envoy_factory(policy)

    def six(headers: dict[str, str]) -> list[int]:
        """Six requests back to back on one connection."""
        c = Client(envoy.port)
        try:
            return [c.request(headers=headers).status for _ in range(6)]
        finally:
            c.close()

    # Each six (and the denied request after the first) must fit in 0.2 s, in which no request
    # comes back: a slower run starts again with a fresh user.
    def round_():
        headers = {"x-user-id": unique("refill")}
        first = in_one_window(0.2, "six requests and one more", lambda: (six(headers), envoy.request(headers=headers)))
        denied = first[1]
        retry_after = int(denied.header("retry-after") or 0)
        # Waits as long as the filter says to: the refill is what is tested, and a longer wait
        # cannot give more than the full bucket of 5.
        time.sleep(retry_after)
        started = time.monotonic()
        second = six(headers)
        return (first[0], denied, retry_after, second) if time.monotonic() - started < 0.2 else None

    first, denied, retry_after, second = wait_until(round_, 60, "a second round of six within 0.2 s", interval=0)
    assert first == [200] * 5 + [429]
    assert denied.status == 429 and retry_after == 1, denied.head()
    # 5 per second: one second after the bucket emptied it is full again.
    assert second == [200] * 5 + [429]
