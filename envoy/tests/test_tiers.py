"""Tiers from examples/task-api-policy.json, enforced across 4 Envoy workers."""

from __future__ import annotations

import time

from client import Client, status_counts
from conftest import TASK_POLICY, unique


def test_authenticated_user_gets_exactly_100_of_110(task_envoy):
    replies = task_envoy.burst(110, {"x-user-id": unique("test")}, concurrency=16)
    assert status_counts(replies) == {200: 100, 429: 10}


def test_a_second_user_is_unaffected_by_the_first(task_envoy):
    first, second = unique("alice"), unique("bob")
    assert status_counts(task_envoy.burst(110, {"x-user-id": first})) == {200: 100, 429: 10}
    assert status_counts(task_envoy.burst(100, {"x-user-id": second})) == {200: 100}
    assert task_envoy.request(headers={"x-user-id": first}).status == 429


def test_premium_key_is_not_limited_at_110(task_envoy):
    replies = task_envoy.burst(110, {"x-api-key": unique("premium")}, concurrency=16)
    assert status_counts(replies) == {200: 110}


def test_anonymous_requests_share_one_bucket_of_10(envoy_factory):
    # Its own Envoy: the anonymous bucket is shared by every request without credentials.
    envoy = envoy_factory(TASK_POLICY)
    assert status_counts(envoy.burst(15, concurrency=8)) == {200: 10, 429: 5}


def test_routes_reach_their_upstream_and_are_all_limited(task_envoy):
    user = unique("routes")
    for path, version in (("/api/tasks", "v1"), ("/api/v1/tasks", "v1"), ("/api/v2/tasks", "v2")):
        reply = task_envoy.request(path, {"x-user-id": user})
        assert reply.status == 200, reply.head()
        assert reply.text().startswith(f'{{"version":"{version}","tasks":[')
        assert reply.header("x-ratelimit-limit") == "100", reply.head()
    # The three routes drew from one bucket.
    assert task_envoy.request(headers={"x-user-id": user}).header("x-ratelimit-remaining") == "96"


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
    headers = {"x-user-id": unique("refill")}

    def six() -> list[int]:
        """Six requests back to back on one connection: far less than 200 ms in all."""
        c = Client(envoy.port)
        try:
            return [c.request(headers=headers).status for _ in range(6)]
        finally:
            c.close()

    first = six()
    assert first == [200] * 5 + [429]
    denied = envoy.request(headers=headers)
    retry_after = int(denied.header("retry-after"))
    assert retry_after == 1, denied.head()
    time.sleep(retry_after)
    # 5 per second: one second after the bucket emptied it is full again.
    assert six() == [200] * 5 + [429]
