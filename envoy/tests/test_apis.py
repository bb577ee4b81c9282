"""Gemini (the Gemini API and Vertex AI paths), Anthropic on Vertex AI, Azure OpenAI and Ollama's
native API through tollgate in a real Envoy 1.40, answered by the LLM mock (`tollgate-upstream
--app llm`, the `mock` fixture), and their refusals as the official `google-genai` and `ollama`
Python SDKs see them.

Two kinds of answer:
- generated: the mock answers each API in its own shape with the usage a request asks for
  (`x-mock-prompt-tokens`, `x-mock-completion-tokens`), JSON or streamed (SSE, Gemini's streamed
  JSON array, Ollama's NDJSON), and cuts a stream after N writes (`x-mock-cut-after`);
- replayed: `x-mock-fixture: NAME` answers with a transcript of fixtures/llm/ byte for byte (as
  test_fixtures.py does for OpenAI and Anthropic), cut at a byte with `x-mock-chunk-bytes: N` +
  `x-mock-cut-after: 1`.

What each replayed call should cost is read from the transcript itself, with the rules README.md
documents: Gemini's last `usageMetadata` (it repeats and grows through a stream) — prompt +
tool-use prompt in, candidates + thoughts out; Ollama's `prompt_eval_count` + `eval_count` of its
final object.
"""

from __future__ import annotations

import http.client
import json
import time

import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types
import ollama

from conftest import Envoy, start_envoy, unique
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
            # One model under its aliases, and a family by its prefix.
            {"tokens": 100, "per": "month", "model": ["gpt-4o", "gpt-4o-2024-08-06"],
             "name": "gpt4o"},
            {"tokens": 100, "per": "month", "model": {"prefix": "claude-3-5-sonnet"},
             "name": "sonnet"},
        ],
    }],
    "llm": {
        "mode": "charge_after", "on_missing_usage": "nothing", "on_incomplete": "received",
        # A proxy path that does not say its API, and Azure deployments not named as their model.
        "routes": [{"path_prefix": "/api/llm-proxy", "api": "ollama_generate"}],
        "deployments": {"prod-flash": "gemini-2.5-flash", "prod-4o": "gpt-4o-2024-08-06"},
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


@pytest.fixture(scope="module")
def envoy(mock, tmp_path_factory):
    proxy = start_envoy(POLICY, {"v1": mock, "v2": mock}, tmp_path_factory.mktemp("apis"),
                        concurrency=2)
    yield proxy
    proxy.process.stop()


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
    """What `user` has been charged (all models), read by probes (a chat call reporting no
    usage) until it is `expected` or 5 s have passed."""
    if expected == 0:
        time.sleep(0.5)  # a charge that should not come has had time to land
    deadline = time.monotonic() + 5
    while True:
        status, head, _ = post(envoy, "/api/v1/chat/completions", user,
                               {"model": "m", "max_tokens": 1},
                               {"x-mock-prompt-tokens": "0", "x-mock-completion-tokens": "0"})
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
    mock = {"x-mock-fixture": name}
    if path.startswith("/api/llm-proxy"):
        mock["x-mock-api"] = "ollama_generate"  # the path does not say it, llm.routes does
    status, head, got = post(envoy, path, user, body, mock)
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
    status, _, got = post(envoy, path, user, body, {
        "x-mock-fixture": name, "x-mock-chunk-bytes": str(cut), "x-mock-cut-after": "1"})
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
    assert post(envoy, flash, user, GEMINI_BODY)[0] == 200  # charged 300 > 100
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
    assert first.usage_metadata.total_token_count == 300  # the mock's 100 in + 200 out > 100
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
    assert (first.prompt_eval_count, first.eval_count) == (100, 200)  # 300 > 100
    with pytest.raises(ollama.ResponseError) as refused:
        client.chat(model="llama3.2", messages=[{"role": "user", "content": "again"}],
                    stream=False)
    assert refused.value.status_code == 429
    assert "policy llama" in refused.value.error
    with pytest.raises(ollama.ResponseError) as refused:
        for _ in client.generate(model="llama3.2", prompt="again", stream=True):
            pass
    assert refused.value.status_code == 429
    assert charged(envoy, user, 300) == 300


# Generated answers: the usage each call asks the mock to report, in its API's own shape.
PROMPT, COMPLETION = 37, 50  # 50 out: ten deltas of 5 tokens (20 bytes) each
USAGE = {"x-mock-prompt-tokens": str(PROMPT), "x-mock-completion-tokens": str(COMPLETION)}
CLAUDE_BODY = {"anthropic_version": "vertex-2023-10-16", "max_tokens": 100,
               "messages": [{"role": "user", "content": "hi"}]}
CHAT_BODY = {"messages": [{"role": "user", "content": "hi"}]}
OLLAMA_CHAT = {"model": "llama3.3", "messages": [{"role": "user", "content": "hi"}]}
VERTEX_CLAUDE = VERTEX.replace("google", "anthropic")

# case: (path, body, how the answer is read)
GENERATED = {
    "gemini json": (GEMINI.format(model="gemini-2.5-pro", method="generateContent"),
                    GEMINI_BODY, "gemini"),
    "gemini sse": (GEMINI.format(model="gemini-2.5-pro", method="streamGenerateContent")
                   + "?alt=sse", GEMINI_BODY, "gemini-sse"),
    "gemini array": (GEMINI.format(model="gemini-2.5-pro", method="streamGenerateContent"),
                     GEMINI_BODY, "gemini-array"),
    "vertex gemini json": (VERTEX.format(model="gemini-2.5-pro", method="generateContent"),
                           GEMINI_BODY, "gemini"),
    "vertex gemini sse": (VERTEX.format(model="gemini-2.5-pro", method="streamGenerateContent")
                          + "?alt=sse", GEMINI_BODY, "gemini-sse"),
    "vertex claude json": (VERTEX_CLAUDE.format(model="claude-sonnet-4@20250514",
                                                method="rawPredict"), CLAUDE_BODY, "anthropic"),
    "vertex claude sse": (VERTEX_CLAUDE.format(model="claude-sonnet-4@20250514",
                                               method="streamRawPredict"),
                          {**CLAUDE_BODY, "stream": True}, "anthropic-sse"),
    "azure json": (AZURE.format(model="prod-gpt4o"), CHAT_BODY, "openai"),
    # The client does not ask for the usage: tollgate asks the upstream for it.
    "azure sse": (AZURE.format(model="prod-gpt4o"), {**CHAT_BODY, "stream": True}, "openai-sse"),
    "azure v1 sse": ("/api/openai/v1/chat/completions",
                     {**CHAT_BODY, "model": "gpt-4o-mini", "stream": True,
                      "stream_options": {"include_usage": True}}, "openai-sse"),
    "ollama chat json": ("/api/chat", {**OLLAMA_CHAT, "stream": False}, "ollama"),
    "ollama chat ndjson": ("/api/chat", OLLAMA_CHAT, "ollama-ndjson"),
    "ollama generate ndjson": ("/api/generate", {"model": "llama3.3", "prompt": "hi"},
                               "ollama-ndjson"),
}


def reported(kind: str, raw: bytes) -> tuple[int, int]:
    """(input, output) as the answer reports it, read the way its API's clients read it."""
    if kind == "gemini":
        u = json.loads(raw)["usageMetadata"]
        return u["promptTokenCount"], u["candidatesTokenCount"]
    if kind.startswith("gemini"):
        if kind == "gemini-sse":
            chunks = [json.loads(e[5:]) for e in raw.decode().split("\r\n\r\n") if e]
        else:
            chunks = json.loads(raw)
        u = chunks[-1]["usageMetadata"]  # grows chunk by chunk: the last is the usage
        return u["promptTokenCount"], u["candidatesTokenCount"]
    if kind == "anthropic":
        u = json.loads(raw)["usage"]
        return u["input_tokens"], u["output_tokens"]
    if kind == "anthropic-sse":
        data = [json.loads(line[5:]) for line in raw.decode().splitlines()
                if line.startswith("data:")]
        start = next(d for d in data if d["type"] == "message_start")
        delta = next(d for d in data if d["type"] == "message_delta")
        return start["message"]["usage"]["input_tokens"], delta["usage"]["output_tokens"]
    if kind == "openai":
        u = json.loads(raw)["usage"]
        return u["prompt_tokens"], u["completion_tokens"]
    if kind == "openai-sse":
        data = [line[5:].strip() for line in raw.decode().splitlines() if line.startswith("data:")]
        u = [json.loads(d)["usage"] for d in data if d != "[DONE]" and json.loads(d).get("usage")]
        return (u[-1]["prompt_tokens"], u[-1]["completion_tokens"]) if u else (0, 0)
    if kind == "ollama":
        last = json.loads(raw)
    else:
        last = json.loads(raw.decode().strip().splitlines()[-1])
    return last["prompt_eval_count"], last["eval_count"]


@pytest.mark.parametrize("case", list(GENERATED))
def test_each_api_answered_by_the_mock_is_charged_the_usage_it_reports(envoy, case):
    path, body, kind = GENERATED[case]
    user = unique("gen")
    status, head, got = post(envoy, path, user, body, USAGE)
    assert status == 200, (head, got)
    if case == "azure sse":
        # Asked for upstream, taken out again for the client that did not ask.
        assert head["x-mock-saw-include-usage"] == "true"
        assert b'"usage"' not in got
    else:
        assert reported(kind, got) == (PROMPT, COMPLETION), got
    if "/models/" in path:  # the model is only in the path, and the mock answers as it
        assert head["x-mock-saw-model"] == path.split("/models/")[1].split(":")[0]
    assert charged(envoy, user, PROMPT + COMPLETION) == PROMPT + COMPLETION


# case: (writes the mock sends before it drops the connection, what that much costs)
CUTS = {
    # Gemini reports its usage so far in every chunk: 3 chunks, 3 deltas of 5 tokens.
    "gemini sse": (3, PROMPT + 15),
    "gemini array": (3, PROMPT + 15),
    "vertex gemini sse": (3, PROMPT + 15),
    # message_start (input reported), content_block_start, ping, 4 deltas: the output is the
    # text received / 4.
    "vertex claude sse": (7, PROMPT + 20),
    # No usage before the end: the prompt estimate (request bytes / 4) and the text / 4.
    "azure v1 sse": (5, None),  # the role chunk, 4 deltas
    "ollama chat ndjson": (4, None),
    "ollama generate ndjson": (4, None),
}


@pytest.mark.parametrize("case", list(CUTS))
def test_a_generated_stream_cut_short_is_charged_what_it_received(envoy, case):
    path, body, kind = GENERATED[case]
    writes, expected = CUTS[case]
    user = unique("gencut")
    status, _, got = post(envoy, path, user, body, {**USAGE, "x-mock-cut-after": str(writes)})
    assert status == 200
    full = post(envoy, path, unique("whole"), body, USAGE)[2]
    assert got and len(got) < len(full) and full.startswith(got), got
    if expected is None:
        prompt = -(-len(json.dumps(body).encode()) // 4)
        expected = prompt + (writes - (1 if kind == "openai-sse" else 0)) * 5
    assert charged(envoy, user, expected) == expected


def test_one_models_budget_cannot_be_escaped_through_another_apis_path(envoy):
    """A budget naming gpt-4o under its aliases, spent through OpenAI's API, refuses the model
    through an Azure deployment `llm.deployments` maps to an alias and through Azure's v1 path
    with the dated name; a budget for the `claude-3-5-sonnet` prefix, spent through Anthropic's
    API, refuses Claude on Vertex AI (model only in the path, `@` snapshot). Each refusal in the
    format of the API called; other models pass."""
    user = unique("escape")
    assert post(envoy, "/api/v1/chat/completions", user,
                {**CHAT_BODY, "model": "gpt-4o"})[0] == 200  # 300 > 100
    assert post(envoy, "/api/v1/messages", user,
                {**CLAUDE_BODY, "model": "claude-3-5-sonnet-20241022"})[0] == 200
    for path, body, policy in [
        ("/api/v1/chat/completions", {**CHAT_BODY, "model": "gpt-4o"}, "gpt4o"),
        (AZURE.format(model="prod-4o"), CHAT_BODY, "gpt4o"),
        ("/api/openai/v1/chat/completions", {**CHAT_BODY, "model": "gpt-4o-2024-08-06"}, "gpt4o"),
        (VERTEX_CLAUDE.format(model="claude-3-5-sonnet-v2@20241022", method="rawPredict"),
         CLAUDE_BODY, "sonnet"),
        (VERTEX_CLAUDE.format(model="claude-3-5-sonnet@20240620", method="streamRawPredict"),
         {**CLAUDE_BODY, "stream": True}, "sonnet"),
    ]:
        status, head, got = post(envoy, path, user, body)
        assert status == 429, (path, head, got)
        error = json.loads(got)
        if policy == "sonnet":
            assert error["type"] == "error" and error["error"]["type"] == "rate_limit_error", got
            message = error["error"]["message"]
        else:
            assert error["error"]["type"] == "rate_limit_exceeded", got
            message = error["error"]["message"]
        assert f"policy {policy}" in message, got
        assert head["x-ratelimit-remaining-tokens"] == "0", head
    for path, body in [
        ("/api/v1/chat/completions", {**CHAT_BODY, "model": "gpt-4o-mini"}),
        (VERTEX_CLAUDE.format(model="claude-3-opus@20240229", method="rawPredict"), CLAUDE_BODY),
    ]:
        assert post(envoy, path, user, body)[0] == 200, path


def test_the_sdks_read_the_mocks_answers_and_streams(envoy):
    """The official SDKs parse what the mock answers for their APIs, JSON and streamed."""
    user = unique("sdk")
    client = genai.Client(api_key="test-key", http_options=genai_types.HttpOptions(
        base_url=f"http://127.0.0.1:{envoy.port}/api/", api_version="v1beta",
        headers={"x-user-id": user, **USAGE}))
    chunks = list(client.models.generate_content_stream(model="gemini-2.5-pro",
                                                        contents="Write about rain"))
    assert len(chunks) == 10
    assert chunks[-1].usage_metadata.candidates_token_count == COMPLETION
    assert len("".join(c.text for c in chunks)) == COMPLETION * 4
    o = ollama.Client(host=f"http://127.0.0.1:{envoy.port}", headers={"x-user-id": user, **USAGE})
    parts = list(o.chat(model="llama3.3", messages=[{"role": "user", "content": "hi"}],
                        stream=True))
    assert parts[-1].done and (parts[-1].prompt_eval_count, parts[-1].eval_count) == (
        PROMPT, COMPLETION)
    assert charged(envoy, user, 2 * (PROMPT + COMPLETION)) == 2 * (PROMPT + COMPLETION)
