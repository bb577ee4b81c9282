"""The global-mode stack for the end-to-end tests (issue 10, README "Global mode"): a real Debian
`redis-server` on a free port, the real `tollgate-sync` in front of it, and two Envoy processes
(`--concurrency 2` each) whose bootstraps have the HTTP/2 cluster `tollgate-sync` (scripts/envoy-run
--sync-cluster), so that one user's traffic can be spread over two replicas sharing one Redis.

Every part can be killed and started again while the others run, which is what the fault tests
need: `Redis.kill()` (SIGKILL: a crash, nothing flushed; it keeps nothing on disk, so a restart is
an empty Redis, as a failover to a replica that missed the last writes is), `SyncService.kill()`,
`GlobalStack.restart_envoys()` (both Envoys stopped, then new ones started with the same policy:
every bucket in their shared data is gone, only Redis remembers).

Nothing here builds: scripts/test builds `tollgate-sync` (`cargo build --release -p tollgate-sync`)
with the upstream; TOLLGATE_SYNC overrides its path. Without `redis-server` the tests that need it
are skipped with the reason (scripts/setup installs it). Hot restart is disabled for every Envoy
(scripts/envoy-run), so several run at once without distinct `--base-id`s: they share no memory.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

import client
from conftest import TARGET, Envoy, Process, free_port, start_envoy

SYNC = Path(os.environ.get("TOLLGATE_SYNC", TARGET / "release/tollgate-sync"))
REPLICAS = 2
# Workers per Envoy: two, so that each Envoy also shares its state between workers, as in
# production, while two Envoys fit on a small machine.
CONCURRENCY = 2


def _wait_port(port: int, what: str, proc: Process, timeout: float = 10.0) -> None:
    """Waits until 127.0.0.1:`port` accepts a TCP connection; fails with `proc`'s log if it exits
    or takes longer than `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"{what} exited ({proc.poll()}):\n{proc.tail()}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{what} not listening on {port} after {timeout}s:\n{proc.tail()}"
        time.sleep(0.05)


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class _Killable:
    """A process of the stack that a test can crash (`kill`: SIGKILL, nothing shut down or saved,
    calls in flight cut off, as when its pod dies) or stop."""

    proc: Process | None = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.proc.kill()
            self.proc.proc.wait()
            self.proc.stop()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


class Redis(_Killable):
    """Debian's `redis-server` on a fixed free port, nothing persisted (`--save '' --appendonly
    no`). Started again on the same port after `kill()`, so the service reconnects by itself."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.log_dir = log_dir
        self.proc: Process | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "redis-server already running"
        self.starts += 1
        self.proc = Process(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no"],
                            self.log_dir / f"redis-{self.starts}.log")
        deadline = time.monotonic() + 10
        while not _redis_ping(self.port):
            assert self.proc.poll() is None, f"redis-server exited:\n{self.proc.tail()}"
            assert time.monotonic() < deadline, f"redis-server not answering:\n{self.proc.tail()}"
            time.sleep(0.02)


class SyncService(_Killable):
    """The real `tollgate-sync --listen 127.0.0.1:PORT --redis URL`, on a fixed free port."""

    def __init__(self, redis: Redis, log_dir: Path) -> None:
        self.port = free_port()
        self.redis = redis
        self.log_dir = log_dir
        self.proc: Process | None = None
        self.starts = 0

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "tollgate-sync already running"
        self.starts += 1
        self.proc = Process([str(SYNC), "--listen", self.addr, "--redis", self.redis.url],
                            self.log_dir / f"tollgate-sync-{self.starts}.log",
                            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info")})
        _wait_port(self.port, "tollgate-sync", self.proc)


class GlobalStack:
    """Redis, tollgate-sync and `REPLICAS` Envoys with one policy."""

    def __init__(self, upstreams: dict[str, str], tmp: Path) -> None:
        self.upstreams = upstreams
        self.tmp = tmp
        self.redis = Redis(tmp)
        self.sync = SyncService(self.redis, tmp)
        self.envoys: list[Envoy] = []
        self.retired: list[Envoy] = []
        self.policy: dict | None = None

    def start_envoys(self, policy: dict, replicas: int = REPLICAS,
                     upstreams: dict[str, str] | None = None) -> list[Envoy]:
        """Stops the Envoys running (if any) and starts `replicas` new ones with `policy`, each
        with the cluster `tollgate-sync`; `upstreams` (v1, v2) instead of the Task API's, e.g.
        the LLM mock."""
        self.stop_envoys()
        self.policy = policy
        self.envoys = [
            start_envoy(policy, upstreams or self.upstreams, self.tmp, concurrency=CONCURRENCY,
                        https=False, sync_cluster=self.sync.addr)
            for _ in range(replicas)
        ]
        return self.envoys

    def restart_envoys(self) -> list[Envoy]:
        """Both Envoys stopped, then new processes with the same policy (on new ports): what a
        rollout does to every bucket an Envoy keeps in its shared data."""
        assert self.policy is not None, "no Envoys started yet"
        return self.start_envoys(self.policy, len(self.envoys))

    def stop_envoys(self) -> None:
        for envoy in self.envoys:
            envoy.process.stop()
        self.retired += self.envoys
        self.envoys = []

    def stop(self) -> None:
        self.stop_envoys()
        self.sync.stop()
        self.redis.stop()

    def spread(self, per_envoy: int, headers: dict[str, str], concurrency: int = 4,
               path: str = "/api/tasks") -> list[list[client.Reply]]:
        """`per_envoy` requests to every Envoy at once (each Envoy's with up to `concurrency` in
        flight, see client.burst); the replies of each Envoy, in its order in `self.envoys`."""
        results: list[list[client.Reply]] = [[] for _ in self.envoys]
        errors: list[BaseException] = []

        def run(i: int, envoy: Envoy) -> None:
            try:
                results[i] = client.burst(envoy.port, per_envoy, headers, path=path,
                                          concurrency=concurrency)
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=run, args=(i, e), daemon=True)
                   for i, e in enumerate(self.envoys)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results

    def stats(self, envoy: Envoy, prefix: str = "tollgate") -> dict[str, int]:
        """The counters and gauges of `envoy` whose names contain `prefix` (admin /stats)."""
        out: dict[str, int] = {}
        for line in envoy.admin(f"/stats?filter={prefix}").splitlines():
            name, sep, value = line.rpartition(": ")
            if sep and value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def logs(self) -> list[Process]:
        procs = [e.process for e in self.retired + self.envoys]
        return procs + [p for p in (self.sync.proc, self.redis.proc) if p is not None]


def require_stack() -> None:
    """Skips (with the reason) without redis-server; fails when tollgate-sync is not built."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (scripts/setup installs it)")
    if not SYNC.is_file():
        pytest.fail(f"not built: {SYNC} (cargo build --release -p tollgate-sync) — scripts/test "
                    "builds it first", pytrace=False)


@pytest.fixture(scope="module")
def global_services(upstreams, artifacts, tmp_path_factory):
    """Redis and tollgate-sync for a whole test module (tests use unique user ids)."""
    require_stack()
    stack = GlobalStack(upstreams, tmp_path_factory.mktemp("global"))
    try:
        stack.redis.start()
        stack.sync.start()
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def global_stack(global_services, request):
    """The module's stack for one test: Redis and tollgate-sync running (started again when an
    earlier test left them killed), the test starts its Envoys, which stop when it ends (their
    log tails, tollgate-sync's and Redis's printed when it failed)."""
    stack = global_services
    if stack.redis.proc is None or stack.redis.proc.poll() is not None:
        stack.redis.start()
    if stack.sync.proc is None or stack.sync.proc.poll() is not None:
        stack.sync.start()
    stack.retired = []
    yield stack
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for proc in stack.logs():
            print(f"\n--- {proc.log} (tail) ---\n{proc.tail()}")
    stack.stop_envoys()
