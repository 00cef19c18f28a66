"""What can go wrong in a run, one type per thing a caller can act on.

ControllerError
 ├── SourceUnavailable   Prometheus (or the call-edge database) down, slow, erroring or malformed -> exit 3
 ├── GuardRefused        a safety guard stopped the run before any write                       -> exit 1
 ├── SinkFailed          writing Sidecars failed (files, Kubernetes API)                           -> exit 3
 └── UsageError          bad command-line or settings value                                        -> exit 2
"""

from __future__ import annotations


class ControllerError(Exception):
    exit_code = 3


class SourceUnavailable(ControllerError):
    exit_code = 3


class GuardRefused(ControllerError):
    exit_code = 1


class SinkFailed(ControllerError):
    exit_code = 3


class UsageError(ControllerError):
    exit_code = 2
