"""Access-log records in real Envoy: tollgate sets each decided request's record as filter state
`wasm.tollgate`, and an access log with `%FILTER_STATE(wasm.tollgate:PLAIN)%` prints it: an
allowed call, a denied call, and an LLM call with the tokens it was charged. The caller's id
never appears; its scope hash is the same for each of its calls.
"""

from __future__ import annotations

import http.client
import json
import re
from pathlib import Path

import client
from conftest import start_envoy_with_access_log, unique, wait_until

POLICY = {
    "tiers": [
        {"name": "api", "match": {"path_prefix": "/api/tasks"},
         "identity": {"header": "x-user-id"}, "limits": [{"requests": 1, "per": "hour"}]},
        {"name": "tiny", "match": {"headers": [{"name": "x-tiny", "present": True}]},
         "identity": {"header": "x-user-id"}, "tokens": [{"tokens": 10, "per": "week"}]},
        {"name": "llm", "match": {"path_prefix": "/api/v1"},
         "identity": {"header": "x-user-id"}, "tokens": [{"tokens": 10000, "per": "week"}]},
    ]
}
RECORD = re.compile(r"^(\S+) (\d+) \[(.*)\]$")


def start(mock: str, tmp: Path, log: Path):
    """Envoy in front of the mock (both routes), with an access log printing the record."""
    return start_envoy_with_access_log(POLICY, {"v1": mock, "v2": mock}, tmp, log)


def fields(record: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in record.split())


def chat_to(port: int, headers: dict[str, str]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        data = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        conn.request("POST", "/api/v1/chat/completions", body=data,
                     headers={"content-type": "application/json", **headers})
        reply = conn.getresponse()
        reply.read()
        return reply.status
    finally:
        conn.close()


def test_the_access_log_prints_each_calls_record(mock, tmp_path):
    log = tmp_path / "access.log"
    envoy = start(mock, tmp_path, log)
    try:
        user = unique("billing-user")

        def chat(headers: dict[str, str]) -> int:
            return chat_to(envoy.port, headers)

        # The LLM mock serves both routes: its 404 says the call went through tollgate.
        assert client.request(envoy.port, "/api/tasks", {"x-user-id": user}).status == 404
        assert client.request(envoy.port, "/api/tasks", {"x-user-id": user}).status == 429
        assert chat({"x-user-id": user}) == 200
        # 10 tokens a week: the first call is admitted while there is room and charged its 300,
        # the next is refused.
        tiny = {"x-user-id": user, "x-tiny": "1"}
        assert (chat(tiny), chat(tiny)) == (200, 429)

        def five_lines():
            text = log.read_text() if log.exists() else ""
            # Readiness probes (/healthz) are logged too, with no record (`-`).
            lines = [line for line in text.splitlines() if line.startswith("/api/")]
            return lines if len(lines) >= 5 else None

        lines = wait_until(five_lines, 10, "five access-log lines")
    finally:
        envoy.process.stop()
    parsed = [RECORD.match(line) for line in lines]
    assert all(parsed), lines
    by_call = [(m[1], m[2], fields(m[3])) for m in parsed]
    (p1, s1, allowed), (p2, s2, denied), (p3, s3, llm), (_, _, first), (p4, s4, spent) = by_call
    assert (p1, s1) == ("/api/tasks", "404") and (p2, s2) == ("/api/tasks", "429"), lines
    assert allowed == {"tier": "api", "scope": allowed["scope"], "decision": "allowed", "cost": "1"}
    assert denied == {**allowed, "decision": "denied"}
    assert re.fullmatch(r"[0-9a-f]{16}", allowed["scope"]), allowed
    assert (p3, s3) == ("/api/v1/chat/completions", "200"), lines
    assert llm["tier"] == "llm" and llm["decision"] == "allowed" and llm["model"] == "m", llm
    assert llm["charged"] == "300", llm  # the mock's usage
    assert int(llm["reserved"]) >= 300, llm
    assert llm["scope"] != allowed["scope"], "scopes are per tier"
    assert (p4, s4) == ("/api/v1/chat/completions", "429"), lines
    assert first["tier"] == "tiny" and first["charged"] == "300", first
    assert spent == {"tier": "tiny", "scope": first["scope"], "decision": "denied", "cost": "1"}
    assert user not in log.read_text(), "the raw identity is never logged"
    assert "/healthz 200 [-]" in log.read_text(), "an undecided request has no record"


def test_a_dear_call_and_a_shadow_refusal_are_recorded_as_such(mock, tmp_path):
    """The record's `cost` is the request's cost by the tier's `costs` (not always 1), and a
    shadow tier's would-be refusal is `decision=would_deny` while the request goes on."""
    policy = {"tiers": [
        {"name": "bulk", "match": {"headers": [{"name": "x-bulk", "present": True}]},
         "identity": {"header": "x-user-id"}, "limits": [{"requests": 10, "per": "hour"}],
         "costs": [{"match": {"path_prefix": "/api/tasks/bulk", "methods": ["POST"]}, "cost": 10}]},
        {"name": "trial", "mode": "shadow", "identity": {"header": "x-user-id"},
         "limits": [{"requests": 1, "per": "hour"}]},
    ]}
    log = tmp_path / "access.log"
    envoy = start_envoy_with_access_log(policy, {"v1": mock, "v2": mock}, tmp_path, log)
    try:
        user = unique("records-user")
        bulk = {"x-user-id": user, "x-bulk": "1"}
        # The mock answers 404 to these paths: a 404 went through tollgate, a 429 did not.
        statuses = [client.request(envoy.port, "/api/tasks/bulk", bulk, "POST").status,
                    client.request(envoy.port, "/api/tasks/bulk", bulk, "POST").status,
                    client.request(envoy.port, "/api/tasks", bulk).status,
                    client.request(envoy.port, "/api/tasks", {"x-user-id": user}).status,
                    client.request(envoy.port, "/api/tasks", {"x-user-id": user}).status]
        assert statuses == [404, 429, 429, 404, 404], statuses

        def five_lines():
            text = log.read_text() if log.exists() else ""
            lines = [line for line in text.splitlines() if line.startswith("/api/")]
            return lines if len(lines) >= 5 else None

        lines = wait_until(five_lines, 15, "five access-log lines")
    finally:
        envoy.process.stop()
    records = [fields(RECORD.match(line)[3]) for line in lines]
    assert [(r["tier"], r["decision"], r["cost"]) for r in records] == [
        ("bulk", "allowed", "10"),   # 10 of 10 cells
        ("bulk", "denied", "10"),    # nothing left for another 10
        ("bulk", "denied", "1"),     # nor for 1: no rule matches a GET, it costs 1
        ("trial", "allowed", "1"),
        ("trial", "would_deny", "1"),  # shadow: refused by the limit, let through
    ], lines
    assert user not in log.read_text()
