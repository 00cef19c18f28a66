"""ALS messages shaped as istio-proxy sends them, per release (sources cited where each part is built).

- Filter-state objects: istiod's envoyHttpAls / envoyTcpAls providers log `downstream_peer` / `upstream_peer`
  (1.24+) or `wasm.downstream_peer` / `wasm.upstream_peer` (before): istio/istio
  pilot/pkg/model/telemetry_logging.go (envoyStateToLog, envoyWasmStateToLog).
- Envoy puts each object in AccessLogCommon.filter_state_objects as serializeAsProto(), swapped in when that
  is already an Any and packed (Any.PackFrom) otherwise: envoyproxy/envoy
  source/extensions/access_loggers/grpc/grpc_access_log_utils.cc (extractCommonAccessLogProperties,
  extractFilterStateData); a key missing from the stream's filter state is taken from the upstream
  connection's, where TCP metadata exchange leaves the upstream peer.
- 1.24: the object is an Istio::Common::WorkloadMetadataObject (istio/proxy release-1.24
  source/extensions/filters/http/peer_metadata/filter.cc setFilterState), serializeAsProto() a Struct of the
  baggage tokens from serializeAsPairs (extensions/common/metadata_object.cc l.63-103): Envoy packs it.
- 1.25-1.28: a CelState of type Protobuf with schema "type.googleapis.com/google.protobuf.Struct" holding
  that Struct's bytes (release-1.28 peer_metadata/filter.cc l.290-305, filter.h peerInfoPrototype l.111;
  network/metadata_exchange/metadata_exchange.cc updatePeer l.275-286); CelState::serializeAsProto() is an
  Any with that type URL and the bytes as value (envoy source/extensions/filters/common/expr/cel_state.cc).
  1.25+ serializeAsProto adds `identity` and `labels` when set (metadata_object.cc release-1.28 l.63-110).
- 1.22-1.23: a CelState of type FlatBuffers holding a Wasm.Common.FlatNode (release-1.23
  peer_metadata/filter.cc l.43-50, 300-325; extensions/common/node_info.fbs); CelState::serializeAsProto()
  packs non-Protobuf values as google.protobuf.BytesValue.
- Node metadata of the reporting proxy: NAME, NAMESPACE, WORKLOAD_NAME, LABELS, CLUSTER_ID, INSTANCE_IPS,
  SERVICE_ACCOUNT, as istio-agent sets them (istio/istio pkg/model/context.go NodeMetadata).
"""

from __future__ import annotations

from typing import Any

import flatbuffers
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2
from google.protobuf import any_pb2, struct_pb2, wrappers_pb2

VERSIONS = ("1.22", "1.24", "1.26", "1.28")
STRUCT_URL = "type.googleapis.com/google.protobuf.Struct"


def node_metadata(workload: str, app: str, ip: str, namespace: str = "bookinfo") -> dict[str, Any]:
    return {
        "NAME": f"{workload}-7d4b9c-x2x",
        "NAMESPACE": namespace,
        "WORKLOAD_NAME": workload,
        "CLUSTER_ID": "Kubernetes",
        "MESH_ID": "cluster.local",
        "SERVICE_ACCOUNT": f"bookinfo-{app}",
        "INSTANCE_IPS": f"{ip},fe80::1",
        "OWNER": f"kubernetes://apis/apps/v1/namespaces/{namespace}/deployments/{workload}",
        "LABELS": {
            "app": app,
            "version": "v1",
            "service.istio.io/canonical-name": app,
            "service.istio.io/canonical-revision": "v1",
        },
    }


def _flat_node(meta: dict[str, Any]) -> bytes:
    """Wasm.Common.FlatNode (node_info.fbs: name 0, namespace 1, labels 2, owner 3, workload_name 4,
    cluster_id 9) as istio-proxy's extractNodeFlatBufferFromStruct writes it."""
    b = flatbuffers.Builder(512)
    pairs = []
    for key, value in sorted(meta["LABELS"].items()):  # a (key) field: the vector is sorted
        k, v = b.CreateString(key), b.CreateString(value)
        b.StartObject(2)
        b.PrependUOffsetTRelativeSlot(0, k, 0)
        b.PrependUOffsetTRelativeSlot(1, v, 0)
        pairs.append(b.EndObject())
    b.StartVector(4, len(pairs), 4)
    for offset in reversed(pairs):
        b.PrependUOffsetTRelative(offset)
    labels = b.EndVector()
    strings = {
        slot: b.CreateString(meta[key])
        for slot, key in (
            (0, "NAME"),
            (1, "NAMESPACE"),
            (3, "OWNER"),
            (4, "WORKLOAD_NAME"),
            (9, "CLUSTER_ID"),
        )
    }
    b.StartObject(12)
    for slot, offset in strings.items():
        b.PrependUOffsetTRelativeSlot(slot, offset, 0)
    b.PrependUOffsetTRelativeSlot(2, labels, 0)
    b.Finish(b.EndObject())
    return bytes(b.Output())


def peer_tokens(meta: dict[str, Any], version: str, identity: str = "") -> dict[str, Any]:
    """WorkloadMetadataObject::serializeAsProto's Struct for a peer whose node metadata is meta (what
    convertStructToWorkloadMetadata keeps of the exchanged metadata: type from OWNER, canonical labels)."""
    labels = meta["LABELS"]
    fields: dict[str, Any] = {
        "type": "deployment",
        "workload": meta["WORKLOAD_NAME"],
        "name": meta["NAME"],
        "cluster": meta["CLUSTER_ID"],
        "namespace": meta["NAMESPACE"],
        "service": labels["service.istio.io/canonical-name"],
        "revision": labels["service.istio.io/canonical-revision"],
        "app": labels["app"],
        "version": labels["version"],
    }
    if identity and version >= "1.25":
        fields["identity"] = identity
    return fields


def peer_object(meta: dict[str, Any], version: str, *, identity: str = "") -> tuple[str, bytes]:
    """(filter-state key suffix prefix, serialized Any) of one peer as `version` logs it."""
    if version < "1.24":
        packed = any_pb2.Any()
        packed.Pack(wrappers_pb2.BytesValue(value=_flat_node(meta)))
        return "wasm.", packed.SerializeToString()
    struct = struct_pb2.Struct()
    struct.update(peer_tokens(meta, version, identity))
    if version == "1.24":
        packed = any_pb2.Any()
        packed.Pack(struct)  # Envoy's any.PackFrom(*serialized_proto)
    else:
        packed = any_pb2.Any(type_url=STRUCT_URL, value=struct.SerializeToString())  # CelState's own Any
    return "", packed.SerializeToString()


def first_message(meta: dict[str, Any], log_name: str, ip: str) -> als_pb2.StreamAccessLogsMessage:
    msg = als_pb2.StreamAccessLogsMessage()
    msg.identifier.log_name = log_name
    msg.identifier.node.id = (
        f"sidecar~{ip}~{meta['NAME']}.{meta['NAMESPACE']}~{meta['NAMESPACE']}.svc.cluster.local"
    )
    node = struct_pb2.Struct()
    node.update(meta)
    msg.identifier.node.metadata.CopyFrom(node)
    return msg


def set_peer(
    common: accesslog_pb2.AccessLogCommon, side: str, meta: dict[str, Any], version: str, identity: str = ""
) -> None:
    prefix, raw = peer_object(meta, version, identity=identity)
    common.filter_state_objects[f"{prefix}{side}_peer"].ParseFromString(raw)


def address(msg: Any, ip: str, port: int) -> None:
    msg.socket_address.address = ip
    msg.socket_address.port_value = port
