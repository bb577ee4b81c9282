"""Global mode end to end (issue 10, README "Global mode"): real Redis, the real tollgate-sync and
two Envoy processes with two workers each (envoy/tests/global_stack.py), one user's traffic
spread over both.

This module proves the stack and shows the problem global mode solves: in local mode every
Envoy keeps its own buckets, so two replicas give a user twice the limit.
"""

from __future__ import annotations

import copy
import json

import render  # envoy/render.py
from client import status_counts
from conftest import ROOT, WASM, unique
from global_stack import REPLICAS, global_services, global_stack  # noqa: F401  (fixtures)

GLOBAL_POLICY = ROOT / "examples/global-policy.json"


def local_policy(per: str = "hour") -> dict:
    """examples/global-policy.json without its `global` section (so: local mode), the
    authenticated tier at 100 requests per `per`. Per hour, nothing refills during a test (one
    request's worth takes 36 s), so the counts are exact; per minute it would take 0.6 s."""
    policy = copy.deepcopy(json.loads(GLOBAL_POLICY.read_text()))
    del policy["global"]
    (tier,) = [t for t in policy["tiers"] if t["name"] == "authenticated"]
    tier["limits"] = [{"requests": 100, "per": per}]
    return policy


def test_the_example_policy_has_the_task_api_tiers_in_global_mode():
    policy = json.loads(GLOBAL_POLICY.read_text())
    assert policy["global"]["cluster"] == "tollgate-sync"
    assert {t["name"]: t["limits"] for t in policy["tiers"]} == {
        "premium": [{"requests": 1000, "per": "minute"}],
        "authenticated": [{"requests": 100, "per": "minute"}],
        "anonymous": [{"requests": 10, "per": "minute"}],
    }


def test_the_sync_cluster_is_rendered_only_when_asked():
    common = dict(policy_text="{}", wasm_path=WASM, listen_port=1, admin_port=2,
                  upstream_v1="127.0.0.1:3", upstream_v2="127.0.0.1:4")
    assert "tollgate-sync" not in render.render(**common)
    with_sync = render.render(**common, sync_cluster="127.0.0.1:8081")
    cluster = with_sync[with_sync.index("  - name: tollgate-sync"):]
    # gRPC: HTTP/2 to the service, at the address given.
    assert "http2_protocol_options: {}" in cluster
    assert 'socket_address: { address: "127.0.0.1", port_value: 8081 }' in cluster
    assert not [line for line in with_sync.splitlines() if line.startswith("#@")]


def test_local_mode_gives_a_user_the_limit_once_per_envoy(global_stack):
    envoys = global_stack.start_envoys(local_policy())
    assert len(envoys) == REPLICAS == 2
    # Each Envoy has the cluster of tollgate-sync (unused in local mode), and it is up.
    for envoy in envoys:
        assert "tollgate-sync::127.0.0.1:" in envoy.admin("/clusters")
    user = {"x-user-id": unique("local")}
    # 110 requests to each Envoy at once (220 in all), with four in flight on each.
    per_envoy = global_stack.spread(110, user)
    counts = [status_counts(replies) for replies in per_envoy]
    # Every Envoy admits its own 100: 200 of 220, twice the user's limit of 100.
    assert counts == [{200: 100, 429: 10}, {200: 100, 429: 10}], counts
