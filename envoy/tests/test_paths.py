"""Encoded and unnormalised paths reach the same token budget as the plain path, in Envoy 1.40.

A plain Envoy forwards `:path` as the client wrote it, and upstreams decode it before routing, so
`POST /v1/chat/completion%73` is served (and billed) as a chat completion. tollgate classifies
the normalised path (policy-core/src/path.rs): percent-decoding, merged slashes, resolved dot
segments, ASCII case ignored for the API.

Two Envoys in front of the LLM mock:
- `plain`: the repo's bootstrap with `normalize_path`, `merge_slashes` and
  `path_with_escaped_slashes_action` taken out (Envoy's defaults), so tollgate itself sees the
  raw spellings: this is what the test is about;
- `repo`: the bootstrap as shipped, which normalises as Envoy Gateway does (Envoy then decodes
  `%73`, merges `//` and resolves dot segments itself, and redirects `%2F`); the case of the path
  is left to tollgate there.

Each test spends a caller's weekly budget through the plain path (the mock reports a call far
larger than the budget), then sends every other spelling: each must be refused by tollgate with
the token budget's 429 before it reaches the upstream. A path that is not an LLM API is the
control: it is never refused by a token budget.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import pytest

import render  # envoy/render.py (conftest puts envoy/ on sys.path)
from client import Reply
from conftest import Envoy, start_envoy_from_template, unique

POLICY = {
    "tiers": [{
        "name": "llm",
        "match": {"headers": [{"name": "x-user-id", "present": True}]},
        "identity": {"header": "x-user-id"},
        "tokens": [{"tokens": 1000, "per": "week"}],
    }],
}
PLAIN = "/api/v1/chat/completions"
BODY = json.dumps({"model": "gpt-4o-mini", "max_tokens": 10,
                   "messages": [{"role": "user", "content": "hi"}]}).encode()

# Spellings of PLAIN that upstreams decode or normalise to it.
SPELLINGS = [
    "/api/v1/chat/completion%73",
    "/api/v1/chat/%63%6f%6Dpletions",
    "/api/v1/chat/completions/",
    "/api/v1/./chat/completions",
    "/api/v1/x/../chat/completions",
    "/api/v1/%2e/chat/x/%2E%2E/completions",
    "/api/v1//chat///completions",
    "/api/v1/chat/completions?x=/../models",
    "/api/v1/CHAT/Completions",
]
# Only without Envoy's normalisation: the shipped bootstrap redirects an escaped slash
# (UNESCAPE_AND_REDIRECT) instead of forwarding it.
RAW_ONLY = ["/api/v1/chat%2Fcompletions"]
NORMALISING = ("merge_slashes: true", "normalize_path: true",
               "path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT")


def start(mock: str, tmp: Path, normalise: bool) -> Envoy:
    """Envoy (2 workers, HTTP only) with POLICY in front of `mock`; with normalise=False, the
    bootstrap's path normalisation is taken out."""
    template = render.TEMPLATE.read_text()
    if not normalise:
        for line in NORMALISING:
            assert template.count(line) == 2, f"bootstrap changed ({line!r}): update test_paths"
            template = template.replace(f"          {line}\n", "")
        assert "normalize_path" not in template and "merge_slashes" not in template
    return start_envoy_from_template(template, POLICY, {"v1": mock, "v2": mock}, tmp)





@pytest.fixture(scope="module", params=["plain", "repo"])
def envoy(request, mock, tmp_path_factory):
    envoy = start(mock, tmp_path_factory.mktemp(f"paths-{request.param}"),
                  normalise=request.param == "repo")
    envoy.kind = request.param
    yield envoy
    envoy.process.stop()


def post(envoy: Envoy, path: str, user: str, extra: dict[str, str] | None = None) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", envoy.port, timeout=10)
    try:
        conn.request("POST", path, body=BODY, headers={
            "content-type": "application/json", "x-user-id": user, **(extra or {})})
        response = conn.getresponse()
        headers = {k.lower(): v for k, v in response.getheaders()}
        return Reply(response.status, response.reason, headers, response.read())
    finally:
        conn.close()


def spend_budget(envoy: Envoy, user: str) -> None:
    """One plain call that the mock reports as 5,000 tokens: the 1,000-token budget is in debt."""
    first = post(envoy, PLAIN, user, {"x-mock-completion-tokens": "5000"})
    assert first.status == 200, first.head()
    assert first.header("x-ratelimit-limit-tokens") == "1000", first.head()
    refused = post(envoy, PLAIN, user)
    assert refused.status == 429, refused.head()


def assert_budget_refusal(reply: Reply, path: str) -> None:
    assert reply.status == 429, f"{path}: {reply.head()}\n{reply.text()[:300]}"
    assert reply.header("x-ratelimit-limit-tokens") == "1000", f"{path}: {reply.head()}"
    assert reply.header("x-ratelimit-remaining-tokens") == "0", f"{path}: {reply.head()}"
    assert json.loads(reply.body)["error"]["type"] == "rate_limit_exceeded", reply.text()


def test_every_spelling_of_the_chat_path_reaches_the_same_budget(envoy):
    user = unique("paths")
    spend_budget(envoy, user)
    spellings = SPELLINGS + (RAW_ONLY if envoy.kind == "plain" else [])
    for path in spellings:
        assert_budget_refusal(post(envoy, path, user), path)


def test_a_path_that_is_no_llm_api_is_not_refused_by_the_budget(envoy):
    user = unique("paths-control")
    spend_budget(envoy, user)
    for path in ["/api/v1/models", "/api/v1/chat/completions-x", "/api/v1/chat/completion%74s"]:
        reply = post(envoy, path, user)
        assert reply.status != 429, f"{path}: {reply.head()}"
        assert reply.header("x-ratelimit-limit-tokens") is None, f"{path}: {reply.head()}"
