"""The API transcripts in fixtures/llm/ through tollgate in a real Envoy 1.40.

policy-core's unit tests read the same files (include_str!), so this is where their numbers meet
the compiled filter: the mock upstream answers each call with a transcript exactly as it is stored
(`x-mock-fixture`: JSON with a content-length, SSE written one event at a time), and the tests check
that the client gets the transcript's bytes unchanged and that the caller's budget is charged the
usage the transcript reports, computed here from the file with the rules README.md documents
(input + output; Anthropic's input is its three input counts added up).

The policy charges after the response (`charge_after`, no `hold_headers`: Envoy Gateway's way of
attaching the filter), so a later zero-usage call ("probe") shows in
`x-ratelimit-remaining-tokens` what was charged so far.
"""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path

import pytest

from conftest import ROOT, Envoy, start_envoy, unique

FIXTURES = ROOT / "fixtures/llm"
# Per month: a bucket charged N tokens shows exactly BUDGET - N until one token has refilled,
# 30 days / BUDGET = 10.4 s after the charge; every probe here comes well within that.
BUDGET = 250_000
POLICY = {
    "tiers": [{
        "name": "fixtures",
        "match": {"headers": [{"name": "x-user-id", "present": True}]},
        "identity": {"header": "x-user-id"},
        "tokens": [{"tokens": BUDGET, "per": "month"}],
    }],
    "llm": {"mode": "charge_after", "on_missing_usage": "nothing", "on_incomplete": "received"},
}

# fixture file, request path, status the upstream answers with
CALLS = {
    "openai-chat.json": ("/api/v1/chat/completions", 200),
    "openai-completions.json": ("/api/v1/completions", 200),
    "openai-embeddings.json": ("/api/v1/embeddings", 200),
    "openai-responses.json": ("/api/v1/responses", 200),
    "anthropic-messages.json": ("/api/v1/messages", 200),
    "openai-error.json": ("/api/v1/chat/completions", 429),
    "anthropic-error.json": ("/api/v1/messages", 529),
    "openai-chat.sse": ("/api/v1/chat/completions", 200),
    "openai-responses.sse": ("/api/v1/responses", 200),
    "anthropic-messages.sse": ("/api/v1/messages", 200),
}


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def sse_data(raw: bytes) -> list:
    """Each event's data (JSON parsed where it is), for SSE with `\\n` line ends."""
    out = []
    for event in raw.decode().split("\n\n"):
        lines = [line[5:].removeprefix(" ") for line in event.split("\n") if line.startswith("data:")]
        if lines:
            text = "\n".join(lines)
            out.append(text if text == "[DONE]" else json.loads(text))
    return out


def usage_of(name: str) -> int:
    """What the transcript's usage costs (input + output), read from the file itself."""
    def from_object(u: dict) -> tuple[int, int]:
        if "prompt_tokens" in u:  # OpenAI chat, completions, embeddings
            return u["prompt_tokens"], u.get("completion_tokens", 0)
        if "input_tokens_details" in u:  # OpenAI Responses: input includes cached tokens
            return u["input_tokens"], u["output_tokens"]
        # Anthropic: input, cache reads and cache writes are disjoint
        return (u.get("input_tokens", 0) + u.get("cache_read_input_tokens", 0)
                + u.get("cache_creation_input_tokens", 0)), u.get("output_tokens", 0)

    if name.endswith(".json"):
        doc = json.loads(fixture(name))
        return sum(from_object(doc["usage"])) if "usage" in doc else 0
    # A stream reports cumulative counts; the largest of each wins.
    inp = out = 0
    for data in sse_data(fixture(name)):
        if not isinstance(data, dict):
            continue
        for holder in (data, data.get("message") or {}, data.get("response") or {}):
            if isinstance(holder.get("usage"), dict):
                i, o = from_object(holder["usage"])
                inp, out = max(inp, i), max(out, o)
    return inp + out


@pytest.fixture(scope="module")
def envoy(mock, tmp_path_factory):
    proxy = start_envoy(POLICY, {"v1": mock, "v2": mock}, tmp_path_factory.mktemp("fixtures"),
                        concurrency=2)
    yield proxy
    proxy.process.stop()


def call(envoy: Envoy, name: str, user: str, request: dict) -> tuple[int, dict, bytes]:
    """POST `request`, answered by the mock with transcript `name` as stored (`probe`: a chat
    answer reporting no usage): status, headers (with what the mock saw, `x-mock-saw-*`), and
    the body the client got."""
    if name == "probe":
        path = "/api/v1/chat/completions"
        mock = {"x-mock-prompt-tokens": "0", "x-mock-completion-tokens": "0"}
    else:
        path = CALLS[name][0]
        mock = {"x-mock-fixture": name, "x-mock-status": str(CALLS[name][1])}
    conn = http.client.HTTPConnection("127.0.0.1", envoy.port, timeout=10)
    try:
        conn.request("POST", path, body=json.dumps(request).encode(), headers={
            "content-type": "application/json", "x-user-id": user, **mock})
        response = conn.getresponse()
        head = {k.lower(): v for k, v in response.getheaders()}
        return response.status, head, response.read()
    finally:
        conn.close()


def charged(envoy: Envoy, user: str, expected: int) -> int:
    """What `user` has been charged, read by probes until it is `expected` (the charge lands as
    the response ends, which may be just after the client has read it) or 5 s have passed."""
    if expected == 0:
        time.sleep(0.5)  # a charge that should not come has had time to land
    deadline = time.monotonic() + 5
    while True:
        status, head, _ = call(envoy, "probe", user, {"model": "m", "max_tokens": 1})
        assert status == 200, head
        spent = BUDGET - int(head["x-ratelimit-remaining-tokens"])
        if spent >= expected or time.monotonic() > deadline:
            return spent
        time.sleep(0.1)


def request_for(name: str, stream: bool) -> dict:
    req: dict = {"model": "m", "max_tokens": 100}
    if name.startswith("openai-embeddings"):
        req = {"model": "m", "input": "hi"}
    elif name.startswith("openai-responses"):
        req = {"model": "m", "input": "hi", "max_output_tokens": 100}
    else:
        req["messages"] = [{"role": "user", "content": "hi"}]
    if stream:
        req["stream"] = True
        if name.startswith("openai-chat"):
            req["stream_options"] = {"include_usage": True}  # asked for: nothing to take out
    return req


def test_the_expected_charges_are_read_from_the_files():
    """The numbers the unit tests assert for these files (policy-core/src/llm/usage/mod.rs and
    sse/tests.rs), so that a file edited without its tests shows here too."""
    assert {name: usage_of(name) for name in CALLS} == {
        "openai-chat.json": 1117 + 46,
        "openai-completions.json": 5 + 7,
        "openai-embeddings.json": 8,
        "openai-responses.json": 328 + 52,
        "anthropic-messages.json": 21 + 188_086 + 393,
        "openai-error.json": 0,
        "anthropic-error.json": 0,
        "openai-chat.sse": 9 + 4,
        "openai-responses.sse": 37 + 11,
        "anthropic-messages.sse": 25 + 100 + 15,
    }


@pytest.mark.parametrize("name", list(CALLS))
def test_each_transcript_reaches_the_client_unchanged_and_is_charged_its_usage(envoy, name):
    user = unique("fixture")
    status, head, got = call(envoy, name, user, request_for(name, name.endswith(".sse")))
    assert status == CALLS[name][1], head
    assert got == fixture(name)
    assert head["x-mock-saw-model"] == "m"
    assert charged(envoy, user, usage_of(name)) == usage_of(name)


def test_an_openai_stream_that_did_not_ask_for_usage_gets_the_transcript_without_it(envoy):
    """tollgate asks the upstream for the usage and takes out of the stream what that added:
    the `"usage": null` members and the usage chunk (policy-core/src/llm/added_usage.rs)."""
    user = unique("fixture")
    request = request_for("openai-chat.sse", stream=True)
    del request["stream_options"]
    status, head, got = call(envoy, "openai-chat.sse", user, request)
    assert status == 200
    assert head["x-mock-saw-include-usage"] == "true"
    expected = [e for e in sse_data(fixture("openai-chat.sse"))
                if not (isinstance(e, dict) and e["choices"] == [] and e.get("usage"))]
    for event in expected:
        if isinstance(event, dict):
            event.pop("usage", None)
    assert sse_data(got) == expected
    assert b'"usage"' not in got
    assert charged(envoy, user, 13) == 13
