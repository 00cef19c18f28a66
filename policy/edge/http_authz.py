"""The HTTP ext_authz mode (Envoy `http_service`): a raw asyncio HTTP/1.1 server.

Envoy forwards the original method, path (after `path_prefix`) and the allowed headers; a 200
answer allows and its headers travel upstream (per `allowed_upstream_headers`), any other status
denies with that status, headers and body. No framework: per call this costs about half the gRPC
path, which is why this mode exists (see policy/README.md "gRPC or HTTP mode").
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import time
from http import HTTPStatus

from policy.service import PolicyService
from policy.structs import CheckInput, Decision

__all__ = ["HttpAuthzServer", "HttpWire", "http_input"]

_MAX_HEAD = 256 * 1024
_MAX_BODY = 1024 * 1024
_REMOVE = "x-envoy-auth-headers-to-remove"


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Status"


class HttpWire:
    """Decision -> raw HTTP response bytes, built once per prebuilt decision."""

    def __init__(self) -> None:
        self._cache: dict[Decision, bytes] = {}

    def response(self, decision: Decision) -> bytes:
        data = self._cache.get(decision)
        if data is None:
            data = self._build(decision)
            if decision.kind != "rate_limited":
                if len(self._cache) > 4096:
                    self._cache.clear()
                self._cache[decision] = data
        return data

    @staticmethod
    def _build(decision: Decision) -> bytes:
        lines = [f"HTTP/1.1 {decision.status} {_reason(decision.status)}"]
        if decision.allowed:
            lines += [f"{k}: {v}" for k, v in decision.upstream_headers]
            lines += [f"{k}: {v}" for k, v in decision.response_headers]
            if decision.remove_headers:
                lines.append(f"{_REMOVE}: {','.join(decision.remove_headers)}")
            body = b""
        else:
            lines += [f"{k}: {v}" for k, v in decision.response_headers]
            body = decision.body.encode()
            lines.append("content-type: text/plain; charset=utf-8")
        lines.append(f"content-length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def http_input(head: bytes, path_prefix: str) -> tuple[CheckInput, bool, bool]:
    """(input, keep_alive, odd) from a request head (request line + header lines, no final CRLF)."""
    odd = False
    try:
        text = head.decode()
    except UnicodeDecodeError:
        text = head.decode(errors="replace")
        odd = True
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ValueError("malformed request line")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            odd = True
            continue
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    if path_prefix and target.startswith(path_prefix):
        target = target[len(path_prefix) :] or "/"
    forwarded = headers.get("x-forwarded-for", "")
    keep_alive = headers.get("connection", "").lower() != "close" and version == "HTTP/1.1"
    req = CheckInput(
        method=method,
        path=target,
        host=headers.get("host", ""),
        scheme=headers.get("x-forwarded-proto", ""),
        request_id=headers.get("x-request-id", ""),
        headers=headers,
        source_address=forwarded.rsplit(",", 1)[-1].strip() if forwarded else "",
        source_principal="",
    )
    return req, keep_alive, odd


_LINGER_SECONDS = 2.0


class _Connection(asyncio.Protocol):
    def __init__(self, server: HttpAuthzServer) -> None:
        self._server = server
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._busy = False  # a quota call is in flight; later requests wait their turn
        self._closing = False
        self._linger: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._transport = None
        if self._linger is not None:
            self._linger.cancel()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return  # the rest of a refused request: read and dropped (see _fail)
        self._buffer += data
        if not self._busy:
            self._process()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    @property
    def idle(self) -> bool:
        return not self._busy and not self._buffer

    def _process(self) -> None:
        server = self._server
        service = server.service
        while self._transport is not None and not self._closing:
            buffer = self._buffer
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > _MAX_HEAD:
                    self._fail(431, "request head too large")
                return
            started = time.perf_counter()
            head = bytes(buffer[:end])
            body_length = 0
            cl = head.lower().find(b"\r\ncontent-length:")
            if cl >= 0:
                stop = head.find(b"\r\n", cl + 2)
                raw = head[cl + 17 : stop if stop >= 0 else len(head)].strip()
                if not raw.isdigit() or int(raw) > _MAX_BODY:
                    self._fail(400, "bad content-length")
                    return
                body_length = int(raw)
            if len(buffer) < end + 4 + body_length:
                return
            del buffer[: end + 4 + body_length]
            try:
                req, keep_alive, odd = http_input(head, server.path_prefix)
            except ValueError as exc:
                service.count_odd("http_malformed", message=str(exc))
                self._fail(400, str(exc))
                return
            if odd:
                service.count_odd("http_odd_bytes")
            try:
                result = service.check_sync(req, started)
            except Exception:
                service.count_odd("check_error", exc_info=True)
                result = service.snapshot.default
            if isinstance(result, Decision):
                self._transport.write(server.wire.response(result))
                if not keep_alive:
                    self._closing = True
                    self._transport.close()
                continue
            self._busy = True
            task = asyncio.ensure_future(service.finish(req, result, started))
            server.tasks.add(task)
            task.add_done_callback(functools.partial(self._finished, keep_alive=keep_alive))
            return

    def _finished(self, task: asyncio.Future[Decision], *, keep_alive: bool) -> None:
        self._server.tasks.discard(task)
        self._busy = False
        if self._transport is None:
            return
        try:
            decision = task.result()
        except Exception:
            self._server.service.count_odd("check_error", exc_info=True)
            decision = self._server.service.snapshot.default
        self._transport.write(self._server.wire.response(decision))
        if not keep_alive:
            self._closing = True
            self._transport.close()
            return
        if self._buffer:
            self._process()

    def _fail(self, status: int, message: str) -> None:
        body = (message + "\n").encode()
        self._closing = True
        self._buffer.clear()
        transport = self._transport
        if transport is None:
            return
        transport.write(
            f"HTTP/1.1 {status} {_reason(status)}\r\ncontent-type: text/plain\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
            + body
        )
        if not transport.can_write_eof():
            transport.close()
            return
        # Lingering close: closing while the client is still sending (the rest of a 300 KB head)
        # makes the kernel answer with a reset, which can destroy our answer before the client reads
        # it. Half-close instead, drop what still arrives, and close at the client's EOF or shortly.
        transport.write_eof()
        self._linger = asyncio.get_running_loop().call_later(_LINGER_SECONDS, transport.close)


class HttpAuthzServer:
    def __init__(
        self, service: PolicyService, *, path_prefix: str = "", wire: HttpWire | None = None
    ) -> None:
        self.service = service
        self.path_prefix = path_prefix
        self.wire = wire or HttpWire()
        self.connections: set[_Connection] = set()
        self.tasks: set[asyncio.Future[Decision]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def bind(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        """Listen; raises OSError when the address is taken (no SO_REUSEPORT unless asked)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(1024)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), sock=sock)
        self.port = int(sock.getsockname()[1])

    async def close(self, grace: float) -> None:
        if self._server is None:
            return
        self._server.close()
        deadline = time.monotonic() + grace
        # Let in-flight quota calls answer, then close idle keep-alive connections.
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=grace)
        for conn in list(self.connections):
            conn.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), timeout=max(0.1, deadline - time.monotonic()))
        self._server = None
