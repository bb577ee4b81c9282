"""Scopes and shadow token budgets in real Envoy (4 workers), through the LLM mock upstream.

A user and a teammate share one team request limit and one team token budget (`"scope":
{"header": "x-team-id"}`): they spend it together and are refused together, while a user of
another team is not; a request without its team is refused with 400 `missing_scope`. The
access log names the team by its keyed hash (`scope.x-team-id=…`), never by its id. A shadow
token budget lets every call through while `would_deny` counts what enforcing would refuse.
Budgets are per hour or week: nothing refills while the test runs.
"""

from __future__ import annotations

import http.client
import json
import re
from pathlib import Path

import client
from conftest import start_envoy_with_access_log, unique, wait_until

POLICY = {
    "hash_secret": "e2e-scopes",
    "tiers": [
        # Each user 10 requests an hour; each team 3.
        {"name": "team-api", "match": {"path_prefix": "/api/tasks"},
         "identity": {"header": "x-user-id"},
         "limits": [{"requests": 10, "per": "hour", "name": "user"},
                    {"requests": 3, "per": "hour", "name": "team",
                     "scope": {"header": "x-team-id"}}]},
        # Watched, not enforced: 500 tokens a week per user.
        {"name": "watch", "mode": "shadow",
         "match": {"headers": [{"name": "x-watch", "present": True}]},
         "identity": {"header": "x-user-id"}, "tokens": [{"tokens": 500, "per": "week"}]},
        # Each user 10,000 tokens a week; each team 1,000.
        {"name": "team-llm", "match": {"path_prefix": "/api/v1"},
         "identity": {"header": "x-user-id"},
         "tokens": [{"tokens": 10000, "per": "week", "name": "user-tokens"},
                    {"tokens": 1000, "per": "week", "name": "team-tokens",
                     "scope": {"header": "x-team-id"}}]},
    ],
    "llm": {"default_max_tokens": 100},
}
RECORD = re.compile(r"^(\S+) (\d+) \[(.*)\]$")


def start(mock: str, tmp: Path, log: Path):
    """Envoy in front of the mock (both routes), with an access log printing the record."""
    return start_envoy_with_access_log(POLICY, {"v1": mock, "v2": mock}, tmp, log)


def chat(port: int, headers: dict[str, str]) -> client.Reply:
    """One chat call asking 100 tokens; the mock reports a usage of 300."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        data = json.dumps({"model": "m", "max_tokens": 100,
                           "messages": [{"role": "user", "content": "hi"}]})
        conn.request("POST", "/api/v1/chat/completions", body=data,
                     headers={"content-type": "application/json", **headers})
        response = conn.getresponse()
        return client.Reply(response.status, response.reason,
                            {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()


def counters(envoy, tier: str) -> dict[str, int]:
    prefix = f"wasmcustom.tollgate.{tier}."
    return {k.removeprefix(prefix): int(v) for k, _, v in
            (line.partition(": ") for line in envoy.admin("/stats").splitlines())
            if k.startswith(prefix)}


def fields(record: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in record.split())


def test_teammates_spend_one_team_budget_together_and_another_team_is_not_refused(mock, tmp_path):
    log = tmp_path / "access.log"
    envoy = start(mock, tmp_path, log)
    red, blue = unique("red-team"), unique("blue-team")
    alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
    try:
        def api(user: str, team: str | None) -> client.Reply:
            headers = {"x-user-id": user} | ({"x-team-id": team} if team else {})
            return client.request(envoy.port, "/api/tasks", headers)

        # Request limit: red's 3 an hour, spent by Alice and Bob together (the mock answers
        # /api/tasks with 404: the request went through tollgate).
        assert [api(u, red).status for u in (alice, bob, alice)] == [404, 404, 404]
        refused = [api(u, red) for u in (bob, alice)]
        assert [r.status for r in refused] == [429, 429], [r.head() for r in refused]
        # The team limit decides, and the headers show it (Bob has 9 of his own 10 left).
        assert all(r.header("x-ratelimit-limit") == "3" for r in refused), [r.head() for r in refused]
        assert '"user";r=9' in (refused[0].header("ratelimit") or ""), refused[0].head()
        assert api(carol, blue).status == 404
        missing = api(carol, None)
        assert missing.status == 400, missing.head()
        assert json.loads(missing.body)["error"] == "missing_scope", missing.text()

        # Token budget: red's 1000 tokens a week. Each call holds ~110 and is charged the mock's
        # 300: Alice, Bob, Alice (900), then neither has room.
        assert [chat(envoy.port, {"x-user-id": u, "x-team-id": red}).status
                for u in (alice, bob, alice)] == [200, 200, 200]
        spent = [chat(envoy.port, {"x-user-id": u, "x-team-id": red}) for u in (bob, alice)]
        assert [r.status for r in spent] == [429, 429], [r.head() for r in spent]
        assert all(r.header("x-ratelimit-limit-tokens") == "1000" for r in spent), \
            [r.head() for r in spent]
        assert chat(envoy.port, {"x-user-id": carol, "x-team-id": blue}).status == 200

        def all_lines():
            text = log.read_text() if log.exists() else ""
            lines = [line for line in text.splitlines() if line.startswith("/api/")]
            return lines if len(lines) >= 13 else None

        lines = wait_until(all_lines, 10, "thirteen access-log lines")
        text = log.read_text()
    finally:
        envoy.process.stop()
    records = [(m[1], m[2], fields(m[3])) for m in map(RECORD.match, lines) if m and m[3] != "-"]
    teams = {(path, status, r.get("decision"), r.get("scope.x-team-id")) for path, status, r in records}
    red_hashes = {r["scope.x-team-id"] for path, _, r in records[:5]}
    assert len(red_hashes) == 1, records[:5]
    (red_hash,) = red_hashes
    assert re.fullmatch(r"[0-9a-f]{16}", red_hash)
    assert ("/api/tasks", "429", "denied", red_hash) in teams, teams
    assert ("/api/v1/chat/completions", "429", "denied", red_hash) in teams, teams
    blue_hash = records[5][2]["scope.x-team-id"]
    assert blue_hash != red_hash
    # A team is not its members: the team hash is none of the users' scopes.
    assert red_hash not in {r["scope"] for _, _, r in records}
    for raw in (red, blue, alice, bob, carol):
        assert raw not in text, f"the raw identity {raw} is never logged"


def test_a_shadow_token_budget_lets_everything_through_while_would_deny_counts(mock, tmp_path):
    envoy = start(mock, tmp_path, tmp_path / "access.log")
    try:
        user = {"x-user-id": unique("watched"), "x-watch": "1"}
        replies = [chat(envoy.port, user) for _ in range(5)]
        assert [r.status for r in replies] == [200] * 5, [r.head() for r in replies]
        assert all(r.header("x-ratelimit-remaining-tokens") is None for r in replies), \
            [r.head() for r in replies]
        # 500 a week, 300 charged a call: the first two are admitted (the second runs the
        # budget 100 into debt), the other three would have been refused and took nothing.
        want = {"allowed": 2, "would_deny": 3, "denied": 0, "tokens_charged": 600}
        seen: dict[str, int] = {}

        def flushed() -> bool:  # counters reach Envoy on each worker's next tick
            seen.update(counters(envoy, "watch"))
            return all(seen.get(k) == v for k, v in want.items())

        wait_until(flushed, 10, lambda: f"counters {seen}, want {want}")
    finally:
        envoy.process.stop()
