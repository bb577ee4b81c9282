"""AWS Bedrock (Converse, ConverseStream, InvokeModel, InvokeModelWithResponseStream) through
tollgate in a real Envoy 1.40, answered by the mock upstream with the Bedrock transcripts of
fixtures/llm/ (`x-mock-fixture`, JSON and binary event streams byte for byte, a message a write),
and driven both by hand and by AWS's own `boto3` client, so that botocore parses the answers, the
usage and tollgate's refusal (`ThrottlingException`).

Bedrock's paths are `/model/{modelId}/{operation}`; here under the bootstrap's `/api` route
(`/api/bedrock/model/…`: tollgate finds the model between `/model/` and the last segment, and
boto3 keeps an `endpoint_url`'s path). What each call costs is read from the transcript itself:
Converse's `inputTokens` + `cacheReadInputTokens` + `cacheWriteInputTokens` + `outputTokens`
(the metadata event's `usage` for a stream); Anthropic's counts for InvokeModel.
"""

from __future__ import annotations

import base64
import http.client
import json
import struct
import time
import zlib

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

import render  # envoy/render.py (conftest puts envoy/ on sys.path)
from conftest import Envoy, start_envoy, start_envoy_from_template, unique
from test_fixtures import fixture

BUDGET = 250_000
HAIKU_BUDGET = 100  # claude-3-5-haiku-20241022, whatever Bedrock id or API names it
POLICY = {
    "tiers": [{
        "name": "bedrock",
        "match": {"headers": [{"name": "x-user-id", "present": True}]},
        "identity": {"header": "x-user-id"},
        "tokens": [
            {"tokens": BUDGET, "per": "month"},
            {"tokens": HAIKU_BUDGET, "per": "month", "model": "claude-3-5-haiku-20241022",
             "name": "haiku"},
        ],
    }],
    "llm": {"mode": "charge_after", "on_missing_usage": "nothing", "on_incomplete": "received"},
}
PREFIX = "/api/bedrock"
SONNET = "anthropic.claude-3-5-sonnet-20241022-v2:0"
HAIKU = "us.anthropic.claude-3-5-haiku-20241022-v1:0"
ARN = "arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-3-5-haiku-20241022-v1:0"
CONVERSE_BODY = {"messages": [{"role": "user", "content": [{"text": "Say hello"}]}],
                 "inferenceConfig": {"maxTokens": 200}}
INVOKE_BODY = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 200,
               "messages": [{"role": "user", "content": "Say hello"}]}


def messages(raw: bytes) -> list[tuple[dict, bytes]]:
    """The event-stream messages of `raw` (headers, payload), both CRCs checked."""
    out, at = [], 0
    while at < len(raw):
        total, headers_len, prelude_crc = struct.unpack_from(">III", raw, at)
        assert prelude_crc == zlib.crc32(raw[at:at + 8])
        (crc,) = struct.unpack_from(">I", raw, at + total - 4)
        if crc != zlib.crc32(raw[at:at + total - 4]):
            raise ValueError(f"message CRC mismatch at byte {at}")
        headers, h = {}, at + 12
        while h < at + 12 + headers_len:
            n = raw[h]
            name = raw[h + 1:h + 1 + n].decode()
            assert raw[h + 1 + n] == 7  # string headers only in these transcripts
            (length,) = struct.unpack_from(">H", raw, h + 2 + n)
            headers[name] = raw[h + 4 + n:h + 4 + n + length].decode()
            h += 4 + n + length
        out.append((headers, raw[at + 12 + headers_len:at + total - 4]))
        at += total
    return out


def converse_cost(usage: dict) -> int:
    return (usage["inputTokens"] + usage.get("cacheReadInputTokens", 0)
            + usage.get("cacheWriteInputTokens", 0) + usage["outputTokens"])


def usage_of(name: str) -> int:
    """What transcript `name` costs, read from the file."""
    raw = fixture(name)
    if name == "bedrock-converse.json":
        return converse_cost(json.loads(raw)["usage"])
    if name == "bedrock-invoke.json":
        u = json.loads(raw)["usage"]
        return (u["input_tokens"] + u["cache_read_input_tokens"]
                + u["cache_creation_input_tokens"] + u["output_tokens"])
    if name == "bedrock-converse-stream.eventstream":
        (metadata,) = [json.loads(p) for h, p in messages(raw) if h[":event-type"] == "metadata"]
        return converse_cost(metadata["usage"])
    assert name == "bedrock-invoke-stream.eventstream"
    inp = out = 0
    for _, payload in messages(raw):
        event = json.loads(base64.b64decode(json.loads(payload)["bytes"]))
        u = event.get("usage") or (event.get("message") or {}).get("usage") or {}
        inp = max(inp, u.get("input_tokens", 0))
        out = max(out, u.get("output_tokens", 0))
    return inp + out


def text_bytes(name: str, first: int) -> int:
    """UTF-8 bytes of generated text in the first `first` messages of a ConverseStream file."""
    return sum(len(json.loads(p)["delta"]["text"].encode())
               for h, p in messages(fixture(name))[:first]
               if h[":event-type"] == "contentBlockDelta")


@pytest.fixture(scope="module")
def envoy(mock, tmp_path_factory):
    proxy = start_envoy(POLICY, {"v1": mock, "v2": mock}, tmp_path_factory.mktemp("bedrock"),
                        concurrency=2, https=False)
    yield proxy
    proxy.process.stop()


def post(envoy: Envoy, path: str, user: str, body: dict,
         headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", envoy.port, timeout=10)
    try:
        conn.request("POST", path, body=json.dumps(body).encode(), headers={
            "content-type": "application/json", "x-user-id": user, **(headers or {})})
        try:
            response = conn.getresponse()
            head = {k.lower(): v for k, v in response.getheaders()}
            try:
                got = response.read()
            except http.client.IncompleteRead as e:
                got = e.partial
            return response.status, head, got
        except (http.client.RemoteDisconnected, ConnectionResetError):
            return 0, {}, b""
    finally:
        conn.close()


def charged(envoy: Envoy, user: str, expected: int) -> int:
    """What `user` has been charged, read by zero-usage chat probes until it is `expected` (the
    charge lands as the response ends) or 5 s have passed."""
    if expected == 0:
        time.sleep(0.5)
    deadline = time.monotonic() + 5
    while True:
        status, head, _ = post(envoy, "/api/v1/chat/completions", user,
                               {"model": "m", "max_tokens": 1, "messages": []},
                               {"x-mock-prompt-tokens": "0", "x-mock-completion-tokens": "0"})
        assert status == 200, head
        spent = BUDGET - int(head["x-ratelimit-remaining-tokens"])
        if spent >= expected or time.monotonic() > deadline:
            return spent
        time.sleep(0.1)


def test_the_expected_charges_are_read_from_the_files():
    """The numbers policy-core's unit tests assert for these files (llm/sse/bedrock.rs)."""
    assert {name: usage_of(name) for name in CALLS} == {
        "bedrock-converse.json": 37 + 1800 + 248 + 22,
        "bedrock-converse-stream.eventstream": 21 + 1024 + 14,
        "bedrock-invoke.json": 12 + 13,
        "bedrock-invoke-stream.eventstream": 25 + 15,
    }
    with pytest.raises(ValueError, match="CRC"):
        messages(fixture("bedrock-converse-stream-bad-crc.eventstream"))


# transcript -> (operation, request body)
CALLS = {
    "bedrock-converse.json": ("converse", CONVERSE_BODY),
    "bedrock-converse-stream.eventstream": ("converse-stream", CONVERSE_BODY),
    "bedrock-invoke.json": ("invoke", INVOKE_BODY),
    "bedrock-invoke-stream.eventstream": ("invoke-with-response-stream", INVOKE_BODY),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_each_call_reaches_the_client_unchanged_and_is_charged_its_usage(envoy, name):
    user = unique("bedrock")
    operation, body = CALLS[name]
    status, head, got = post(envoy, f"{PREFIX}/model/{SONNET}/{operation}", user, body,
                             {"x-mock-fixture": name})
    assert status == 200, head
    assert got == fixture(name)
    if name.endswith(".eventstream"):
        assert head["content-type"] == "application/vnd.amazon.eventstream"
    assert charged(envoy, user, usage_of(name)) == usage_of(name)


def test_a_stream_cut_short_is_charged_what_it_received(envoy):
    """Four messages (messageStart and three text deltas), then the connection drops: the prompt
    estimate (request body / 4) plus the text received / 4."""
    user = unique("bedrock-cut")
    name = "bedrock-converse-stream.eventstream"
    _, _, got = post(envoy, f"{PREFIX}/model/{SONNET}/converse-stream", user, CONVERSE_BODY,
                     {"x-mock-fixture": name, "x-mock-cut-after": "4"})
    assert fixture(name).startswith(got) and len(got) < len(fixture(name))
    expected = -(-len(json.dumps(CONVERSE_BODY)) // 4) + -(-text_bytes(name, 4) // 4)
    assert text_bytes(name, 4) == 36
    assert charged(envoy, user, expected) == expected


def test_a_stream_with_a_bad_crc_passes_unchanged_and_is_charged_as_missing_usage(envoy):
    """The metadata event's CRC fails: its usage is not believed. Under on_missing_usage
    "nothing" the caller pays what visibly went by (prompt estimate + text / 4), not the
    corrupted report's numbers."""
    user = unique("bedrock-crc")
    name = "bedrock-converse-stream-bad-crc.eventstream"
    status, _, got = post(envoy, f"{PREFIX}/model/{SONNET}/converse-stream", user, CONVERSE_BODY,
                          {"x-mock-fixture": name})
    assert status == 200
    assert got == fixture(name)
    # The text is the good file's: the flipped byte is in the metadata event, which has none.
    text = text_bytes("bedrock-converse-stream.eventstream", 7)
    expected = -(-len(json.dumps(CONVERSE_BODY)) // 4) + -(-text // 4)
    assert expected != usage_of("bedrock-converse-stream.eventstream")
    assert charged(envoy, user, expected) == expected


def bedrock_client(envoy: Envoy, user: str, fixture_name: str):
    """boto3's bedrock-runtime client against Envoy: fake credentials, no retries; every call
    carries the caller's id and the transcript the mock is to answer with."""
    client = boto3.client(
        "bedrock-runtime", region_name="us-east-1",
        endpoint_url=f"http://127.0.0.1:{envoy.port}{PREFIX}",
        aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="not-a-secret",
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, read_timeout=10,
                      connect_timeout=5))

    def add_headers(request, **_):
        request.headers["x-user-id"] = user
        request.headers["x-mock-fixture"] = fixture_name

    client.meta.events.register("before-sign.bedrock-runtime.*", add_headers)
    return client


def test_boto3_reads_converse_and_converse_stream_and_tollgate_charges_the_same(envoy):
    user = unique("bedrock-sdk")
    client = bedrock_client(envoy, user, "bedrock-converse.json")
    answer = client.converse(modelId=SONNET, messages=CONVERSE_BODY["messages"],
                             inferenceConfig={"maxTokens": 200})
    assert converse_cost(answer["usage"]) == usage_of("bedrock-converse.json")
    assert charged(envoy, user, 2107) == 2107

    client = bedrock_client(envoy, user, "bedrock-converse-stream.eventstream")
    response = client.converse_stream(modelId=SONNET, messages=CONVERSE_BODY["messages"])
    events = list(response["stream"])
    kinds = [next(iter(e)) for e in events]
    assert kinds == ["messageStart", "contentBlockDelta", "contentBlockDelta",
                     "contentBlockDelta", "contentBlockStop", "messageStop", "metadata"]
    text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events
                   if "contentBlockDelta" in e)
    assert len(text.encode()) == 36
    usage = events[-1]["metadata"]["usage"]
    assert converse_cost(usage) == 1059
    assert charged(envoy, user, 2107 + 1059) == 2107 + 1059

    # InvokeModelWithResponseStream: botocore decodes each chunk's base64 itself.
    client = bedrock_client(envoy, user, "bedrock-invoke-stream.eventstream")
    response = client.invoke_model_with_response_stream(modelId=SONNET,
                                                         body=json.dumps(INVOKE_BODY))
    chunks = [json.loads(e["chunk"]["bytes"]) for e in response["body"]]
    assert [c["type"] for c in chunks][::6] == ["message_start", "message_stop"]
    assert chunks[5]["usage"]["output_tokens"] == 15
    assert charged(envoy, user, 2107 + 1059 + 40) == 2107 + 1059 + 40


def test_an_exhausted_model_budget_is_refused_in_bedrocks_format_whichever_path_names_it(envoy):
    """One Converse call spends the haiku budget (the model only in the path, as an inference
    profile id); then every way of calling that model is refused: boto3 raises
    ThrottlingException for Converse and for an ARN on InvokeModel, and Anthropic's own API path
    is refused too. Another model still passes."""
    user = unique("bedrock-429")
    client = bedrock_client(envoy, user, "bedrock-converse.json")
    client.converse(modelId=HAIKU, messages=CONVERSE_BODY["messages"])
    assert charged(envoy, user, 2107) == 2107

    with pytest.raises(client.exceptions.ThrottlingException) as refused:
        client.converse(modelId=HAIKU, messages=CONVERSE_BODY["messages"])
    error = refused.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert error["Error"]["Code"] == "ThrottlingException"
    assert error["Error"]["Message"].startswith(
        "Rate limit reached for tokens in tier bedrock (policy haiku)")

    # An ARN's `/` goes out as %2F, which the shipped bootstrap (Envoy Gateway's settings)
    # answers with a 307 of Envoy's own before any filter: nothing reaches the upstream, so
    # nothing escapes the budget either (test_an_arn_model_id_meets_the_budget_of_its_model
    # shows the ARN counted where Envoy keeps escaped slashes).
    invoke = bedrock_client(envoy, user, "bedrock-invoke.json")
    with pytest.raises(ClientError) as redirected:
        invoke.invoke_model(modelId=ARN, body=json.dumps(INVOKE_BODY))
    assert redirected.value.response["ResponseMetadata"]["HTTPStatusCode"] == 307

    # By hand: the status, AWS's error header and body, and tollgate's usual headers.
    status, head, got = post(envoy, f"{PREFIX}/model/{HAIKU}/converse-stream", user,
                             CONVERSE_BODY, {"x-mock-fixture": "bedrock-converse.json"})
    assert status == 429
    assert head["x-amzn-errortype"] == "ThrottlingException"
    assert head["content-type"] == "application/json"
    assert list(json.loads(got)) == ["message"]
    assert "retry-after" in head and "x-ratelimit-remaining-tokens" in head
    # Anthropic's own API, the model in the body.
    status, _, got = post(envoy, "/api/v1/messages", user,
                          {"model": "claude-3-5-haiku-20241022", "max_tokens": 10,
                           "messages": [{"role": "user", "content": "hi"}]})
    assert status == 429 and json.loads(got)["error"]["type"] == "rate_limit_error"

    # Sonnet is another model.
    other = bedrock_client(envoy, user, "bedrock-converse.json")
    assert other.converse(modelId=SONNET, messages=CONVERSE_BODY["messages"])["usage"]


@pytest.fixture(scope="module")
def envoy_keeping_escaped_slashes(mock, tmp_path_factory):
    """The shipped bootstrap with `path_with_escaped_slashes_action: KEEP_UNCHANGED`: what a
    listener in front of Bedrock needs for ARN model ids (the SDK signs the path with its %2F,
    so a proxy must forward it as it came)."""
    line = "path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT"
    template = render.TEMPLATE.read_text()
    assert template.count(line) == 2, "bootstrap changed: update test_bedrock"
    template = template.replace(line, "path_with_escaped_slashes_action: KEEP_UNCHANGED")
    proxy = start_envoy_from_template(template, POLICY, {"v1": mock, "v2": mock},
                                      tmp_path_factory.mktemp("bedrock-keep"))
    yield proxy
    proxy.process.stop()


def test_an_arn_model_id_meets_the_budget_of_its_model(envoy_keeping_escaped_slashes):
    """InvokeModel with a foundation-model ARN (percent-encoded by boto3) counts as
    claude-3-5-haiku-20241022: charged to that budget, then refused as ThrottlingException, as
    Converse with the inference profile id is."""
    envoy = envoy_keeping_escaped_slashes
    user = unique("bedrock-arn")
    invoke = bedrock_client(envoy, user, "bedrock-invoke.json")
    answer = json.loads(invoke.invoke_model(modelId=ARN, body=json.dumps(INVOKE_BODY))["body"].read())
    assert answer["usage"]["output_tokens"] == 13
    assert charged(envoy, user, 25) == 25
    # 25 of the haiku budget's 100 spent: one Converse call of 2107 on the inference profile
    # id spends the rest, then the ARN is refused.
    bedrock_client(envoy, user, "bedrock-converse.json").converse(
        modelId=HAIKU, messages=CONVERSE_BODY["messages"])
    assert charged(envoy, user, 25 + 2107) == 25 + 2107
    with pytest.raises(invoke.exceptions.ThrottlingException):
        invoke.invoke_model(modelId=ARN, body=json.dumps(INVOKE_BODY))
    # The stream variant, by boto3 too.
    stream = bedrock_client(envoy, user, "bedrock-invoke-stream.eventstream")
    with pytest.raises(stream.exceptions.ThrottlingException):
        stream.invoke_model_with_response_stream(modelId=ARN, body=json.dumps(INVOKE_BODY))
