#!/usr/bin/env python3
"""Render envoy/bootstrap.yaml.tmpl into an Envoy bootstrap for tollgate.

The policy file is inserted as it is, byte for byte, as the StringValue the filter receives (so a
deliberately broken policy reaches the filter broken, which is what the bad-config tests need).

    python3 envoy/render.py --policy examples/task-api-policy.json \
        --wasm target/wasm32-unknown-unknown/release/tollgate.wasm \
        --listen-port 10000 --admin-port 9901 \
        --upstream-v1 127.0.0.1:18081 --upstream-v2 127.0.0.1:18082 -o envoy.yaml

Only the standard library is used, so any Python 3 runs it.
"""

from __future__ import annotations

import argparse
import json
import string
import sys
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent / "bootstrap.yaml.tmpl"


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


def render(
    *,
    policy_text: str,
    wasm_path: str | Path,
    listen_port: int,
    admin_port: int,
    upstream_v1: str,
    upstream_v2: str,
    fail_open: bool = False,
) -> str:
    """Return the bootstrap YAML. `policy_text` is passed to the filter unchanged."""
    v1_host, v1_port = _host_port(upstream_v1)
    v2_host, v2_port = _host_port(upstream_v2)
    template = string.Template(TEMPLATE.read_text())
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
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", required=True, help="policy JSON file (sent to the filter as is)")
    parser.add_argument("--wasm", required=True, help="the built tollgate.wasm")
    parser.add_argument("--listen-port", type=int, required=True)
    parser.add_argument("--admin-port", type=int, required=True)
    parser.add_argument("--upstream-v1", required=True, metavar="HOST:PORT")
    parser.add_argument("--upstream-v2", required=True, metavar="HOST:PORT")
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
