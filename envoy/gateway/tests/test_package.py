"""scripts/package: the OCI image is what Envoy Gateway's image fetcher reads, its digests are
right and stable, and the filled-in manifests are deployable. Runs on a stand-in module, so no
wasm build is needed; the reproducibility of the real module is `scripts/package --verify-reproducible`."""

from __future__ import annotations

import gzip
import hashlib
import importlib.machinery
import importlib.util
import io
import json
import sys
import tarfile
from pathlib import Path

import pytest

GATEWAY_DIR = Path(__file__).resolve().parents[1]
REPO = GATEWAY_DIR.parents[1]
sys.path.insert(0, str(GATEWAY_DIR))

import validator as v  # noqa: E402


def _load_package():
    loader = importlib.machinery.SourceFileLoader("tollgate_package", str(REPO / "scripts" / "package"))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


package = _load_package()
WASM = b"\0asm\x01\0\0\0" + bytes(range(256)) * 64  # a stand-in module


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path, str]:
    out, tar = tmp_path / "oci", tmp_path / "tollgate-oci.tar"
    digest = package.write_oci(WASM, "0.1.0", out, tar)
    return out, tar, digest


def blob(out: Path, digest: str) -> bytes:
    algo, hexdigest = digest.split(":")
    assert algo == "sha256"
    data = (out / "blobs" / "sha256" / hexdigest).read_bytes()
    assert sha(data) == hexdigest, f"blob {hexdigest} does not hash to its name"
    return data


def test_layout_is_a_compat_wasm_image(layout) -> None:
    """What internal/wasm/imagefetcher.go's extractOCIStandardImage reads: an OCI manifest whose
    last layer is tar+gzip with plugin.wasm in it."""
    out, _, digest = layout
    assert json.loads((out / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((out / "index.json").read_text())
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    [desc] = index["manifests"]
    assert desc["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert desc["annotations"] == {"org.opencontainers.image.ref.name": "0.1.0"}
    assert desc["digest"] == f"sha256:{digest}"
    manifest_bytes = blob(out, desc["digest"])
    assert desc["size"] == len(manifest_bytes)

    manifest = json.loads(manifest_bytes)
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    layer_desc = manifest["layers"][-1]
    assert layer_desc["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"

    layer = blob(out, layer_desc["digest"])
    assert layer_desc["size"] == len(layer)
    layer_tar = gzip.decompress(layer)
    with tarfile.open(fileobj=io.BytesIO(layer_tar)) as tar:
        [member] = tar.getmembers()
        assert member.name == "plugin.wasm" and member.isfile()
        assert tar.extractfile(member).read() == WASM

    config = json.loads(blob(out, manifest["config"]["digest"]))
    assert manifest["config"]["size"] == len(blob(out, manifest["config"]["digest"]))
    assert config["rootfs"] == {"type": "layers", "diff_ids": [f"sha256:{sha(layer_tar)}"]}

    # Nothing else in the layout.
    assert sorted(p.name for p in (out / "blobs" / "sha256").iterdir()) == sorted(
        [digest, layer_desc["digest"][7:], manifest["config"]["digest"][7:]]
    )


def test_tar_holds_the_layout(layout) -> None:
    out, tar_path, _ = layout
    with tarfile.open(tar_path) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
        assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in tar.getmembers())
    on_disk = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert files == on_disk


def test_two_builds_give_identical_bytes(tmp_path: Path, layout) -> None:
    out, tar, digest = layout
    again = package.write_oci(WASM, "0.1.0", tmp_path / "oci2", tmp_path / "again.tar")
    assert again == digest
    assert (tmp_path / "again.tar").read_bytes() == tar.read_bytes()


def test_digest_follows_the_module(tmp_path: Path, layout) -> None:
    _, _, digest = layout
    other = package.write_oci(WASM + b"\0", "0.1.0", tmp_path / "o", tmp_path / "o.tar")
    assert other != digest


def test_stanzas_carry_the_right_checksums() -> None:
    code = package.stanzas("https://h/tollgate.wasm", "a" * 64, "r.example/tollgate:0.1.0", "b" * 64)
    assert code["http"] == f"code:\n  type: HTTP\n  http:\n    url: https://h/tollgate.wasm\n    sha256: {'a' * 64}\n"
    assert f"    sha256: {'b' * 64}" in code["image"] and "type: Image" in code["image"]


def test_filled_manifests_are_deployable(tmp_path: Path) -> None:
    wasm_sha, manifest_sha = sha(WASM), sha(b"manifest")
    values = {
        "http": {"url": "https://wasm.internal/tollgate.wasm", "sha256": wasm_sha},
        "image": {"url": "registry.internal/tollgate:0.1.0", "sha256": manifest_sha},
    }
    written = package.render_manifests(GATEWAY_DIR, tmp_path, values)
    assert sorted(str(p.relative_to(tmp_path)) for p in written) == sorted(
        str(p.relative_to(GATEWAY_DIR)) for p in GATEWAY_DIR.rglob("*.yaml") if "tests" not in p.parts
    )
    http = v.load_documents((tmp_path / "tollgate.yaml").read_text())[0]["spec"]["wasm"][0]["code"]
    image = v.load_documents((tmp_path / "variants" / "tollgate-image.yaml").read_text())[0]["spec"]["wasm"][0]["code"]
    assert http["http"] == values["http"]
    assert image["image"] == values["image"]
    # Everything else is unchanged, comments included.
    for path in written:
        src = (GATEWAY_DIR / path.relative_to(tmp_path)).read_text().splitlines()
        dst = path.read_text().splitlines()
        assert len(src) == len(dst)
        changed = [(a, b) for a, b in zip(src, dst) if a != b]
        assert all(a.strip().startswith(("url:", "sha256:")) for a, _ in changed), changed
    problems, _, _ = v.run([tmp_path], v.Options(deployable=True))
    assert [str(p) for p in problems] == []
