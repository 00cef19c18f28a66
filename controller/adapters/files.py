"""The `dir:PATH` sink (one YAML file per Sidecar, for Argo CD / Flux) and the `stdout` sink (YAML stream)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TextIO

import yaml

from controller.errors import SinkFailed
from controller.structs import Manifest, WriteFailure

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def dump(manifest: Manifest) -> str:
    return str(yaml.dump(manifest, Dumper=_Dumper, sort_keys=True, default_flow_style=False))


class DirSink:
    """PATH/<namespace>/<name>.yaml. Files we did not write (no owner label) are read, never touched."""

    name = "dir"

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, namespace: str, name: str) -> Path:
        return self.root / namespace / f"{name}.yaml"

    def observe(self) -> list[Manifest]:
        manifests = []
        if not self.root.exists():
            return []
        for path in sorted(self.root.glob("*/*.yaml")):
            try:
                body = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506 (CSafeLoader or SafeLoader)
            except (OSError, yaml.YAMLError) as error:
                raise SinkFailed(f"cannot read {path}: {error}") from None
            if (
                isinstance(body, dict)
                and body.get("kind") == "Sidecar"
                and isinstance(body.get("metadata"), dict)
            ):
                body["metadata"].setdefault("namespace", path.parent.name)
                manifests.append(body)
        return manifests

    def apply(
        self, manifests: Sequence[Manifest], deletes: Iterable[tuple[str, str]], *, dry_run: bool
    ) -> list[WriteFailure]:
        """Each file on its own: one the OS refuses is reported and the others are still written."""
        if dry_run:
            return []
        failures = []
        for manifest in manifests:
            namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
            path = self._path(namespace, name)
            temporary = path.with_name(path.name + ".tmp")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                temporary.write_text(dump(manifest), encoding="utf-8")
                os.replace(temporary, path)
            except OSError as error:
                failures.append(WriteFailure(namespace, name, f"cannot write {path}: {error.strerror}"))
        for namespace, name in deletes:
            path = self._path(namespace, name)
            try:
                path.unlink(missing_ok=True)
                if path.parent.exists() and not any(path.parent.iterdir()):
                    path.parent.rmdir()
            except OSError as error:
                failures.append(WriteFailure(namespace, name, f"cannot delete {path}: {error.strerror}"))
        return failures


class StdoutSink:
    """A YAML stream for `kubectl apply -f -`. It has no memory, so every run prints every Sidecar;
    deletions are printed as comments (kubectl apply does not delete)."""

    name = "stdout"

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def observe(self) -> list[Manifest]:
        return []

    def apply(
        self, manifests: Sequence[Manifest], deletes: Iterable[tuple[str, str]], *, dry_run: bool
    ) -> list[WriteFailure]:
        stream = self.stream or sys.stdout
        for manifest in manifests:
            stream.write("---\n" + dump(manifest))
        for namespace, name in deletes:
            stream.write(f"# no longer needed: sidecar {namespace}/{name}\n")
        stream.flush()
        return []
