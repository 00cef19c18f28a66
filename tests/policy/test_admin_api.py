"""The /v1 admin API against SQLite and PostgreSQL stores: auth, CRUD, validation, evaluate, audit."""

from __future__ import annotations

from typing import Any

import pytest

from tests.policy.conftest import ADMIN_TOKEN, POSTGRES_URL, PolicyFactory, RunningPolicy

AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}
BASE = {
    "lists": [{"name": "vip", "kind": "string", "entries": ["ann"]}],
    "rules": [{"id": "file-deny", "action": "deny", "match": {"request.path": {"prefix": "/admin"}}}],
}


@pytest.fixture(params=["sqlite", "postgresql"])
async def running(request: pytest.FixtureRequest, policy_factory: PolicyFactory) -> RunningPolicy:
    if request.param == "postgresql":
        schema = request.getfixturevalue("pg_schema")
        return await policy_factory(policy=BASE, database_url=POSTGRES_URL, database_schema=schema)
    return await policy_factory(policy=BASE)


async def test_writes_need_the_bearer_token(running: RunningPolicy) -> None:
    body = {"action": "deny"}
    missing = await running.admin.put("/v1/rules/r1", json=body)
    assert missing.status_code == 401
    assert "Bearer" in missing.json()["detail"]
    wrong = await running.admin.put("/v1/rules/r1", json=body, headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 403
    assert (await running.admin.delete("/v1/rules/file-deny")).status_code == 401
    assert (await running.admin.get("/v1/rules")).status_code == 200


async def test_crud_bumps_the_revision_and_writes_the_audit_trail(running: RunningPolicy) -> None:
    admin = running.admin
    team = await admin.put("/v1/lists/team", json={"kind": "string", "entries": ["ann"]}, headers=AUTH)
    assert team.status_code == 200
    start = (await admin.get("/v1/policy/revision")).json()
    created = await admin.put(
        "/v1/rules/vip-only",
        json={"action": "allow", "match": {"request.headers.x-user": {"in_list": "team"}}},
        headers={**AUTH, "x-remixer-actor": "alice"},
    )
    assert created.status_code == 200, created.text
    assert created.json()["revision"] == start["revision"] + 1
    assert (await admin.get("/v1/rules/vip-only")).json()["action"] == "allow"
    assert [r["id"] for r in (await admin.get("/v1/rules")).json()] == ["file-deny", "vip-only"]

    listed = await admin.put("/v1/lists/team", json={"kind": "string", "entries": ["bob"]}, headers=AUTH)
    assert listed.status_code == 200
    verdict = await admin.post("/v1/evaluate", json={"path": "/x", "headers": {"X-User": "bob"}})
    assert verdict.json()["rule"] == "vip-only"

    limit = await admin.put("/v1/limits/per-user", json={"requests": 5, "unit": "minute"}, headers=AUTH)
    assert limit.status_code == 200
    assert (await admin.delete("/v1/rules/vip-only", headers=AUTH)).status_code == 200
    assert (await admin.get("/v1/rules/vip-only")).status_code == 404
    assert (await admin.delete("/v1/rules/vip-only", headers=AUTH)).status_code == 404

    revision = (await admin.get("/v1/policy/revision")).json()
    assert revision["revision"] == revision["store_revision"] == start["revision"] + 4
    audit = (await admin.get("/v1/policy/audit?limit=10")).json()
    assert [(a["action"], a["kind"], a["name"]) for a in audit[:4]] == [
        ("delete", "rule", "vip-only"),
        ("put", "limit", "per-user"),
        ("put", "list", "team"),
        ("put", "rule", "vip-only"),
    ]
    assert audit[3]["actor"].startswith("api:alice@")
    assert audit[3]["body"]["match"] == {"request.headers.x-user": {"in_list": "team"}}


@pytest.mark.parametrize(
    ("path", "body", "detail"),
    [
        (
            "/v1/rules/bad",
            {"action": "deny", "match": {"request.path": {"regex": "(x"}}},
            "invalid RE2 regex",
        ),
        ("/v1/rules/bad", {"action": "explode"}, "field action"),
        ("/v1/rules/bad", {"id": "other", "action": "deny"}, "does not match the URL"),
        (
            "/v1/rules/bad",
            {"action": "deny", "match": {"source.address": {"in_list": "ghost"}}},
            "list 'ghost'",
        ),
        ("/v1/limits/bad", {"requests": -1, "unit": "minute"}, "field requests"),
    ],
)
async def test_invalid_writes_are_refused_with_422_and_change_nothing(
    running: RunningPolicy, path: str, body: dict[str, Any], detail: str
) -> None:
    before = (await running.admin.get("/v1/policy/revision")).json()["revision"]
    response = await running.admin.put(path, json=body, headers=AUTH)
    assert response.status_code == 422
    assert detail in str(response.json()["detail"])
    assert (await running.admin.get("/v1/policy/revision")).json()["store_revision"] == before


async def test_items_from_policy_files_are_changed_in_the_file_not_the_api(running: RunningPolicy) -> None:
    for response in (
        await running.admin.put("/v1/rules/file-deny", json={"action": "allow", "match": {}}, headers=AUTH),
        await running.admin.delete("/v1/rules/file-deny", headers=AUTH),
    ):
        assert response.status_code == 409
        assert "is defined by" in response.json()["detail"]
    assert (await running.admin.get("/v1/rules/file-deny")).json()["action"] == "deny"


async def test_deleting_a_list_a_rule_uses_is_refused(running: RunningPolicy) -> None:
    rule = {"action": "deny", "match": {"request.headers.x-user": {"in_list": "vip"}}}
    assert (await running.admin.put("/v1/rules/uses-vip", json=rule, headers=AUTH)).status_code == 200
    assert (
        await running.admin.put("/v1/lists/api-list", json={"entries": ["x"]}, headers=AUTH)
    ).status_code == 200
    rule = {"action": "deny", "match": {"request.headers.x-user": {"in_list": "api-list"}}}
    assert (await running.admin.put("/v1/rules/uses-api-list", json=rule, headers=AUTH)).status_code == 200
    refused = await running.admin.delete("/v1/lists/api-list", headers=AUTH)
    assert refused.status_code == 422
    assert "list 'api-list' does not exist" in refused.json()["detail"]


async def test_evaluate_explains_without_enforcing(running: RunningPolicy) -> None:
    limit = {"requests": 1, "unit": "hour"}
    assert (await running.admin.put("/v1/limits/one", json=limit, headers=AUTH)).status_code == 200
    rule = {"action": "rate_limit", "limit": "one", "match": {"request.path": {"prefix": "/api"}}}
    assert (await running.admin.put("/v1/rules/lim", json=rule, headers=AUTH)).status_code == 200
    for _ in range(3):
        result = (await running.admin.post("/v1/evaluate", json={"method": "GET", "path": "/api/x"})).json()
        assert result["decision"] == "allow"
        assert result["quotas_consulted"] == ["one"]
    # file-deny requires the /admin prefix: the path index never even considers it for /api/x.
    assert [(s["stage"], s["rule"], s["matched"]) for s in result["trace"]] == [
        ("rate_limit", "lim", True),
        ("default", "default", True),
    ]
    denied = (await running.admin.post("/v1/evaluate", json={"path": "/admin/x"})).json()
    assert (denied["decision"], denied["status"], denied["rule"]) == ("deny", 403, "file-deny")
    bad = await running.admin.post("/v1/evaluate", json={"path": 5, "nonsense": True})
    assert bad.status_code == 422


async def test_openapi_lists_the_policy_endpoints(running: RunningPolicy) -> None:
    paths = (await running.admin.get("/openapi.json")).json()["paths"]
    for expected in (
        "/v1/rules/{name}",
        "/v1/lists/{name}",
        "/v1/limits/{name}",
        "/v1/evaluate",
        "/v1/policy/audit",
    ):
        assert expected in paths
