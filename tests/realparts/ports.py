"""Which process holds a port: a server's readiness must come from the server we started, not from
whoever else bound its port first (another suite on the machine)."""

from __future__ import annotations

import os
from pathlib import Path


def listens_on(pid: int, port: int) -> bool:
    """Whether process `pid` holds the listening TCP socket on IPv4 `port` (Linux /proc)."""
    sockets = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
            sockets.add(f"socket:[{inode}]")
    try:
        return any(os.readlink(fd) in sockets for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # the process is gone, or closed an fd while we looked
        return False


def family(pid: int) -> list[int]:
    """`pid` and its children (e.g. remixer's worker processes)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return [pid]
    return [pid, *(int(child) for child in children)]
