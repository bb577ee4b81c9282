"""A bad policy never runs: Envoy refuses it and says why, naming the offending field."""

from __future__ import annotations

import json

import pytest

from conftest import EnvoyExited

GOOD_TIER = {
    "name": "authenticated",
    "match": {"headers": [{"name": "x-user-id", "present": True}]},
    "identity": {"header": "x-user-id"},
    "limits": [{"requests": 100, "per": "minute"}],
}


def with_tier(**changes) -> str:
    tier = json.loads(json.dumps(GOOD_TIER))
    tier.update(changes)
    return json.dumps({"tiers": [tier]})


CASES = {
    # name: (policy text as sent, what the error line must say: "<path>: <reason>")
    "invalid_json": ('{"tiers": [', "invalid JSON"),
    "unknown_field": (json.dumps({"tiers": [GOOD_TIER], "colour": "blue"}), "colour: unknown field"),
    "zero_limit": (
        with_tier(limits=[{"requests": 0, "per": "minute"}]),
        "tiers[0].limits[0].requests: must be greater than 0",
    ),
    "invalid_regex": (
        with_tier(match={"headers": [{"name": "x-api-key", "regex": "^(premium"}]}),
        "tiers[0].match.headers[0].regex: invalid regular expression",
    ),
    "empty_tier_list": ('{"tiers": []}', "tiers: must not be empty"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_envoy_refuses_a_bad_policy_and_names_the_problem(case, envoy_factory):
    policy, named = CASES[case]
    with pytest.raises(EnvoyExited) as exited:
        envoy_factory(policy, concurrency=1, timeout=20)
    assert exited.value.code != 0
    errors = [line for line in exited.value.log.splitlines() if "tollgate: invalid configuration" in line]
    assert errors, f"no 'tollgate: invalid configuration' line in:\n{exited.value.log[-3000:]}"
    assert any("[error]" in line for line in errors), errors
    assert any(named in line for line in errors), f"{named!r} not named in {errors}"
