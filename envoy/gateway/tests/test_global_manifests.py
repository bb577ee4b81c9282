"""Global mode on Envoy Gateway (envoy/gateway/global/): tollgate-sync's Deployment and Service,
the EnvoyPatchPolicy adding its cluster, and the EnvoyExtensionPolicy in global mode pass, and
the mistakes that would break the deployment while each object is valid on its own are caught:
by Kubernetes' own schemas (kubernetes-validate), Envoy's own parser, tollgate's own parser, and
the references between the objects (crosscheck.py)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
from pathlib import Path

import pytest

GATEWAY_DIR = Path(__file__).resolve().parents[1]
REPO = GATEWAY_DIR.parents[1]

import validator as v  # noqa: E402  (conftest puts envoy/gateway on the path)

SYNC = "global/tollgate-sync.yaml"
PATCH = "global/envoypatchpolicy.yaml"
POLICY = "global/tollgate-global.yaml"
PROXY = "global/variants/envoyproxy-bootstrap.yaml"
DEP = "Deployment default/tollgate-sync"
SVC = "Service default/tollgate-sync"
EPP = "EnvoyPatchPolicy default/tollgate-sync-cluster"
EEP = "EnvoyExtensionPolicy default/task-api-tollgate"
CLUSTER = "spec.jsonPatches[0].operation.value"
SOCKET = f"{CLUSTER}.loadAssignment.endpoints[0].lbEndpoints[0].endpoint.address.socketAddress"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A copy of envoy/gateway's manifests, to seed mistakes in."""
    for path in GATEWAY_DIR.rglob("*.yaml"):
        target = tmp_path / path.relative_to(GATEWAY_DIR)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    return tmp_path


def problems_in(paths: list[Path], options: v.Options, root: Path) -> list[str]:
    problems, _, _ = v.run(paths, options)
    return [str(p).removeprefix(f"{root}/") for p in problems]


def seed(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} in {path}: {text.count(old)} times"
    path.write_text(text.replace(old, new))


def test_global_manifests_pass_every_check(options: v.Options, envoy_checker: v.EnvoyChecker) -> None:
    """With the CRDs, Kubernetes' schemas, tollgate's parser and Envoy parsing both clusters."""
    problems, validator, _ = v.run([GATEWAY_DIR], dataclasses.replace(options, envoy=envoy_checker))
    assert [str(p) for p in problems] == []
    assert validator.builtin_unchecked == {}, "kubernetes-validate is in envoy/tests/requirements.txt"
    added = list(v.crosscheck.clusters(validator.seen))
    assert sorted((c.obj.label, c.value["name"]) for c in added) == [
        ("EnvoyPatchPolicy default/tollgate-sync-cluster", "tollgate-sync"),
        ("EnvoyProxy default/tollgate-proxy", "tollgate-sync"),
    ]
    globals_ = [(o.label, p, g) for o, p, g in validator.tollgate_globals]
    assert globals_ == [(EEP, "spec.wasm[0].config", {"cluster": "tollgate-sync", "mode": "sync"})]


def test_the_example_is_the_task_api_tiers_with_global_mode() -> None:
    """examples/global-policy.json = examples/task-api-policy.json + "global": nothing else differs."""
    glob = json.loads((REPO / "examples/global-policy.json").read_text())
    local = json.loads((REPO / "examples/task-api-policy.json").read_text())
    assert glob.pop("global") == {"cluster": "tollgate-sync", "mode": "sync"}
    assert glob == local


def test_the_example_passes_tollgates_parser(checker: v.TollgateChecker) -> None:
    if not checker.knows_global:
        pytest.skip(f"{' '.join(checker.command)} predates global mode (the `global` object, issue 10)")
    policy = json.loads((REPO / "examples/global-policy.json").read_text())
    assert checker.check(policy) == []
    policy["global"]["mode"] = "strcit"
    assert [path for path, _ in checker.check(policy)] == ["global.mode"]


def test_the_rest_of_a_global_policy_is_checked_either_way(workdir: Path, any_options: v.Options) -> None:
    """Whether or not this tollgate-check knows `global`, the tiers of a global policy are parsed."""
    seed(workdir / POLICY, '"requests": 10,', '"requests": 0,')
    problems = problems_in([workdir / POLICY], any_options, workdir)
    assert f"{POLICY}: {EEP}: spec.wasm[0].config.tiers[2].limits[0].requests: invalid tollgate policy: must be greater than 0" in problems


# (file, old text, new text, expected problem). Each is valid or nearly so on its own; the
# deployment would not work.
SEEDED = {
    "policy's global.cluster is not the cluster the patch adds": (
        POLICY, '{ "cluster": "tollgate-sync"', '{ "cluster": "tollgate-rls"',
        f"{POLICY}: {EEP}: spec.wasm[0].config.global.cluster: Not found: 'tollgate-rls': no EnvoyPatchPolicy or "
        "EnvoyProxy among the manifests checked adds this cluster (they add: tollgate-sync)",
    ),
    "Service targetPort no container exposes": (
        SYNC, "      targetPort: grpc", "      targetPort: 9091",
        f"{SYNC}: {SVC}: spec.ports[0].targetPort: Invalid value: 9091: no container of Deployment "
        "default/tollgate-sync exposes it (its ports: grpc=8081)",
    ),
    "containerPort is not where tollgate-sync listens": (
        SYNC, "containerPort: 8081", "containerPort: 9091",
        f"{SYNC}: {DEP}: spec.template.spec.containers[0].ports: Invalid value: tollgate-sync listens on 8081 "
        "(--listen) but declares grpc=9091",
    ),
    "probes ask another port than --listen": (
        SYNC, "--listen=0.0.0.0:8081", "--listen=0.0.0.0:9091",
        f"{SYNC}: {DEP}: spec.template.spec.containers[0].readinessProbe.grpc.port: Invalid value: 8081: "
        "tollgate-sync serves gRPC health on 9091 (--listen)",
    ),
    "password in the Redis URL": (
        SYNC, "--redis=redis://redis.", "--redis=redis://:hunter2@redis.",
        f"{SYNC}: {DEP}: spec.template.spec.containers[0].args[1]: Invalid value: a password in the Redis URL",
    ),
    "cluster's port is not the Service's": (
        PATCH, "portValue: 8081", "portValue: 8082",
        f"{PATCH}: {EPP}: {SOCKET}.portValue: Invalid value: 8082: Service default/tollgate-sync has ports [8081]",
    ),
    "cluster's address names no Service": (
        PATCH, "address: tollgate-sync.default.svc", "address: tollgate-sync.tollgate.svc",
        f"{PATCH}: {EPP}: {SOCKET}.address: Not found: no Service tollgate/tollgate-sync among the manifests checked",
    ),
    "cluster not HTTP/2, so no gRPC": (
        PATCH, "http2ProtocolOptions: {}", "httpProtocolOptions: {}",
        f"{PATCH}: {EPP}: {CLUSTER}.typedExtensionProtocolOptions: Required value: {EEP} calls cluster "
        "'tollgate-sync' with gRPC, which needs HTTP/2",
    ),
    "patch targets another Gateway": (
        PATCH, "    name: task-api-gateway", "    name: task-gateway",
        f"{PATCH}: {EPP}: spec.targetRef.name: Not found: 'task-gateway': no Gateway of that name in namespace default",
    ),
    "patch targets a listener Envoy Gateway does not generate": (
        PATCH, "  jsonPatches:\n",
        "  jsonPatches:\n"
        "    - type: type.googleapis.com/envoy.config.listener.v3.Listener\n"
        "      name: task-api-gateway/http\n"
        "      operation:\n"
        "        op: add\n"
        "        path: /per_connection_buffer_limit_bytes\n"
        "        value: 65536\n",
        f"{PATCH}: {EPP}: spec.jsonPatches[0].name: Not found: 'task-api-gateway/http': Envoy Gateway names the "
        "listeners of Gateway default/task-api-gateway default/task-api-gateway/http, default/task-api-gateway/https",
    ),
    # Envoy Gateway's CRDs: schema and CEL.
    "patch policy: wrong patch type": (
        PATCH, "  type: JSONPatch", "  type: JsonPatch",
        f'{PATCH}: {EPP}: spec.type: Unsupported value: "JsonPatch": supported values: "JSONPatch"',
    ),
    "patch policy: a resource type xDS does not have": (
        PATCH, "envoy.config.cluster.v3.Cluster\n", "envoy.config.cluster.v3.Clusters\n",
        f'{PATCH}: {EPP}: spec.jsonPatches[0].type: Unsupported value: "type.googleapis.com/envoy.config.cluster.v3.Clusters"',
    ),
    "bootstrap variant: patches under a Merge type (CEL)": (
        PROXY, "    type: JSONPatch", "    type: Merge",
        f"{PROXY}: EnvoyProxy default/tollgate-proxy: spec.bootstrap: Invalid value: object: "
        "provided bootstrap patch doesn't match the configured patch type",
    ),
    # Kubernetes' own schemas (kubernetes-validate) on built-in kinds.
    "deployment: misspelled probe field": (
        SYNC, "            periodSeconds: 5", "            periodSecond: 5",
        f"{SYNC}: {DEP}: spec.template.spec.containers[0].readinessProbe.periodSecond: unknown field",
    ),
    "deployment: replicas as a string": (
        SYNC, "  replicas: 2", '  replicas: "2"',
        f'{SYNC}: {DEP}: spec.replicas: Invalid value: "2": must be of type integer',
    ),
    "service: appProtocol misplaced": (
        SYNC, "      appProtocol: grpc", "      app_protocol: grpc",
        f"{SYNC}: {SVC}: spec.ports[0].app_protocol: unknown field",
    ),
    "disruption budget: misspelled field": (
        SYNC, "  minAvailable: 1", "  minAvailabe: 1",
        f"{SYNC}: PodDisruptionBudget default/tollgate-sync: spec.minAvailabe: unknown field",
    ),
}
# These need the CRDs as well; the rest need none.
NEEDS_CRDS = {
    "patch targets a listener Envoy Gateway does not generate", "patch policy: wrong patch type",
    "patch policy: a resource type xDS does not have", "bootstrap variant: patches under a Merge type (CEL)",
}  # fmt: skip


@pytest.mark.parametrize("case", list(SEEDED), ids=list(SEEDED))
def test_seeded_mistake_is_caught(case: str, workdir: Path, request: pytest.FixtureRequest) -> None:
    name, old, new, expected = SEEDED[case]
    options = request.getfixturevalue("options" if case in NEEDS_CRDS else "any_options")
    seed(workdir / name, old, new)
    problems = problems_in([workdir], options, workdir)
    assert any(p.startswith(expected) for p in problems), "\n".join(problems) or "no problem reported"
    # Only the seeded file is blamed (the references are reported where the mistake is).
    assert all(p.startswith(f"{name}:") for p in problems), "\n".join(problems)


def test_a_listener_patch_with_the_generated_name_passes(workdir: Path, options: v.Options) -> None:
    """The listener check knows Envoy Gateway's names; it does not refuse listener patches."""
    seed(workdir / PATCH, "  jsonPatches:\n",
         "  jsonPatches:\n"
         "    - type: type.googleapis.com/envoy.config.listener.v3.Listener\n"
         "      name: default/task-api-gateway/https\n"
         "      operation:\n"
         "        op: add\n"
         "        path: /per_connection_buffer_limit_bytes\n"
         "        value: 65536\n")  # fmt: skip
    assert problems_in([workdir], options, workdir) == []


def test_envoy_refuses_a_cluster_the_schema_lets_through(
    workdir: Path, any_options: v.Options, envoy_checker: v.EnvoyChecker
) -> None:
    """The patch's value is free-form for the CRD; Envoy (as Envoy Gateway) parses it strictly."""
    seed(workdir / PATCH, "          connectTimeout: 1s", "          connectTimeOut: 1s")
    problems = problems_in([workdir], dataclasses.replace(any_options, envoy=envoy_checker), workdir)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{PATCH}: {EPP}: {CLUSTER}: Envoy refuses this cluster: ")
    assert "connectTimeOut" in problems[0]


def test_the_password_comes_from_a_secret_file(any_options: v.Options) -> None:
    """AUTH from a mounted Secret (never the URL or the command line), readable by the pod's
    group only; TLS in the variant, with a private CA through SSL_CERT_FILE."""
    docs = {d["kind"]: d for d in v.load_documents((GATEWAY_DIR / SYNC).read_text())}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "--redis-password-file=/run/secrets/redis/password" in container["args"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/run/secrets/redis"]
    (volume,) = [x for x in pod["volumes"] if x["name"] == mount["name"]]
    assert volume["secret"] == {
        "secretName": "tollgate-redis", "defaultMode": 0o440, "items": [{"key": "password", "path": "password"}],
    }  # fmt: skip
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]
    assert docs["Deployment"]["spec"]["replicas"] >= 2
    assert docs["Service"]["spec"]["clusterIP"] == "None"  # STRICT_DNS sees every replica
    tls = v.load_documents((GATEWAY_DIR / "global/variants/tollgate-sync-tls.yaml").read_text())[0]
    (tls_container,) = tls["spec"]["template"]["spec"]["containers"]
    assert any(a.startswith("--redis=rediss://") for a in tls_container["args"])
    assert {"name": "SSL_CERT_FILE", "value": "/etc/redis-ca/ca.crt"} in tls_container["env"]


def test_builtin_kinds_are_checked_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """kubernetes-validate ships its schemas: no network needed (every socket refused here)."""

    def no_network(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    v._builtin_schema.cache_clear()
    (tmp_path / "secret.yaml").write_text(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: tollgate-redis\ntype: Opaque\nstringdata:\n  password: x\n"
    )
    problems = problems_in([tmp_path], v.Options(crds=None), tmp_path)
    assert problems == ["secret.yaml: Secret tollgate-redis: stringdata: unknown field"]
