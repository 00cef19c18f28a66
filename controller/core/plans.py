"""Desired vs observed Sidecars -> what to write and delete, and the guards that may stop a run."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from controller.structs import Manifest, Plan, SidecarChange


def hosts_of(manifest: Mapping[str, Any]) -> set[str]:
    hosts: set[str] = set()
    for listener in (manifest.get("spec") or {}).get("egress") or []:
        hosts.update(listener.get("hosts") or [])
    return hosts


def _selector(manifest: Mapping[str, Any]) -> dict[str, str] | None:
    labels = ((manifest.get("spec") or {}).get("workloadSelector") or {}).get("labels")
    return dict(labels) if labels else None


def _key(manifest: Mapping[str, Any]) -> tuple[str, str]:
    return (manifest["metadata"]["namespace"], manifest["metadata"]["name"])


def is_owned(manifest: Mapping[str, Any], label: str, value: str) -> bool:
    return bool(((manifest.get("metadata") or {}).get("labels") or {}).get(label) == value)


FieldSet = dict[str, Any]
# The API server keeps an object's identity out of managedFields.
_IDENTITY = {"apiVersion", "kind"}
_IDENTITY_METADATA = {"name", "namespace"}


def fields_of(manifest: Mapping[str, Any]) -> FieldSet:
    """The FieldsV1 set a server-side apply of `manifest` owns (lists are atomic in the Sidecar CRD)."""

    def walk(value: Any) -> FieldSet:
        return {f"f:{key}": walk(item) for key, item in value.items()} if isinstance(value, Mapping) else {}

    owned = {key: value for key, value in manifest.items() if key not in _IDENTITY}
    metadata = {k: v for k, v in (owned.pop("metadata", None) or {}).items() if k not in _IDENTITY_METADATA}
    fields = walk(owned)
    if metadata:
        fields["f:metadata"] = walk(metadata)
    return fields


def owned_part(value: Any, fields: FieldSet) -> Any:
    """The part of `value` that `fields` covers: what one manager's apply decides, nothing else."""
    if not isinstance(value, Mapping):
        return value
    part = {}
    for key, sub in fields.items():
        name = key[2:]
        if key.startswith("f:") and name in value:
            part[name] = owned_part(value[name], sub) if sub else value[name]
    return part


def _managed_by(manifest: Mapping[str, Any], manager: str) -> FieldSet | None:
    for entry in (manifest.get("metadata") or {}).get("managedFields") or []:
        if entry.get("manager") == manager and entry.get("operation") == "Apply":
            fields: FieldSet = entry.get("fieldsV1") or {}
            return fields
    return None


def needs_write(current: Mapping[str, Any], desired: Mapping[str, Any], manager: str) -> bool:
    """Whether applying `desired` would change anything we own. Labels, annotations or spec fields other
    managers own (Argo CD, a webhook, a person) are theirs: they never cause an update. Fields we owned
    and no longer set would be removed by the apply, so a different owned set is a change too."""
    wanted = fields_of(desired)
    owned = _managed_by(current, manager)
    if owned is None:
        # No record of ownership (a file of the dir sink): the spec is wholly ours.
        return current.get("spec") != desired.get("spec") or owned_part(current, wanted) != owned_part(
            desired, wanted
        )
    return owned != wanted or owned_part(current, wanted) != owned_part(desired, wanted)


def _nested(first: dict[str, str], second: dict[str, str]) -> bool:
    """Whether one selector is a subset of the other, so that some pod may match both."""
    return set(first.items()) <= set(second.items()) or set(second.items()) <= set(first.items())


def _conflict(desired: Manifest, foreign: list[Manifest]) -> str | None:
    """Istio precedence: one selector-less Sidecar per namespace; two selectors on one pod is undefined."""
    mine = _selector(desired)
    for other in foreign:
        theirs = _selector(other)
        name = other["metadata"]["name"]
        if name == desired["metadata"]["name"]:
            return f"name taken by Sidecar {name} that we do not own"
        if mine is None and theirs is None:
            return f"namespace already has a selector-less Sidecar ({name})"
        if mine is not None and theirs is not None and _nested(mine, theirs):
            return f"pods already selected by Sidecar {name} that we do not own"
    return None


def make_plan(
    desired: Iterable[Manifest],
    observed: Iterable[Manifest],
    *,
    owner_label: str,
    owner_value: str,
    manager: str = "remixer-controller",
) -> Plan:
    owned: dict[tuple[str, str], Manifest] = {}
    foreign: dict[str, list[Manifest]] = {}
    for manifest in observed:
        if is_owned(manifest, owner_label, owner_value):
            owned[_key(manifest)] = manifest
        else:
            foreign.setdefault(manifest["metadata"]["namespace"], []).append(manifest)
    to_write: list[Manifest] = []
    changes: list[SidecarChange] = []
    wanted: set[tuple[str, str]] = set()
    removed_total = 0
    shrinking: list[tuple[str, int, int]] = []
    for manifest in sorted(desired, key=_key):
        namespace, name = _key(manifest)
        conflict = _conflict(manifest, foreign.get(namespace, []))
        if conflict:
            changes.append(SidecarChange(namespace, name, "skipped", reason=conflict))
            continue
        wanted.add((namespace, name))
        current = owned.get((namespace, name))
        new_hosts = hosts_of(manifest)
        if current is None:
            to_write.append(manifest)
            changes.append(SidecarChange(namespace, name, "create", added=tuple(sorted(new_hosts))))
        elif needs_write(current, manifest, manager):
            old_hosts = hosts_of(current)
            removed = tuple(sorted(old_hosts - new_hosts))
            removed_total += len(removed)
            if removed:
                shrinking.append((_workloads(manifest), len(removed), len(old_hosts)))
            to_write.append(manifest)
            changes.append(
                SidecarChange(
                    namespace, name, "update", added=tuple(sorted(new_hosts - old_hosts)), removed=removed
                )
            )
        else:
            changes.append(SidecarChange(namespace, name, "unchanged"))
    to_delete = []
    for key in sorted(set(owned) - wanted):
        removed = tuple(sorted(hosts_of(owned[key])))
        removed_total += len(removed)
        to_delete.append(key)
        changes.append(SidecarChange(key[0], key[1], "delete", removed=removed))
    hosts_before = sum(len(hosts_of(manifest)) for manifest in owned.values())
    return Plan(
        tuple(to_write), tuple(to_delete), tuple(changes), hosts_before, removed_total, tuple(shrinking)
    )


def _workloads(manifest: Mapping[str, Any]) -> str:
    metadata = manifest.get("metadata") or {}
    names = (
        (metadata.get("annotations") or {}).get("remixer.io/workloads") or metadata.get("name", "")
    ).split(",")
    return ", ".join(f"{metadata.get('namespace')}/{name}" for name in names)


def volume_refusal(*, edges: int, last_edges: int | None, min_ratio: float) -> str | None:
    """No write when the source returned nothing, or far less than the last good run."""
    if edges == 0:
        return "Prometheus returned no call edges; refusing to write (is the window or selector wrong?)"
    if last_edges and edges < last_edges * min_ratio:
        return (
            f"Prometheus returned {edges} call edges, less than {min_ratio:.0%} of the last good run's "
            f"{last_edges}; refusing to write"
        )
    return None


def removal_refusal(
    plan: Plan, *, max_percent: float, max_percent_per_workload: float = 100.0, force: bool
) -> str | None:
    """Mesh-wide: too large a share of all scoped hosts removed; per workload: too large a share of one
    scope's hosts (one workload losing most of its hosts passes the mesh-wide guard in a large mesh)."""
    if force:
        return None
    reasons = []
    if plan.hosts_before:
        percent = 100.0 * plan.hosts_removed / plan.hosts_before
        if percent > max_percent:
            reasons.append(
                f"the run would remove {plan.hosts_removed} of {plan.hosts_before} scoped hosts "
                f"({percent:.1f}% > {max_percent:g}%)"
            )
    over = [
        f"{workloads} ({removed} of {before})"
        for workloads, removed, before in plan.shrinking
        if 100.0 * removed / before > max_percent_per_workload
    ]
    if over:
        reasons.append(
            f"it would remove more than {max_percent_per_workload:g}% of the hosts of {'; '.join(over)}"
        )
    if not reasons:
        return None
    return "; ".join(reasons) + "; rerun with --force if that is intended"
