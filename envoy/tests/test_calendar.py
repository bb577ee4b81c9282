"""Calendar quotas in real Envoy 1.40 (`"reset"` instead of `"per"`): a clock-aligned minute that
refuses until the minute's end, says so in its headers and admits a whole quota again once the
minute has turned (the test waits for that boundary once, at most a minute), and month quotas
(a request limit in UTC and in two fixed offsets, a token budget on an LLM route) whose headers
point to 00:00 on the 1st of next month, checked against Python's own calendar.

Envoy and the test read the same system clock; each expected wait is bracketed by the instants
just before and just after the request, so the few milliseconds a request takes cannot make an
assertion flaky.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import time

from client import parse_structured_list
from conftest import unique
from test_llm import MESSAGES, CHAT, post, start_llm_envoy

MINUTE_POLICY = {
    "tiers": [{
        "name": "minute",
        "identity": {"header": "x-user-id"},
        "limits": [{"requests": 3, "reset": "minute"}],
    }]
}

MONTH_POLICY = {
    "tiers": [
        {
            "name": "month-ist",
            "match": {"headers": [{"name": "x-ist-user", "present": True}]},
            "identity": {"header": "x-ist-user"},
            "limits": [{"requests": 1, "reset": "month", "utc_offset": "+05:30"}],
        },
        {
            "name": "month-pst",
            "match": {"headers": [{"name": "x-pst-user", "present": True}]},
            "identity": {"header": "x-pst-user"},
            "limits": [{"requests": 1, "reset": "month", "utc_offset": "-08:00"}],
        },
        {
            "name": "month",
            "identity": {"header": "x-user-id"},
            "limits": [{"requests": 2, "reset": "month"}],
        },
    ]
}


def next_month_start(now: float, offset_minutes: int = 0) -> float:
    """00:00 on the 1st of the month after `now`'s, in UTC shifted by a fixed offset, as a Unix
    time: Python's datetime arithmetic, nothing shared with tollgate's."""
    tz = dt.timezone(dt.timedelta(minutes=offset_minutes))
    local = dt.datetime.fromtimestamp(now, tz)
    year, month = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
    return dt.datetime(year, month, 1, tzinfo=tz).timestamp()


def wait_bounds(before: float, after: float, end_of) -> tuple[int, int]:
    """The whole seconds a header announcing `end_of(t) - t` (rounded up) may show for a request
    sent between `before` and `after`."""
    return math.ceil(end_of(after) - after), math.ceil(end_of(before) - before)


def test_a_minute_quota_refuses_until_the_minute_ends_then_admits_again(envoy_factory):
    envoy = envoy_factory(MINUTE_POLICY, https=False)
    user = {"x-user-id": unique("minute")}
    # Four requests must land in one minute: start just after a boundary if this one is ending.
    if 60 - time.time() % 60 < 5:
        time.sleep(60 - time.time() % 60 + 0.05)
    end = (time.time() // 60 + 1) * 60
    for left in (2, 1, 0):
        reply = envoy.request(headers=user)
        assert reply.status == 200, reply.head()
        assert reply.header("x-ratelimit-remaining") == str(left)
        assert reply.header("ratelimit-policy") == '"minute";q=3;w=60', reply.head()
    before = time.time()
    refused = envoy.request(headers=user)
    after = time.time()
    assert after < end, "the four requests took longer than the minute's rest"
    assert refused.status == 429, refused.head()
    low, high = wait_bounds(before, after, lambda t: end)
    retry = int(refused.header("retry-after"))
    assert low <= retry <= high, (low, high, refused.head())
    assert refused.header("x-ratelimit-reset") == str(retry)
    assert refused.header("ratelimit") == f'"minute";r=0;t={retry}', refused.head()
    body = json.loads(refused.body)
    assert body["retry_after_seconds"] == retry and body["window_seconds"] == 60, refused.text()
    # No refill inside the minute: still refused half a second before its end.
    time.sleep(max(0.0, end - time.time() - 0.5))
    late = envoy.request(headers=user)
    # (Unless this machine stalled past the boundary: then it was the new minute's first.)
    late_in_new_minute = late.status == 200 and time.time() >= end
    if not late_in_new_minute:
        assert late.status == 429 and late.header("retry-after") == "1", late.head()
    # The minute turns: the whole quota is back at once.
    time.sleep(max(0.0, end - time.time() + 0.05))
    fits = 2 if late_in_new_minute else 3
    replies = [envoy.request(headers=user) for _ in range(fits + 1)]
    assert [r.status for r in replies] == [200] * fits + [429], [r.head() for r in replies]
    assert [r.header("x-ratelimit-remaining") for r in replies[:fits]] == \
        [str(n) for n in range(fits - 1, -1, -1)]


def test_month_quotas_point_to_the_first_of_next_month(envoy_factory):
    envoy = envoy_factory(MONTH_POLICY, https=False)
    for header, offset, tier, quota in (
        ("x-user-id", 0, "month", 2),
        ("x-ist-user", 5 * 60 + 30, "month-ist", 1),
        ("x-pst-user", -8 * 60, "month-pst", 1),
    ):
        who = {header: unique(tier)}
        for _ in range(quota):
            admitted = envoy.request(headers=who)
            assert admitted.status == 200, admitted.head()
        before = time.time()
        refused = envoy.request(headers=who)
        after = time.time()
        assert refused.status == 429, (tier, refused.head())
        low, high = wait_bounds(before, after, lambda t: next_month_start(t, offset))
        retry = int(refused.header("retry-after"))
        assert low <= retry <= high, (tier, low, high, refused.head())
        assert refused.header("x-ratelimit-reset") == str(retry)
        policy = dict(parse_structured_list(refused.header("ratelimit-policy")))
        # w= is the longest a month can be: 31 days.
        assert policy[tier] == {"q": str(quota), "w": str(31 * 86_400)}, refused.head()
        current = dict(parse_structured_list(refused.header("ratelimit")))
        assert current[tier] == {"r": "0", "t": str(retry)}, refused.head()


def test_a_monthly_token_quota_resets_on_the_first_in_every_vocabulary(mock, tmp_path):
    policy = {
        "tiers": [{
            "name": "llm",
            "identity": {"header": "x-user-id"},
            "tokens": [{"tokens": 1000, "reset": "month", "utc_offset": "+01:00"}],
        }],
        "llm": {"default_max_tokens": 100},
    }
    envoy = start_llm_envoy(policy, mock, tmp_path)
    try:
        who = {"x-user-id": unique("tokens")}
        data = json.dumps({"model": "m", "max_tokens": 100,
                           "messages": [{"role": "user", "content": "hi"}]}).encode()
        # The mock reports 100 + 200 tokens a call: 300, 600, 900 spent; the fourth's hold of
        # ~120 no longer fits. (A call's charge lands as its stream ends, which may be just after
        # the client has read it: a call may so slip in beside it, never more than one.)
        statuses = []
        while 429 not in statuses and len(statuses) < 6:
            statuses.append(post(envoy, CHAT, data, who).status)
        assert statuses in ([200] * 3 + [429], [200] * 4 + [429]), statuses
        for path in (CHAT, MESSAGES):
            before = time.time()
            refused = post(envoy, path, data, who)
            after = time.time()
            assert refused.status == 429, refused.head()
            low, high = wait_bounds(before, after, lambda t: next_month_start(t, 60))
            retry = int(refused.header("retry-after"))
            assert low <= retry <= high, (low, high, refused.head())
            if path == CHAT:
                # OpenAI's Go duration: hours, minutes, seconds.
                go = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?([\d.]+)s",
                                  refused.header("x-ratelimit-reset-tokens"))
                assert go, refused.head()
                hours, minutes, seconds = go.groups()
                shown = int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds)
                assert low - 1 <= shown <= high, refused.head()
            else:
                end = dt.datetime.fromtimestamp(next_month_start(after, 60), dt.timezone.utc)
                assert refused.header("anthropic-ratelimit-tokens-reset") == \
                    end.strftime("%Y-%m-%dT%H:%M:%SZ"), refused.head()
    finally:
        envoy.process.stop()
