"""A small but faithful fake Kubernetes API server, spoken to over real HTTP by lightkube.

Implements what the controller relies on, with the API server's semantics (k8s.io/apiserver,
sigs.k8s.io/structured-merge-diff): list (cluster-wide and per namespace, labelSelector), get,
delete with DeleteOptions preconditions (uid, resourceVersion -> 409), server-side apply (PATCH
application/apply-patch+yaml, required fieldManager, field ownership per manager recorded in
managedFields as FieldsV1, conflicts with other managers' fields unless force=true, fields a manager
stops applying are removed unless another manager owns them, no-op applies keep resourceVersion),
Update-style writes by other managers (`update`), dryRun=All, DNS-1123 subdomain names (422), the
Sidecar CRD's schema (422), and RBAC: every request is authorized against the ClusterRole in
deploy/kubernetes/base/rbac.yaml (403 otherwise; an apply that creates also needs `create`).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
import threading
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema
import yaml

Obj = dict[str, Any]
FieldPath = tuple[str, ...]
KINDS = {
    ("networking.istio.io/v1", "sidecars"): "Sidecar",
    ("apps/v1", "deployments"): "Deployment",
    ("apps/v1", "statefulsets"): "StatefulSet",
    ("apps/v1", "daemonsets"): "DaemonSet",
    ("v1", "services"): "Service",
    ("v1", "pods"): "Pod",
    ("v1", "configmaps"): "ConfigMap",
}
RBAC_FILE = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "base" / "rbac.yaml"
SERVICE_ACCOUNT = "system:serviceaccount:remixer:remixer-controller"
_PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"(?:/namespaces/(?P<namespace>[^/]+))?/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?$"
)
# k8s.io/apimachinery pkg/util/validation: IsDNS1123Subdomain.
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_SUBDOMAIN_MESSAGE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and "
    "must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
_IDENTITY_METADATA = {"name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp"}


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


# ---- field sets (structured-merge-diff as the Sidecar CRD needs it: maps granular, lists atomic) ----


def _leaves(value: Any, prefix: FieldPath = ()) -> dict[FieldPath, Any]:
    if isinstance(value, dict) and value:
        found: dict[FieldPath, Any] = {}
        for key, item in value.items():
            found.update(_leaves(item, (*prefix, key)))
        return found
    return {prefix: value}


def _owned_paths(obj: Obj) -> dict[FieldPath, Any]:
    """The fields an object sets, without its identity and the server's own metadata."""
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "status")}
    metadata = {k: v for k, v in (body.pop("metadata", None) or {}).items() if k not in _IDENTITY_METADATA}
    metadata.pop("managedFields", None)
    if metadata:
        body["metadata"] = metadata
    return _leaves(body) if body else {}


def _to_fields_v1(paths: set[FieldPath]) -> Obj:
    root: Obj = {}
    for path in sorted(paths):
        node = root
        for key in path:
            node = node.setdefault(f"f:{key}", {})
    return root


def _from_fields_v1(fields: Obj, prefix: FieldPath = ()) -> set[FieldPath]:
    paths: set[FieldPath] = set()
    for key, sub in fields.items():
        if not key.startswith("f:"):
            continue
        path = (*prefix, key[2:])
        paths |= _from_fields_v1(sub, path) if sub else {path}
    return paths


def _get(obj: Obj, path: FieldPath) -> Any:
    node: Any = obj
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _set(obj: Obj, path: FieldPath, value: Any) -> None:
    node = obj
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = copy.deepcopy(value)


def _remove(obj: Obj, path: FieldPath) -> None:
    parents = [obj]
    for key in path[:-1]:
        node = parents[-1].get(key)
        if not isinstance(node, dict):
            return
        parents.append(node)
    parents[-1].pop(path[-1], None)
    for depth in range(len(path) - 1, 0, -1):  # drop maps left empty
        if parents[depth] == {}:
            parents[depth - 1].pop(path[depth - 1], None)


def _managers(obj: Obj | None) -> dict[tuple[str, str], set[FieldPath]]:
    entries = ((obj or {}).get("metadata") or {}).get("managedFields") or []
    return {(e["manager"], e["operation"]): _from_fields_v1(e.get("fieldsV1") or {}) for e in entries}


def _load_rules(path: Path) -> list[Obj]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return [rule for d in docs if d["kind"] == "ClusterRole" for rule in d["rules"]]


class FakeKube:
    def __init__(self, *, rbac: Path | None = RBAC_FILE, crd_validator: Any = None) -> None:
        self.objects: dict[tuple[str, str], dict[tuple[str, str], Obj]] = {key: {} for key in KINDS}
        self.resource_version = 100
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, dict[str, list[str]]]] = []
        # (api group, resource, verb, namespace or "", name or "") of every authorized request.
        self.authorized: list[tuple[str, str, str, str, str]] = []
        self.fail_next: list[int] = []  # status codes to answer the next requests with
        self.rules = _load_rules(rbac) if rbac is not None else None
        self.crd_validator = crd_validator
        self._server: ThreadingHTTPServer | None = None

    # ---- direct access for tests (what `kubectl` would do, as a cluster admin) ----
    def put(self, api_version: str, plural: str, obj: Obj, manager: str = "kubectl-create") -> Obj:
        return self.update(api_version, plural, obj, manager=manager)

    def update(self, api_version: str, plural: str, obj: Obj, *, manager: str) -> Obj:
        """A full-object write (PUT, kubectl edit/label): the fields it changes become `manager`'s."""
        with self.lock:
            key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
            previous = self.objects[(api_version, plural)].get(key)
            new = copy.deepcopy(obj)
            new.setdefault("apiVersion", api_version)
            new.setdefault("kind", KINDS[(api_version, plural)])
            before = _owned_paths(previous) if previous else {}
            after = _owned_paths(new)
            changed = {path for path, value in after.items() if before.get(path) != value}
            owners = _managers(previous)
            for owned in owners.values():
                owned -= changed
                owned &= set(after)
            owners.setdefault((manager, "Update"), set()).update(changed)
            stored = self._stamp(new, owners, previous)
            self.objects[(api_version, plural)][key] = stored
            return copy.deepcopy(stored)

    def edit(
        self,
        api_version: str,
        plural: str,
        namespace: str,
        name: str,
        change: Callable[[Obj], None],
        *,
        manager: str,
    ) -> Obj:
        current = self.get(api_version, plural, namespace, name)
        change(current)
        return self.update(api_version, plural, current, manager=manager)

    def get(self, api_version: str, plural: str, namespace: str, name: str) -> Obj:
        with self.lock:
            return copy.deepcopy(self.objects[(api_version, plural)][(namespace, name)])

    def items(self, api_version: str = "networking.istio.io/v1", plural: str = "sidecars") -> list[Obj]:
        with self.lock:
            return [copy.deepcopy(o) for _, o in sorted(self.objects[(api_version, plural)].items())]

    def _stamp(self, obj: Obj, owners: dict[tuple[str, str], set[FieldPath]], previous: Obj | None) -> Obj:
        self.resource_version += 1
        meta = obj.setdefault("metadata", {})
        old = (previous or {}).get("metadata", {})
        meta["resourceVersion"] = str(self.resource_version)
        meta["uid"] = old.get("uid") or str(uuid.uuid4())
        meta["creationTimestamp"] = old.get("creationTimestamp") or dt.datetime.now(dt.UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
        spec_changed = previous is None or previous.get("spec") != obj.get("spec")
        meta["generation"] = int(old.get("generation", 0)) + (1 if spec_changed else 0)
        meta["managedFields"] = [
            {
                "manager": manager,
                "operation": operation,
                "apiVersion": obj.get("apiVersion", "v1"),
                "fieldsType": "FieldsV1",
                "fieldsV1": _to_fields_v1(paths),
            }
            for (manager, operation), paths in sorted(owners.items())
            if paths
        ]
        return obj

    # ---- the HTTP API ----
    def _authorize(self, group: str, plural: str, verb: str, namespace: str | None, name: str | None) -> None:
        if self.rules is None:
            return
        for rule in self.rules:
            if (
                group in rule.get("apiGroups", [])
                and plural in rule.get("resources", [])
                and verb in rule.get("verbs", [])
                and (not rule.get("resourceNames") or name in rule["resourceNames"])
            ):
                self.authorized.append((group, plural, verb, namespace or "", name or ""))
                return
        where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
        what = f'{plural}.{group} "{name}"' if name and group else f'{plural} "{name}"' if name else plural
        raise ApiFailure(
            403,
            "Forbidden",
            f'{what} is forbidden: User "{SERVICE_ACCOUNT}" cannot {verb} resource "{plural}" in API group '
            f'"{group}"{where}',
        )

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
        group = match.group("group") or ""
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
                    verb = "watch" if query.get("watch") == ["true"] else "list"
                    self._authorize(group, key[1], verb, namespace, None)
                    return 200, self._list(key, namespace, query.get("labelSelector", [""])[0])
                if name is None or namespace is None:
                    raise ApiFailure(
                        405, "MethodNotAllowed", f"{method} is not supported on collections here"
                    )
                if method == "GET":
                    self._authorize(group, key[1], "get", namespace, name)
                    return 200, copy.deepcopy(self._get(key, namespace, name))
                if method == "DELETE":
                    self._authorize(group, key[1], "delete", namespace, name)
                    return self._delete(key, namespace, name, body, dry_run)
                if method == "PATCH":
                    self._authorize(group, key[1], "patch", namespace, name)
                    if (namespace, name) not in self.objects[key]:
                        # k8s.io/apiserver endpoints/handlers/patch.go: creating through apply needs create.
                        self._authorize(group, key[1], "create", namespace, name)
                    return self._apply(key, namespace, name, headers, body, query, dry_run)
        except ApiFailure as failure:
            return failure.code, _status(failure.code, failure.reason, failure.message)
        return 405, _status(405, "MethodNotAllowed", f"{method} not allowed")

    def _get(self, key: tuple[str, str], namespace: str, name: str) -> Obj:
        found = self.objects[key].get((namespace, name))
        if found is None:
            raise ApiFailure(404, "NotFound", f'{key[1]}.{key[0].split("/")[0]} "{name}" not found')
        return found

    def _delete(
        self, key: tuple[str, str], namespace: str, name: str, body: bytes, dry_run: bool
    ) -> tuple[int, Obj]:
        found = self._get(key, namespace, name)
        options = json.loads(body) if body else {}
        preconditions = options.get("preconditions") or {}
        meta = found["metadata"]
        for field, label in (("uid", "UID"), ("resourceVersion", "ResourceVersion")):
            wanted = preconditions.get(field)
            if wanted is not None and wanted != meta.get(field):
                raise ApiFailure(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {key[1]}.{key[0].split("/")[0]} "{name}": '
                    f"Precondition failed: {label} in precondition: {wanted}, "
                    f"{label} in object meta: {meta.get(field)}",
                )
        if not dry_run:
            del self.objects[key][(namespace, name)]
            self.resource_version += 1
        return 200, copy.deepcopy(found)

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

    def _validate(self, key: tuple[str, str], name: str, obj: Obj) -> None:
        kind = f"{KINDS[key]}.{key[0].split('/')[0]}" if "/" in key[0] else KINDS[key]
        if len(name) > 253 or not _SUBDOMAIN.fullmatch(name):
            detail = "must be no more than 253 characters" if len(name) > 253 else _SUBDOMAIN_MESSAGE
            raise ApiFailure(
                422,
                "Invalid",
                f'{kind} "{name}" is invalid: metadata.name: Invalid value: "{name}": {detail}',
            )
        if key[1] == "sidecars" and self.crd_validator is not None:
            errors = sorted(self.crd_validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
            if errors:
                where = ".".join(str(p) for p in errors[0].absolute_path)
                raise ApiFailure(422, "Invalid", f'{kind} "{name}" is invalid: {where}: {errors[0].message}')

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
        wanted = _owned_paths(applied)
        owners = _managers(previous)
        mine = owners.get((manager, "Apply"), set())
        conflicts = sorted(
            (other, path)
            for (other, operation), paths in owners.items()
            if other != manager
            for path in paths & set(wanted)
            if _get(previous or {}, path) != wanted[path]
        )
        if conflicts and not force:
            other, path = conflicts[0]
            raise ApiFailure(
                409,
                "Conflict",
                f'Apply failed with {len(conflicts)} conflict(s): conflict with "{other}": .{".".join(path)}',
            )
        merged = copy.deepcopy(previous) if previous else {"apiVersion": key[0], "kind": KINDS[key]}
        merged.setdefault("metadata", {}).update(name=name, namespace=namespace)
        others_own = set().union(*(p for (m, _), p in owners.items() if m != manager)) if owners else set()
        for path in mine - set(wanted) - others_own:
            _remove(merged, path)  # a field this manager stopped applying, owned by no one else
        for path, value in wanted.items():
            _set(merged, path, value)
        for (other, _), paths in owners.items():
            if other != manager:
                paths -= {path for _, path in conflicts}  # force takes conflicting fields over
        owners = {k: v for k, v in owners.items() if k[0] != manager or k[1] != "Apply"}
        owners[(manager, "Apply")] = set(wanted)
        self._validate(key, name, merged)
        if (
            previous is not None
            and _owned_paths(merged) == _owned_paths(previous)
            and owners == _managers(previous)
        ):
            return 200, copy.deepcopy(previous)  # a no-op apply keeps the resourceVersion
        result = self._stamp(merged, owners, previous)
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
        # shutdown() returns at the loop's next poll: 0.5 s by default, paid at every test's teardown.
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def crd_validator(schema: Obj) -> Any:
    validator_class = jsonschema.validators.validator_for(schema)
    return validator_class(schema)
