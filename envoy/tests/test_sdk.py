"""tollgate's refusals as the official SDKs and gRPC act on them: real `openai` and `anthropic`
Python SDKs and a grpcio client, through Envoy 1.40 with tollgate, in front of the LLM mock
(`tollgate-upstream --app llm`).

What the SDKs read (openai/anthropic `_base_client.py`): `x-should-retry` first (`true`/`false`
overrides the status), then `retry-after-ms`, `retry-after`; `openai` also refuses a wait past
120 s. Their errors carry `x-request-id` (openai) / `request-id` (anthropic). gRPC's retry policy
reads `grpc-retry-pushback-ms` (a wait in ms; negative: do not retry) and ignores `retry-after`.

Attempts are counted by Envoy itself: the HTTP listener's `downstream_rq_total` (every request a
client sent) and the LLM cluster's `upstream_rq_total` (every request the mock received).
"""

from __future__ import annotations

import json
import re
import time

import anthropic
import grpc
import openai
import pytest

from conftest import Envoy, start_envoy, unique

CAP = 60  # llm.max_client_wait_seconds (its default, stated so the test reads on its own)
LLM_CLUSTER = "httproute/default/task-api/rule/0"  # /api/v1… in envoy/bootstrap.yaml.tmpl

POLICY = {
    "tiers": [
        {   # one call at once, then one every 2 s: a wait well under the cap
            "name": "short",
            "match": {"headers": [{"name": "x-short-user", "present": True}]},
            "identity": {"header": "x-short-user"},
            "limits": [{"requests": 30, "per": "minute", "burst": 1}],
            "tokens": [{"tokens": 1_000_000, "per": "hour"}],
        },
        {   # one call an hour: a wait far over the cap
            "name": "long",
            "match": {"headers": [{"name": "x-long-user", "present": True}]},
            "identity": {"header": "x-long-user"},
            "limits": [{"requests": 1, "per": "hour"}],
            "tokens": [{"tokens": 1_000_000, "per": "hour"}],
        },
        {   # gRPC: one call at once, then one every 2 s
            "name": "grpc",
            "match": {"headers": [{"name": "x-grpc-user", "present": True}]},
            "identity": {"header": "x-grpc-user"},
            "limits": [{"requests": 30, "per": "minute", "burst": 1}],
        },
    ],
    "llm": {"max_client_wait_seconds": CAP},
}





@pytest.fixture(scope="module")
def envoy(mock, tmp_path_factory) -> Envoy:
    envoy = start_envoy(POLICY, {"v1": mock, "v2": mock}, tmp_path_factory.mktemp("sdk-envoy"),
                        concurrency=2, https=False)
    yield envoy
    envoy.process.stop()


def counters(envoy: Envoy) -> tuple[int, int]:
    """(requests Envoy's HTTP listener received, requests the LLM mock received)."""
    stats = envoy.admin("/stats")

    def stat(name: str) -> int:
        m = re.search(rf"^{re.escape(name)}: (\d+)$", stats, re.M)
        assert m, f"no {name} in /stats"
        return int(m[1])

    return (stat(f"http.http-{envoy.port}.downstream_rq_total"),
            stat(f"cluster.{LLM_CLUSTER}.upstream_rq_total"))


def attempts_of(envoy: Envoy, call) -> tuple[object, int, int, float]:
    """Runs call(); returns (its result or exception, attempts Envoy saw, requests the mock saw,
    seconds taken)."""
    before = counters(envoy)
    started = time.monotonic()
    try:
        result = call()
    except Exception as e:  # noqa: BLE001  the SDK's error is the result under test
        result = e
    elapsed = time.monotonic() - started
    # Envoy counts a downstream request when its headers arrive and an upstream one when sent:
    # both are counted by the time the client has its answer.
    after = counters(envoy)
    return result, after[0] - before[0], after[1] - before[1], elapsed


def openai_client(envoy: Envoy, headers: dict[str, str], retries: int) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{envoy.port}/api/v1", api_key="test",
                         max_retries=retries, timeout=30, default_headers=headers)


def anthropic_client(envoy: Envoy, headers: dict[str, str], retries: int) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=f"http://127.0.0.1:{envoy.port}/api", api_key="test",
                               max_retries=retries, timeout=30, default_headers=headers)


def chat(client: openai.OpenAI):
    return client.chat.completions.create(
        model="gpt-4o-mini", max_tokens=16, messages=[{"role": "user", "content": "hi"}])


def message(client: anthropic.Anthropic):
    return client.messages.create(
        model="claude-x", max_tokens=16, messages=[{"role": "user", "content": "hi"}])


UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def test_openai_rate_limit_error_carries_envoys_request_id(envoy):
    client = openai_client(envoy, {"x-short-user": unique("oa-id")}, retries=0)
    chat(client)
    with pytest.raises(openai.RateLimitError) as raised:
        chat(client)
    e = raised.value
    assert e.status_code == 429
    # Envoy's connection manager generated it; the SDK reads x-request-id.
    assert e.request_id and UUID.match(e.request_id), e.response.headers
    assert e.body["type"] == "rate_limit_exceeded", e.body
    assert e.response.headers["x-should-retry"] == "true"


def test_anthropic_rate_limit_error_carries_the_request_id_and_anthropics_headers(envoy):
    client = anthropic_client(envoy, {"x-short-user": unique("an-id")}, retries=0)
    ok = client.messages.with_raw_response.create(
        model="claude-x", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    assert ok.headers["anthropic-ratelimit-requests-limit"] == "30"  # 30 a minute, burst 1
    assert ok.headers["anthropic-ratelimit-requests-remaining"] == "0"
    reset = ok.headers["anthropic-ratelimit-requests-reset"]
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", reset), reset
    assert time.strptime(reset, "%Y-%m-%dT%H:%M:%SZ")  # a real calendar date
    assert ok.headers["anthropic-ratelimit-tokens-limit"] == "1000000"
    # count: "total" (the default) bounds neither input nor output tokens alone.
    assert "anthropic-ratelimit-input-tokens-limit" not in ok.headers
    with pytest.raises(anthropic.RateLimitError) as raised:
        message(client)
    e = raised.value
    assert e.status_code == 429
    # The anthropic SDK reads `request-id`; tollgate sends Envoy's id under both names.
    assert e.request_id and UUID.match(e.request_id), e.response.headers
    assert e.response.headers["x-request-id"] == e.request_id
    assert e.body["error"]["type"] == "rate_limit_error", e.body


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_a_short_wait_is_retried_after_retry_after_ms(envoy, sdk):
    headers = {"x-short-user": unique(f"{sdk}-short")}
    client, call = ((openai_client(envoy, headers, 2), chat) if sdk == "openai"
                    else (anthropic_client(envoy, headers, 2), message))
    call(client)
    result, seen, upstream, elapsed = attempts_of(envoy, lambda: call(client))
    assert not isinstance(result, Exception), repr(result)
    # Refused once (never reaching the mock), then, after the ~2 s the 429 asked for, admitted.
    assert (seen, upstream) == (2, 1), (seen, upstream)
    # retry-after-ms honoured: the SDKs' own first backoff would be under 1 s (0.5 s ± jitter).
    assert 1.5 <= elapsed < 20, elapsed


@pytest.mark.timeout(60)  # a regression would block for an hour: fail instead
@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_a_wait_over_the_cap_is_not_retried_and_returns_promptly(envoy, sdk):
    headers = {"x-long-user": unique(f"{sdk}-long")}
    client, call, error = (
        (openai_client(envoy, headers, 2), chat, openai.RateLimitError) if sdk == "openai"
        else (anthropic_client(envoy, headers, 2), message, anthropic.RateLimitError))
    call(client)
    result, seen, upstream, elapsed = attempts_of(envoy, lambda: call(client))
    assert isinstance(result, error), repr(result)
    headers = result.response.headers
    assert int(headers["retry-after"]) > CAP, headers
    assert headers["x-should-retry"] == "false", headers
    # One attempt, none upstream: without x-should-retry: false, anthropic would sleep for the
    # whole retry-after (about an hour), twice.
    assert (seen, upstream) == (1, 0), (seen, upstream)
    assert elapsed < 10, elapsed


RETRY_CONFIG = json.dumps({"methodConfig": [{
    "name": [{"service": "tollgate.test.Echo"}],
    "retryPolicy": {
        "maxAttempts": 2,
        "initialBackoff": "0.01s",
        "maxBackoff": "0.01s",
        "backoffMultiplier": 1,
        "retryableStatusCodes": ["RESOURCE_EXHAUSTED"],
    },
}]})


def test_grpc_refusal_carries_pushback_and_grpc_retries_obey_it(envoy):
    metadata = (("x-grpc-user", unique("grpc")),)
    target = f"127.0.0.1:{envoy.port}"
    # Allowed calls reach the test route, which answers UNIMPLEMENTED (envoy/bootstrap.yaml.tmpl).
    with grpc.insecure_channel(target, options=[("grpc.enable_retries", 0)]) as channel:
        ping = channel.unary_unary("/tollgate.test.Echo/Ping")
        with pytest.raises(grpc.RpcError) as first:
            ping(b"ping", metadata=metadata, timeout=10)
        assert first.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.RpcError) as refused:
            ping(b"ping", metadata=metadata, timeout=10)
    e = refused.value
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
    # A trailers-only answer: the pushback arrives as trailing metadata.
    trailing = dict(e.trailing_metadata() or ())
    assert 1000 < int(trailing["grpc-retry-pushback-ms"]) <= 2000, trailing

    # With a retry policy whose own backoff is 10 ms, the retry waits for the pushback instead
    # and then passes: the call ends at the test route, not RESOURCE_EXHAUSTED.
    time.sleep(2.1)  # a full bucket again
    options = [("grpc.enable_retries", 1), ("grpc.service_config", RETRY_CONFIG)]
    with grpc.insecure_channel(target, options=options) as channel:
        ping = channel.unary_unary("/tollgate.test.Echo/Ping")
        with pytest.raises(grpc.RpcError):
            ping(b"ping", metadata=metadata, timeout=10)

        def retried():
            try:
                ping(b"ping", metadata=metadata, timeout=10)
            except grpc.RpcError as err:
                return err.code()

        code, seen, _, elapsed = attempts_of(envoy, retried)
    assert code == grpc.StatusCode.UNIMPLEMENTED, code
    assert seen == 2, seen
    assert 1.0 <= elapsed < 10, elapsed
