"""200,000 distinct users through Envoy leave its memory bounded, and a real user who keeps
sending during the flood is still limited exactly.

tollgate keeps its buckets in a fixed table in proxy-wasm shared data (max_keys entries, created at
configure time), so memory must not grow with the number of distinct ids. The bound below,
MAX_GROWTH_MIB, is on Envoy's RSS growth between a warm-up flood of WARMUP ids and the end of a
flood of FLOOD ids. It separates the two behaviours by a wide margin (measured on the 2-core
machine, Envoy 1.40, concurrency 4): tollgate's RSS grew by 0.2-0.4 MiB, while a test double that
keeps one 16-byte shared-data key per user (what tollgate must not do) grew by 26.7 MiB.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from client import Client
from conftest import wait_until

FLOOD = 200_000
WARMUP = 20_000
MAX_GROWTH_MIB = 16
STEADY_LIMIT = 50
STEADY_SENT = 60

POLICY = {"tiers": [
    {
        # The real user: 50 a day, so nothing refills during the test.
        "name": "steady",
        "match": {"headers": [{"name": "x-user-id", "present": True}]},
        "identity": {"header": "x-user-id"},
        "limits": [{"requests": STEADY_LIMIT, "per": "day"}],
    },
    {
        # The flood: one request per id; a bucket is full (idle, reclaimable) 10 ms later.
        "name": "flood",
        "match": {"headers": [{"name": "x-flood-id", "present": True}]},
        "identity": {"header": "x-flood-id"},
        "limits": [{"requests": 100, "per": "second"}],
    },
    {"name": "anonymous", "identity": "shared", "limits": [{"requests": 10, "per": "minute"}]},
]}

LUA = Path(__file__).with_name("flood.lua")


def flood(port: int, total: int, prefix: str, tmp: Path, threads: int = 2, connections: int = 32) -> dict:
    """Send `total` requests with distinct x-flood-id values through wrk; return its summary."""
    wrk = shutil.which("wrk")
    if wrk is None:
        pytest.fail("wrk not found: run scripts/setup", pytrace=False)
    markers = tmp / f"markers-{prefix}"
    markers.mkdir()
    per_thread = total // threads
    proc = subprocess.Popen(
        [wrk, "-t", str(threads), "-c", str(connections), "-d", "240s", "--timeout", "10s",
         "-s", str(LUA), f"http://127.0.0.1:{port}", "--", str(per_thread), prefix, str(markers)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 240
    while len(list(markers.iterdir())) < threads and proc.poll() is None:
        assert time.monotonic() < deadline, "flood did not finish"
        time.sleep(0.2)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # wrk prints its summary and runs done() on SIGINT
    out, _ = proc.communicate(timeout=30)
    line = next((l for l in out.splitlines() if l.startswith("FLOOD ")), None)
    assert line, f"no summary from wrk:\n{out}"
    summary = json.loads(line.removeprefix("FLOOD "))
    summary["output"] = out
    return summary


def counters(envoy, prefixes: tuple[str, ...]) -> dict[str, int]:
    """tollgate's counters in /stats/prometheus whose names start with one of `prefixes`."""
    out: dict[str, int] = {}
    for line in envoy.admin("/stats/prometheus").splitlines():
        if line.startswith(prefixes):
            name = line.split("{")[0].split(" ")[0]
            out[name] = out.get(name, 0) + int(float(line.rsplit(" ", 1)[1]))
    return out


def no_open_connections(envoy) -> bool:
    """True once Envoy has closed every downstream connection (the flood's and the steady user's):
    memory is measured then, not while connection buffers are still held."""
    # http.admin.* is this very request to the admin listener.
    gauges = {
        name: int(value)
        for name, _, value in (line.partition(": ") for line in envoy.admin("/stats?filter=downstream_cx_active$").splitlines())
        if name.startswith("http.") and not name.startswith("http.admin.")
    }
    assert gauges, "Envoy reports no http.*.downstream_cx_active gauge"
    return sum(gauges.values()) == 0


def test_200k_distinct_users_leave_memory_bounded(envoy_factory, tmp_path):
    envoy = envoy_factory(POLICY)
    steady = {"x-user-id": "steady-user"}

    warm = flood(envoy.port, WARMUP, "warm", tmp_path)
    assert warm["ids"] >= WARMUP, warm
    wait_until(lambda: no_open_connections(envoy), 30, "Envoy to close the warm-up flood's connections")
    rss_before = envoy.rss_kib()
    heap_before = int(envoy.memory().get("allocated", 0))

    # A real user keeps sending during the flood, one request every 50 ms.
    statuses: list[int] = []
    stop = threading.Event()

    def keep_sending() -> None:
        c = Client(envoy.port)
        try:
            while len(statuses) < STEADY_SENT and not stop.is_set():
                statuses.append(c.request(headers=steady).status)
                time.sleep(0.05)
        finally:
            c.close()

    sender = threading.Thread(target=keep_sending, daemon=True)
    started = time.monotonic()
    sender.start()
    result = flood(envoy.port, FLOOD, "flood", tmp_path)
    elapsed = time.monotonic() - started
    stop.set()
    sender.join(timeout=30)
    assert not sender.is_alive(), "the steady user's sender did not stop"
    wait_until(lambda: no_open_connections(envoy), 30, "Envoy to close the flood's connections")
    rss_after = envoy.rss_kib()
    heap_after = int(envoy.memory().get("allocated", 0))

    growth_mib = (rss_after - rss_before) / 1024
    # The filter flushes its counters from each worker once a second: wait until they account for
    # every request sent so far (wrk counts only the responses it read, hence >=).
    flood_sent, steady_sent = warm["requests"] + result["requests"], len(statuses)

    def flushed() -> dict[str, int] | None:
        seen = counters(envoy, ("tollgate_flood_", "tollgate_steady_"))
        flood = seen.get("tollgate_flood_allowed", 0) + seen.get("tollgate_flood_denied", 0)
        steady = seen.get("tollgate_steady_allowed", 0) + seen.get("tollgate_steady_denied", 0)
        return seen if flood >= flood_sent and steady == steady_sent else None

    counters_seen = wait_until(flushed, 15, f"counters of {flood_sent} flood and {steady_sent} steady requests")
    print(
        f"\nflood: {result['ids']} distinct ids, {result['requests']} responses {result['statuses']} "
        f"in {elapsed:.1f}s ({result['requests'] / elapsed:.0f}/s); "
        f"Envoy RSS {rss_before / 1024:.1f} -> {rss_after / 1024:.1f} MiB ({growth_mib:+.1f} MiB), "
        f"heap allocated {heap_before / 2**20:.1f} -> {heap_after / 2**20:.1f} MiB; "
        f"steady user during the flood: {len(statuses)} sent; counters {counters_seen}"
    )
    assert result["ids"] >= FLOOD, result
    assert result["statuses"].get("200", 0) >= FLOOD, result["statuses"]
    assert growth_mib < MAX_GROWTH_MIB, f"RSS grew by {growth_mib:.1f} MiB"

    # The steady user: whatever it sent during the flood plus the rest now, exactly 50 pass.
    c = Client(envoy.port)
    while len(statuses) < STEADY_SENT:
        statuses.append(c.request(headers=steady).status)
    c.close()
    assert statuses.count(200) == STEADY_LIMIT, statuses
    assert statuses == [200] * STEADY_LIMIT + [429] * (STEADY_SENT - STEADY_LIMIT), statuses


def test_a_saturated_table_is_stricter_never_looser(envoy_factory, tmp_path):
    """With a tiny table full of active buckets, newcomers share ways: a user may then get less
    than its limit, never more, and the filter counts the saturation."""
    policy = json.loads(json.dumps(POLICY))
    policy["max_keys"] = 64
    # Flood buckets stay active (not full again) for the whole test: 1000 a day.
    policy["tiers"][1]["limits"] = [{"requests": 1000, "per": "day"}]
    envoy = envoy_factory(policy)
    steady = {"x-user-id": "steady-user"}
    c = Client(envoy.port)
    statuses = [c.request(headers=steady).status]  # the steady user holds a way first
    result = flood(envoy.port, WARMUP, "saturate", tmp_path)
    assert result["ids"] >= WARMUP, result
    statuses += [c.request(headers=steady).status for _ in range(STEADY_SENT - 1)]
    c.close()

    def saturated_count() -> int:
        return sum(n for name, n in counters(envoy, ("tollgate_",)).items() if name.endswith("_table_saturated"))

    # The filter flushes its counters once a second: wait for the saturation to show.
    saturated = wait_until(saturated_count, 15, "a flushed tollgate_*_table_saturated count above 0")
    print(f"\nsaturated table: steady user {statuses.count(200)} of {STEADY_LIMIT} allowed, "
          f"{saturated} saturated lookups, flood {result['statuses']}")
    assert statuses.count(200) <= STEADY_LIMIT, statuses
    assert statuses[0] == 200
    assert saturated > 0
