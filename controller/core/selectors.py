"""Pod selectors from the cluster's own objects, checked to select exactly one workload's pods.

A workload (Deployment, StatefulSet, DaemonSet) is selected by its spec.selector.matchLabels when
those select no pod of another workload in the namespace; otherwise by all of its pod-template
labels when those do not. A workload with pods but none of those owners (a CronJob, a bare pod) is
selected by the canonical labels Istio's injector put on its pods, else by all labels its pods share.
Otherwise it gets no selector and the reason (a guess could scope the
wrong pods, and two Sidecars selecting one pod is undefined behaviour in Istio).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from controller.structs import WorkloadInfo, WorkloadRef

Labels = Mapping[str, str]
Selector = tuple[tuple[str, str], ...]
# istio/istio pkg/kube/util.go GetDeployMetaFromPod: a Job <cronjob>-<8 to 10 digits> belongs to the CronJob.
# Labels Kubernetes sets per pod or per Job run: never part of a workload's selector.
_PER_POD_LABELS = frozenset(
    {
        "pod-template-hash",
        "controller-revision-hash",
        "statefulset.kubernetes.io/pod-name",
        "apps.kubernetes.io/pod-index",
        "controller-uid",
        "job-name",
        "batch.kubernetes.io/controller-uid",
        "batch.kubernetes.io/job-name",
        "batch.kubernetes.io/job-completion-index",
    }
)
_INJECTOR_LABELS = frozenset({"service.istio.io/canonical-name", "service.istio.io/canonical-revision"})
_CRONJOB_JOB = re.compile(r"(.+)-[0-9]{8,10}")


@dataclass(frozen=True, slots=True)
class PodTemplateOwner:
    workload: WorkloadRef
    match_labels: tuple[tuple[str, str], ...]
    template_labels: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class PodLabels:
    namespace: str
    workload: str  # as Istio names the pod's workload
    labels: tuple[tuple[str, str], ...]


def pod_workload(name: str, generate_name: str, labels: Labels, controller: tuple[str, str] | None) -> str:
    """The workload name Istio derives for a pod (istio/istio pkg/kube/util.go GetDeployMetaFromPod)."""
    if not generate_name or controller is None:
        return name
    kind, owner = controller
    template_hash = labels.get("pod-template-hash", "")
    if kind == "ReplicaSet" and template_hash and owner.endswith(template_hash):
        return owner.removesuffix(f"-{template_hash}")
    if kind == "Job" and (match := _CRONJOB_JOB.fullmatch(owner)):
        return match.group(1)
    return owner


def exact_selectors(
    owners: Iterable[PodTemplateOwner], pods: Iterable[PodLabels]
) -> dict[WorkloadRef, WorkloadInfo]:
    owner_list = list(owners)
    pods = list(pods)
    # Workloads with pods but no Deployment/StatefulSet/DaemonSet (Jobs, CronJobs, bare pods, other
    # controllers): their candidates are the injector's labels, then whatever all their pods share.
    owned = {owner.workload for owner in owner_list}
    shared: dict[WorkloadRef, frozenset[tuple[str, str]]] = {}
    for pod in pods:
        ref = WorkloadRef(pod.namespace, pod.workload)
        if ref not in owned:
            labels = frozenset(pair for pair in pod.labels if pair[0] not in _PER_POD_LABELS)
            shared[ref] = shared[ref] & labels if ref in shared else labels
    # Other workloads' pods that exist, and the pods other workloads' templates would make.
    holders: dict[tuple[str, tuple[str, str]], list[tuple[str, frozenset[tuple[str, str]]]]] = {}

    def hold(namespace: str, workload: str, labels: Iterable[tuple[str, str]]) -> None:
        label_set = frozenset(labels)
        for pair in label_set:
            holders.setdefault((namespace, pair), []).append((workload, label_set))

    for pod in pods:
        hold(pod.namespace, pod.workload, pod.labels)
    for owner in owner_list:
        hold(owner.workload.namespace, owner.workload.name, owner.template_labels)

    def others_selected(ref: WorkloadRef, selector: Selector) -> set[str]:
        if not selector:
            return {"every pod of the namespace"}
        rarest = min((holders.get((ref.namespace, pair), []) for pair in selector), key=len)
        wanted = set(selector)
        return {workload for workload, labels in rarest if workload != ref.name and wanted <= labels}

    def first_exact(ref: WorkloadRef, candidates: Iterable[Selector], whose: str) -> WorkloadInfo:
        clash = {"every pod of the namespace"}
        for candidate in candidates:
            clash = others_selected(ref, candidate)
            if not clash:
                return WorkloadInfo(ref, candidate, from_kubernetes=True)
        problem = f"{whose} labels also select pods of {', '.join(sorted(clash))}"
        return WorkloadInfo(ref, (), from_kubernetes=True, problem=problem)

    infos = {}
    for owner in owner_list:
        template = tuple(sorted({*owner.template_labels, *owner.match_labels}))
        infos[owner.workload] = first_exact(
            owner.workload, (owner.match_labels, template), "its pod-template"
        )
    for ref, labels in sorted(shared.items()):
        injected = tuple(sorted(pair for pair in labels if pair[0] in _INJECTOR_LABELS))
        infos[ref] = first_exact(ref, [c for c in (injected, tuple(sorted(labels))) if c], "its pods'")
    return infos
