#!/usr/bin/env python3
"""Render envoy/bootstrap.yaml.tmpl into an Envoy bootstrap for tollgate.

The policy file is inserted as it is, byte for byte, as the StringValue the filter receives (so a
deliberately broken policy reaches the filter broken, which is what the bad-config tests need).

    python3 envoy/render.py --policy examples/task-api-policy.json \
        --wasm target/wasm32-unknown-unknown/release/tollgate.wasm \
        --listen-port 10000 --admin-port 9901 \
        --https-port 10443 --tls-cert envoy/.run/tls/tls.crt --tls-key envoy/.run/tls/tls.key \
        --upstream-v1 127.0.0.1:18081 --upstream-v2 127.0.0.1:18082 -o envoy.yaml

With --https-port (and the certificate and key it needs) the bootstrap has both listeners of the
Gateway, HTTP and HTTPS, as Envoy Gateway generates them; without it, the HTTP listener only (the
template's `#@if https` sections are dropped). scripts/envoy-run always renders both.

With --sync-cluster HOST:PORT the bootstrap also has the cluster `tollgate-sync` (HTTP/2, for gRPC)
that a policy in global mode names (README "Global mode"); without it, no such cluster (the
template's `#@if sync` section is dropped).

Only the standard library is used, so any Python 3 runs it.
"""

from __future__ import annotations

import argparse
import json
import re
import string
import sys
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent / "bootstrap.yaml.tmpl"

# `#@if NAME` ... `#@end NAME`, each on a line of its own: a section kept only when NAME is on.
_SECTION = re.compile(r"^#@if (?P<name>\w+)\n(?P<body>.*?)^#@end (?P=name)\n", re.M | re.S)


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


def _sections(text: str, on: set[str]) -> str:
    """Keep the `#@if NAME` sections whose NAME is in `on` (without their marker lines), drop the
    others."""
    out = _SECTION.sub(lambda m: m["body"] if m["name"] in on else "", text)
    if re.search(r"^#@(if|end) ", out, re.M):
        raise ValueError(f"{TEMPLATE}: unbalanced #@if/#@end section markers")
    return out


def render(
    *,
    policy_text: str,
    wasm_path: str | Path,
    listen_port: int,
    admin_port: int,
    upstream_v1: str,
    upstream_v2: str,
    fail_open: bool = False,
    https_port: int | None = None,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    sync_cluster: str | None = None,
) -> str:
    """Return the bootstrap YAML. `policy_text` is passed to the filter unchanged.

    With `https_port`, also the HTTPS listener, terminating TLS with `tls_cert` and `tls_key`
    (PEM files, both required then). With `sync_cluster` (HOST:PORT of tollgate-sync), also the
    cluster `tollgate-sync` of global mode."""
    v1_host, v1_port = _host_port(upstream_v1)
    v2_host, v2_port = _host_port(upstream_v2)
    on: set[str] = set()
    tls: dict[str, str] = {}
    if https_port is not None:
        if not tls_cert or not tls_key:
            raise ValueError("an HTTPS port needs a TLS certificate and key (--tls-cert, --tls-key)")
        on.add("https")
        tls = {
            "https_port": str(int(https_port)),
            "tls_cert": json.dumps(str(Path(tls_cert).resolve())),
            "tls_key": json.dumps(str(Path(tls_key).resolve())),
        }
    sync: dict[str, str | int] = {}
    if sync_cluster is not None:
        sync_host, sync_port = _host_port(sync_cluster)
        on.add("sync")
        sync = {"sync_host": json.dumps(sync_host), "sync_port": sync_port}
    template = string.Template(_sections(TEMPLATE.read_text(), on))
    # A JSON string literal is a valid YAML double-quoted scalar (json.dumps never emits the one
    # escape YAML lacks, "\/"), so this quotes any policy text, newlines and all.
    return template.substitute(
        policy_json=json.dumps(policy_text),
        wasm_path=json.dumps(str(Path(wasm_path).resolve())),
        listen_port=int(listen_port),
        admin_port=int(admin_port),
        upstream_v1_host=json.dumps(v1_host),
        upstream_v1_port=v1_port,
        upstream_v2_host=json.dumps(v2_host),
        upstream_v2_port=v2_port,
        fail_open="true" if fail_open else "false",
        **tls,
        **sync,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", required=True, help="policy JSON file (sent to the filter as is)")
    parser.add_argument("--wasm", required=True, help="the built tollgate.wasm")
    parser.add_argument("--listen-port", type=int, required=True)
    parser.add_argument("--admin-port", type=int, required=True)
    parser.add_argument("--https-port", type=int, help="also the HTTPS listener, on this port")
    parser.add_argument("--tls-cert", help="PEM certificate (chain) of the HTTPS listener")
    parser.add_argument("--tls-key", help="PEM private key of the HTTPS listener")
    parser.add_argument("--upstream-v1", required=True, metavar="HOST:PORT")
    parser.add_argument("--upstream-v2", required=True, metavar="HOST:PORT")
    parser.add_argument("--sync-cluster", metavar="HOST:PORT",
                        help="also the cluster tollgate-sync (global mode), at this address")
    parser.add_argument("--fail-open", action="store_true", help="let requests through if the VM fails")
    parser.add_argument("-o", "--output", help="write here instead of stdout")
    args = parser.parse_args(argv)
    try:
        text = render(
            policy_text=Path(args.policy).read_text(),
            wasm_path=args.wasm,
            listen_port=args.listen_port,
            admin_port=args.admin_port,
            upstream_v1=args.upstream_v1,
            upstream_v2=args.upstream_v2,
            fail_open=args.fail_open,
            https_port=args.https_port,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            sync_cluster=args.sync_cluster,
        )
    except (OSError, ValueError, KeyError) as e:
        print(f"render.py: {e}", file=sys.stderr)
        return 2
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
