"""scripts/fetch-crds and the CRD lock: every copy is checked against the pinned sha256, whatever
its source; a closed network costs seconds; without CRDs the CRD tests are skipped with the reason.

All network traffic here stays on 127.0.0.1 (a local HTTP server stands in for GitHub's raw file
host, which this machine cannot reach); the real CRDs, when tests need them, come from the cache.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

GATEWAY_DIR = Path(__file__).resolve().parents[1]
REPO = GATEWAY_DIR.parents[1]
sys.path.insert(0, str(GATEWAY_DIR))

import crds  # noqa: E402
import validator as v  # noqa: E402

FETCH = REPO / "scripts" / "fetch-crds"
PINNED_COMMIT = re.compile(
    r"^https://raw\.githubusercontent\.com/(envoyproxy/gateway|kedacore/keda)/[0-9a-f]{40}/[\w./-]+\.yaml$"
)


def fetch_crds(*args: str, cache: Path, mirror: Path | None = None, **env_vars: str) -> subprocess.CompletedProcess:
    """Runs scripts/fetch-crds with its own cache; the mirror only when given; no cluster."""
    env = {k: val for k, val in os.environ.items() if not k.startswith("TOLLGATE_CRD_")}
    env.update(TOLLGATE_PYTHON=sys.executable, TOLLGATE_CRD_CACHE=str(cache),
               TOLLGATE_CRD_MIRROR=str(mirror) if mirror else "", **env_vars)  # fmt: skip
    return subprocess.run([str(FETCH), "--no-cluster", *args], capture_output=True, text=True, env=env, timeout=120)


def tamper(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data.replace(b"type: object", b"type: string", 1))
    assert path.read_bytes() != data


# --------------------------------------------------------------------------------------------
# The lock


def test_lock_pins_each_file_to_an_upstream_commit() -> None:
    entries = crds.read_lock()
    assert len({e.path for e in entries}) == len(entries)
    for entry in entries:
        assert PINNED_COMMIT.match(entry.url), entry.url
    commits = {"{4}@{5}".format(*e.url.split("/")) for e in entries}  # https://host/owner/repo/commit/...
    assert commits == {
        "gateway@d32f28294245e454d20f81d323d626a90e660c1e",
        "keda@8b4f083ca8c8c2baf8477e322bd4d16ac4dfa09a",
    }
    # Every custom kind the repository's manifests use is served by a pinned CRD (by group).
    groups = {name.split(".", 1)[1] for e in entries for name in e.crd_names}
    assert groups == {"gateway.envoyproxy.io", "gateway.networking.k8s.io", "gateway.networking.x-k8s.io", "keda.sh"}


def test_lock_lists_the_crds_each_file_holds(crd_set: crds.CrdSet) -> None:
    """The names `kubectl get crd` exports from a cluster are exactly those in the pinned files."""
    for entry in crds.read_lock():
        docs = yaml.load_all((crd_set.root / entry.path).read_text(), Loader=yaml.CSafeLoader)
        names = [d["metadata"]["name"] for d in docs if isinstance(d, dict) and d.get("kind") == "CustomResourceDefinition"]
        assert tuple(names) == entry.crd_names, entry.path


def test_a_malformed_lock_is_an_error(tmp_path: Path) -> None:
    lock = tmp_path / "crds.lock"
    lock.write_text("a.yaml sha256:abc https://example.com/a.yaml -\n")
    with pytest.raises(crds.CrdError, match="crds.lock:1: sha256 must be 64 lowercase hex digits"):
        crds.read_lock(lock)
    lock.write_text(f"../escape.yaml {'a' * 64} https://example.com/a.yaml -\n")
    with pytest.raises(crds.CrdError, match="must stay inside the cache"):
        crds.read_lock(lock)


# --------------------------------------------------------------------------------------------
# Sources


def test_mirror_copies_are_verified_into_the_cache(tmp_path: Path, crd_set: crds.CrdSet) -> None:
    cache = tmp_path / "cache"
    run = fetch_crds("--no-download", cache=cache, mirror=crd_set.root)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "fetch-crds: 10 of 10 pinned files verified" in run.stdout
    assert run.stdout.count(": offline mirror") == 10
    found = crds.locate(cache)
    assert found.pinned
    # A second run finds them all in the cache.
    again = fetch_crds("--no-download", cache=cache)
    assert again.returncode == 0 and again.stdout.count(": cache") == 10, again.stdout + again.stderr


def test_a_named_directory_with_upstream_file_names(tmp_path: Path, crd_set: crds.CrdSet) -> None:
    """What a user has from Envoy Gateway's and KEDA's repositories: the upstream file names."""
    given = tmp_path / "from-upstream"
    for entry in crds.read_lock():
        target = given / entry.url.split("/", 6)[6]  # the path inside the upstream repository
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(crd_set.root / entry.path, target)
    cache = tmp_path / "cache"
    run = fetch_crds("--no-download", cache=cache, TOLLGATE_CRD_DIR=str(given))
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count(f": directory {given}") == 10
    assert crds.locate(cache).pinned


def test_a_tampered_copy_is_refused(tmp_path: Path, crd_set: crds.CrdSet) -> None:
    mirror = tmp_path / "mirror"
    shutil.copytree(crd_set.root, mirror, ignore=shutil.ignore_patterns(crds.CLUSTER_DIR))
    bad = mirror / "envoy-gateway" / "crd-backends.yaml"
    tamper(bad)
    actual = hashlib.sha256(bad.read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    run = fetch_crds("--no-download", cache=cache, mirror=mirror)
    assert run.returncode == 1, run.stdout + run.stderr
    assert (
        f"fetch-crds: refused: {bad}: sha256 {actual} does not match "
        "bb1901aea758d05458b853b07db04a96a1ea4346b177e392e5ce7398573805be pinned for envoy-gateway/crd-backends.yaml"
    ) in run.stderr
    assert "9 of 10 pinned files verified" in run.stdout
    assert not (cache / "envoy-gateway" / "crd-backends.yaml").exists()
    with pytest.raises(crds.CrdsUnavailable, match=r"1 of 10 pinned files missing .*\(envoy-gateway/crd-backends.yaml\)"):
        crds.locate(cache)


def test_a_tampered_cache_is_an_error_then_repaired(tmp_path: Path, crd_set: crds.CrdSet) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(crd_set.root, cache, ignore=shutil.ignore_patterns(crds.CLUSTER_DIR))
    tamper(cache / "keda-crd-scaledobjects.yaml")
    with pytest.raises(crds.ChecksumMismatch, match="pinned for keda-crd-scaledobjects.yaml"):
        crds.locate(cache)
    check = fetch_crds("--check", cache=cache)
    assert check.returncode == 1 and "refusing it" in check.stderr, check.stdout + check.stderr
    run = fetch_crds("--no-download", cache=cache, mirror=crd_set.root)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "is not the pinned 207afc4ca44fd9e3f4bbfb1c8fae08f3a365e098a52714fe8eb672bbd239cbcd; fetching it again" in run.stdout
    assert crds.locate(cache).pinned


def test_none_available_says_how_to_get_them(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    run = fetch_crds("--no-download", cache=cache)
    assert run.returncode == 3, run.stdout + run.stderr
    assert "0 of 10 pinned files verified" in run.stdout and "10 missing" in run.stdout
    assert "TOLLGATE_CRD_DIR=DIR scripts/fetch-crds" in run.stderr and "kubectl" in run.stderr
    check = fetch_crds("--check", cache=cache)
    assert check.returncode == 3 and f"no CRDs in {cache}" in check.stderr


# --------------------------------------------------------------------------------------------
# Downloads (a local server in place of GitHub)


class _Files(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = self.files.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("content-length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def file_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Files.files
    server.shutdown()
    server.server_close()
    _Files.files = {}


def test_download_is_verified(tmp_path: Path, file_server) -> None:
    base, files = file_server
    good, evil = b"kind: CustomResourceDefinition\n", b"kind: CustomResourceDefinition\n# swapped\n"
    files.update({"/good.yaml": good, "/evil.yaml": evil})
    lock = tmp_path / "crds.lock"
    lock.write_text(
        f"good.yaml {hashlib.sha256(good).hexdigest()} {base}/good.yaml x.example.com\n"
        f"evil.yaml {hashlib.sha256(good).hexdigest()} {base}/evil.yaml y.example.com\n"
    )
    cache = tmp_path / "cache"
    run = fetch_crds(cache=cache, TOLLGATE_CRD_LOCK=str(lock))
    assert run.returncode == 1, run.stdout + run.stderr
    assert "good.yaml: download" in run.stdout
    assert (cache / "good.yaml").read_bytes() == good
    assert f"refused: {base}/evil.yaml: sha256 {hashlib.sha256(evil).hexdigest()} does not match" in run.stderr
    assert not (cache / "evil.yaml").exists()


def test_a_closed_network_fails_fast(tmp_path: Path) -> None:
    """A host that accepts and never answers: one bounded wait, not one per file, then the
    other sources."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    port = silent.getsockname()[1]
    lock = tmp_path / "crds.lock"
    lock.write_text("".join(f"f{i}.yaml {'a' * 64} http://127.0.0.1:{port}/f{i}.yaml -\n" for i in range(5)))
    started = time.monotonic()
    try:
        run = fetch_crds(cache=tmp_path / "cache", TOLLGATE_CRD_LOCK=str(lock), TOLLGATE_CRD_TIMEOUT="1")
    finally:
        silent.close()
    elapsed = time.monotonic() - started
    assert run.returncode == 3, run.stdout + run.stderr
    assert run.stdout.count("note: download ") == 1, run.stdout
    assert "timed out" in run.stdout, run.stdout
    assert elapsed < 8, f"took {elapsed:.1f}s"


# --------------------------------------------------------------------------------------------
# A cluster (kubectl): a stand-in kubectl that serves the pinned CRDs, since no cluster runs here


def test_cluster_export_fills_what_is_missing(tmp_path: Path, crd_set: crds.CrdSet, checker) -> None:
    crd_files = {name: crd_set.root / e.path for e in crds.read_lock() for name in e.crd_names}
    by_name = tmp_path / "by-name"
    by_name.mkdir()
    for name, path in crd_files.items():
        for doc in yaml.load_all(path.read_text(), Loader=yaml.CSafeLoader):
            if isinstance(doc, dict) and doc.get("metadata", {}).get("name") == name:
                doc["status"] = {"acceptedNames": doc["spec"]["names"]}  # as a cluster returns it
                (by_name / f"{name}.yaml").write_text(yaml.safe_dump(doc))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(
        "#!/bin/sh\n"
        'if [ "$1 $2" = "config current-context" ]; then echo test-cluster; exit 0; fi\n'
        f'if [ "$1 $2" = "get crd" ] && [ -f "{by_name}/$3.yaml" ]; then cat "{by_name}/$3.yaml"; exit 0; fi\n'
        'echo "Error from server (NotFound): $*" >&2; exit 1\n'
    )
    kubectl.chmod(0o755)
    cache = tmp_path / "cache"
    env = {k: val for k, val in os.environ.items() if not k.startswith("TOLLGATE_CRD_")}
    env.update(TOLLGATE_PYTHON=sys.executable, TOLLGATE_CRD_CACHE=str(cache), TOLLGATE_CRD_MIRROR="",
               PATH=f"{bin_dir}:{env['PATH']}")  # fmt: skip
    run = subprocess.run([str(FETCH), "--no-download"], capture_output=True, text=True, env=env, timeout=120)
    # Everything but Envoy Gateway's test input (not a CRD) comes from the cluster.
    assert run.returncode == 3, run.stdout + run.stderr
    assert run.stdout.count("cluster test-cluster (kubectl get crd; not checksum-pinned)") == 9, run.stdout
    assert "9 exported from a cluster (unpinned), 1 missing" in run.stdout
    found = crds.locate(cache)
    assert not found.pinned and "exported from a cluster" in found.source
    problems, validator, _ = v.run(v.discover(REPO), v.Options(crds=found, checker=checker))
    assert [str(p) for p in problems] == [] and validator.unchecked == {}


# --------------------------------------------------------------------------------------------
# The test suite itself without CRDs


def test_without_crds_the_crd_tests_are_skipped_with_the_reason(tmp_path: Path, checker) -> None:
    env = {k: val for k, val in os.environ.items() if not k.startswith("TOLLGATE_CRD_")}
    env.update(TOLLGATE_CRD_CACHE=str(tmp_path / "empty"), TOLLGATE_CHECK=" ".join(checker.command))
    run = subprocess.run(
        [sys.executable, "-m", "pytest", str(GATEWAY_DIR / "tests" / "test_validate_manifests.py"),
         "-q", "-rs", "-p", "no:cacheprovider"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:]
    summary = run.stdout.strip().splitlines()[-1]
    counts = dict((what, int(n)) for n, what in re.findall(r"(\d+) (passed|skipped|failed)", summary))
    assert counts.get("failed", 0) == 0 and counts["passed"] >= 20 and counts["skipped"] >= 15, summary
    skipped = re.findall(r"^SKIPPED \[1\] [^:]+:\d+: (.+?): needs the Envoy Gateway / Gateway API / KEDA CRDs, "
                         r"and there are none in (\S+): run scripts/fetch-crds ", run.stdout, re.M)
    assert len(skipped) == counts["skipped"], run.stdout[-3000:]
    assert {cache for _, cache in skipped} == {str(tmp_path / "empty")}
    assert "test_repository_manifests_pass" in {name for name, _ in skipped}
