"""Spend budgets in money through real Envoy: examples/team-spend-policy.json in front of the LLM
mock (100 prompt + 200 completion tokens a call). A trial key has 0.01 USD a day; gpt-4o costs
2.50 per million input and 10.00 per million output tokens, so each call costs exactly
100 × 2.5 + 200 × 10 = 2,250 micro-units (0.002250 USD) and reserves its estimate priced the same
way. Four calls pass, the fifth is refused with a 429 whose headers and body (as the official
`openai` SDK's RateLimitError shows it) give the amounts in USD; a model the table does not
price is refused with a 400 naming it; the counters and the access-log record carry the spend.
"""

from __future__ import annotations

import http.client
import json
import re

import openai
import pytest

from conftest import ROOT, Envoy, start_envoy_with_access_log, unique, wait_until

POLICY = json.loads((ROOT / "examples" / "team-spend-policy.json").read_text())
CALL = 100 * 2_500_000 // 1_000_000 + 200 * 10  # micro-units a mock call of gpt-4o costs: 2,250
BUDGET = 10_000  # the trial tier's 0.01 USD a day, in micro-units


def usd(micros: int) -> str:
    return f"{micros // 1_000_000}.{micros % 1_000_000:06d} USD"


@pytest.fixture(scope="module")
def envoy_and_log(mock, tmp_path_factory):
    """Envoy (2 workers) with the example policy and an access log printing tollgate's record."""
    tmp = tmp_path_factory.mktemp("spend-envoy")
    log = tmp / "access.log"
    envoy = start_envoy_with_access_log(POLICY, {"v1": mock, "v2": mock}, tmp, log)
    yield envoy, log
    envoy.process.stop()


def post(envoy: Envoy, doc: dict, headers: dict[str, str]):
    conn = http.client.HTTPConnection("127.0.0.1", envoy.port, timeout=10)
    try:
        conn.request("POST", "/api/v1/chat/completions", json.dumps(doc, separators=(",", ":")),
                     {"content-type": "application/json", **headers})
        reply = conn.getresponse()
        body = reply.read()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, body
    finally:
        conn.close()


def reservation(doc: dict) -> int:
    """What tollgate reserves for a gpt-4o call in micro-units: the prompt estimated as the body's
    bytes / 4 at 2.50 a million, max_tokens at 10.00 a million, rounded up once."""
    size = len(json.dumps(doc, separators=(",", ":")))
    prompt = -(-size // 4)
    return -(-(prompt * 2_500_000 + doc["max_tokens"] * 10_000_000) // 1_000_000)


def test_a_spend_budget_refuses_with_the_amounts_in_its_currency(envoy_and_log):
    envoy, log = envoy_and_log
    key = unique("trial-key")
    headers = {"x-api-key": key}
    doc = {"model": "gpt-4o", "max_tokens": 300, "messages": [{"role": "user", "content": "hi"}]}
    held = reservation(doc)
    seen = []
    for i in range(4):
        status, head, _ = post(envoy, doc, headers)
        assert status == 200, (i, head)
        seen.append(head)
    # Without hold_headers an answer shows the budget after its own reservation; the real
    # charge of the calls before it shows too (a day's 0.01 USD refills 0.1 micro-units a
    # second: within the test's seconds, at most a few).
    assert seen[0]["x-ratelimit-limit-spend"] == "0.010000 USD"
    for i, head in enumerate(seen):
        left = re.fullmatch(r"0\.(\d{6}) USD", head["x-ratelimit-remaining-spend"])
        assert left, head
        want = BUDGET - i * CALL - held
        assert want <= int(left[1]) <= want + 5, (i, head["x-ratelimit-remaining-spend"], want)
        assert re.fullmatch(r"\d+h\d+m[\d.]+s|[\d.]+m?s|\d+m[\d.]+s", head["x-ratelimit-reset-spend"])
        assert "x-ratelimit-limit-tokens" not in head, "no token budget: no token headers"

    # 4 × 2,250 charged: 1,000 left, less than the next call's reservation.
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{envoy.port}/api/v1", api_key="test",
                           max_retries=0, timeout=30, default_headers=headers)
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(model="gpt-4o", max_tokens=300,
                                       messages=[{"role": "user", "content": "hi"}])
    error = raised.value
    assert error.status_code == 429
    message = error.body["message"]
    amounts = re.search(r": 0\.(\d{6}) USD left of 0\.010000 USD, full again in (\S+)\. "
                        r"Please try again in (\S+)\.$", message)
    assert amounts, message
    assert BUDGET - 4 * CALL <= int(amounts[1]) <= BUDGET - 4 * CALL + 5, message
    assert "Spend budget reached in tier trial (policy trial-spend-day)" in message
    assert error.body["code"] == "rate_limit_exceeded"
    response_headers = error.response.headers
    assert response_headers["x-ratelimit-limit-spend"] == "0.010000 USD"
    assert response_headers["x-ratelimit-remaining-spend"] == f"0.{amounts[1]} USD"
    # The wait: until (its reservation - what is left) refills at 0.01 USD a day. The SDK's body
    # differs from ours in size, so its prompt estimate by a few tokens at 2.50 a million.
    wait = int(response_headers["retry-after"])
    left = BUDGET - 4 * CALL
    assert (3_000 - left) * 8.64 - 20 <= wait <= (3_200 - left) * 8.64 + 20, wait

    # The counters: micro-units charged per tier and per model (flushed once a second).
    def charged() -> str:
        stats = envoy.admin("/stats")
        return (re.search(r"^wasmcustom\.tollgate\.trial\.spend_charged: (\d+)$", stats, re.M),
                re.search(r"^wasmcustom\.tollgate\.trial\.model\.gpt-4o\.spend_charged: (\d+)$",
                          stats, re.M))

    def flushed():
        """Both counters, once each worker has flushed what it charged (each flushes once a
        second, so one may show before the other)."""
        tier, model = charged()
        done = tier and model and int(tier[1]) >= 4 * CALL and int(model[1]) >= 4 * CALL
        return done and (tier, model)

    tier, model = wait_until(flushed, 10, lambda: f"spend counters: {charged()}")
    assert int(tier[1]) == 4 * CALL and int(model[1]) == 4 * CALL, (tier[0], model[0])

    # The access log: each call's record carries its charge in money and the currency.
    def records() -> list[str]:
        return [line for line in log.read_text().splitlines() if "tier=trial" in line] \
            if log.exists() else []

    # Envoy writes the access log out every 10 s (its default file flush interval).
    lines = wait_until(lambda: len(records()) >= 5 and records(), 15,
                       lambda: f"five access-log records: {log.read_text()[-1500:] if log.exists() else None}")
    charged_lines = [r for r in lines if " 200 [" in r]
    assert len(charged_lines) == 4, lines
    for line in charged_lines:
        assert f" charged=300 spend={usd(CALL)[:-4]} currency=USD]" in line, line
    assert key not in "".join(lines), "the key itself is never written"
    assert any(" 429 [" in r and "decision=denied" in r for r in lines), lines


def test_a_model_without_a_price_is_refused_with_a_400_naming_it(envoy_and_log):
    envoy, _ = envoy_and_log
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{envoy.port}/api/v1", api_key="test",
                           max_retries=0, timeout=30,
                           default_headers={"x-user-id": unique("team-user")})
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="gpt-9-preview", max_tokens=16,
                                       messages=[{"role": "user", "content": "hi"}])
    assert raised.value.status_code == 400
    assert raised.value.body["code"] == "model_not_priced"
    assert "Model gpt-9-preview has no price" in raised.value.body["message"]
    # A priced model passes for the same user, its team budgets in money and tokens both shown.
    reply = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    assert reply.http_request is not None and reply.status_code == 200
    assert reply.headers["x-ratelimit-limit-spend"] == "50.000000 USD"
    assert reply.headers["x-ratelimit-limit-tokens"] == "2000000"
