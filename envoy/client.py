#!/usr/bin/env python3
"""HTTP helpers shared by the end-to-end tests and scripts/demo (standard library only).

    python3 envoy/client.py burst --port 10000 -n 110 -H x-user-id:test [--concurrency 16]
        [--path /api/tasks] [--show-status 429] [--expect 200=100,429=10]

prints the status counts and, with --show-status, the head and body of the first response with
that status; with --expect it exits 1 when the counts differ.
"""

from __future__ import annotations

import argparse
import http.client
import re
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Reply:
    """One response: status, headers (names lower-cased; repeated ones joined with ", "), body."""

    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def head(self) -> str:
        lines = [f"HTTP/1.1 {self.status} {self.reason}"]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        return "\n".join(lines)


def _reply(response: http.client.HTTPResponse) -> Reply:
    headers: dict[str, str] = {}
    for name, value in response.getheaders():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return Reply(response.status, response.reason, headers, response.read())


class Client:
    """One keep-alive connection to Envoy (reconnects when the server closed it)."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=timeout)

    def request(
        self, path: str = "/api/tasks", headers: dict[str, str] | None = None, method: str = "GET"
    ) -> Reply:
        self.conn.request(method, path, headers=headers or {})
        return _reply(self.conn.getresponse())

    def close(self) -> None:
        self.conn.close()


def request(port: int, path: str = "/api/tasks", headers: dict[str, str] | None = None,
            method: str = "GET") -> Reply:
    """One request on a fresh connection."""
    client = Client(port)
    try:
        return client.request(path, headers, method)
    finally:
        client.close()


def burst(
    port: int,
    n: int,
    headers: dict[str, str] | None = None,
    path: str = "/api/tasks",
    concurrency: int = 16,
) -> list[Reply]:
    """Send `n` requests with up to `concurrency` in flight, each worker on its own keep-alive
    connection (so Envoy spreads them over its workers). Returns the replies in completion order."""
    replies: list[Reply] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    remaining = [n]
    workers = max(1, min(concurrency, n))
    start = threading.Barrier(workers)

    def take() -> bool:
        with lock:
            if remaining[0] <= 0:
                return False
            remaining[0] -= 1
            return True

    def work() -> None:
        client = Client(port)
        try:
            start.wait()
            while take():
                reply = client.request(path, headers)
                with lock:
                    replies.append(reply)
        except BaseException as e:  # reported to the caller below
            with lock:
                errors.append(e)
            start.abort()
        finally:
            client.close()

    threads = [threading.Thread(target=work, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return replies


def status_counts(replies: list[Reply]) -> dict[int, int]:
    return dict(sorted(Counter(r.status for r in replies).items()))


_ITEM = re.compile(r'\s*"(?P<name>(?:[^"\\]|\\.)*)"(?P<params>(?:;[a-z0-9_*-]+=[^;,]*)*)\s*')


def parse_structured_list(value: str) -> list[tuple[str, dict[str, str]]]:
    """Parse an RFC 8941 list of string items with parameters, as used by the IETF RateLimit
    headers: `"name";r=0;t=36, "other";q=5` -> [("name", {"r": "0", "t": "36"}), ...].
    Raises ValueError on anything else."""
    items = []
    for member in value.split(","):
        m = _ITEM.fullmatch(member)
        if not m:
            raise ValueError(f"not a structured-field string item with parameters: {member!r}")
        params = {}
        for p in filter(None, m.group("params").split(";")):
            k, _, v = p.partition("=")
            params[k] = v
        items.append((m.group("name"), params))
    return items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="tollgate HTTP helpers")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("burst", help="send N requests concurrently and count statuses")
    b.add_argument("--port", type=int, required=True)
    b.add_argument("-n", type=int, required=True)
    b.add_argument("-H", "--header", action="append", default=[], help="NAME:VALUE")
    b.add_argument("--path", default="/api/tasks")
    b.add_argument("--concurrency", type=int, default=16)
    b.add_argument("--show-status", type=int, help="print the first response with this status")
    b.add_argument("--expect", help="e.g. 200=100,429=10")
    args = parser.parse_args(argv)

    headers = dict(h.split(":", 1) for h in args.header)
    replies = burst(args.port, args.n, headers, args.path, args.concurrency)
    counts = status_counts(replies)
    print("   " + ", ".join(f"{count} x {status}" for status, count in counts.items()))
    if args.show_status is not None:
        shown = next((r for r in replies if r.status == args.show_status), None)
        if shown is not None:
            print(f"   first {args.show_status}:")
            for line in shown.head().splitlines():
                print(f"     {line}")
            print(f"     {shown.text()}")
    if args.expect:
        want = {int(k): int(v) for k, v in (p.split("=") for p in args.expect.split(","))}
        if counts != want:
            print(f"   UNEXPECTED: wanted {want}, got {counts}", file=sys.stderr)
            return 1
        print("   as expected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
