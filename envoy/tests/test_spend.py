"""Spend budgets in money through real Envoy: examples/team-spend-policy.json in front of the LLM
mock (100 prompt + 200 completion tokens a call). A trial key has 0.01 USD a day; gpt-4o costs
2.50 per million input and 10.00 per million output tokens, so each call costs exactly
100 × 2.5 + 200 × 10 = 2,250 micro-units (0.002250 USD) and reserves its estimate priced the same
way. Four calls pass, the fifth is refused with a 429 whose headers and body (as the official
`openai` SDK's RateLimitError shows it) give the amounts in USD; a model the table does not
price is refused with a 400 naming it; the counters and the access-log record carry the spend.

The members tier is the example's team-and-user policy: each user 20 USD and each team
(`x-team-id`) 50 USD per calendar month, each user 12 USD a UTC day on Claude Sonnet 4. The mock
reports the usage a test asks for (`x-mock-prompt-tokens`), so a gpt-4o call costs exactly
5.000000 USD and a claude-sonnet-4 call 3.000000 USD: a user is refused by their own month while
a teammate still has room, the team's month spent by three teammates together refuses them all
while another team goes on, each 429 naming the budget and its amounts and pointing to the
period's end.
"""

from __future__ import annotations

import datetime
import http.client
import json
import re
import time

import openai
import pytest

from conftest import ROOT, Envoy, start_envoy_with_access_log, unique, wait_until

POLICY = json.loads((ROOT / "examples" / "team-spend-policy.json").read_text())
CALL = 100 * 2_500_000 // 1_000_000 + 200 * 10  # micro-units a mock call of gpt-4o costs: 2,250
BUDGET = 10_000  # the trial tier's 0.01 USD a day, in micro-units
# Usage the mock reports (its 200 completion tokens besides): 1,999,200 × 2.50 + 200 × 10.00 per
# million = 5.000000 USD on gpt-4o; 999,000 × 3.00 + 200 × 15.00 = 3.000000 USD on Claude Sonnet 4.
FIVE_USD_GPT_4O = {"x-mock-prompt-tokens": "1999200"}
THREE_USD_CLAUDE = {"x-mock-prompt-tokens": "999000"}
CLAUDE = "claude-sonnet-4-20250514"


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


def go_seconds(text: str) -> float:
    """A Go duration as tollgate prints it (`719h59m5.2s`, `350ms`) in seconds."""
    parts = re.findall(r"([\d.]+)(h|ms|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, text
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * scale[u] for n, u in parts)


def until(period: str) -> float:
    """Seconds from now to the end of the current UTC day or calendar month."""
    now = datetime.datetime.now(datetime.timezone.utc)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        end = day + datetime.timedelta(days=1)
    else:
        first = day.replace(day=1)
        end = first.replace(year=first.year + first.month // 12, month=first.month % 12 + 1)
    return (end - now).total_seconds()


def clear_of_midnight(margin: float = 90) -> None:
    """Waits out a UTC midnight less than `margin` seconds away: a test of a day or month quota
    must not see its period end half-way."""
    left = 86_400 - time.time() % 86_400
    if left < margin:
        time.sleep(left + 1)


def member_call(envoy: Envoy, user: str, team: str | None, model: str = "gpt-4o",
                usage: dict[str, str] | None = None):
    """One chat completion of the members tier as `user` of `team` (none: no `x-team-id`)."""
    headers = {"x-user-id": user, **(usage if usage is not None else FIVE_USD_GPT_4O)}
    if team is not None:
        headers["x-team-id"] = team
    doc = {"model": model, "max_tokens": 300, "messages": [{"role": "user", "content": "hi"}]}
    return post(envoy, doc, headers)


def assert_spend_refusal(reply, policy: str, of: str, period: str) -> None:
    """`reply` is a 429 of the members tier's spend budget `policy` (`of` USD), spent to nothing,
    whose body and headers give the amounts and point to the end of the `period`."""
    status, head, body = reply
    assert status == 429, (status, head, body)
    message = json.loads(body)["error"]["message"]
    amounts = re.fullmatch(
        rf"Spend budget reached in tier members \(policy {policy}\): 0\.000000 USD left of "
        rf"{re.escape(of)} USD, full again in (\S+)\. Please try again in (\S+)\.", message)
    assert amounts, message
    assert head["x-ratelimit-limit-spend"] == f"{of} USD", head
    assert head["x-ratelimit-remaining-spend"] == "0.000000 USD", head
    # A calendar quota is whole again at the period's end, and every field says so.
    end = until(period)
    for text in (amounts[1], amounts[2], head["x-ratelimit-reset-spend"]):
        assert end - 5 <= go_seconds(text) <= end + 1, (text, end, message)
    assert end - 5 <= int(head["retry-after"]) <= end + 2, (head["retry-after"], end)
    assert head["x-should-retry"] == "false", head  # longer than max_client_wait_seconds


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
                           default_headers={"x-user-id": unique("team-user"),
                                            "x-team-id": unique("team")})
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="gpt-9-preview", max_tokens=16,
                                       messages=[{"role": "user", "content": "hi"}])
    assert raised.value.status_code == 400
    assert raised.value.body["code"] == "model_not_priced"
    assert "Model gpt-9-preview has no price" in raised.value.body["message"]
    # A priced model passes for the same user; the headers show the budget with least left, the
    # user's month (20 USD) rather than the team's (50 USD).
    reply = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    assert reply.http_request is not None and reply.status_code == 200
    assert reply.headers["x-ratelimit-limit-spend"] == "20.000000 USD"
    assert "x-ratelimit-limit-tokens" not in reply.headers, "no token budget in the tier"


def test_a_user_runs_out_alone_then_the_team_runs_out_for_everyone_in_it(envoy_and_log):
    envoy, _ = envoy_and_log
    clear_of_midnight()
    red, blue = unique("red"), unique("blue")
    alice, bob, dave, carol = (unique(n) for n in ("alice", "bob", "dave", "carol"))

    # Alice spends her own 20 USD of the month in four 5 USD calls; the fifth is refused by her
    # own budget, with the amounts and the month's end.
    for i in range(4):
        status, head, _ = member_call(envoy, alice, red)
        assert status == 200, (i, head)
    # Her budget has least left (a reservation of about 0.003 USD held beside 15 USD charged).
    assert head["x-ratelimit-limit-spend"] == "20.000000 USD", head
    assert re.fullmatch(r"4\.99\d{4} USD", head["x-ratelimit-remaining-spend"]), head
    assert_spend_refusal(member_call(envoy, alice, red), "user-month", "20.000000", "month")

    # Her teammate Bob still has room: his own month and the team's (30 USD of 50 left).
    for i in range(3):
        status, head, _ = member_call(envoy, bob, red)
        assert status == 200, (i, head)
    # Dave, a third teammate, spends the team's last 15 USD; the headers show the team's budget
    # once it is the one with least left.
    for i in range(3):
        status, head, _ = member_call(envoy, dave, red)
        assert status == 200, (i, head)
    assert head["x-ratelimit-limit-spend"] == "50.000000 USD", head
    assert re.fullmatch(r"4\.99\d{4} USD", head["x-ratelimit-remaining-spend"]), head

    # The team's 50 USD are spent: Bob (5 USD of his own left) and Dave (5 USD) are refused
    # together, by the team's budget.
    assert_spend_refusal(member_call(envoy, bob, red), "team-month", "50.000000", "month")
    assert_spend_refusal(member_call(envoy, dave, red), "team-month", "50.000000", "month")
    # Another team is not affected, nor is a user of it who shares nothing with team red.
    status, head, _ = member_call(envoy, carol, blue)
    assert status == 200, head
    assert head["x-ratelimit-limit-spend"] == "20.000000 USD", head
    # Alice in another team is still Alice: her own month is spent whatever team she names.
    assert_spend_refusal(member_call(envoy, alice, blue), "user-month", "20.000000", "month")


def test_a_member_without_a_team_is_refused_before_anything_is_counted(envoy_and_log):
    envoy, _ = envoy_and_log
    user = unique("teamless")
    status, _, body = member_call(envoy, user, None)
    assert status == 400, body
    assert json.loads(body)["error"] == "missing_scope", body
    assert "x-team-id" in json.loads(body)["message"], body
    # Nothing was charged: the user's whole month is there with a team.
    status, head, _ = member_call(envoy, user, unique("team"), model="gpt-4o-mini", usage={})
    assert status == 200, head
    assert re.fullmatch(r"19\.99\d{4} USD", head["x-ratelimit-remaining-spend"]), head


def test_claude_sonnet_has_a_daily_cap_beside_the_month(envoy_and_log):
    envoy, _ = envoy_and_log
    clear_of_midnight()
    user, team = unique("erin"), unique("green")
    for i in range(4):
        status, head, _ = member_call(envoy, user, team, CLAUDE, THREE_USD_CLAUDE)
        assert status == 200, (i, head)
    # 12 USD of Claude Sonnet 4 today: refused until 00:00 UTC, though 8 USD of her month are left.
    assert_spend_refusal(member_call(envoy, user, team, CLAUDE, THREE_USD_CLAUDE),
                         "user-claude-sonnet-day", "12.000000", "day")
    # Other models still pass, against the month: 8 USD of it left (less this call's reservation).
    status, head, _ = member_call(envoy, user, team)
    assert status == 200, head
    assert head["x-ratelimit-limit-spend"] == "20.000000 USD", head
    assert re.fullmatch(r"7\.99\d{4} USD", head["x-ratelimit-remaining-spend"]), head
