"""The cluster that global/envoypatchpolicy.yaml adds, run for real: Envoy 1.40 with exactly that
cluster (only its address pointed at 127.0.0.1), tollgate-sync and redis-server, all started
here on free ports. Envoy's gRPC health checks find tollgate-sync healthy through
`grpc.health.v1` with the service name the manifest gives, and a stock gRPC client's
`ShouldRateLimit` calls pass through the cluster (HTTP/2) to Redis and back.

Needs Envoy (scripts/setup), redis-server (scripts/setup installs it) and the tollgate-sync
binary (built here with cargo, or TOLLGATE_SYNC); skipped with the reason without the first two.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

GATEWAY_DIR = Path(__file__).resolve().parents[1]
REPO = GATEWAY_DIR.parents[1]

import validator as v  # noqa: E402  (conftest puts envoy/gateway on the path)

GRPC_CLIENT = REPO / "sync" / "tests" / "grpcio_client.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shipped_clusters() -> dict[str, dict]:
    """The cluster of the EnvoyPatchPolicy and of the EnvoyProxy bootstrap variant."""
    patch = v.load_documents((GATEWAY_DIR / "global" / "envoypatchpolicy.yaml").read_text())[0]
    proxy = v.load_documents((GATEWAY_DIR / "global" / "variants" / "envoyproxy-bootstrap.yaml").read_text())[0]
    return {
        "patch": patch["spec"]["jsonPatches"][0]["operation"]["value"],
        "bootstrap": proxy["spec"]["bootstrap"]["jsonPatches"][0]["value"],
    }


def test_the_patch_and_the_bootstrap_variant_add_the_same_cluster() -> None:
    clusters = shipped_clusters()
    assert clusters["patch"] == clusters["bootstrap"]


def _wait(predicate, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise AssertionError(f"{what} not within {timeout}s\n{tail}")


class Proc:
    def __init__(self, args: list[str], log: Path, **kwargs) -> None:
        self.log = log
        self.handle = log.open("w")
        self.popen = subprocess.Popen(args, stdout=self.handle, stderr=subprocess.STDOUT, **kwargs)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.handle.close()


@pytest.fixture
def sync_binary() -> Path:
    override = os.environ.get("TOLLGATE_SYNC")
    if override:
        return Path(override)
    subprocess.run(["cargo", "build", "-q", "-p", "tollgate-sync", "--bin", "tollgate-sync"], cwd=REPO, check=True)
    meta = subprocess.run(
        ["cargo", "metadata", "-q", "--format-version", "1", "--no-deps"],
        cwd=REPO, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return Path(json.loads(meta.stdout)["target_directory"]) / "debug" / "tollgate-sync"


@pytest.fixture
def redis_port(tmp_path: Path) -> Iterator[int]:
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("needs redis-server (scripts/setup installs it)")
    port = free_port()
    proc = Proc([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(tmp_path)], tmp_path / "redis.log")  # fmt: skip

    def answers() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    _wait(answers, 10, "redis-server", proc.log)
    yield port
    proc.stop()


def test_envoy_health_checks_and_calls_tollgate_sync_through_the_shipped_cluster(
    tmp_path: Path, envoy_checker: v.EnvoyChecker, sync_binary: Path, redis_port: int
) -> None:
    sync_log = tmp_path / "tollgate-sync.log"
    sync = Proc([str(sync_binary), "--listen", "127.0.0.1:0", "--redis", f"redis://127.0.0.1:{redis_port}"], sync_log)
    envoy = None
    try:
        _wait(lambda: "listening on " in sync_log.read_text(), 20, "tollgate-sync listening", sync_log)
        sync_port = int(sync_log.read_text().split("listening on ", 1)[1].split()[0].rpartition(":")[2])

        cluster = copy.deepcopy(shipped_clusters()["patch"])
        socket_address = cluster["loadAssignment"]["endpoints"][0]["lbEndpoints"][0]["endpoint"]["address"]["socketAddress"]
        socket_address.update(address="127.0.0.1", portValue=sync_port)  # the only change
        listen_port, admin_port = free_port(), free_port()
        bootstrap = {
            "admin": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": admin_port}}},
            "staticResources": {
                "clusters": [cluster],
                # A plain gRPC route to the cluster, so that a stock client can call through it.
                "listeners": [{
                    "name": "grpc",
                    "address": {"socketAddress": {"address": "127.0.0.1", "portValue": listen_port}},
                    "filterChains": [{"filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typedConfig": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "statPrefix": "grpc",
                            "codecType": "AUTO",
                            "routeConfig": {"virtualHosts": [{
                                "name": "all", "domains": ["*"],
                                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster["name"], "timeout": "5s"}}],
                            }]},
                            "httpFilters": [{"name": "envoy.filters.http.router", "typedConfig": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                        },
                    }]}],
                }],
            },
        }  # fmt: skip
        config = tmp_path / "envoy.json"
        config.write_text(json.dumps(bootstrap))
        envoy_log = tmp_path / "envoy.log"
        envoy = Proc([envoy_checker.binary, "-c", str(config), "--disable-hot-restart", "--concurrency", "1",
                      "-l", "warning"], envoy_log)  # fmt: skip

        def clusters_page() -> str:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/clusters", timeout=1) as r:
                    return r.read().decode()
            except OSError:
                return ""

        host = f"tollgate-sync::127.0.0.1:{sync_port}"
        # Active gRPC health checking (interval 5 s in the manifest; the first check runs at once).
        _wait(lambda: f"{host}::health_flags::healthy" in clusters_page(), 20,
              "Envoy marking tollgate-sync healthy", envoy_log)  # fmt: skip
        page = clusters_page()
        assert f"{host}::health_flags::healthy" in page, page

        run = subprocess.run(
            [sys.executable, str(GRPC_CLIENT), f"127.0.0.1:{listen_port}", f"gw-{os.getpid()}-{listen_port}"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr
        assert "admitted 5 of 7" in run.stdout, run.stdout
        # The calls went through Envoy's cluster, over HTTP/2.
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/stats?filter=^cluster.tollgate-sync.upstream_", timeout=2) as r:
            stats = dict(line.split(": ", 1) for line in r.read().decode().splitlines() if ": " in line)
        assert int(stats["cluster.tollgate-sync.upstream_rq_completed"]) >= 7, stats
        assert int(stats["cluster.tollgate-sync.upstream_cx_http2_total"]) >= 1, stats
    finally:
        if envoy is not None:
            envoy.stop()
        sync.stop()
