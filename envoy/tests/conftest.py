"""Fixtures for tollgate's end-to-end tests against a real Envoy 1.40.

Nothing here builds: scripts/test builds the filter (scripts/build-wasm) and the upstream
(`cargo build --release -p tollgate-upstream`) first. Override the artifacts with TOLLGATE_WASM and
TOLLGATE_UPSTREAM. Envoy is started through scripts/envoy-run, the same path as scripts/demo, with
`--concurrency 4` so that four workers share the limiter's state through proxy-wasm shared data.
Every Envoy has the Gateway's two listeners: HTTP on `Envoy.port` and HTTPS on `Envoy.https_port`
(TLS terminated with the self-signed localhost certificate `Envoy.tls_cert`, which scripts/envoy-run
makes in envoy/.run/tls/ when it is missing), both with the filter and one shared limiter state.
Logs of every process go to the test's tmp dir and their tails are printed when a test fails.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "envoy"))

import client  # noqa: E402  (envoy/client.py, shared with scripts/demo)

TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
WASM = Path(os.environ.get("TOLLGATE_WASM", TARGET / "wasm32-unknown-unknown/release/tollgate.wasm"))
UPSTREAM = Path(os.environ.get("TOLLGATE_UPSTREAM", TARGET / "release/tollgate-upstream"))
TASK_POLICY = ROOT / "examples/task-api-policy.json"
ENVOY_RUN = ROOT / "scripts/envoy-run"
# Where scripts/envoy-run keeps (and makes, when missing) the HTTPS listener's certificate.
TLS_DIR = ROOT / "envoy/.run/tls"
CONCURRENCY = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unique(name: str) -> str:
    """A user id no other test uses (tests share Envoys, and so buckets)."""
    return f"{name}-{uuid.uuid4().hex[:10]}"


class Process:
    """A child process whose output goes to a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, args: list[str], log: Path, **kw) -> None:
        self.args = args
        self.log = log
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT, **kw
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()

    def log_text(self) -> str:
        if not self._log_file.closed:
            self._log_file.flush()
        return self.log.read_text(errors="replace")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def _get(url: str, timeout: float = 1.0) -> tuple[int, str]:
    """GET without any proxy from the environment (http.client, not urllib). An https:// URL is
    fetched without verifying the certificate (like `curl -k`)."""
    https = url.startswith("https://")
    rest = url.removeprefix("https://" if https else "http://")
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    if https:
        conn = http.client.HTTPSConnection(host, int(port), timeout=timeout,
                                           context=ssl._create_unverified_context())
    else:
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", "/" + path)
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        conn.close()


class EnvoyExited(Exception):
    def __init__(self, code: int, log: str) -> None:
        super().__init__(f"envoy exited with {code}")
        self.code = code
        self.log = log


class Envoy:
    """A running Envoy with tollgate attached: HTTP on `port`, HTTPS on `https_port` (None when
    started without it) with the certificate `tls_cert`, admin on `admin_port`."""

    def __init__(self, process: Process, port: int, admin_port: int,
                 https_port: int | None = None, tls_cert: Path | None = None) -> None:
        self.process = process
        self.port = port
        self.admin_port = admin_port
        self.https_port = https_port
        self.tls_cert = tls_cert

    def url(self, path: str = "/api/tasks", https: bool = False) -> str:
        """The URL of `path` on the HTTP listener, or on the HTTPS one (as https://localhost:P,
        the name the certificate is for)."""
        if https:
            assert self.https_port is not None, "this Envoy has no HTTPS listener"
            return f"https://localhost:{self.https_port}{path}"
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def admin(self, path: str) -> str:
        status, body = _get(f"http://127.0.0.1:{self.admin_port}{path}", timeout=10)
        assert status == 200, f"admin {path}: {status} {body[:200]}"
        return body

    def rss_kib(self) -> int:
        """Resident set size of the Envoy process, from /proc (KiB)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS in /proc status")

    def memory(self) -> dict:
        """Envoy's allocator statistics (admin /memory)."""
        return json.loads(self.admin("/memory"))

    def request(self, path: str = "/api/tasks", headers: dict[str, str] | None = None) -> client.Reply:
        return client.request(self.port, path, headers)

    def burst(self, n: int, headers: dict[str, str] | None = None, **kw) -> list[client.Reply]:
        return client.burst(self.port, n, headers, **kw)


def wait_healthy(addr: str, what: str, proc: "Process | None" = None, timeout: float = 10) -> None:
    """Polls http://ADDR/healthz until it answers 200; fails with the process's log if it exits."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if _get(f"http://{addr}/healthz")[0] == 200:
                return
        except OSError:
            pass
        if proc is not None:
            assert proc.poll() is None, f"{what} exited:\n{proc.tail()}"
        assert time.monotonic() < deadline, f"{what} not ready"
        time.sleep(0.05)


def wait_until(predicate: Callable[[], object], timeout: float, what: str | Callable[[], str], interval: float = 0.05):
    """Polls `predicate` until it returns something truthy and returns that; fails naming `what`
    (a string, or a function giving one at failure time) and the last value seen after `timeout`
    seconds. For what the tests wait on (a counter flush, connections to close, a round of requests
    that fits its time window) instead of a fixed sleep that a slow machine outruns."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            shown = what() if callable(what) else what
            pytest.fail(f"timed out after {timeout}s waiting for {shown} (last: {value!r})", pytrace=False)
        time.sleep(interval)


def _write_policy(policy: str | Path | dict, tmp: Path) -> Path:
    if isinstance(policy, Path):
        return policy
    path = tmp / f"policy-{uuid.uuid4().hex[:8]}.json"
    path.write_text(policy if isinstance(policy, str) else json.dumps(policy, indent=2))
    return path


@pytest.fixture(scope="session")
def artifacts() -> dict[str, Path]:
    missing = [f"{p} ({hint})" for p, hint in (
        (WASM, "scripts/build-wasm"),
        (UPSTREAM, "cargo build --release -p tollgate-upstream"),
    ) if not p.is_file()]
    if missing:
        pytest.fail("not built: " + "; ".join(missing) + " — scripts/test builds them first",
                    pytrace=False)
    return {"wasm": WASM, "upstream": UPSTREAM}


@pytest.fixture(scope="session")
def upstreams(artifacts, tmp_path_factory):
    """The Task API v1 and v2 upstreams, for the whole session."""
    logs = tmp_path_factory.mktemp("upstreams")
    started: dict[str, str] = {}
    procs = []
    try:
        for version in ("v1", "v2"):
            addr = f"127.0.0.1:{free_port()}"
            proc = Process([str(artifacts["upstream"]), "--listen", addr, "--version", version],
                           logs / f"{version}.log")
            procs.append(proc)
            started[version] = addr
        for version, addr in started.items():
            wait_healthy(addr, f"upstream {version}")
        yield started
    finally:
        for proc in procs:
            proc.stop()


PORT_TAKEN = "Address already in use"
"""In Envoy's log when a port free_port() found was taken before Envoy bound it."""


def start_envoy(
    policy: str | Path | dict,
    upstreams: dict[str, str],
    tmp: Path,
    concurrency: int = CONCURRENCY,
    timeout: float = 30.0,
    log_level: str = "info",
    https: bool = True,
    sync_cluster: str | None = None,
) -> Envoy:
    """Start Envoy with `policy` (a file, a dict, or raw text passed through unchanged) and wait
    until it serves, on both listeners (HTTP only with https=False); raise EnvoyExited if it
    exits first. `sync_cluster` (HOST:PORT of tollgate-sync) adds global mode's cluster
    `tollgate-sync`.

    free_port() only finds a port that was free: another process (any outgoing connection takes
    an ephemeral port) may bind it before Envoy does. Envoy then exits naming the address, and is
    started again on new ports, up to three times; any other exit is raised at once."""
    for attempt in range(3):
        try:
            return _start_envoy_once(policy, upstreams, tmp, concurrency, timeout, log_level,
                                     https, sync_cluster)
        except EnvoyExited as e:
            if PORT_TAKEN not in e.log or attempt == 2:
                raise
    raise AssertionError("unreachable")


def _start_envoy_once(policy, upstreams, tmp, concurrency, timeout, log_level, https,
                      sync_cluster) -> Envoy:
    port, admin_port = free_port(), free_port()
    https_port = free_port() if https else None
    run_dir = tmp / f"envoy-{port}"
    run_dir.mkdir(parents=True, exist_ok=True)
    args = [
        str(ENVOY_RUN), "--policy", str(_write_policy(policy, tmp)), "--wasm", str(WASM),
        "--concurrency", str(concurrency), "--port", str(port), "--admin-port", str(admin_port),
        "--upstream-v1", upstreams["v1"], "--upstream-v2", upstreams["v2"],
        "--log-level", log_level, "--run-dir", str(run_dir),
        *(["--sync-cluster", sync_cluster] if sync_cluster else []),
        *(["--https-port", str(https_port), "--tls-dir", str(TLS_DIR)] if https
          else ["--https-port", "none"]),
    ]
    process = Process(args, run_dir / "envoy.log")
    envoy = Envoy(process, port, admin_port, https_port, TLS_DIR / "tls.crt" if https else None)
    ready = [f"http://127.0.0.1:{admin_port}/ready", f"http://127.0.0.1:{port}/healthz"]
    if https:
        ready.append(f"https://127.0.0.1:{https_port}/healthz")
    deadline = time.monotonic() + timeout
    while True:
        code = process.poll()
        if code is not None:
            process.stop()
            raise EnvoyExited(code, process.log_text())
        try:
            if all(_get(url)[0] == 200 for url in ready):
                return envoy
        except OSError:  # ssl.SSLError is one
            pass
        if time.monotonic() > deadline:
            process.stop()
            raise AssertionError(f"envoy not ready after {timeout}s:\n{process.tail()}")
        time.sleep(0.1)


@contextlib.contextmanager
def envoy_before_handler(handler: type, policy: dict, tmp: Path, concurrency: int = 2):
    """Envoy running `policy` in front of an in-process `http.server` `handler` serving both
    upstreams, for tests that replay recorded transcripts byte for byte. Yields (envoy,
    server); `server.seen` is a dict the handler may fill."""
    class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
        daemon_threads = True
        allow_reuse_address = True

    server = Server(("127.0.0.1", 0), handler)
    server.seen = {}
    threading.Thread(target=server.serve_forever, daemon=True).start()
    addr = f"127.0.0.1:{server.server_address[1]}"
    proxy = start_envoy(policy, {"v1": addr, "v2": addr}, tmp, concurrency=concurrency)
    try:
        yield proxy, server
    finally:
        proxy.process.stop()
        server.shutdown()
        server.server_close()


def _envoy_binary() -> str:
    """The Envoy that scripts/envoy-run runs (`tg_envoy_path` in scripts/lib.sh)."""
    out = subprocess.run(
        ["bash", "-c", f'source "{ROOT}/scripts/lib.sh" && tg_envoy_path'],
        capture_output=True, text=True, check=True,
    )
    return out.stdout.strip()


def start_envoy_from_template(template: str, policy: dict, upstreams: dict[str, str],
                              tmp: Path) -> Envoy:
    """Envoy (2 workers, HTTP only, scripts/envoy-run's flags) from `template`: an edited copy of
    envoy/bootstrap.yaml.tmpl, rendered by envoy/render.py exactly as the real one is. For tests
    that need the bootstrap with one thing changed; everything else uses start_envoy."""
    import render  # envoy/render.py (on sys.path above)

    port, admin_port = free_port(), free_port()
    run_dir = tmp / f"envoy-{port}"
    run_dir.mkdir(parents=True, exist_ok=True)
    patched = run_dir / "bootstrap.yaml.tmpl"
    patched.write_text(template)
    original, render.TEMPLATE = render.TEMPLATE, patched
    try:
        config = render.render(
            policy_text=json.dumps(policy), wasm_path=WASM, listen_port=port,
            admin_port=admin_port, upstream_v1=upstreams["v1"], upstream_v2=upstreams["v2"],
        )
    finally:
        render.TEMPLATE = original
    (run_dir / "envoy.yaml").write_text(config)
    args = [_envoy_binary(), "-c", str(run_dir / "envoy.yaml"), "--concurrency", "2",
            "--disable-hot-restart", "--log-level", "info", "--component-log-level", "wasm:info"]
    process = Process(args, run_dir / "envoy.log")
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            process.stop()
            raise AssertionError(f"envoy exited:\n{process.tail()}")
        try:
            if (_get(f"http://127.0.0.1:{admin_port}/ready")[0] == 200
                    and _get(f"http://127.0.0.1:{port}/healthz")[0] == 200):
                return Envoy(process, port, admin_port)
        except OSError:
            pass
        if time.monotonic() > deadline:
            process.stop()
            raise AssertionError(f"envoy not ready:\n{process.tail()}")
        time.sleep(0.1)


ACCESS_LOG_FORMAT = "%REQ(:PATH)% %RESPONSE_CODE% [%FILTER_STATE(wasm.tollgate:PLAIN)%]\\n"
"""The access-log line the record tests read: path, status and tollgate's record in brackets."""


def start_envoy_with_access_log(policy: dict, upstreams: dict[str, str], tmp: Path,
                                log: Path) -> Envoy:
    """start_envoy_from_template with the listener writing an access log to `log` in
    ACCESS_LOG_FORMAT (README "Access-log records"). Envoy writes the file out every 10 s."""
    import render  # envoy/render.py (on sys.path above)

    template = render.TEMPLATE.read_text()
    anchor = "          stat_prefix: http-${listen_port}\n"
    assert template.count(anchor) == 1, "bootstrap changed: update start_envoy_with_access_log"
    access_log = (
        "          access_log:\n"
        "          - name: envoy.access_loggers.file\n"
        "            typed_config:\n"
        '              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n'
        f"              path: {log}\n"
        "              log_format:\n"
        f'                text_format_source: {{inline_string: "{ACCESS_LOG_FORMAT}"}}\n'
    )
    return start_envoy_from_template(template.replace(anchor, anchor + access_log), policy,
                                     upstreams, tmp)


@pytest.fixture(scope="module")
def mock(artifacts, tmp_path_factory) -> str:
    """The LLM mock (`tollgate-upstream --app llm`) for the whole test module; its HOST:PORT."""
    addr = f"127.0.0.1:{free_port()}"
    log = tmp_path_factory.mktemp("llm-mock") / "mock.log"
    proc = Process([str(artifacts["upstream"]), "--app", "llm", "--listen", addr], log)
    try:
        wait_healthy(addr, "LLM mock", proc)
        yield addr
    finally:
        proc.stop()


@pytest.fixture
def envoy_factory(upstreams, artifacts, tmp_path, request) -> Callable[..., Envoy]:
    """start(policy, **kw) -> Envoy, stopped when the test ends (log tail shown on failure)."""
    started: list[Envoy] = []

    def start(policy, **kw) -> Envoy:
        envoy = start_envoy(policy, upstreams, tmp_path, **kw)
        started.append(envoy)
        return envoy

    yield start
    failed = getattr(request.node, "rep_call", None)
    for envoy in started:
        if failed is not None and failed.failed:
            print(f"\n--- {envoy.process.log} (tail) ---\n{envoy.process.tail()}")
        envoy.process.stop()


@pytest.fixture(scope="module")
def task_envoy(upstreams, artifacts, tmp_path_factory) -> Envoy:
    """One Envoy with examples/task-api-policy.json for a whole module (tests use unique ids)."""
    envoy = start_envoy(TASK_POLICY, upstreams, tmp_path_factory.mktemp("task-envoy"))
    yield envoy
    envoy.process.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
