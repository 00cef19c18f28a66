"""A small but faithful fake Kubernetes API server, spoken to over real HTTP by lightkube.

Implements what the controller relies on, with the API server's semantics: list (cluster-wide
and per namespace, labelSelector), get, delete, server-side apply (PATCH
application/apply-patch+yaml with a required fieldManager, conflicts between managers unless
force=true, managedFields, no-op applies that keep resourceVersion), dryRun=All on writes,
a global resourceVersion that increments on every change, and Status bodies on errors.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

Obj = dict[str, Any]
KINDS = {
    ("networking.istio.io/v1", "sidecars"): "Sidecar",
    ("apps/v1", "deployments"): "Deployment",
    ("apps/v1", "statefulsets"): "StatefulSet",
    ("apps/v1", "daemonsets"): "DaemonSet",
    ("v1", "services"): "Service",
}
_PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"(?:/namespaces/(?P<namespace>[^/]+))?/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?$"
)


class ApiFailure(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def _status(code: int, reason: str, message: str) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _matches(labels: dict[str, str], selector: str) -> bool:
    """Equality- and set-based label selectors: k=v, k==v, k!=v, k, !k, k in (a,b), k notin (a,b)."""
    for term in re.findall(r"[^,(]+(?:\([^)]*\))?", selector):
        term = term.strip()
        if not term:
            continue
        if match := re.match(r"^(\S+)\s+(in|notin)\s+\((.*)\)$", term):
            key, op, values = match.group(1), match.group(2), {v.strip() for v in match.group(3).split(",")}
            if (labels.get(key) in values) != (op == "in"):
                return False
        elif "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[tuple[str, str], Obj]] = {key: {} for key in KINDS}
        self.resource_version = 100
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, dict[str, list[str]]]] = []
        self.fail_next: list[int] = []  # status codes to answer the next requests with
        self._server: ThreadingHTTPServer | None = None

    # ---- direct access for tests (what `kubectl` would do) ----
    def put(self, api_version: str, plural: str, obj: Obj, manager: str = "kubectl-create") -> Obj:
        with self.lock:
            stored = self._stamp(copy.deepcopy(obj), manager, "Update")
            self.objects[(api_version, plural)][(obj["metadata"]["namespace"], obj["metadata"]["name"])] = (
                stored
            )
            return copy.deepcopy(stored)

    def items(self, api_version: str = "networking.istio.io/v1", plural: str = "sidecars") -> list[Obj]:
        with self.lock:
            return [copy.deepcopy(o) for _, o in sorted(self.objects[(api_version, plural)].items())]

    def _stamp(self, obj: Obj, manager: str, operation: str, previous: Obj | None = None) -> Obj:
        self.resource_version += 1
        meta = obj.setdefault("metadata", {})
        meta["resourceVersion"] = str(self.resource_version)
        meta["uid"] = (previous or {}).get("metadata", {}).get("uid") or str(uuid.uuid4())
        meta["creationTimestamp"] = (previous or {}).get("metadata", {}).get(
            "creationTimestamp"
        ) or dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        meta["generation"] = int((previous or {}).get("metadata", {}).get("generation", 0)) + 1
        managers = [
            m
            for m in (previous or {}).get("metadata", {}).get("managedFields", [])
            if m["manager"] != manager
        ]
        managers.append(
            {
                "manager": manager,
                "operation": operation,
                "apiVersion": obj.get("apiVersion", "v1"),
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:spec": {}},
            }
        )
        meta["managedFields"] = managers
        return obj

    # ---- the HTTP API ----
    def handle(self, method: str, url: str, headers: dict[str, str], body: bytes) -> tuple[int, Obj]:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        self.requests.append((method, parts.path, query))
        if self.fail_next:
            code = self.fail_next.pop(0)
            return code, _status(code, "InternalError" if code >= 500 else "Forbidden", "injected failure")
        match = _PATH.match(parts.path)
        if not match:
            return 404, _status(
                404, "NotFound", f"the server could not find the requested resource {parts.path}"
            )
        api_version = match.group("core") or f"{match.group('group')}/{match.group('version')}"
        key = (api_version, match.group("plural"))
        if key not in self.objects:
            return 404, _status(
                404, "NotFound", f"the server could not find the requested resource {parts.path}"
            )
        namespace, name = match.group("namespace"), match.group("name")
        dry_run = query.get("dryRun") == ["All"]
        try:
            with self.lock:
                if name is None and method == "GET":
                    return 200, self._list(key, namespace, query.get("labelSelector", [""])[0])
                if name is None or namespace is None:
                    raise ApiFailure(
                        405, "MethodNotAllowed", f"{method} is not supported on collections here"
                    )
                if method == "GET":
                    return 200, copy.deepcopy(self._get(key, namespace, name))
                if method == "DELETE":
                    found = self._get(key, namespace, name)
                    if not dry_run:
                        del self.objects[key][(namespace, name)]
                        self.resource_version += 1
                    return 200, copy.deepcopy(found)
                if method == "PATCH":
                    return self._apply(key, namespace, name, headers, body, query, dry_run)
        except ApiFailure as failure:
            return failure.code, _status(failure.code, failure.reason, failure.message)
        return 405, _status(405, "MethodNotAllowed", f"{method} not allowed")

    def _get(self, key: tuple[str, str], namespace: str, name: str) -> Obj:
        found = self.objects[key].get((namespace, name))
        if found is None:
            raise ApiFailure(404, "NotFound", f'{key[1]}.{key[0].split("/")[0]} "{name}" not found')
        return found

    def _list(self, key: tuple[str, str], namespace: str | None, selector: str) -> Obj:
        items = [
            copy.deepcopy(obj)
            for (ns, _), obj in sorted(self.objects[key].items())
            if (namespace is None or ns == namespace)
            and _matches(obj["metadata"].get("labels") or {}, selector)
        ]
        return {
            "kind": f"{KINDS[key]}List",
            "apiVersion": key[0],
            "metadata": {"resourceVersion": str(self.resource_version)},
            "items": items,
        }

    def _apply(
        self,
        key: tuple[str, str],
        namespace: str,
        name: str,
        headers: dict[str, str],
        body: bytes,
        query: dict[str, list[str]],
        dry_run: bool,
    ) -> tuple[int, Obj]:
        if headers.get("content-type", "").split(";")[0].strip() != "application/apply-patch+yaml":
            raise ApiFailure(415, "UnsupportedMediaType", "only server-side apply is supported by this fake")
        manager = query.get("fieldManager", [""])[0]
        if not manager:
            raise ApiFailure(400, "BadRequest", "PATCH, fieldManager is required for apply requests")
        try:
            applied = yaml.safe_load(body)
        except yaml.YAMLError as error:
            raise ApiFailure(400, "BadRequest", f"error decoding YAML: {error}") from None
        if (
            not isinstance(applied, dict)
            or applied.get("apiVersion") != key[0]
            or applied.get("kind") != KINDS[key]
        ):
            raise ApiFailure(400, "BadRequest", "apiVersion/kind of the body do not match the URL")
        meta = applied.get("metadata") or {}
        if meta.get("name") != name or meta.get("namespace", namespace) != namespace:
            raise ApiFailure(400, "BadRequest", "the name of the object does not match the name on the URL")
        previous = self.objects[key].get((namespace, name))
        force = query.get("force") == ["true"]
        if previous is not None and not force:
            others = [
                m["manager"] for m in previous["metadata"].get("managedFields", []) if m["manager"] != manager
            ]
            if others and previous.get("spec") != applied.get("spec"):
                raise ApiFailure(
                    409, "Conflict", f'Apply failed with 1 conflict: conflict with "{others[0]}": .spec'
                )
        merged = (
            copy.deepcopy(previous)
            if previous
            else {"apiVersion": key[0], "kind": KINDS[key], "metadata": {}}
        )
        merged_meta = merged["metadata"]
        merged_meta.update(name=name, namespace=namespace)
        for field in ("labels", "annotations"):
            if field in meta:
                merged_meta[field] = {**(merged_meta.get(field) or {}), **meta[field]}
        merged["spec"] = applied.get("spec")
        if previous is not None and merged == previous:
            return 200, copy.deepcopy(previous)  # a no-op apply keeps the resourceVersion
        result = self._stamp(merged, manager, "Apply", previous)
        if dry_run:
            self.resource_version -= 1
            return (200 if previous else 201), copy.deepcopy(result)
        self.objects[key][(namespace, name)] = result
        return (200 if previous else 201), copy.deepcopy(result)

    # ---- serving ----
    def start(self) -> str:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                code, payload = fake.handle(
                    self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body
                )
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PATCH = do_DELETE = do_POST = do_PUT = _serve

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
