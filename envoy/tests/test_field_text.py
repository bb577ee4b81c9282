"""The response fields' and the refusal's exact text, byte for byte, in real Envoy.

Since the constant part of each tier's text (`RateLimit-Policy`, `X-RateLimit-Limit`, the
refusal body around its numbers, the gRPC message) is written once when the policy loads and
only the numbers per request (BENCHMARKS.md §2, "Issue 14: constant field text per tier"), this
pins what a client receives for a tier with two named limits: admitted, refused over HTTP,
refused over gRPC, and a shadow tier's headers. test_headers.py checks that the values agree;
this checks the text itself.
"""

from __future__ import annotations

import math
import re

import grpc
import pytest

from client import Client
from conftest import start_envoy, unique

POLICY = {"tiers": [
    {
        "name": "watched",
        "match": {"headers": [{"name": "x-shadow", "present": True}]},
        "identity": {"header": "x-user-id"},
        "mode": "shadow",
        "shadow_headers": True,
        "limits": [{"requests": 1, "per": "minute"}],
    },
    {
        "name": "two",
        "identity": {"header": "x-user-id"},
        "limits": [
            {"name": "burst", "requests": 3, "per": "minute"},
            {"name": "hourly", "requests": 100, "per": "hour"},
        ],
    },
]}

TWO_POLICY = '"burst";q=3;w=60, "hourly";q=100;w=3600'
TWO_CURRENT = re.compile(r'"burst";r=(\d+);t=(\d+), "hourly";r=(\d+);t=(\d+)')
# The fields tollgate sets; Envoy adds its own (date, server, content-length, …) around them.
FIELDS = {"ratelimit-policy", "ratelimit", "x-ratelimit-limit", "x-ratelimit-remaining",
          "x-ratelimit-reset", "retry-after"}


@pytest.fixture(scope="module")
def envoy(upstreams, artifacts, tmp_path_factory):
    envoy = start_envoy(POLICY, upstreams, tmp_path_factory.mktemp("field-text-envoy"))
    yield envoy
    envoy.process.stop()


def current(headers: dict[str, str]) -> tuple[int, int, int, int]:
    """`RateLimit`'s four numbers, after checking its text is exactly two entries."""
    m = TWO_CURRENT.fullmatch(headers["ratelimit"])
    assert m, headers
    return tuple(int(g) for g in m.groups())


def test_admitted_and_refused_responses_carry_the_exact_text(envoy):
    c = Client(envoy.port)
    headers = {"x-user-id": unique("text")}
    replies = [c.request(headers=headers) for _ in range(4)]
    c.close()
    for i, reply in enumerate(replies[:3]):
        assert reply.status == 200, reply.head()
        assert {n for n in reply.headers if n in FIELDS} == FIELDS - {"retry-after"}, reply.head()
        assert reply.header("ratelimit-policy") == TWO_POLICY, reply.head()
        burst_left, burst_reset, hourly_left, hourly_reset = current(reply.headers)
        assert (burst_left, hourly_left) == (2 - i, 99 - i), reply.head()
        # 20 s of refill per request taken (60 s / 3), 36 s on the hourly limit; rounded up.
        assert 20 * i < burst_reset <= 20 * (i + 1), reply.head()
        assert 36 * i < hourly_reset <= 36 * (i + 1), reply.head()
        # The decisive limit is the one with the least left: `burst`.
        assert reply.header("x-ratelimit-limit") == "3", reply.head()
        assert reply.header("x-ratelimit-remaining") == str(burst_left), reply.head()
        assert reply.header("x-ratelimit-reset") == str(burst_reset), reply.head()

    refused = replies[3]
    assert refused.status == 429, refused.head()
    assert {n for n in refused.headers if n in FIELDS} == FIELDS, refused.head()
    assert refused.header("ratelimit-policy") == TWO_POLICY, refused.head()
    burst_left, burst_reset, hourly_left, _ = current(refused.headers)
    assert (burst_left, hourly_left) == (0, 97), refused.head()
    wait = int(refused.header("retry-after"))
    assert 1 <= wait <= 20 < burst_reset <= 60, refused.head()
    assert refused.header("x-ratelimit-limit") == "3", refused.head()
    assert refused.header("x-ratelimit-remaining") == "0", refused.head()
    assert refused.header("x-ratelimit-reset") == str(burst_reset), refused.head()
    assert refused.header("content-type") == "application/json", refused.head()
    assert refused.body == (
        b'{"error":"rate_limited","message":"rate limit exceeded","tier":"two",'
        b'"policy":"burst","limit":3,"window_seconds":60,"retry_after_seconds":%d}' % wait
    ), refused.body


def test_a_grpc_refusal_carries_the_exact_text(envoy):
    metadata = (("x-user-id", unique("grpc-text")),)
    with grpc.insecure_channel(f"127.0.0.1:{envoy.port}",
                               options=[("grpc.enable_retries", 0)]) as channel:
        ping = channel.unary_unary("/tollgate.test.Echo/Ping")
        errors = []
        for _ in range(4):
            with pytest.raises(grpc.RpcError) as e:
                ping(b"ping", metadata=metadata, timeout=10)
            errors.append(e.value)
    # Admitted calls reach the test route, which answers UNIMPLEMENTED.
    assert [e.code() for e in errors] == [grpc.StatusCode.UNIMPLEMENTED] * 3 + [
        grpc.StatusCode.RESOURCE_EXHAUSTED]
    refused = errors[3]
    # A trailers-only answer: the fields arrive as trailing metadata.
    trailing = dict(refused.trailing_metadata() or ())
    assert trailing["ratelimit-policy"] == TWO_POLICY, trailing
    burst_left, burst_reset, hourly_left, _ = current(trailing)
    assert (burst_left, hourly_left) == (0, 97), trailing
    wait = int(trailing["retry-after"])
    pushback = int(trailing["grpc-retry-pushback-ms"])
    assert math.ceil(pushback / 1000) == wait and 0 < pushback <= 20_000, trailing
    assert trailing["x-ratelimit-limit"] == "3", trailing
    assert trailing["x-ratelimit-remaining"] == "0", trailing
    assert trailing["x-ratelimit-reset"] == str(burst_reset), trailing
    assert refused.details() == f"rate limit exceeded for tier two; retry after {wait} s"


def test_a_shadow_tier_sends_its_fields_but_never_a_wait(envoy):
    c = Client(envoy.port)
    headers = {"x-user-id": unique("shadow-text"), "x-shadow": "1"}
    replies = [c.request(headers=headers) for _ in range(2)]
    c.close()
    for i, reply in enumerate(replies):
        # The second is one the tier would have refused: let through, no `Retry-After`.
        assert reply.status == 200, reply.head()
        assert {n for n in reply.headers if n in FIELDS} == FIELDS - {"retry-after"}, reply.head()
        assert reply.header("ratelimit-policy") == '"watched";q=1;w=60', reply.head()
        m = re.fullmatch(r'"watched";r=0;t=(\d+)', reply.header("ratelimit"))
        assert m and 0 < int(m[1]) <= 60, reply.head()
        assert reply.header("x-ratelimit-limit") == "1", reply.head()
        assert reply.header("x-ratelimit-remaining") == "0", reply.head()
        assert reply.header("x-ratelimit-reset") == m[1], reply.head()
