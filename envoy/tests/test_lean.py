"""The lean policy in real Envoy (README "A lean policy"): with `"x_ratelimit_headers": false`
and `"records": false`, an admitted response carries the IETF fields only, a refusal the IETF
fields and `Retry-After`, and the access log prints no record; the decisions are the same as the
default policy's (BENCHMARKS.md §2 counts its host calls: 6 per admitted request, 4 per refusal).
"""

from __future__ import annotations

from client import Client, parse_structured_list
from conftest import start_envoy_with_access_log, unique, wait_until

LIMIT = 2
POLICY = {
    "x_ratelimit_headers": False,
    "records": False,
    "tiers": [{"name": "users", "identity": {"header": "x-user-id"},
               "limits": [{"requests": LIMIT, "per": "minute"}]}],
}


def rate_limit_names(reply) -> list[str]:
    return sorted(n for n in reply.headers if "ratelimit" in n or "retry" in n)


def test_a_lean_policy_sends_the_ietf_fields_only_and_leaves_no_record(upstreams, tmp_path):
    log = tmp_path / "access.log"
    envoy = start_envoy_with_access_log(POLICY, upstreams, tmp_path, log)
    try:
        c = Client(envoy.port)
        headers = {"x-user-id": unique("lean")}
        admitted = [c.request(headers=headers) for _ in range(LIMIT)]
        refused = c.request(headers=headers)
        c.close()

        def lines():
            text = log.read_text() if log.exists() else ""
            found = [line for line in text.splitlines() if not line.startswith("/healthz")]
            return found if len(found) >= LIMIT + 1 else None

        logged = wait_until(lines, 15, "three access-log lines")
    finally:
        envoy.process.stop()
    for i, reply in enumerate(admitted):
        assert reply.status == 200, reply.head()
        assert rate_limit_names(reply) == ["ratelimit", "ratelimit-policy"], reply.head()
        [(name, state)] = parse_structured_list(reply.header("ratelimit"))
        assert name == "users" and int(state["r"]) == LIMIT - 1 - i, reply.head()
    assert refused.status == 429, refused.head()
    assert rate_limit_names(refused) == ["ratelimit", "ratelimit-policy", "retry-after"], \
        refused.head()
    assert int(refused.header("retry-after")) > 0, refused.head()
    assert [line.rsplit(" ", 2)[1:] for line in logged] == [["200", "[-]"]] * LIMIT + [
        ["429", "[-]"]], logged
