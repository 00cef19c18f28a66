"""A TCP proxy in its own process, to fail a real store from outside: `freeze()` (SIGSTOP) leaves the
listening socket accepting connections (the kernel completes the handshakes) while nothing answers, as a
hung or black-holed database does; `thaw()` resumes it; `stop()` makes every connection refused.

    python tests/realparts/tcpproxy.py TARGET_HOST TARGET_PORT   # prints its listening port
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), target_host, str(target_port)],
            stdout=subprocess.PIPE,
        )
        assert self._proc.stdout is not None
        self.port = int(self._proc.stdout.readline())
        self.frozen = False

    def freeze(self) -> None:
        os.kill(self._proc.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        os.kill(self._proc.pid, signal.SIGCONT)
        self.frozen = False

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGCONT)
            self._proc.wait(10)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def _serve(target_host: str, target_port: int) -> None:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(target_host, target_port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(_pipe(client_r, server_w), _pipe(server_r, client_w))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_serve(sys.argv[1], int(sys.argv[2])))
