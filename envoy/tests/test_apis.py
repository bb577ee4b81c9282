"""Gemini (the Gemini API and Vertex AI paths), Azure OpenAI and Ollama's native API through
tollgate in a real Envoy 1.40, answered by their transcripts in fixtures/llm/ (as
test_fixtures.py does for OpenAI and Anthropic), and their refusals as the official `google-genai`
and `ollama` Python SDKs see them.

The upstream here picks the transcript by the request: its path (`:generateContent`,
`:streamGenerateContent` with or without `alt=sse`, `/api/chat`, `/api/generate`, Azure's
`/openai/deployments/…`) and, for Ollama, the body's `stream` (Ollama streams unless it is
`false`). Streams are written chunked, one event / element / line at a time; `x-cut: N` makes it
stop after N bytes of the transcript and drop the connection, a stream cut short.

What each call should cost is read from the transcript itself, with the rules README.md documents:
Gemini's last `usageMetadata` (it repeats and grows through a stream) — prompt + tool-use prompt
in, candidates + thoughts out; Ollama's `prompt_eval_count` + `eval_count` of its final object.
"""

from __future__ import annotations

import http.client
import json
import socket
import uuid
from http.server import BaseHTTPRequestHandler

import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types
import ollama

from conftest import Envoy, envoy_before_handler, unique
from test_fixtures import fixture, usage_of

BUDGET = 250_000
FLASH_BUDGET = 100  # gemini-2.5-flash: spent by one call, then refused
LLAMA_BUDGET = 100  # llama3.2 (Ollama): likewise
POLICY = {
    "tiers": [{
        "name": "apis",
        "match": {"headers": [{"name": "x-user-id", "present": True}]},
        "identity": {"header": "x-user-id"},
        "tokens": [
            {"tokens": BUDGET, "per": "month"},
            {"tokens": FLASH_BUDGET, "per": "month", "model": "gemini-2.5-flash", "name": "flash"},
            {"tokens": LLAMA_BUDGET, "per": "month", "model": "llama3.2", "name": "llama"},
        ],
    }],
    "llm": {
        "mode": "charge_after", "on_missing_usage": "nothing", "on_incomplete": "received",
        # A proxy path that does not say its API, and an Azure deployment not named as its model.
        "routes": [{"path_prefix": "/api/llm-proxy", "api": "ollama_generate"}],
        "deployments": {"prod-flash": "gemini-2.5-flash"},
    },
}

GEMINI = "/api/v1beta/models/{model}:{method}"
VERTEX = "/api/v1/projects/p/locations/us-central1/publishers/google/models/{model}:{method}"
AZURE = "/api/openai/deployments/{model}/chat/completions?api-version=2024-10-21"


def gemini_usage(name: str) -> int:
    """A Gemini transcript's cost: its last usageMetadata (JSON, SSE or a JSON array)."""
    raw = fixture(name).decode()
    if name.endswith(".sse"):
        chunks = [json.loads(line[5:]) for line in raw.splitlines() if line.startswith("data:")]
    else:
        doc = json.loads(raw)
        chunks = doc if isinstance(doc, list) else [doc]
    last = chunks[-1].get("usageMetadata", {})
    return (last.get("promptTokenCount", 0) + last.get("toolUsePromptTokenCount", 0)
            + last.get("candidatesTokenCount", 0) + last.get("thoughtsTokenCount", 0))


def ollama_usage(name: str) -> int:
    """An Ollama transcript's cost: the counts of its final object."""
    raw = fixture(name).decode()
    last = json.loads(raw if name.endswith(".json") else raw.strip().splitlines()[-1])
    return last["prompt_eval_count"] + last["eval_count"]


PROBE = b'{"id":"probe","object":"chat.completion","choices":[],' \
        b'"usage":{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}}'


class _Handler(BaseHTTPRequestHandler):
    """What the transcript server below builds on: quiet, `GET /healthz` for Envoy's readiness,
    and a request body read whole (content-length or chunked)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # /healthz, for Envoy's readiness check
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def _body(self) -> bytes:
        if "content-length" in self.headers:
            return self.rfile.read(int(self.headers["content-length"]))
        data = b""
        while True:  # chunked
            size = int(self.rfile.readline().split(b";")[0], 16)
            data += self.rfile.read(size)
            self.rfile.readline()
            if size == 0:
                return data


class _ApiHandler(_Handler):
    """Answers by path (see the module docs); `x-fixture: probe` gets the zero-usage probe."""

    def do_POST(self) -> None:
        body = self._body()
        path = self.path
        stream_flag = json.loads(body or b"{}").get("stream", True) if body else True
        if self.headers.get("x-fixture") == "probe":
            name = None
        elif ":streamGenerateContent" in path:
            name = "gemini-stream.sse" if "alt=sse" in path else "gemini-stream.json"
        elif "RawPredict" in path or ":rawPredict" in path:  # Claude on Vertex AI
            # Anthropic streams only when asked (Ollama, below, unless told not to).
            asked = json.loads(body or b"{}").get("stream") is True
            name = "anthropic-messages.sse" if asked else "anthropic-messages.json"
        elif ":generateContent" in path:
            name = "gemini-generate.json"
        elif path.endswith("/api/chat"):
            name = "ollama-chat.ndjson" if stream_flag is not False else "ollama-chat.json"
        elif path.endswith("/api/generate") or path.startswith("/api/llm-proxy"):
            name = "ollama-generate.ndjson"
        elif path.endswith("/chat/completions") and stream_flag is True:
            name = "vllm-chat.sse"  # an OpenAI-compatible server's stream
        else:  # Azure OpenAI, the OpenAI-compatible paths
            name = "openai-chat.json"
        payload = PROBE if name is None else fixture(name)
        self.send_response(200)
        if name is None or name.endswith(".json") and name != "gemini-stream.json":
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        content_type = {"sse": "text/event-stream", "ndjson": "application/x-ndjson",
                        "json": "application/json; charset=UTF-8"}[name.rsplit(".", 1)[1]]
        self.send_header("content-type", content_type)
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        cut = int(self.headers.get("x-cut", len(payload)))
        pieces = {"sse": b"\r\n\r\n", "ndjson": b"\n", "json": b"\n,\r\n"}[name.rsplit(".", 1)[1]]
        sent = 0
        parts = payload.split(pieces)
        for i, part in enumerate(parts):
            piece = part + (pieces if i < len(parts) - 1 else b"")
            piece = piece[:max(0, cut - sent)]
            if piece:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
            sent += len(piece)
            if sent >= cut:
                break
        if cut < len(payload):
            # Cut short: no last chunk, the connection dropped.
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(b"0\r\n\r\n")


@pytest.fixture(scope="module")
def envoy(tmp_path_factory):
    with envoy_before_handler(_ApiHandler, POLICY, tmp_path_factory.mktemp("apis")) as (proxy, server):
        yield proxy


def post(envoy: Envoy, path: str, user: str, body: dict, headers: dict | None = None):
    """POST `body` to `path` as `user`: status, headers, the body the client got (a stream cut
    short reads what arrived)."""
    conn = http.client.HTTPConnection("127.0.0.1", envoy.port, timeout=10)
    try:
        conn.request("POST", path, body=json.dumps(body).encode(), headers={
            "content-type": "application/json", "x-user-id": user, **(headers or {})})
        response = conn.getresponse()
        head = {k.lower(): v for k, v in response.getheaders()}
        try:
            got = response.read()
        except http.client.IncompleteRead as cut:
            got = cut.partial
        return response.status, head, got
    finally:
        conn.close()


def charged(envoy: Envoy, user: str, expected: int) -> int:
    """What `user` has been charged (all models), read by probes until it is `expected` or 5 s
    have passed."""
    import time
    deadline = time.monotonic() + 5
    while True:
        status, head, _ = post(envoy, "/api/v1/chat/completions", user,
                               {"model": "m", "max_tokens": 1}, {"x-fixture": "probe"})
        assert status == 200, head
        spent = BUDGET - int(head["x-ratelimit-remaining-tokens"])
        if spent >= expected or time.monotonic() > deadline:
            return spent
        time.sleep(0.1)


GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": "Write about rain"}]}],
               "generationConfig": {"maxOutputTokens": 200}}

# (path, body, transcript, its cost)
CALLS = {
    "gemini json": (GEMINI.format(model="gemini-2.5-pro", method="generateContent"),
                    GEMINI_BODY, "gemini-generate.json"),
    "gemini sse": (GEMINI.format(model="gemini-2.5-pro", method="streamGenerateContent") + "?alt=sse",
                   GEMINI_BODY, "gemini-stream.sse"),
    "gemini array": (GEMINI.format(model="gemini-2.5-pro", method="streamGenerateContent"),
                     GEMINI_BODY, "gemini-stream.json"),
    "vertex gemini": (VERTEX.format(model="gemini-2.5-pro", method="streamGenerateContent"),
                      GEMINI_BODY, "gemini-stream.json"),
    "vertex claude json": (VERTEX.replace("google", "anthropic").format(
        model="claude-sonnet-4@20250514", method="rawPredict"),
        {"anthropic_version": "vertex-2023-10-16", "max_tokens": 100,
         "messages": [{"role": "user", "content": "hi"}]}, "anthropic-messages.json"),
    "vertex claude sse": (VERTEX.replace("google", "anthropic").format(
        model="claude-sonnet-4@20250514", method="streamRawPredict"),
        {"anthropic_version": "vertex-2023-10-16", "max_tokens": 100, "stream": True,
         "messages": [{"role": "user", "content": "hi"}]}, "anthropic-messages.sse"),
    "ollama chat json": ("/api/chat", {"model": "llama3.3", "stream": False,
                                       "messages": [{"role": "user", "content": "hi"}]},
                         "ollama-chat.json"),
    "ollama chat ndjson": ("/api/chat", {"model": "llama3.3",
                                         "messages": [{"role": "user", "content": "hi"}]},
                           "ollama-chat.ndjson"),
    "ollama generate ndjson": ("/api/generate", {"model": "llama3.3", "prompt": "hi"},
                               "ollama-generate.ndjson"),
    "named route": ("/api/llm-proxy/complete", {"model": "llama3.3", "prompt": "hi"},
                    "ollama-generate.ndjson"),
    "azure": (AZURE.format(model="prod-gpt4o"), {"messages": [{"role": "user", "content": "hi"}]},
              "openai-chat.json"),
    # vLLM (and any OpenAI-compatible server) on /v1/chat/completions: OpenAI's chat, pinned.
    "vllm sse": ("/api/v1/chat/completions",
                 {"model": "meta-llama/Llama-3.1-8B-Instruct", "stream": True,
                  "stream_options": {"include_usage": True, "continuous_usage_stats": True},
                  "messages": [{"role": "user", "content": "hi"}]},
                 "vllm-chat.sse"),
}


def cost(name: str) -> int:
    if name.startswith("gemini"):
        return gemini_usage(name)
    if name.startswith("ollama"):
        return ollama_usage(name)
    return usage_of(name)


def test_the_expected_charges_are_read_from_the_files():
    """The numbers policy-core's unit tests assert for these files (llm/gemini.rs, ollama.rs):
    the last Gemini chunk's counts, not their sum."""
    assert {name: cost(name) for name in
            ["gemini-generate.json", "gemini-stream.sse", "gemini-stream.json",
             "ollama-chat.json", "ollama-chat.ndjson", "ollama-generate.ndjson",
             "vllm-chat.sse"]} == {
        "gemini-generate.json": 1040 + 23 + 24,
        "gemini-stream.sse": 9 + 23 + 24,
        "gemini-stream.json": 9 + 23 + 24,
        "ollama-chat.json": 26 + 298,
        "ollama-chat.ndjson": 26 + 12,
        "ollama-generate.ndjson": 30 + 5,
        "vllm-chat.sse": 17 + 6,
    }


@pytest.mark.parametrize("case", list(CALLS))
def test_each_api_reaches_the_client_unchanged_and_is_charged_its_usage(envoy, case):
    path, body, name = CALLS[case]
    user = unique("api")
    status, head, got = post(envoy, path, user, body)
    assert status == 200, head
    assert got == fixture(name)
    assert charged(envoy, user, cost(name)) == cost(name)


@pytest.mark.parametrize("name", ["gemini-stream.json", "gemini-stream.sse", "ollama-chat.ndjson"])
def test_a_stream_cut_short_is_charged_what_it_received(envoy, name):
    """Cut at the start of the last chunk: Gemini is charged the usage its second chunk reported
    (9 in, 17 out); Ollama, which reports nothing before its last object, the prompt estimate
    plus the text received / 4."""
    raw = fixture(name)
    if name.startswith("gemini"):
        cut = raw.rfind(b'{\n  "candidates"') if name.endswith(".json") else raw.rfind(b"data:")
        path = GEMINI.format(model="gemini-2.5-pro", method="streamGenerateContent")
        path += "?alt=sse" if name.endswith(".sse") else ""
        body = GEMINI_BODY
    else:
        cut = raw.rstrip(b"\n").rfind(b"\n") + 1
        path, body = "/api/chat", {"model": "llama3.3", "messages": [{"role": "user", "content": "hi"}]}
    user = unique("cut")
    status, _, got = post(envoy, path, user, body, {"x-cut": str(cut)})
    assert status == 200
    assert got == raw[:cut]
    if name.startswith("gemini"):
        expected = 9 + 17
    else:
        text = sum(len(json.loads(line)["message"]["content"].encode())
                   for line in raw[:cut].decode().splitlines())
        prompt = -(-len(json.dumps(body).encode()) // 4)
        expected = prompt + -(-text // 4)
    assert charged(envoy, user, expected) == expected


def test_a_model_budget_holds_whichever_api_path_names_the_model(envoy):
    """gemini-2.5-flash's budget, spent through the Gemini API, refuses the same model on Vertex
    AI's path, on Gemini's OpenAI-compatible endpoint (model in the body), as an Azure deployment
    of that name and as one `llm.deployments` maps to it; another model still passes. Each
    refusal in its API's format."""
    user = unique("flash")
    flash = GEMINI.format(model="gemini-2.5-flash", method="generateContent")
    assert post(envoy, flash, user, GEMINI_BODY)[0] == 200  # charged 1087 > 100
    for path, body in [
        (flash, GEMINI_BODY),
        (VERTEX.format(model="gemini-2.5-flash", method="generateContent"), GEMINI_BODY),
        ("/api/v1beta/openai/chat/completions",
         {"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "hi"}]}),
        (AZURE.format(model="gemini-2.5-flash"), {"messages": [{"role": "user", "content": "hi"}]}),
        # llm.deployments maps this one to gemini-2.5-flash.
        (AZURE.format(model="prod-flash"), {"messages": [{"role": "user", "content": "hi"}]}),
    ]:
        status, head, got = post(envoy, path, user, body)
        assert status == 429, (path, head, got)
        error = json.loads(got)["error"]
        if ":generateContent" in path:
            assert error["code"] == 429 and error["status"] == "RESOURCE_EXHAUSTED", got
        else:
            assert error["type"] == "rate_limit_exceeded", got
        assert "policy flash" in error["message"], got
        assert head["x-ratelimit-remaining-tokens"] == "0", head
        assert "retry-after" in head, head
    pro = GEMINI.format(model="gemini-2.5-pro", method="generateContent")
    assert post(envoy, pro, user, GEMINI_BODY)[0] == 200


def test_the_google_genai_sdk_raises_its_resource_exhausted_error(envoy):
    user = unique("genai")
    client = genai.Client(api_key="test-key", http_options=genai_types.HttpOptions(
        base_url=f"http://127.0.0.1:{envoy.port}/api/", api_version="v1beta",
        headers={"x-user-id": user}))
    first = client.models.generate_content(model="gemini-2.5-flash", contents="Write about rain")
    assert first.usage_metadata.total_token_count == 1087
    with pytest.raises(genai_errors.ClientError) as refused:
        client.models.generate_content(model="gemini-2.5-flash", contents="again")
    assert refused.value.code == 429
    assert refused.value.status == "RESOURCE_EXHAUSTED"
    assert "policy flash" in refused.value.message
    # The SDK's stream (SSE) over the same budget is refused the same way.
    with pytest.raises(genai_errors.ClientError) as refused:
        list(client.models.generate_content_stream(model="gemini-2.5-flash", contents="again"))
    assert refused.value.code == 429


def test_the_ollama_sdk_raises_its_response_error_with_429(envoy):
    user = unique("ollama")
    client = ollama.Client(host=f"http://127.0.0.1:{envoy.port}", headers={"x-user-id": user})
    first = client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}],
                        stream=False)
    assert (first.prompt_eval_count, first.eval_count) == (26, 298)  # 324 > 100
    with pytest.raises(ollama.ResponseError) as refused:
        client.chat(model="llama3.2", messages=[{"role": "user", "content": "again"}],
                    stream=False)
    assert refused.value.status_code == 429
    assert "policy llama" in refused.value.error
    with pytest.raises(ollama.ResponseError) as refused:
        for _ in client.generate(model="llama3.2", prompt="again", stream=True):
            pass
    assert refused.value.status_code == 429
    assert charged(envoy, user, 324) == 324
