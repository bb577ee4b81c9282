"""Per-request costs in real Envoy: a `GET /api/v2/tasks` (standing in for a bulk endpoint such
as `POST /api/v1/tasks/bulk`; the mock upstream serves GET and HEAD) costing 10 cells of a tier's
limit, across 4 workers, with its 429 waiting until that many cells are back.

20 requests per hour give a cell back every 180 s, so the few seconds a test takes never refill
one: every count below is exact.
"""

from __future__ import annotations

import client
from conftest import unique

BULK = "/api/v2/tasks"
POLICY = {
    "tiers": [{
        "name": "api",
        "identity": {"header": "x-user-id"},
        "limits": [{"requests": 20, "per": "hour"}],
        "costs": [{"match": {"path_prefix": "/api/v2/tasks", "methods": ["GET"]}, "cost": 10}],
    }]
}


def test_a_bulk_call_costs_ten_and_its_429_waits_for_ten_cells(envoy_factory):
    envoy = envoy_factory(POLICY, https=False)
    user = {"x-user-id": unique("bulk")}

    def call(method: str, path: str) -> client.Reply:
        return client.request(envoy.port, path, user, method)

    first = call("GET", BULK)
    assert first.status == 200, first.head()
    assert first.header("x-ratelimit-remaining") == "10"
    cheap = call("HEAD", BULK)  # another method there costs 1
    assert cheap.status == 200 and cheap.header("x-ratelimit-remaining") == "9", cheap.head()
    # 9 cells left, 10 asked: refused, nothing taken, until one cell is back (180 s).
    refused = call("GET", BULK)
    assert refused.status == 429, refused.head()
    assert refused.header("x-ratelimit-remaining") == "9"
    assert 170 <= int(refused.header("retry-after")) <= 180, refused.head()
    # The same call through a spelling that normalises to the bulk path costs the same.
    again = call("GET", "/api//v2/%74asks?dry=1")
    assert again.status == 429, again.head()
    # Nine single calls still fit, on any worker; the tenth does not.
    statuses = [call("GET", "/api/v1/tasks").status for _ in range(10)]
    assert statuses == [200] * 9 + [429]
    # Another user has the whole bucket.
    other = client.request(envoy.port, BULK, {"x-user-id": unique("other")})
    assert other.status == 200 and other.header("x-ratelimit-remaining") == "10"
