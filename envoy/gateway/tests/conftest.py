"""Fixtures shared by the manifest tests: the CRDs, when there are any.

Tests that need the Envoy Gateway / Gateway API / KEDA CRDs take the `crd_set` fixture: without
CRDs in the cache they are skipped, with the reason and the ways to get them; a cached file whose
sha256 is not the pinned one is an error (the test fails), never a skip.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

GATEWAY_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(GATEWAY_DIR))

import crds  # noqa: E402
import validator as v  # noqa: E402


@pytest.fixture(scope="session")
def checker() -> v.TollgateChecker:
    """tollgate-check, built once per test session."""
    return v.TollgateChecker.build(GATEWAY_DIR.parents[1])


@pytest.fixture(scope="session")
def crd_set() -> crds.CrdSet:
    try:
        return crds.locate()
    except crds.CrdsUnavailable as exc:
        pytest.skip(f"needs the CRDs: {exc}")
