"""The raw HTTP/1.1 ext_authz listener, spoken to over a socket the way Envoy's http_service does."""

from __future__ import annotations

import asyncio

from tests.policy.conftest import PolicyFactory, RunningPolicy

POLICY = {
    "limits": [{"name": "one", "requests": 1, "unit": "hour", "algorithm": "token_bucket"}],
    "rules": [
        {
            "id": "deny-admin",
            "action": "deny",
            "match": {"request.path": {"prefix": "/admin"}},
            "deny": {"status": 403, "body": "no", "headers": {"x-why": "admin"}},
        },
        {"id": "lim", "action": "rate_limit", "limit": "one", "match": {"request.path": {"prefix": "/once"}}},
        {
            "id": "tag",
            "action": "allow",
            "match": {"request.headers.x-user": {"exact": "ann"}},
            "allow": {"headers": {"x-tag": "ann"}, "remove_headers": ["x-secret", "cookie"]},
        },
    ],
}


async def _exchange(run: RunningPolicy, raw: bytes, *, responses: int = 1) -> list[bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", run.http_port)
    writer.write(raw)
    await writer.drain()
    answers = []
    for _ in range(responses):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        answers.append(head + await reader.readexactly(length))
    writer.close()
    return answers


def _get(path: str, *extra: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "host: shop.example", "content-length: 0", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_allow_deny_and_rate_limit_over_one_keep_alive_connection(
    policy_factory: PolicyFactory,
) -> None:
    run = await policy_factory(policy=POLICY)
    raw = _get("/x", "x-user: ann") + _get("/admin/a") + _get("/once") + _get("/once") + _get("/plain")
    allowed, denied, first, limited, plain = await _exchange(run, raw, responses=5)
    assert allowed.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nx-tag: ann\r\n" in allowed
    assert b"\r\nx-envoy-auth-headers-to-remove: x-secret,cookie\r\n" in allowed
    assert denied.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert denied.endswith(b"\r\n\r\nno")
    assert b"\r\nx-why: admin\r\n" in denied
    assert first.startswith(b"HTTP/1.1 200")
    assert limited.startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
    assert b"x-ratelimit-limit: 1\r\n" in limited
    assert b"retry-after: " in limited
    assert plain.startswith(b"HTTP/1.1 200")


async def test_path_prefix_is_stripped(policy_factory: PolicyFactory) -> None:
    run = await policy_factory(policy=POLICY, http_path_prefix="/authz")
    (answer,) = await _exchange(run, _get("/authz/admin/x"))
    assert answer.startswith(b"HTTP/1.1 403")


async def test_bad_input_gets_an_answer_and_is_counted(policy_factory: PolicyFactory) -> None:
    run = await policy_factory(policy=POLICY)
    (garbled,) = await _exchange(run, b"NONSENSE\r\n\r\n")
    assert garbled.startswith(b"HTTP/1.1 400")
    assert run.metric("remixer_policy_odd_inputs_total", kind="http_malformed") == 1
    (latin,) = await _exchange(run, b"GET /admin/\xff\xfe HTTP/1.1\r\nx-user: \xe9\r\n\r\n")
    assert latin.startswith(b"HTTP/1.1 403")
    assert run.metric("remixer_policy_odd_inputs_total", kind="http_odd_bytes") == 1
    (huge,) = await _exchange(run, _get("/x", "x-big: " + "v" * 65_536, "x-user: ann"))
    assert huge.startswith(b"HTTP/1.1 200")
    assert b"x-tag: ann" in huge
    (too_big,) = await _exchange(run, b"GET / HTTP/1.1\r\nx: " + b"v" * 300_000)
    assert too_big.startswith(b"HTTP/1.1 431")
    # The listener still serves after all that.
    (after,) = await _exchange(run, _get("/admin"))
    assert after.startswith(b"HTTP/1.1 403")


async def test_request_bodies_are_skipped_and_connection_close_is_honoured(
    policy_factory: PolicyFactory,
) -> None:
    run = await policy_factory(policy=POLICY)
    raw = b"POST /admin HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello" + _get("/y", "connection: close")
    reader, writer = await asyncio.open_connection("127.0.0.1", run.http_port)
    writer.write(raw)
    data = await asyncio.wait_for(reader.read(), 5)  # EOF: the server closed after the second answer
    assert data.count(b"HTTP/1.1 ") == 2
    assert data.startswith(b"HTTP/1.1 403")
    writer.close()
