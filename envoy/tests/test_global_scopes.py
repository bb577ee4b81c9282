"""Scopes on global tiers end to end (issue 12, README "Scopes", "Global mode"): a team limit
(`"scope": {"header": "x-team-id"}`) beside each user's, on two Envoys sharing one Redis through
tollgate-sync. In strict mode two teammates on different Envoys spend one team limit together
and are refused together, while a member of another team is not; in sync mode what one Envoy
admitted for a team refuses the team's members on the other. Redis keeps the team's bucket under
its own key, named by the scope and a hashed id, never the team's name. Real Redis, the real
tollgate-sync, two Envoys with two workers each (envoy/tests/global_stack.py); a team token
budget in strict mode is spent by teammates' LLM calls on both Envoys together.
"""

from __future__ import annotations

import json
import socket

from client import status_counts
from conftest import unique, wait_until
from global_stack import global_services, global_stack  # noqa: F401  (fixtures)
from test_global_sync import INTERVAL_MS, wait_synced

# Per hour, so that nothing refills during a test (a team request's worth takes 180 s).
USER_PER_HOUR = 50
TEAM_PER_HOUR = 20


def team_policy(mode: str) -> dict:
    """Two global tiers. `llm` (requests with `x-llm`): each user 5,000 tokens a day, each team
    1,200 (reserve mode). `members`: each user 50 requests an hour, each team (`x-team-id`) 20.
    A request without a team is refused (the default `on_missing`). Sync rounds every 250 ms, in
    strict mode too (they carry the LLM calls' settlements)."""
    glob = {"cluster": "tollgate-sync", "mode": mode, "sync_interval_ms": INTERVAL_MS}
    if mode == "strict":
        glob["on_unavailable"] = "deny"
    team = {"header": "x-team-id"}
    return {
        "global": glob,
        "tiers": [
            {"name": "llm", "match": {"headers": [{"name": "x-llm", "present": True}]},
             "identity": {"header": "x-user-id"},
             "tokens": [{"tokens": 5000, "per": "day", "name": "user-tokens"},
                        {"tokens": 1200, "per": "day", "name": "team-tokens", "scope": team}]},
            {"name": "members", "identity": {"header": "x-user-id"},
             "limits": [{"requests": USER_PER_HOUR, "per": "hour", "name": "user"},
                        {"requests": TEAM_PER_HOUR, "per": "hour", "name": "team",
                         "scope": team}]},
        ],
        "llm": {"mode": "reserve"},
    }


def member(team: str, llm: bool = False) -> dict[str, str]:
    """A new user of `team`; on the `llm` tier when `llm`."""
    return {"x-user-id": unique("user"), "x-team-id": team, **({"x-llm": "1"} if llm else {})}


def redis_keys(port: int) -> list[str]:
    """Every key in the stack's Redis (`KEYS *` over RESP; the test Redis holds a few)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"*2\r\n$4\r\nKEYS\r\n$1\r\n*\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            data += chunk
            lines = data.split(b"\r\n")
            if lines and lines[0].startswith(b"*"):
                count = int(lines[0][1:])
                if len(lines) >= 2 * count + 2:
                    return [line.decode() for line in lines[2:2 * count + 1:2]]
            assert chunk, f"Redis closed the connection: {data!r}"


def test_strict_teammates_on_two_envoys_share_one_team_limit_and_one_team_budget(global_stack,
                                                                                  mock):
    # The LLM mock serves every route (404 for the Task API's: the request went through tollgate).
    a, b = global_stack.start_envoys(team_policy("strict"), upstreams={"v1": mock, "v2": mock})
    team_limit(global_stack, a, b)
    team_budget(global_stack, a, b)


def team_limit(global_stack, a, b) -> None:
    """Two teammates alternating between the Envoys spend the team's 20 requests exactly, are
    refused together, and another team is not."""
    team = unique("team")
    alice, bob = member(team), member(team)
    # Alternating between the Envoys, 12 requests each: the team's 20 are spent together,
    # exactly (each user has 50 of his own).
    replies = []
    for _ in range(12):
        replies.append(("alice", a.request(headers=alice)))
        replies.append(("bob", b.request(headers=bob)))
    assert status_counts([r for _, r in replies]) == {404: 20, 429: 4}
    assert [r.status for _, r in replies[-4:]] == [429] * 4, "refused together, at the end"
    # The team decides the 429: its limit, nothing left, one request back in 180 s.
    refused = [r for _, r in replies if r.status == 429]
    assert {r.header("x-ratelimit-limit") for r in refused} == {str(TEAM_PER_HOUR)}
    assert {r.header("x-ratelimit-remaining") for r in refused} == {"0"}
    assert {r.header("retry-after") for r in refused} == {"180"}
    admitted = [r for _, r in replies if r.status == 404]
    # The team had the fewest left: its count in the headers, down to 0, across both Envoys.
    assert sorted(int(r.header("x-ratelimit-remaining")) for r in admitted) == list(range(20))
    # Each teammate is refused on either Envoy; a member of another team is not.
    assert [e.request(headers=alice).status for e in (a, b)] == [429, 429]
    assert [e.request(headers=bob).status for e in (a, b)] == [429, 429]
    other = member(unique("team"))
    assert [e.request(headers=other).status for e in (a, b)] == [404, 404]
    # No team: 400 missing_scope before anything is counted.
    missing = a.request(headers={"x-user-id": unique("user")})
    assert missing.status == 400 and "missing_scope" in missing.text(), missing.head()
    # In Redis, the team is one key of its own: the scope's label and a hashed id, never its name.
    keys = redis_keys(global_stack.redis.port)
    team_keys = [k for k in keys if ":limit=team:" in k]
    assert all(team not in k for k in keys), keys
    assert len([k for k in team_keys if ":scope=x-team-id:" in k]) >= 2, team_keys


def test_sync_what_one_envoy_admitted_for_a_team_refuses_its_members_on_the_other(global_stack):
    a, b = global_stack.start_envoys(team_policy("sync"))
    team = unique("team")
    alice, bob, carol = member(team), member(team), member(team)
    # Alice spends the team's 20 on A, locally.
    assert status_counts(a.burst(25, alice)) == {200: 20, 429: 5}
    wait_synced(global_stack, a)
    # B has never seen the team: Bob's first request is decided locally (admitted) and sent in
    # B's next round, whose answer says the team is spent.
    assert b.request(headers=bob).status == 200
    wait_synced(global_stack, b)
    # From then on the whole team is refused on B (Bob has 49 of his own left), by the team:
    # 21 admitted in all, where local mode admits 40.
    refused = b.burst(10, bob) + b.burst(5, carol)
    assert status_counts(refused) == {429: 15}
    assert {r.header("x-ratelimit-limit") for r in refused} == {str(TEAM_PER_HOUR)}
    # B's team bucket is one request in debt: more than one request's worth (180 s) to wait.
    assert 180 < int(refused[-1].header("retry-after")) <= 360, refused[-1].head()
    # On A too, for a teammate A never saw; another team is admitted on both.
    assert a.request(headers=carol).status == 429
    other = member(unique("team"))
    assert [e.request(headers=other).status for e in (a, b)] == [200, 200]
    wait_until(lambda: any(":scope=x-team-id:" in k for k in redis_keys(global_stack.redis.port)),
               5, "the team's key in Redis")


def team_budget(global_stack, a, b) -> None:
    """Each user 5,000 tokens a day, each team 1,200, in strict mode (reserve): two teammates'
    calls alternate between the Envoys, each call reserving its estimate on both buckets with
    tollgate-sync and settling its usage (the mock reports 100 prompt + 200 completion tokens).
    Four calls spend the team's 1,200; the fifth is refused by the service on either Envoy (each
    Envoy's own calls leave the team 600 there), and another team's member is admitted."""
    from test_llm import CHAT, body, post  # the LLM tests' helpers

    team = unique("team")
    alice, bob = member(team, llm=True), member(team, llm=True)
    data = body(max_tokens=200)
    completion = {"x-mock-completion-tokens": "200"}
    used = 0
    for i in range(4):
        envoy, who = ((a, alice), (b, bob))[i % 2]
        reply = post(envoy, CHAT, data, {**who, **completion})
        assert reply.status == 200, (i, reply.status, reply.body[:300])
        usage = json.loads(reply.body)["usage"]
        used += usage["prompt_tokens"] + usage["completion_tokens"]
        # The settlement (refund the estimate, charge the usage) reaches Redis with the next round.
        wait_synced(global_stack, envoy)
    assert used == 1200
    refused = [post(e, CHAT, data, {**w, **completion}) for e, w in ((a, alice), (b, bob))]
    assert [r.status for r in refused] == [429, 429], [r.body[:300] for r in refused]
    for r in refused:
        assert json.loads(r.body)["error"]["code"] == "rate_limit_exceeded", r.body
        # The team's budget decides: nothing left of its 1,200 (each user has 4,400 of his own).
        assert r.headers["x-ratelimit-limit-tokens"] == "1200", r.headers
        assert r.headers["x-ratelimit-remaining-tokens"] == "0", r.headers
    other = member(unique("team"), llm=True)
    assert [post(e, CHAT, data, {**other, **completion}).status for e in (a, b)] == [200, 200]
    keys = redis_keys(global_stack.redis.port)
    assert any(":budget=team-tokens:scope=x-team-id:" in k for k in keys), keys
    assert all(team not in k for k in keys), keys
