"""What a client sees: the rate-limit headers, the 429 body, and gRPC's RESOURCE_EXHAUSTED."""

from __future__ import annotations

import json
import math

import grpc
import pytest

from client import Client, parse_structured_list
from conftest import start_envoy, unique

LIMIT, WINDOW = 3, 60
POLICY = {"tiers": [
    {
        "name": "authenticated",
        "match": {"headers": [{"name": "x-user-id", "present": True}]},
        "identity": {"header": "x-user-id"},
        "limits": [{"requests": LIMIT, "per": "minute"}],
    },
    {"name": "anonymous", "identity": "shared", "limits": [{"requests": 10, "per": "minute"}]},
]}


@pytest.fixture(scope="module")
def envoy(upstreams, artifacts, tmp_path_factory):
    envoy = start_envoy(POLICY, upstreams, tmp_path_factory.mktemp("headers-envoy"))
    yield envoy
    envoy.process.stop()


def rate_headers(reply) -> dict:
    """The rate-limit headers of a reply, parsed, after checking that they agree."""
    [(policy_name, policy)] = parse_structured_list(reply.header("ratelimit-policy"))
    [(name, state)] = parse_structured_list(reply.header("ratelimit"))
    assert name == policy_name == "authenticated", reply.head()
    assert int(policy["q"]) == int(reply.header("x-ratelimit-limit")) == LIMIT, reply.head()
    assert int(policy["w"]) == WINDOW, reply.head()
    assert int(state["r"]) == int(reply.header("x-ratelimit-remaining")), reply.head()
    assert int(state["t"]) == int(reply.header("x-ratelimit-reset")), reply.head()
    return {"remaining": int(state["r"]), "reset": int(state["t"])}


def test_allowed_responses_count_down_and_agree(envoy):
    c = Client(envoy.port)
    headers = {"x-user-id": unique("countdown")}
    seen = []
    for _ in range(LIMIT):
        reply = c.request(headers=headers)
        assert reply.status == 200, reply.head()
        seen.append(rate_headers(reply))
    c.close()
    assert [s["remaining"] for s in seen] == [LIMIT - 1 - i for i in range(LIMIT)]
    # Reset: seconds until the bucket is full again, growing as it empties, at most one window.
    resets = [s["reset"] for s in seen]
    assert resets == sorted(resets) and 0 < resets[-1] <= WINDOW, resets


def test_429_headers_and_body_agree_with_each_other_and_the_policy(envoy):
    headers = {"x-user-id": unique("over")}
    c = Client(envoy.port)
    for _ in range(LIMIT):
        assert c.request(headers=headers).status == 200
    reply = c.request(headers=headers)
    c.close()
    assert reply.status == 429, reply.head()
    state = rate_headers(reply)
    assert state["remaining"] == 0
    retry_after = int(reply.header("retry-after"))
    # One request's worth of refill: WINDOW / LIMIT seconds, rounded up.
    assert 1 <= retry_after <= math.ceil(WINDOW / LIMIT), reply.head()
    assert retry_after <= state["reset"] <= WINDOW, reply.head()
    assert reply.header("content-type") == "application/json"
    body = json.loads(reply.body)
    expected = {
        "error": "rate_limited",
        "tier": "authenticated",
        "policy": "authenticated",
        "limit": LIMIT,
        "window_seconds": WINDOW,
        "retry_after_seconds": retry_after,
    }
    # Extra fields (a human-readable "message") are fine; these must be there and agree.
    assert {k: body.get(k) for k in expected} == expected, reply.text()


def test_grpc_client_gets_resource_exhausted_over_the_limit(envoy):
    metadata = (("x-user-id", unique("grpc")),)
    with grpc.insecure_channel(f"127.0.0.1:{envoy.port}") as channel:
        call = channel.unary_unary("/tollgate.test.Echo/Ping")
        codes = []
        for _ in range(LIMIT + 2):
            try:
                call(b"ping", metadata=metadata, timeout=5)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as e:
                codes.append(e.code())
    # Allowed calls reach the test route, which answers UNIMPLEMENTED (see envoy/bootstrap.yaml.tmpl).
    assert codes == [grpc.StatusCode.UNIMPLEMENTED] * LIMIT + [
        grpc.StatusCode.RESOURCE_EXHAUSTED
    ] * 2, codes
