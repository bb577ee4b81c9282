"""References between manifests that no single object's schema can check.

Each object can be valid on its own and the deployment still broken: a Service whose targetPort
no container exposes, an EnvoyPatchPolicy patching a listener Envoy Gateway never generates (the
policy is accepted and reports `Programmed=False` only in its status), or a tollgate policy whose
`global.cluster` names a cluster nobody adds (every call of global mode then fails in Envoy with
"cluster not found"). These checks read all the objects of one run together.

A reference is checked only when the run holds at least one object of the kind it points at
(validating `global/` alone does not see the Gateway, and says nothing about it): the repository
run and `--deployable dist/envoy-gateway` hold everything.

Envoy Gateway's xDS names, as in its own translation tests at the pinned commit: a Gateway
listener becomes the Envoy listener and route configuration `<namespace>/<gateway>/<listener>`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterator

CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LISTENER_TYPES = (
    "type.googleapis.com/envoy.config.listener.v3.Listener",
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
)
# <service>.<namespace>.svc[.cluster.local][.]
SERVICE_DNS = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)\.([a-z0-9]([-a-z0-9]*[a-z0-9])?)\.svc(\.cluster\.local)?\.?$")
LISTEN_ARG = re.compile(r"^--listen(?:=|$)")


@dataclasses.dataclass
class Obj:
    file: str
    label: str  # "Kind namespace/name"
    doc: dict

    @property
    def kind(self) -> str:
        return str(self.doc.get("kind"))

    @property
    def name(self) -> str:
        return str((self.doc.get("metadata") or {}).get("name", ""))

    @property
    def namespace(self) -> str:
        return str((self.doc.get("metadata") or {}).get("namespace") or "default")


@dataclasses.dataclass
class Cluster:
    """An Envoy cluster some manifest adds: by an EnvoyPatchPolicy or an EnvoyProxy bootstrap."""

    obj: Obj
    path: str  # field path of the cluster's value in obj
    value: dict


Finding = tuple[Obj, str, str]  # (object blamed, field path, reason)


def _d(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _l(value: Any) -> list:
    return value if isinstance(value, list) else []


def _containers(obj: Obj) -> list[dict]:
    spec = _d(_d(_d(obj.doc.get("spec")).get("template")).get("spec"))
    return [c for c in _l(spec.get("containers")) if isinstance(c, dict)]


def _pod_labels(obj: Obj) -> dict:
    return _d(_d(_d(_d(obj.doc.get("spec")).get("template")).get("metadata")).get("labels"))


def _ports(container: dict) -> list[dict]:
    return [p for p in _l(container.get("ports")) if isinstance(p, dict)]


def _show_ports(deployment: Obj) -> str:
    shown = [
        f"{p['name']}={p.get('containerPort')}" if p.get("name") else str(p.get("containerPort"))
        for c in _containers(deployment)
        for p in _ports(c)
    ]
    return ", ".join(shown) or "none"


def _port_matches(target: Any, container: dict) -> bool:
    for p in _ports(container):
        if isinstance(target, int) and p.get("containerPort") == target:
            return True
        if isinstance(target, str) and p.get("name") == target:
            return True
    return False


def clusters(objs: list[Obj]) -> Iterator[Cluster]:
    for obj in objs:
        spec = _d(obj.doc.get("spec"))
        if obj.kind == "EnvoyPatchPolicy":
            for i, patch in enumerate(_l(spec.get("jsonPatches"))):
                patch = _d(patch)
                op = _d(patch.get("operation"))
                if patch.get("type") == CLUSTER_TYPE and op.get("op") == "add" and not op.get("path") and not op.get("jsonPath"):
                    yield Cluster(obj, f"spec.jsonPatches[{i}].operation.value", _d(op.get("value")))
        elif obj.kind == "EnvoyProxy":
            for i, op in enumerate(_l(_d(spec.get("bootstrap")).get("jsonPatches"))):
                op = _d(op)
                if op.get("op") == "add" and op.get("path") in ("/static_resources/clusters/-", "/staticResources/clusters/-"):
                    yield Cluster(obj, f"spec.bootstrap.jsonPatches[{i}].value", _d(op.get("value")))


def _is_http2(cluster: dict) -> bool:
    if "http2ProtocolOptions" in cluster or "http2_protocol_options" in cluster:
        return True  # the deprecated cluster-level field
    for options in _d(cluster.get("typedExtensionProtocolOptions") or cluster.get("typed_extension_protocol_options")).values():
        explicit = _d(_d(options).get("explicitHttpConfig") or _d(options).get("explicit_http_config"))
        if "http2ProtocolOptions" in explicit or "http2_protocol_options" in explicit:
            return True
    return False


def _socket_addresses(cluster: dict, base: str) -> Iterator[tuple[str, dict]]:
    load = _d(cluster.get("loadAssignment") or cluster.get("load_assignment"))
    for i, locality in enumerate(_l(load.get("endpoints"))):
        for j, lb in enumerate(_l(_d(locality).get("lbEndpoints") or _d(locality).get("lb_endpoints"))):
            address = _d(_d(_d(lb).get("endpoint")).get("address"))
            socket = _d(address.get("socketAddress") or address.get("socket_address"))
            if socket:
                yield f"{base}.loadAssignment.endpoints[{i}].lbEndpoints[{j}].endpoint.address.socketAddress", socket


def check(objs: list[Obj], tollgate_globals: list[tuple[Obj, str, dict]]) -> list[Finding]:
    """All findings. `tollgate_globals`: (EnvoyExtensionPolicy, path of the policy, its "global")."""
    out: list[Finding] = []
    by_kind: dict[str, list[Obj]] = {}
    for obj in objs:
        by_kind.setdefault(obj.kind, []).append(obj)
    services = by_kind.get("Service", [])
    deployments = by_kind.get("Deployment", [])
    gateways = by_kind.get("Gateway", [])

    # Services select Deployments whose containers expose the targetPort.
    for svc in services:
        spec = _d(svc.doc.get("spec"))
        selector = _d(spec.get("selector"))
        if not selector:
            continue
        chosen = [
            d for d in deployments
            if d.namespace == svc.namespace and all(_pod_labels(d).get(k) == v for k, v in selector.items())
        ]  # fmt: skip
        for i, port in enumerate(_l(spec.get("ports"))):
            port = _d(port)
            target = port.get("targetPort", port.get("port"))
            for dep in chosen:
                if not any(_port_matches(target, c) for c in _containers(dep)):
                    out.append((svc, f"spec.ports[{i}].targetPort",
                                f"Invalid value: {target!r}: no container of Deployment {dep.namespace}/{dep.name} "
                                f"exposes it (its ports: {_show_ports(dep)})"))  # fmt: skip

    # tollgate-sync listens where --listen says: that port is the one declared and probed.
    for dep in deployments:
        for ci, c in enumerate(_containers(dep)):
            if "tollgate-sync" not in f"{c.get('name', '')} {c.get('image', '')}":
                continue
            args = [str(a) for a in _l(c.get("args"))]
            base = f"spec.template.spec.containers[{ci}]"
            for ai, arg in enumerate(args):
                value = arg.split("=", 1)[1] if "=" in arg else (args[ai + 1] if ai + 1 < len(args) else "")
                if arg.startswith("--redis=") or arg == "--redis":
                    if re.match(r"^rediss?://[^/@]*:[^/@]*@", value):
                        out.append((dep, f"{base}.args[{ai}]",
                                    "Invalid value: a password in the Redis URL (tollgate-sync refuses it, and it "
                                    "would show in `ps` and in the object): use --redis-password-file with a Secret"))  # fmt: skip
                if LISTEN_ARG.match(arg):
                    port_text = value.rpartition(":")[2]
                    if not port_text.isdigit():
                        continue
                    port = int(port_text)
                    if not _port_matches(port, c):
                        out.append((dep, f"{base}.ports",
                                    f"Invalid value: tollgate-sync listens on {port} (--listen) but declares "
                                    f"{_show_ports(dep)}"))  # fmt: skip
                    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                        grpc = _d(_d(c.get(probe)).get("grpc"))
                        if grpc and grpc.get("port") != port:
                            out.append((dep, f"{base}.{probe}.grpc.port",
                                        f"Invalid value: {grpc.get('port')!r}: tollgate-sync serves gRPC health on "
                                        f"{port} (--listen)"))  # fmt: skip

    # EnvoyPatchPolicy: its Gateway, and the listener names Envoy Gateway generates for it.
    for epp in by_kind.get("EnvoyPatchPolicy", []):
        spec = _d(epp.doc.get("spec"))
        ref = _d(spec.get("targetRef"))
        gateway = None
        if ref.get("kind") == "Gateway" and gateways:
            gateway = next((g for g in gateways if g.namespace == epp.namespace and g.name == ref.get("name")), None)
            if gateway is None:
                out.append((epp, "spec.targetRef.name",
                            f"Not found: {ref.get('name')!r}: no Gateway of that name in namespace {epp.namespace} "
                            "among the manifests checked (a patch applies only in its own namespace)"))  # fmt: skip
        if gateway is not None:
            listeners = [
                f"{gateway.namespace}/{gateway.name}/{_d(x).get('name')}"
                for x in _l(_d(gateway.doc.get("spec")).get("listeners"))
            ]
            for i, patch in enumerate(_l(spec.get("jsonPatches"))):
                patch = _d(patch)
                if patch.get("type") in LISTENER_TYPES and patch.get("name") not in listeners:
                    out.append((epp, f"spec.jsonPatches[{i}].name",
                                f"Not found: {patch.get('name')!r}: Envoy Gateway names the listeners of Gateway "
                                f"{gateway.namespace}/{gateway.name} {', '.join(listeners)} (the patch would fail "
                                "and the policy show Programmed=False)"))  # fmt: skip

    # Clusters added: each names itself, and its endpoints reach a Service's port.
    added = list(clusters(objs))
    for cl in added:
        if not cl.value.get("name"):
            out.append((cl.obj, f"{cl.path}.name", "Required value: the cluster's name"))
        for path, socket in _socket_addresses(cl.value, cl.path):
            m = SERVICE_DNS.match(str(socket.get("address", "")))
            if not m or not services:
                continue
            name, ns = m.group(1), m.group(3)
            svc = next((s for s in services if s.name == name and s.namespace == ns), None)
            if svc is None:
                out.append((cl.obj, f"{path}.address",
                            f"Not found: no Service {ns}/{name} among the manifests checked"))  # fmt: skip
                continue
            ports = [_d(p).get("port") for p in _l(_d(svc.doc.get("spec")).get("ports"))]
            port = socket.get("portValue", socket.get("port_value"))
            if port not in ports:
                out.append((cl.obj, f"{path}.portValue",
                            f"Invalid value: {port!r}: Service {ns}/{name} has ports {ports}"))  # fmt: skip

    # tollgate's global mode calls global.cluster with gRPC: it must be added, and be HTTP/2.
    if by_kind.get("EnvoyPatchPolicy") or by_kind.get("EnvoyProxy"):
        names = sorted({str(c.value.get("name")) for c in added if c.value.get("name")})
        for eep, path, glob in tollgate_globals:
            wanted = glob.get("cluster")
            if not isinstance(wanted, str):
                continue  # tollgate's own parser says what is wrong with it
            found = [c for c in added if c.value.get("name") == wanted]
            if not found:
                out.append((eep, f"{path}.global.cluster",
                            f"Not found: {wanted!r}: no EnvoyPatchPolicy or EnvoyProxy among the manifests checked "
                            f"adds this cluster (they add: {', '.join(names) or 'none'}); every call of global mode "
                            "would fail in Envoy"))  # fmt: skip
            for c in found:
                if not _is_http2(c.value):
                    out.append((c.obj, f"{c.path}.typedExtensionProtocolOptions",
                                f"Required value: {eep.label} calls cluster {wanted!r} with gRPC, which needs "
                                "HTTP/2 (explicitHttpConfig.http2ProtocolOptions in "
                                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions)"))  # fmt: skip
    return out
