"""The Envoy Gateway stack of envoy/gateway/, locally (issue 5): the Gateway's HTTP and HTTPS
listeners (TLS terminated with a self-signed certificate for localhost), HTTPRoute task-api's
versioned routes to two upstreams and tollgate with examples/task-api-policy.json on every
route of both listeners, in a real Envoy with 4 workers (envoy/bootstrap.yaml.tmpl through
scripts/envoy-run). HTTPS requests are made with the curl command line, as a person would.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time

import pytest

from client import status_counts
from conftest import TASK_POLICY, Envoy, unique

# The authenticated tier: 100 requests per minute, so one request's worth refills every 0.6 s.
REFILL_SECONDS = 60 / 100


def curl(*args: str) -> str:
    """Run curl (never through a proxy) and return what it printed."""
    if shutil.which("curl") is None:
        pytest.fail("curl not found (scripts/setup installs it)", pytrace=False)
    run = subprocess.run(["curl", "--silent", "--show-error", "--noproxy", "*", "--max-time", "20",
                          *args], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, f"curl {' '.join(args)}: exit {run.returncode}: {run.stderr}"
    return run.stdout


def get(url: str, headers: dict[str, str] | None = None, *options: str) -> tuple[int, dict]:
    """GET `url` with curl (`-k` for https://, unless `options` say how to verify); returns the
    status and the JSON body."""
    tls = ["-k"] if url.startswith("https://") and not options else []
    out = curl(*tls, *options, *(f"-H{k}: {v}" for k, v in (headers or {}).items()),
               "--write-out", "\n%{http_code}", url)
    body, _, status = out.rpartition("\n")
    return int(status), json.loads(body) if body.startswith("{") else {}


def get_many(url: str, n: int, headers: dict[str, str]) -> list[tuple[int, str]]:
    """GET `url` `n` times with one curl -k (one connection); (status, x-ratelimit-remaining) of
    each, in order."""
    urls = [arg for _ in range(n) for arg in ("--output", "/dev/null", url)]
    out = curl("-k", *(f"-H{k}: {v}" for k, v in headers.items()),
               "--write-out", "%{http_code} %header{x-ratelimit-remaining}\n", *urls)
    replies = [line.split(" ", 1) for line in out.splitlines()]
    assert len(replies) == n, out
    return [(int(status), remaining) for status, remaining in replies]


@pytest.fixture(scope="module")
def stack(task_envoy) -> Envoy:
    """One Envoy with the task API policy for this module, both listeners up."""
    assert task_envoy.https_port is not None
    return task_envoy


def test_http_serves_the_task_api(stack):
    status, body = get(f"http://localhost:{stack.port}/api/tasks")
    assert status == 200
    assert body["version"] == "v1"


def test_https_serves_the_task_api_with_a_self_signed_localhost_certificate(stack):
    # `curl -k`: the certificate is self-signed.
    status, body = get(f"https://localhost:{stack.https_port}/api/tasks")
    assert status == 200
    assert body["version"] == "v1"
    # It is the certificate of localhost (verified against itself), and the listener offers
    # HTTP/2 through ALPN as Envoy Gateway's does.
    out = curl("--cacert", str(stack.tls_cert), "--output", "/dev/null",
               "--write-out", "%{http_code} %{http_version}", stack.url("/healthz", https=True))
    assert out == "200 2"


def test_an_authenticated_user_gets_100_of_110(stack):
    replies = stack.burst(110, {"x-user-id": unique("stack")}, concurrency=16)
    assert status_counts(replies) == {200: 100, 429: 10}


def test_anonymous_requests_get_10_of_15_and_https_shares_their_bucket(envoy_factory):
    # Its own Envoy: the anonymous bucket is shared by every request without credentials.
    envoy = envoy_factory(TASK_POLICY)
    assert status_counts(envoy.burst(15, concurrency=8)) == {200: 10, 429: 5}
    status, _ = get(envoy.url("/api/tasks", https=True))
    assert status == 429


def test_https_has_what_http_left_of_a_users_limit(stack):
    who = {"x-user-id": unique("shared")}
    started = time.monotonic()
    assert status_counts(stack.burst(60, who, concurrency=16)) == {200: 60}
    replies = get_many(stack.url("/api/tasks", https=True), 50, who)
    elapsed = time.monotonic() - started
    statuses = [status for status, _ in replies]
    assert 429 in statuses, replies
    allowed = statuses.index(429)
    # 40 left; one more for each 0.6 s the test took (exactly 40 when it is quick, as it is).
    refilled = math.floor(elapsed / REFILL_SECONDS)
    assert 40 <= allowed <= 40 + refilled, (elapsed, replies)
    if refilled == 0:
        assert replies[0] == (200, "39"), replies
    assert replies[allowed][1] == "0", replies


@pytest.mark.parametrize("https", [False, True], ids=["http", "https"])
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_versioned_routes_reach_their_upstream(stack, version, https):
    status, body = get(stack.url(f"/api/{version}/tasks", https=https),
                       {"x-user-id": unique("versions")})
    assert status == 200
    assert body["version"] == version


def test_both_listeners_run_the_filter_with_one_vm_id(stack):
    """As Envoy Gateway translates the manifests: one listener per Gateway listener, each with
    its own HCM and route configuration, the same disabled Wasm filter (one vm_id, so one
    limiter state) and the same routes enabling it."""
    dump = json.loads(stack.admin("/config_dump"))
    listeners = {}
    for config in dump["configs"]:
        if config["@type"].endswith("ListenersConfigDump"):
            for entry in config["static_listeners"]:
                listener = entry["listener"]
                chain = listener.get("default_filter_chain") or listener["filter_chains"][0]
                listeners[listener["name"]] = (chain, chain["filters"][0]["typed_config"])
    assert set(listeners) == {"default/task-api-gateway/http", "default/task-api-gateway/https"}
    name = "envoy.filters.http.wasm/envoyextensionpolicy/default/task-api-tollgate/wasm/0"
    for listener, (chain, hcm) in listeners.items():
        tls = chain.get("transport_socket")
        assert (tls is not None) == listener.endswith("/https"), listener
        wasm, router = hcm["http_filters"]
        assert wasm["name"] == name and wasm["disabled"] is True
        assert wasm["typed_config"]["config"]["vm_config"]["vm_id"] == (
            "envoyextensionpolicy/default/task-api-tollgate/wasm/0")
        assert router["name"] == "envoy.filters.http.router"
        routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
        assert hcm["route_config"]["name"] == listener
        enabled = {r["name"] for r in routes if name in r.get("typed_per_filter_config", {})}
        assert {f"httproute/default/task-api/rule/{i}/match/0/*" for i in range(3)} <= enabled
