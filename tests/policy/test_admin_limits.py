"""The admin API's edges: body limits enforced while reading, the token checked before the body, any
content-type read as JSON, documents that must say what they match, typed OpenAPI and /docs without a CDN,
validated query parameters. Over real HTTP against `remixer serve` where reading matters."""

from __future__ import annotations

import json
import re
import select
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.policy.conftest import ADMIN_TOKEN, PolicyFactory
from tests.realparts.browser import dump_dom
from tests.realparts.remixer import RemixerFactory, RemixerServer

AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}
FIFTY_MB = 50 * 1024 * 1024


def _max_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def _head(port: int, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"PUT {path} HTTP/1.1", f"host: 127.0.0.1:{port}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _status(data: bytes) -> int:
    match = re.match(rb"HTTP/1.1 (\d{3}) ", data)
    assert match, data[:200]
    return int(match.group(1))


def _read_answer(sock: socket.socket, data: bytes = b"") -> bytes:
    """One whole response (head and content-length body) from a blocking socket."""
    while b"\r\n\r\n" not in data or len(data) < _answer_length(data):
        try:
            more = sock.recv(65536)
        except ConnectionResetError:  # the server closed on a body it would not read
            break
        if not more:
            break
        data += more
    return data


def _answer_length(data: bytes) -> int:
    head, _, _ = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    return len(head) + 4 + (int(length.group(1)) if length else 0)


def _answer_before_the_body(port: int, path: str, headers: dict[str, str]) -> tuple[int, bytes, float]:
    """Send only the head of a request announcing 50 MB (or a chunked body): an answer means the body
    was never awaited."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        framing = {} if "transfer-encoding" in headers else {"content-length": str(FIFTY_MB)}
        sock.sendall(_head(port, path, {**headers, **framing}))
        data = _read_answer(sock)
    return _status(data), data, time.monotonic() - started


def _stream_past(port: int, path: str, headers: dict[str, str]) -> tuple[int, int]:
    """Stream a chunked body of up to 50 MB, 64 KiB at a time, looking for an answer after each chunk:
    (status, bytes sent when it came). Paced so that an answer is read before the server's close could
    reset it away."""
    chunk = b"x" * 65536
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(_head(port, path, {**headers, "transfer-encoding": "chunked"}))
        while sent < FIFTY_MB:
            sock.sendall(frame)
            sent += len(chunk)
            if select.select([sock], [], [], 0.05)[0]:
                break
        answer = _read_answer(sock)
        assert answer, f"closed without an answer after {sent} bytes"
        return _status(answer), sent


@pytest.fixture
def server(remixer_factory: RemixerFactory) -> RemixerServer:
    return remixer_factory(
        server={"parts": ["policy", "admin"], "admin_token": ADMIN_TOKEN, "admin_max_body_bytes": 1 << 20},
        policy={"reload_interval": 0.2},
    )


def test_bodies_are_judged_before_they_are_read(server: RemixerServer) -> None:
    port = server.admin_port
    assert server.proc is not None
    rss_before = _max_rss_kib(server.proc.pid)

    # No token: 401 at once, though 50 MB were announced and none sent.
    status, data, took = _answer_before_the_body(port, "/v1/lists/junk", {"content-type": "application/json"})
    assert status == 401
    assert b"Bearer" in data
    assert took < 2
    # A wrong token: 403, just as fast.
    status, _, _ = _answer_before_the_body(port, "/v1/lists/junk", {"authorization": "Bearer nope"})
    assert status == 403
    # With the token, a body announced over server.admin_max_body_bytes: 413 unread.
    status, data, took = _answer_before_the_body(
        port, "/v1/lists/junk", {"authorization": AUTH["authorization"]}
    )
    assert status == 413
    assert b"server.admin_max_body_bytes" in data
    assert took < 2
    # A streamed body (no length announced) is cut off once it passes the limit, before it ends.
    status, sent = _stream_past(port, "/v1/lists/junk", {"authorization": AUTH["authorization"]})
    assert status == 413
    assert sent <= (1 << 20) + 2 * 65536, sent
    status, _, _ = _answer_before_the_body(port, "/v1/lists/junk", {"transfer-encoding": "chunked"})
    assert status == 401
    assert _max_rss_kib(server.proc.pid) - rss_before < 20 * 1024

    # The server goes on as before.
    token = {"authorization": AUTH["authorization"]}
    body = {"kind": "string", "entries": [f"user-{i}" for i in range(1000)]}
    assert httpx.put(server.admin_url + "/v1/lists/fine", json=body, headers=token).status_code == 200


def test_curl_style_bodies_are_read_as_json(server: RemixerServer) -> None:
    """`curl -d` sends application/x-www-form-urlencoded; a client may send no content-type at all."""
    rule = b'{"action": "deny", "match": {"request.path": {"prefix": "/x"}}}'
    for content_type in ("application/x-www-form-urlencoded", None, "text/plain"):
        headers = {**AUTH, **({"content-type": content_type} if content_type else {})}
        answer = httpx.put(server.admin_url + "/v1/rules/curl", content=rule, headers=headers)
        assert answer.status_code == 200, (content_type, answer.text)
        judged = httpx.post(
            server.admin_url + "/v1/evaluate",
            content=b'{"path": "/x/1"}',
            headers={"content-type": content_type} if content_type else {},
        )
        assert judged.status_code == 200, judged.text
        assert judged.json()["rule"] == "curl"
    bad = httpx.put(server.admin_url + "/v1/rules/curl", content=b'{"action": "deny",', headers=AUTH)
    assert bad.status_code == 422
    assert bad.json()["detail"].startswith("the body is not JSON at line 1, column")


async def test_a_rule_must_say_what_it_matches(policy_factory: PolicyFactory) -> None:
    run = await policy_factory()
    refused = await run.admin.put("/v1/rules/everything", json={"action": "deny"}, headers=AUTH)
    assert refused.status_code == 422
    assert refused.json()["detail"] == (
        "field match: Field required (write `match: {}` for a rule that applies to every request)"
    )
    assert (await run.admin.get("/v1/rules/everything")).status_code == 404
    explicit = await run.admin.put("/v1/rules/everything", json={"action": "deny", "match": {}}, headers=AUTH)
    assert explicit.status_code == 200
    judged = (await run.admin.post("/v1/evaluate", json={"path": "/anything"})).json()
    assert (judged["decision"], judged["rule"]) == ("deny", "everything")


async def test_every_invalid_field_is_listed(policy_factory: PolicyFactory) -> None:
    run = await policy_factory()
    body = {"action": "explode", "match": {}, "priority": "high", "colour": "red"}
    refused = await run.admin.put("/v1/rules/r", json=body, headers=AUTH)
    assert refused.status_code == 422
    assert refused.json()["detail"].split("; ") == [
        "field action: Input should be 'allow', 'deny' or 'rate_limit'",
        "field priority: Input should be a valid integer, unable to parse string as an integer",
        "field colour: unknown field",
    ]


async def test_lists_and_bodies_have_size_limits(policy_factory: PolicyFactory) -> None:
    run = await policy_factory(max_list_entries=1000, max_body_bytes=64 * 1024)
    fits = {"entries": [f"u{i}" for i in range(1000)]}
    assert (await run.admin.put("/v1/lists/fits", json=fits, headers=AUTH)).status_code == 200
    over = {"entries": [f"u{i}" for i in range(1001)]}
    refused = await run.admin.put("/v1/lists/over", json=over, headers=AUTH)
    assert refused.status_code == 422
    assert refused.json()["detail"] == (
        "list 'over': field entries: 1001 entries, over the 1000 allowed (policy.max_list_entries)"
    )
    large = {"entries": ["x" * 1000] * 100}
    too_large = await run.admin.put("/v1/lists/large", json=large, headers=AUTH)
    assert too_large.status_code == 413
    assert too_large.json()["detail"] == "request body over 65536 bytes (server.admin_max_body_bytes)"
    assert [x["name"] for x in (await run.admin.get("/v1/lists")).json()] == ["fits"]


@pytest.mark.parametrize("limit", ["0", "-1", "1001", "many"])
async def test_query_parameters_are_validated(policy_factory: PolicyFactory, limit: str) -> None:
    run = await policy_factory()
    answer = await run.admin.get(f"/v1/policy/audit?limit={limit}")
    assert answer.status_code == 422
    (error,) = answer.json()["detail"]
    assert error["loc"] == ["query", "limit"]
    if limit in ("0", "-1"):
        assert error["msg"] == "Input should be greater than or equal to 1"
    elif limit == "1001":
        assert error["msg"] == "Input should be less than or equal to 1000"
    assert (await run.admin.get("/v1/policy/audit?limit=1000")).status_code == 200


async def test_openapi_types_every_body_with_the_documents_models(policy_factory: PolicyFactory) -> None:
    run = await policy_factory()
    spec = (await run.admin.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]

    def resolve(schema: dict[str, Any]) -> dict[str, Any]:
        return schemas[schema["$ref"].rsplit("/", 1)[1]] if "$ref" in schema else schema

    for section, model, required in (
        ("rules", "RuleDoc", {"id", "action", "match"}),
        ("lists", "ListDoc", {"name"}),
        ("limits", "LimitDoc", {"name", "requests", "unit"}),
    ):
        put = spec["paths"][f"/v1/{section}/{{name}}"]["put"]
        body = resolve(put["requestBody"]["content"]["application/json"]["schema"])
        assert body["title"] == model
        assert required <= set(body["required"])
        assert body.get("additionalProperties") is False
        got = spec["paths"][f"/v1/{section}/{{name}}"]["get"]["responses"]["200"]["content"]
        assert resolve(got["application/json"]["schema"])["title"] == model
    rule = schemas["RuleDoc"]["properties"]
    assert rule["action"]["enum"] == ["allow", "deny", "rate_limit"]
    assert "`{}` matches every request" in rule["match"]["description"]
    evaluate = spec["paths"]["/v1/evaluate"]["post"]["requestBody"]["content"]["application/json"]
    assert resolve(evaluate["schema"])["title"] == "EvaluateRequest"


async def test_docs_are_served_without_any_external_host(policy_factory: PolicyFactory) -> None:
    run = await policy_factory()
    page = await run.admin.get("/docs")
    assert page.status_code == 200
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text) + re.findall(
        r"""url: *['"]([^'"]+)['"]""", page.text
    )
    assert {u for u in urls if not u.startswith("/")} == set(), urls
    assert "//" not in page.text.replace("http://www.w3.org", "")
    for url in urls:
        assert (await run.admin.get(url)).status_code == 200, url
    assert '"validatorUrl": null' in page.text


def test_docs_render_in_a_browser_that_reaches_no_other_host(server: RemixerServer, tmp_path: Path) -> None:
    """Headless Chromium with every host but 127.0.0.1 unresolvable: Swagger UI still draws the API."""
    done = dump_dom(
        f"{server.admin_url}/docs",
        tmp_path / "profile",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    )
    dom = done.stdout
    assert "opblock-summary-path" in dom, done.stderr[-2000:]
    for path in ("/v1/rules/{name}", "/v1/lists/{name}", "/v1/policy/audit"):
        assert f'data-path="{path}"' in dom
    assert "RuleDoc" in dom


def test_a_large_body_sent_with_its_head_in_one_write_is_answered(server: RemixerServer) -> None:
    """The head size limit (server.admin_max_head_bytes, 64 KiB) counts the head only, not a body that
    arrives in the same segment, as one write of a large PUT does."""
    body = json.dumps({"kind": "string", "entries": [f"user-{i:06d}" for i in range(20_000)]}).encode()
    assert len(body) > 200_000
    head = _head(
        server.admin_port,
        "/v1/lists/many",
        {"authorization": AUTH["authorization"], "content-length": str(len(body)), "connection": "close"},
    )
    with socket.create_connection(("127.0.0.1", server.admin_port), timeout=10) as sock:
        sock.sendall(head + body)
        answer = _read_answer(sock)
    assert _status(answer) == 200, answer[:300]
    assert len(httpx.get(server.admin_url + "/v1/lists/many").json()["entries"]) == 20_000
