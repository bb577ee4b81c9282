"""scripts/validate-manifests: the repository's manifests pass, and seeded mistakes are caught
with a message naming the file, the object, the field path and the reason.

Tests that check against the CRDs take the `options` fixture and are skipped (with the reason)
when no CRDs are cached; the rest run either way (`any_options`: the CRDs when there are some)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

GATEWAY_DIR = Path(__file__).resolve().parents[1]
REPO = GATEWAY_DIR.parents[1]
sys.path.insert(0, str(GATEWAY_DIR))

import crds  # noqa: E402
import validator as v  # noqa: E402


def crds_howto() -> str:
    return crds.HOW_TO_GET


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A copy of envoy/gateway's manifests, to seed mistakes in."""
    for path in GATEWAY_DIR.rglob("*.yaml"):
        target = tmp_path / path.relative_to(GATEWAY_DIR)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    return tmp_path


def problems_in(paths: list[Path], options: v.Options) -> list[str]:
    problems, _, _ = v.run(paths, options)
    return [str(p) for p in problems]


def seed(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert text.count(old) >= count, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, count))


# --------------------------------------------------------------------------------------------
# The repository


def test_repository_manifests_pass(options: v.Options) -> None:
    files = v.discover(REPO)
    problems, validator, nfiles = v.run(files, options)
    assert [str(p) for p in problems] == []
    assert nfiles >= 9 and validator.objects >= 16


def test_repository_has_the_task_api_scenario() -> None:
    kinds = {}
    for path in GATEWAY_DIR.rglob("*.yaml"):
        for doc in v.load_documents(path.read_text()):
            kinds.setdefault((doc["kind"], doc["metadata"]["name"]), []).append(path.name)
    for wanted in [
        ("GatewayClass", "eg"),
        ("Gateway", "task-api-gateway"),
        ("HTTPRoute", "task-api"),
        ("EnvoyExtensionPolicy", "task-api-tollgate"),
        ("BackendTrafficPolicy", "task-api-protection"),
        ("ScaledObject", "task-api-scaler"),
        ("Service", "task-api-v1"),
        ("Service", "task-api-v2"),
        ("HTTPRoute", "llm-api"),
        ("EnvoyExtensionPolicy", "llm-api-tollgate"),
        ("Deployment", "tollgate-sync"),
        ("Service", "tollgate-sync"),
        ("PodDisruptionBudget", "tollgate-sync"),
        ("EnvoyPatchPolicy", "tollgate-sync-cluster"),
        ("EnvoyProxy", "tollgate-proxy"),
    ]:
        assert wanted in kinds, wanted
    # Variants replace the plain object: same kind and name.
    assert sorted(kinds[("HTTPRoute", "task-api")]) == ["httproute-canary.yaml", "httproute.yaml"]
    assert sorted(kinds[("EnvoyExtensionPolicy", "task-api-tollgate")]) == [
        "tollgate-global.yaml", "tollgate-image.yaml", "tollgate.yaml",
    ]  # fmt: skip
    assert sorted(kinds[("Deployment", "tollgate-sync")]) == ["tollgate-sync-tls.yaml", "tollgate-sync.yaml"]


def test_every_tollgate_policy_names_its_source() -> None:
    """The policy JSON has one source, examples/; the validator compares against it."""
    seen = 0
    for path in GATEWAY_DIR.rglob("*.yaml"):
        for doc in v.load_documents(path.read_text()):
            if doc["kind"] != "EnvoyExtensionPolicy":
                continue
            wasm = [w for w in doc["spec"].get("wasm", []) if v.is_tollgate_wasm(w)]
            if wasm:
                seen += 1
                source = doc["metadata"]["annotations"][v.POLICY_SOURCE_ANNOTATION]
                assert (REPO / source).is_file(), (path, source)
    assert seen == 4


@pytest.mark.parametrize(
    "name,fail_open",
    [
        ("tollgate.yaml", "true"), ("variants/tollgate-image.yaml", "true"), ("llm.yaml", "false"),
        ("global/tollgate-global.yaml", "true"),
    ],  # fmt: skip
)
def test_failopen_is_set_explicitly_with_a_reason(name: str, fail_open: str) -> None:
    text = (GATEWAY_DIR / name).read_text()
    assert f"\n      failOpen: {fail_open}\n" in text and f"# failOpen: {fail_open}, deliberately" in text


def test_repository_manifests_without_crds_check_what_needs_none(checker: v.TollgateChecker) -> None:
    """No CRDs: built-in kinds, metadata and the embedded policies are still checked, and every
    custom resource is counted as not checked against a schema."""
    problems, validator, _ = v.run(v.discover(REPO), v.Options(crds=None, checker=checker))
    assert [str(p) for p in problems] == []
    assert validator.unchecked == {
        "BackendTrafficPolicy": 1, "EnvoyExtensionPolicy": 4, "EnvoyPatchPolicy": 1, "EnvoyProxy": 1,
        "Gateway": 1, "GatewayClass": 1, "HTTPRoute": 3, "ScaledObject": 1,
    }  # fmt: skip


def test_without_crds_a_bad_policy_is_still_caught(workdir: Path, checker: v.TollgateChecker) -> None:
    seed(workdir / TOLLGATE, '"requests": 10,', '"requests": 0,')
    problems = problems_in([workdir], v.Options(crds=None, checker=checker))
    assert [p.removeprefix(f"{workdir}/") for p in problems] == [
        f"{TOLLGATE}: {EEP}: spec.wasm[0].config: differs from examples/task-api-policy.json: "
        "tiers[2].limits[0].requests: 0 here, 10 in the source file",
        f"{TOLLGATE}: {EEP}: spec.wasm[0].config.tiers[2].limits[0].requests: invalid tollgate policy: must be greater than 0",
    ]


def test_envoy_gateways_own_wasm_test_input_passes(options: v.Options) -> None:
    """The validator accepts what upstream itself writes (no false positives on real shapes)."""
    ref = options.crds.file("envoy-gateway/envoyextensionpolicy-with-wasm.in.yaml")
    if ref is None:
        pytest.skip(f"needs Envoy Gateway's test input, pinned in envoy/gateway/crds.lock: {crds_howto()}")
    data = yaml.safe_load(ref.read_text())
    validator = v.Validator(options)
    problems = [str(p) for objs in data.values() for o in objs for p in validator.validate_object(o, ref.name)]
    assert problems == []


# --------------------------------------------------------------------------------------------
# Seeded mistakes: (file, old text, new text, expected message)

TOLLGATE = "tollgate.yaml"
EEP = "EnvoyExtensionPolicy default/task-api-tollgate"

SEEDED = {
    "misspelled field": (
        TOLLGATE, "\n      failOpen: true", "\n      failopen: true",
        f"{TOLLGATE}: {EEP}: spec.wasm[0].failopen: unknown field",
    ),
    "wrong enum": (
        TOLLGATE, "type: HTTP", "type: Http",
        f'{TOLLGATE}: {EEP}: spec.wasm[0].code.type: Unsupported value: "Http": supported values: "HTTP", "Image"',
    ),
    "code source does not match its type (CEL)": (
        TOLLGATE, "type: HTTP", "type: Image",
        f"{TOLLGATE}: {EEP}: spec.wasm[0].code: Invalid value: object: If type is Image, image field needs to be set.",
    ),
    "missing required field": (
        TOLLGATE, "url: https://wasm.example.com", "uri: https://wasm.example.com",
        f"{TOLLGATE}: {EEP}: spec.wasm[0].code.http.url: Required value",
    ),
    "malformed sha256": (
        TOLLGATE, '"0000000000000000000000000000000000000000000000000000000000000000"', '"sha256:abc"',
        f'{TOLLGATE}: {EEP}: spec.wasm[0].code.http.sha256: Invalid value: "sha256:abc": must be 64 lowercase hex digits',
    ),
    "invalid tollgate policy value": (
        TOLLGATE, '"requests": 10,', '"requests": 0,',
        f"{TOLLGATE}: {EEP}: spec.wasm[0].config.tiers[2].limits[0].requests: invalid tollgate policy: must be greater than 0",
    ),
    "misspelled tollgate policy field": (
        TOLLGATE, '"identity": "shared"', '"identiy": "shared"',
        f"{TOLLGATE}: {EEP}: spec.wasm[0].config.tiers[2].identiy: invalid tollgate policy: unknown field",
    ),
    "policy drifted from examples/": (
        TOLLGATE, '"requests": 1000,', '"requests": 2000,',
        f"{TOLLGATE}: {EEP}: spec.wasm[0].config: differs from examples/task-api-policy.json: "
        "tiers[0].limits[0].requests: 2000 here, 1000 in the source file",
    ),
    "llm policy: invalid token budget": (
        "llm.yaml", '"tokens": 2000, "per": "hour" }]', '"tokens": 2000, "per": "fortnight" }]',
        "llm.yaml: EnvoyExtensionPolicy default/llm-api-tollgate: spec.wasm[0].config.tiers[2].tokens[0].per: invalid tollgate policy:",
    ),
    "image variant: wrong enum": (
        "variants/tollgate-image.yaml", "type: Image", "type: OCI",
        f'variants/tollgate-image.yaml: {EEP}: spec.wasm[0].code.type: Unsupported value: "OCI"',
    ),
    "policy targets a Service (CEL)": (
        TOLLGATE, "kind: HTTPRoute", "kind: Service",
        f"{TOLLGATE}: {EEP}: spec: Invalid value: object: this policy can only have a targetRefs[*].kind of",
    ),
    "gateway: misspelled field": (
        "gateway.yaml", "gatewayClassName: eg", "gatewayClass: eg",
        "gateway.yaml: Gateway default/task-api-gateway: spec.gatewayClassName: Required value",
    ),
    "gateway: tls on an HTTP listener (CEL)": (
        "gateway.yaml", "      protocol: HTTPS", "      protocol: HTTP",
        "gateway.yaml: Gateway default/task-api-gateway: spec.listeners: Invalid value: array: "
        "tls must not be specified for protocols ['HTTP', 'TCP', 'UDP']",
    ),
    "route: wrong path match type": (
        "httproute.yaml", "type: PathPrefix", "type: Prefix",
        'httproute.yaml: HTTPRoute default/task-api: spec.rules[0].matches[0].path.type: Unsupported value: "Prefix"',
    ),
    "route: port out of range": (
        "httproute.yaml", "port: 8000", "port: 80000",
        "httproute.yaml: HTTPRoute default/task-api: spec.rules[0].backendRefs[0].port: "
        "Invalid value: 80000: should be less than or equal to 65535",
    ),
    "canary: negative weight": (
        "variants/httproute-canary.yaml", "weight: 10", "weight: -10",
        "variants/httproute-canary.yaml: HTTPRoute default/task-api: spec.rules[3].backendRefs[1].weight: "
        "Invalid value: -10: should be greater than or equal to 0",
    ),
    "circuit breaker: misspelled field": (
        "backendtrafficpolicy.yaml", "maxParallelRequests: 25", "maxParallelRequest: 25",
        "backendtrafficpolicy.yaml: BackendTrafficPolicy default/task-api-protection: "
        "spec.circuitBreaker.maxParallelRequest: unknown field",
    ),
    "circuit breaker: negative limit": (
        "backendtrafficpolicy.yaml", "maxPendingRequests: 5", "maxPendingRequests: -5",
        "backendtrafficpolicy.yaml: BackendTrafficPolicy default/task-api-protection: "
        "spec.circuitBreaker.maxPendingRequests: Invalid value: -5: should be greater than or equal to 0",
    ),
    "keda: unquoted threshold": (
        "keda-scaledobject.yaml", 'threshold: "50"', "threshold: 50",
        "keda-scaledobject.yaml: ScaledObject default/task-api-scaler: spec.triggers[0].metadata.threshold: "
        "Invalid value: 50: must be of type string",
    ),
    "keda: min above max (CEL)": (
        "keda-scaledobject.yaml", "minReplicaCount: 1", "minReplicaCount: 11",
        "keda-scaledobject.yaml: ScaledObject default/task-api-scaler: spec: Invalid value: object: "
        "minReplicaCount must be less than or equal to maxReplicaCount",
    ),
    "unknown apiVersion": (
        "backendtrafficpolicy.yaml", "gateway.envoyproxy.io/v1alpha1", "gateway.envoyproxy.io/v1",
        "backendtrafficpolicy.yaml: BackendTrafficPolicy default/task-api-protection: apiVersion: "
        "no schema for BackendTrafficPolicy in gateway.envoyproxy.io/v1 (served versions: gateway.envoyproxy.io/v1alpha1)",
    ),
    "duplicate key": (
        "backendtrafficpolicy.yaml", "maxConnections: 50", "maxConnections: 50\n    maxConnections: 60",
        'backendtrafficpolicy.yaml: line 18: YAML error: duplicate field "maxConnections"',
    ),
    "deployment: selector does not match the template": (
        "backend.yaml", "      app.kubernetes.io/version: v2\n  template", "      app.kubernetes.io/version: v3\n  template",
        "backend.yaml: Deployment default/task-api-v2: spec.template.metadata.labels: "
        "Invalid value: `selector` does not match template `labels`",
    ),
    "service: misspelled field": (
        "backend.yaml", "      targetPort: http", "      targetport: http",
        "backend.yaml: Service default/task-api-v1: spec.ports[0].targetport: unknown field",
    ),
}


# Caught without the CRDs too (tollgate's parser, the source file, YAML, built-in kinds, the
# sha256 format); every other case needs the CRD's schema or CEL rules.
NO_CRD_NEEDED = {
    "malformed sha256", "invalid tollgate policy value", "misspelled tollgate policy field",
    "policy drifted from examples/", "llm policy: invalid token budget", "duplicate key",
    "deployment: selector does not match the template", "service: misspelled field",
}  # fmt: skip


@pytest.mark.parametrize("case", list(SEEDED), ids=list(SEEDED))
def test_seeded_mistake_is_caught(case: str, workdir: Path, request: pytest.FixtureRequest) -> None:
    name, old, new, expected = SEEDED[case]
    options = request.getfixturevalue("any_options" if case in NO_CRD_NEEDED else "options")
    seed(workdir / name, old, new)
    problems = problems_in([workdir], options)
    shown = [p.removeprefix(f"{workdir}/") for p in problems]
    assert any(p.startswith(expected) for p in shown), "\n".join(shown) or "no problem reported"
    # Only the seeded file is blamed.
    assert all(p.startswith(f"{name}:") for p in shown), "\n".join(shown)


def test_seeded_copies_pass_unchanged(workdir: Path, any_options: v.Options) -> None:
    """The seeded tests start from a clean copy (and the copy resolves examples/ from the repo)."""
    assert problems_in([workdir], any_options) == []


def test_placeholders_are_refused_when_deployable(workdir: Path, checker: v.TollgateChecker) -> None:
    problems = problems_in([workdir / TOLLGATE], v.Options(checker=checker, deployable=True))
    assert [p.removeprefix(f"{workdir}/") for p in problems] == [
        f"{TOLLGATE}: {EEP}: spec.wasm[0].code.http.sha256: Invalid value: placeholder: fill it from `scripts/package`"
    ]


def test_missing_checksum_is_refused_when_deployable(workdir: Path, checker: v.TollgateChecker) -> None:
    seed(workdir / TOLLGATE, 'sha256: "0000', '# sha256: "0000')
    assert problems_in([workdir / TOLLGATE], v.Options(checker=checker)) == []
    problems = problems_in([workdir / TOLLGATE], v.Options(checker=checker, deployable=True))
    assert any("spec.wasm[0].code.http.sha256: Required value" in p for p in problems), problems


def test_secret_data_must_be_base64(tmp_path: Path, any_options: v.Options) -> None:
    (tmp_path / "secret.yaml").write_text(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: task-api-tls\ntype: kubernetes.io/tls\n"
        "data:\n  tls.crt: not base64!\n"
    )
    problems = [p.removeprefix(f"{tmp_path}/") for p in problems_in([tmp_path], any_options)]
    assert problems == [
        "secret.yaml: Secret task-api-tls: data[tls.crt]: Invalid value: not base64 (use stringData for plain text)",
        "secret.yaml: Secret task-api-tls: data[tls.key]: Required value: a kubernetes.io/tls Secret needs tls.key",
    ]


def test_non_kubernetes_yaml_is_left_alone(tmp_path: Path, any_options: v.Options) -> None:
    (tmp_path / "envoy.yaml").write_text("static_resources:\n  listeners: []\n")
    assert problems_in([tmp_path], any_options) == []


# --------------------------------------------------------------------------------------------
# The command


def run_cli(*args: str, checker: v.TollgateChecker, **env_vars: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TOLLGATE_PYTHON=sys.executable, TOLLGATE_CHECK=" ".join(checker.command), **env_vars)
    return subprocess.run(
        [str(REPO / "scripts" / "validate-manifests"), *args], capture_output=True, text=True, env=env
    )


def test_cli_passes_on_the_repository(checker: v.TollgateChecker, crd_set) -> None:
    run = run_cli(checker=checker)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout == ""
    assert ", 0 problems" in run.stderr


def test_cli_fails_naming_file_path_and_reason(workdir: Path, checker: v.TollgateChecker) -> None:
    seed(workdir / TOLLGATE, '"requests": 100,', '"requests": -1,')
    run = run_cli(str(workdir), checker=checker)
    assert run.returncode == 1
    assert f"{workdir}/{TOLLGATE}: {EEP}: spec.wasm[0].config.tiers[1].limits[0].requests: invalid tollgate policy:" in run.stdout


def test_cli_without_crds_says_what_it_needs(tmp_path: Path, checker: v.TollgateChecker) -> None:
    run = run_cli(checker=checker, TOLLGATE_CRD_CACHE=str(tmp_path / "empty"))
    assert run.returncode == 2, run.stdout + run.stderr
    assert run.stdout == ""
    assert ", 0 problems" in run.stderr
    assert "NOT checked against their CRDs (1 BackendTrafficPolicy, 4 EnvoyExtensionPolicy, 1 EnvoyPatchPolicy, " in run.stderr
    assert "scripts/fetch-crds" in run.stderr and "TOLLGATE_CRD_DIR" in run.stderr and "kubectl" in run.stderr
    allowed = run_cli("--allow-missing-crds", checker=checker, TOLLGATE_CRD_CACHE=str(tmp_path / "empty"))
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert "NOT checked against their CRDs" in allowed.stderr


def test_cli_refuses_a_tampered_crd(tmp_path: Path, checker: v.TollgateChecker, crd_set) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(crd_set.root, cache, ignore=shutil.ignore_patterns(crds.CLUSTER_DIR))
    target = cache / "envoy-gateway" / "crd-envoyextensionpolicies.yaml"
    target.write_text(target.read_text().replace("maxItems: 16", "maxItems: 17", 1))
    run = run_cli(checker=checker, TOLLGATE_CRD_CACHE=str(cache))
    assert run.returncode == 2, run.stdout + run.stderr
    assert f"validate-manifests: error: {target}: sha256 " in run.stderr
    assert "does not match 92f4dfdd67be4b242511381d6175f517782e655233fdf5b5e28a400ea5601f79 pinned for " \
        "envoy-gateway/crd-envoyextensionpolicies.yaml" in run.stderr
