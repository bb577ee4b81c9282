"""Where the CRDs that tollgate's manifest checks need come from, and proof that they are the
pinned ones.

`envoy/gateway/crds.lock` names each upstream file, the sha256 of its bytes at a pinned commit,
and its URL. `fetch` fills the project-local cache (`.cache/crds/`, gitignored) with them, taking
each file from the first of these that has it:

1. the cache itself, when its bytes still match the lock;
2. its pinned URL (HTTPS, bounded by a timeout: where the network is closed it fails in seconds);
3. a directory the user names (`TOLLGATE_CRD_DIR` or `--from DIR`): a file at the lock's path or
   with the upstream file name (e.g. `gateway.envoyproxy.io_backends.yaml` from Envoy Gateway's
   chart), anywhere below it;
4. an offline mirror directory (laid out as the cache), when one is present;

and every copy from any of these must match the lock's sha256, or it is refused with both
checksums named. When some files are still missing and `kubectl` has a current context, the CRDs
are exported from that cluster (`kubectl get crd NAME -o yaml`) into `.cache/crds/cluster/`: those
are the cluster's versions, which no checksum can pin, and are reported as such.

`locate` is what the validator and the tests call: it reads only the cache (nothing is fetched at
test time), re-checks each pinned file's sha256, and says exactly what is missing and how to get it.

    scripts/fetch-crds [--from DIR] [--no-download] [--no-cluster] [--no-mirror]
    scripts/fetch-crds --check        # is the cache complete and intact? (no fetching)

Exit status: 0 all present and verified (or exported from a cluster), 1 a copy was refused (and
no good copy was found) or another error, 3 some files are unavailable from every source.
Environment: TOLLGATE_CRD_DIR (a directory to take them from), TOLLGATE_CRD_CACHE (another cache
directory), TOLLGATE_CRD_MIRROR (the offline mirror; empty disables it), TOLLGATE_CRD_LOCK
(another lock file), TOLLGATE_CRD_TIMEOUT (seconds per download, default 10).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOCK = Path(__file__).resolve().with_name("crds.lock")
DEFAULT_CACHE = REPO / ".cache" / "crds"
# The offline mirror directory: present on machines that keep the pinned files beside the clone
# (laid out as the cache). Optional: nothing requires it.
DEFAULT_MIRROR = REPO.parent / "shared" / "reference"
CLUSTER_DIR = "cluster"
DEFAULT_TIMEOUT = 10.0
MAX_BYTES = 16 << 20  # the largest pinned file is 1.4 MB

EXIT_OK, EXIT_REFUSED, EXIT_MISSING = 0, 1, 3

HOW_TO_GET = (
    "get them with `scripts/fetch-crds` (downloads the pinned files from GitHub; scripts/setup runs it), "
    "or offline `TOLLGATE_CRD_DIR=DIR scripts/fetch-crds` with DIR holding those files "
    "(e.g. Envoy Gateway's charts/gateway-helm/charts/crds/crds/ and KEDA's config/crd/bases/ "
    "at the pinned commits), or, with kubectl pointing at a cluster that has Envoy Gateway and KEDA "
    "installed, `scripts/fetch-crds` exports them from it"
)


class CrdError(Exception):
    """The lock or a copy of a pinned file is wrong (not merely missing)."""


class ChecksumMismatch(CrdError):
    def __init__(self, path: Path | str, entry: "Entry", actual: str) -> None:
        super().__init__(
            f"{path}: sha256 {actual} does not match {entry.sha256} pinned for {entry.path} in "
            f"envoy/gateway/crds.lock (upstream: {entry.url}); refusing it"
        )
        self.path, self.entry, self.actual = path, entry, actual


class CrdsUnavailable(Exception):
    """No (complete) set of CRDs in the cache; the message says what is missing and how to get it."""


@dataclasses.dataclass(frozen=True)
class Entry:
    path: str  # relative path in the cache (and in a mirror)
    sha256: str
    url: str
    crd_names: tuple[str, ...]  # empty for a file that is not a CRD

    @property
    def upstream_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


@dataclasses.dataclass(frozen=True)
class CrdSet:
    """A directory of CRDs the validator may read, and where they came from."""

    root: Path
    pinned: bool  # every lock file present with its pinned sha256
    source: str

    def file(self, path: str) -> Path | None:
        """A pinned non-CRD file (e.g. Envoy Gateway's test input), when this set has it."""
        candidate = self.root / path
        return candidate if self.pinned and candidate.is_file() else None


def read_lock(path: Path | None = None) -> list[Entry]:
    path = path or Path(os.environ.get("TOLLGATE_CRD_LOCK") or LOCK)
    entries: list[Entry] = []
    try:
        text = path.read_text()
    except OSError as exc:
        raise CrdError(f"cannot read the CRD lock {path}: {exc.strerror}") from exc
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 4:
            raise CrdError(f"{path}:{number}: expected `path sha256 url crd-names`, got {len(fields)} fields")
        rel, sha, url, names = fields
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise CrdError(f"{path}:{number}: sha256 must be 64 lowercase hex digits, not {sha!r}")
        if rel.startswith("/") or ".." in Path(rel).parts:
            raise CrdError(f"{path}:{number}: path {rel!r} must stay inside the cache")
        if not url.startswith(("https://", "http://")):
            raise CrdError(f"{path}:{number}: url must be http(s), not {url!r}")
        entries.append(Entry(rel, sha, url, tuple(n for n in names.split(",") if n and n != "-")))
    if not entries:
        raise CrdError(f"{path}: no entries")
    return entries


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_dir() -> Path:
    return Path(os.environ.get("TOLLGATE_CRD_CACHE") or DEFAULT_CACHE)


def mirror_dir() -> Path | None:
    value = os.environ.get("TOLLGATE_CRD_MIRROR")
    if value is None:
        return DEFAULT_MIRROR
    return Path(value) if value else None


# --------------------------------------------------------------------------------------------
# Reading the cache (what the validator and the tests do)


def locate(cache: Path | None = None, entries: list[Entry] | None = None) -> CrdSet:
    """The cached CRDs, re-verified. Raises ChecksumMismatch for a tampered file, CrdsUnavailable
    when files are missing (naming them and how to get them)."""
    cache = cache or cache_dir()
    entries = entries if entries is not None else read_lock()
    missing = []
    for entry in entries:
        path = cache / entry.path
        if not path.is_file():
            missing.append(entry)
            continue
        actual = sha256_of(path)
        if actual != entry.sha256:
            raise ChecksumMismatch(path, entry, actual)
    if not missing:
        return CrdSet(cache, True, f"pinned files in {cache}")
    cluster = cache / CLUSTER_DIR
    if cluster.is_dir() and any(cluster.glob("*.yaml")):
        return CrdSet(cache, False, f"exported from a cluster into {cluster} (its versions, not checksum-pinned)")
    if len(missing) == len(entries):
        what = f"no CRDs in {cache}"
    else:
        what = f"{len(missing)} of {len(entries)} pinned files missing from {cache} ({', '.join(e.path for e in missing)})"
    raise CrdsUnavailable(f"{what}: {HOW_TO_GET}")


# --------------------------------------------------------------------------------------------
# Filling the cache


@dataclasses.dataclass
class Report:
    got: dict[str, str] = dataclasses.field(default_factory=dict)  # path -> source
    refused: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)


def _install(data: bytes, entry: Entry, cache: Path) -> None:
    target = cache / entry.path
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
        tmp.write(data)
    os.replace(tmp.name, target)


def _verified(data: bytes, entry: Entry, where: Path | str, report: Report) -> bool:
    actual = hashlib.sha256(data).hexdigest()
    if actual == entry.sha256:
        return True
    report.refused.append(str(ChecksumMismatch(where, entry, actual)))
    return False


def _download(entry: Entry, timeout: float, report: Report) -> bytes | None:
    try:
        with urllib.request.urlopen(entry.url, timeout=timeout) as response:  # noqa: S310 (https URL from the lock)
            data = response.read(MAX_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        report.notes.append(f"download {entry.url}: {reason}")
        return None
    if len(data) > MAX_BYTES:
        report.notes.append(f"download {entry.url}: larger than {MAX_BYTES} bytes")
        return None
    return data


def _find_in(directory: Path, entry: Entry) -> list[Path]:
    """Copies of ENTRY under DIRECTORY: at the lock's path, or by the upstream file name."""
    found = []
    direct = directory / entry.path
    if direct.is_file():
        found.append(direct)
    found.extend(p for p in sorted(directory.rglob(entry.upstream_name)) if p.is_file() and p != direct)
    return found


def _from_directory(directory: Path, entry: Entry, report: Report) -> bytes | None:
    for candidate in _find_in(directory, entry):
        data = candidate.read_bytes()
        if _verified(data, entry, candidate, report):
            return data
    return None


def _kubectl_context() -> str | None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    try:
        run = subprocess.run([kubectl, "config", "current-context"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return run.stdout.strip() if run.returncode == 0 and run.stdout.strip() else None


def _from_cluster(entries: list[Entry], cache: Path, report: Report) -> list[Entry]:
    """Exports the CRDs of ENTRIES from the current kubectl context; returns the entries done."""
    context = _kubectl_context()
    if context is None:
        report.notes.append("cluster: no kubectl, or no current context")
        return []
    out = cache / CLUSTER_DIR
    done = []
    for entry in entries:
        texts = []
        for name in entry.crd_names:
            try:
                run = subprocess.run(["kubectl", "get", "crd", name, "-o", "yaml"],
                                     capture_output=True, text=True, timeout=30)  # fmt: skip
            except (OSError, subprocess.TimeoutExpired) as exc:
                report.notes.append(f"cluster {context}: kubectl get crd {name}: {exc}")
                break
            if run.returncode != 0 or "kind: CustomResourceDefinition" not in run.stdout:
                report.notes.append(f"cluster {context}: kubectl get crd {name}: {run.stderr.strip() or 'not a CRD'}")
                break
            texts.append(run.stdout)
        else:
            if texts:
                out.mkdir(parents=True, exist_ok=True)
                (out / Path(entry.path).name).write_text("---\n".join(texts))
                report.got[entry.path] = f"cluster {context} (kubectl get crd; not checksum-pinned)"
                done.append(entry)
    return done


def fetch(
    cache: Path,
    entries: list[Entry],
    *,
    download: bool = True,
    user_dir: Path | None = None,
    cluster: bool = True,
    mirror: Path | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Report:
    report = Report()
    missing: list[Entry] = []
    for entry in entries:
        cached = cache / entry.path
        if cached.is_file():
            actual = sha256_of(cached)
            if actual == entry.sha256:
                report.got[entry.path] = "cache"
                continue
            report.notes.append(f"{cached}: sha256 {actual} is not the pinned {entry.sha256}; fetching it again")
        missing.append(entry)
    if user_dir is not None and not user_dir.is_dir():
        report.refused.append(f"TOLLGATE_CRD_DIR / --from: {user_dir} is not a directory")
        user_dir = None
    network_down = False
    still: list[Entry] = []
    for entry in missing:
        data = None
        if download and not network_down:
            data = _download(entry, timeout, report)
            if data is None:
                network_down = True  # one failed download is enough: don't wait once per file
            elif _verified(data, entry, entry.url, report):
                source = "download"
            else:
                data = None
        if data is None and user_dir is not None:
            data, source = _from_directory(user_dir, entry, report), f"directory {user_dir}"
        if data is None and mirror is not None and mirror.is_dir():
            data, source = _from_directory(mirror, entry, report), "offline mirror"
        if data is None:
            still.append(entry)
            continue
        _install(data, entry, cache)
        report.got[entry.path] = source
    if still and cluster and any(e.crd_names for e in still):
        done = _from_cluster([e for e in still if e.crd_names], cache, report)
        still = [e for e in still if e not in done]
    if still:
        report.notes.append("missing: " + ", ".join(e.path for e in still))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/fetch-crds",
        description="Fetch the pinned Envoy Gateway and KEDA CRDs into .cache/crds/ and verify their sha256.",
    )
    parser.add_argument("--from", dest="user_dir", type=Path, default=os.environ.get("TOLLGATE_CRD_DIR") or None,
                        help="take the files from this directory (default: $TOLLGATE_CRD_DIR)")  # fmt: skip
    parser.add_argument("--no-download", action="store_true", help="do not try the pinned URLs")
    parser.add_argument("--no-cluster", action="store_true", help="do not export CRDs from the kubectl context")
    parser.add_argument("--no-mirror", action="store_true", help="do not read the offline mirror directory")
    parser.add_argument("--check", action="store_true", help="only check the cache (exit 0 complete, 1 tampered, 3 missing)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only problems and the summary line")
    args = parser.parse_args(argv)
    cache = cache_dir()
    try:
        entries = read_lock()
        if args.check:
            found = locate(cache, entries)
            print(f"fetch-crds: {found.source}")
            return EXIT_OK
        timeout = float(os.environ.get("TOLLGATE_CRD_TIMEOUT") or DEFAULT_TIMEOUT)
    except CrdsUnavailable as exc:
        print(f"fetch-crds: {exc}", file=sys.stderr)
        return EXIT_MISSING
    except (CrdError, ValueError) as exc:
        print(f"fetch-crds: error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    report = fetch(
        cache, entries,
        download=not args.no_download,
        user_dir=args.user_dir,
        cluster=not args.no_cluster,
        mirror=None if args.no_mirror else mirror_dir(),
        timeout=timeout,
    )  # fmt: skip
    if not args.quiet:
        for path, source in report.got.items():
            print(f"  {path}: {source}")
        for note in report.notes:
            print(f"  note: {note}")
    for refused in report.refused:
        print(f"fetch-crds: refused: {refused}", file=sys.stderr)
    missing = len(entries) - len(report.got)
    verified = sum(1 for s in report.got.values() if not s.startswith("cluster"))
    print(f"fetch-crds: {verified} of {len(entries)} pinned files verified in {cache}"
          + (f", {len(report.got) - verified} exported from a cluster (unpinned)" if len(report.got) > verified else "")
          + (f", {missing} missing" if missing else ""))  # fmt: skip
    if missing and report.refused:
        return EXIT_REFUSED
    if missing:
        print(f"fetch-crds: {HOW_TO_GET}", file=sys.stderr)
        return EXIT_MISSING
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
