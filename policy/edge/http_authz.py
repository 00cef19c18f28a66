"""The HTTP ext_authz mode (Envoy `http_service`): an asyncio HTTP/1.1 server framed by llhttp.

Envoy forwards the original method, path (after `path_prefix`) and the allowed headers; a 200
answer allows and its headers travel upstream (per `allowed_upstream_headers`), any other status
denies with that status, headers and body. No framework: per call this costs about half the gRPC
path, which is why this mode exists (see policy/README.md "gRPC or HTTP mode").

Framing is llhttp's (through httptools), strict as RFC 9112 asks: a request with both
Transfer-Encoding and Content-Length, duplicate or malformed Content-Length, or whitespace before a
header's colon gets one 400 and the connection closes, so body bytes are never read as a request.
What a slow or hostile client can make a worker hold is bounded by settings: open connections, bytes
of unfinished request heads (per request and in all), and time (head timeout, idle timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import socket
import time
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus

import httptools

from policy.core.checks import Checker, DecodedCheck
from policy.structs import CheckInput, Decision

__all__ = ["HttpAuthzServer", "HttpLimits", "HttpWire", "check_input"]

_MAX_BODY = 1024 * 1024
_REMOVE = "x-envoy-auth-headers-to-remove"
# How often deadlines are looked at: a slow client is closed at most this late.
_SWEEP_SECONDS = 0.5
# Every connection reads into the server's one buffer (the loop runs one read at a time) of asyncio's
# own read size, instead of a new 256 KB bytes object per read.
_READ_BUFFER_BYTES = 256 * 1024


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Status"


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What one worker's listener lets clients hold (policy.http_* settings)."""

    header_timeout_s: float = 10.0
    idle_timeout_s: float = 30.0
    max_connections: int = 4096
    max_head_bytes: int = 64 * 1024
    head_budget_bytes: int = 8 * 1024 * 1024


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


def check_input(method: str, target: str, headers: dict[str, str], path_prefix: str) -> CheckInput:
    """The Check input of one parsed request (headers: lower-case names, repeated ones comma-joined)."""
    if path_prefix and target.startswith(path_prefix):
        target = target[len(path_prefix) :] or "/"
    forwarded = headers.get("x-forwarded-for", "")
    return CheckInput(
        method=method,
        path=target,
        host=headers.get("host", ""),
        scheme=headers.get("x-forwarded-proto", ""),
        request_id=headers.get("x-request-id", ""),
        headers=headers,
        source_address=forwarded.rsplit(",", 1)[-1].strip() if forwarded else "",
        source_principal="",
    )


@dataclass(slots=True)
class _Refusal:
    """Where the request stream went wrong: answered with `status`, then the connection closes."""

    status: int
    message: str
    kind: str


_LINGER_SECONDS = 2.0


class _Connection(asyncio.BufferedProtocol):
    """One client connection: llhttp parses, complete requests queue up in order and are answered in
    order (a quota call in flight pauses reading, so the queue stays short)."""

    def __init__(self, server: HttpAuthzServer) -> None:
        self._server = server
        # None once nothing more is parsed (refused, closing or lost); see _stop_parsing.
        self._parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._pending: deque[tuple[DecodedCheck, bool] | _Refusal] = deque()
        self._busy = False  # a quota call is in flight; later requests wait their turn
        self._linger: asyncio.TimerHandle | None = None
        # the request being parsed
        self._url = b""
        self._headers: dict[str, str] = {}
        self._odd = False
        self._in_head = False
        self._body_bytes = 0
        self._started = 0.0
        self._held = 0  # head bytes counted against the server's budget
        self.deadline = math.inf

    # ---- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        server = self._server
        if len(server.connections) >= server.limits.max_connections:
            server.checks.count_odd("http_connection_limit", message="too many connections")
            transport.abort()
            return
        self._transport = transport
        server.connections.add(self)
        self.deadline = time.perf_counter() + server.limits.idle_timeout_s

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._release()
        self._transport = None
        self._stop_parsing()
        if self._linger is not None:
            self._linger.cancel()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._server.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        data = self._server.read_buffer[:nbytes]  # valid until this returns: the next read reuses it
        parser = self._parser
        if parser is None:
            return  # the rest of a refused request: read and dropped (see _refuse)
        if self._in_head or not self._pending:
            refusal = self._hold(len(data))
            if refusal is not None:
                self._pending.append(refusal)
                self._answer_pending()
                return
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The request before the upgrade is queued; nothing after it is HTTP/1.1 to us.
            self._pending.append(_Refusal(0, "", ""))
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            self._pending.append(
                cause.refusal
                if isinstance(cause, _Refused)
                else _Refusal(400, f"malformed request: {exc}", "http_malformed")
            )
        if not self._in_head:
            self._release()
        self._answer_pending()

    # ---- llhttp callbacks --------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._odd = False
        self._in_head = True
        self._body_bytes = 0
        self._started = started = time.perf_counter()
        self.deadline = started + self._server.limits.header_timeout_s

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        try:  # the hot path: once per header, so no helper call for the usual UTF-8
            key = name.decode().lower()
            text = value.decode()
        except UnicodeDecodeError:
            key = name.decode(errors="replace").lower()
            text = value.decode(errors="replace")
            self._odd = True
        headers = self._headers
        headers[key] = f"{headers[key]},{text}" if key in headers else text

    def on_headers_complete(self) -> None:
        self._in_head = False
        coding = self._headers.get("transfer-encoding")
        if coding is not None and coding.strip().lower() != "chunked":
            # llhttp decodes chunked only; anything else would leave body bytes we cannot frame.
            raise _Refused(501, "transfer-encoding not implemented", "http_transfer_encoding")

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > _MAX_BODY:
            raise _Refused(413, "request body too large", "http_body_too_large")

    def on_message_complete(self) -> None:
        parser = self._parser
        assert parser is not None  # called back from parser.feed_data
        try:
            target = self._url.decode()
        except UnicodeDecodeError:  # llhttp refuses such targets today; kept for lenient builds
            target = self._url.decode(errors="replace")
            self._odd = True
        if self._odd:
            self._server.checks.count_odd("http_odd_bytes")
        req = check_input(parser.get_method().decode(), target, self._headers, self._server.path_prefix)
        self._pending.append((DecodedCheck(req, self._started), parser.should_keep_alive()))
        self.deadline = math.inf  # answered next; the idle clock starts after the answer

    # ---- budgets -----------------------------------------------------------------------------------

    def _hold(self, size: int) -> _Refusal | None:
        """Count `size` more head bytes; a refusal when this request or all together hold too much."""
        server = self._server
        limits = server.limits
        if self._held + size > limits.max_head_bytes:
            return _Refusal(431, "request head too large", "http_head_too_large")
        if server.head_bytes + size > limits.head_budget_bytes:
            return _Refusal(503, "too many unfinished requests, try again", "http_head_budget")
        self._held += size
        server.head_bytes += size
        return None

    def _release(self) -> None:
        self._server.head_bytes -= self._held
        self._held = 0

    # ---- answers -----------------------------------------------------------------------------------

    def _answer_pending(self) -> None:
        server = self._server
        checks = server.checks
        pending = self._pending
        while pending and not self._busy and self._transport is not None and self._parser is not None:
            item = pending.popleft()
            if isinstance(item, _Refusal):
                self._refuse(item)
                return
            request, keep_alive = item
            decision = checks.check(request)
            if isinstance(decision, Decision):
                self._reply(decision, keep_alive)
                continue
            self._busy = True
            self._transport.pause_reading()
            task = asyncio.ensure_future(decision)
            server.tasks.add(task)
            task.add_done_callback(functools.partial(self._finished, keep_alive=keep_alive))
            return
        if not pending and not self._busy and not self._in_head and self._transport is not None:
            self.deadline = time.perf_counter() + server.limits.idle_timeout_s

    def _reply(self, decision: Decision, keep_alive: bool) -> None:
        assert self._transport is not None
        self._transport.write(self._server.wire.response(decision))
        if not keep_alive:
            self._stop_parsing()
            self._pending.clear()
            self._transport.close()

    def _finished(self, task: asyncio.Future[Decision], *, keep_alive: bool) -> None:
        self._server.tasks.discard(task)
        self._busy = False
        if self._transport is None:
            return
        self._reply(task.result(), keep_alive)  # the service answers every Check (Checker.check)
        if self._transport is not None and self._parser is not None:
            self._transport.resume_reading()
            self._answer_pending()

    def _refuse(self, refusal: _Refusal) -> None:
        """Answer `refusal.status` (none for 0) and close: nothing after a framing error is trusted."""
        self._stop_parsing()
        self._pending.clear()
        self._release()
        transport = self._transport
        if transport is None:
            return
        if not refusal.status:
            transport.close()
            return
        self._server.checks.count_odd(refusal.kind, message=refusal.message)
        body = (refusal.message + "\n").encode()
        transport.write(
            f"HTTP/1.1 {refusal.status} {_reason(refusal.status)}\r\ncontent-type: text/plain\r\n"
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

    def _stop_parsing(self) -> None:
        """Nothing more is parsed here: drop the parser now, with its part of an unfinished head (up to
        max_head_bytes). Held until the connection went, it calls back into this object, a cycle only
        the cyclic GC frees: 1,600 lingering refusals of large heads held 50-70 MB."""
        self._parser = None

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    @property
    def idle(self) -> bool:
        return not self._busy and not self._pending and not self._in_head


class _Refused(Exception):
    """Raised from an llhttp callback: llhttp stops, and the connection answers and closes."""

    def __init__(self, status: int, message: str, kind: str) -> None:
        super().__init__(message)
        self.refusal = _Refusal(status, message, kind)


class HttpAuthzServer:
    def __init__(
        self,
        checks: Checker,
        *,
        path_prefix: str = "",
        wire: HttpWire | None = None,
        limits: HttpLimits | None = None,
    ) -> None:
        self.checks = checks
        self.path_prefix = path_prefix
        self.wire = wire or HttpWire()
        self.limits = limits or HttpLimits()
        self.connections: set[_Connection] = set()
        self.tasks: set[asyncio.Future[Decision]] = set()
        self.head_bytes = 0  # bytes of unfinished request heads, all connections together
        self.read_buffer = memoryview(bytearray(_READ_BUFFER_BYTES))
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
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
        self._sweeper = asyncio.create_task(self._sweep(), name="remixer-http-authz-timeouts")

    async def _sweep(self) -> None:
        """Close connections past their deadline (idle too long, or a head arriving too slowly).
        One timer for all: per-request timers would cost the hot path more than a monotonic read."""
        while True:
            await asyncio.sleep(_SWEEP_SECONDS)
            now = time.perf_counter()  # the clock deadlines are set on (monotonic, like time.monotonic)
            for conn in [c for c in self.connections if c.deadline < now]:
                conn.close()

    async def close(self, grace: float) -> None:
        if self._server is None:
            return
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
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
