from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class RecordPart(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RECORD_PART_UNSPECIFIED: _ClassVar[RecordPart]
    KIND: _ClassVar[RecordPart]
    ENTRY: _ClassVar[RecordPart]

class Carried(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ALL: _ClassVar[Carried]
    HTTP: _ClassVar[Carried]
    TCP: _ClassVar[Carried]
RECORD_PART_UNSPECIFIED: RecordPart
KIND: RecordPart
ENTRY: RecordPart
ALL: Carried
HTTP: Carried
TCP: Carried
PART_FIELD_NUMBER: _ClassVar[int]
part: _descriptor.FieldDescriptor
CARRIED_FIELD_NUMBER: _ClassVar[int]
carried: _descriptor.FieldDescriptor

class AccessRecord(_message.Message):
    __slots__ = ("node_id", "log_name", "reporter", "kind", "source_workload", "source_workload_namespace", "source_principal", "destination_workload", "destination_workload_namespace", "destination_principal", "destination_service", "request_protocol", "connection_security_policy", "start_time_ms", "duration_ms", "upstream_cluster", "response_flags", "request_id", "method", "authority", "path", "user_agent", "response_code", "grpc_status", "request_bytes", "response_bytes", "sent_bytes", "received_bytes")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    LOG_NAME_FIELD_NUMBER: _ClassVar[int]
    REPORTER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SOURCE_WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    SOURCE_WORKLOAD_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_WORKLOAD_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_SERVICE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_SECURITY_POLICY_FIELD_NUMBER: _ClassVar[int]
    START_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_CLUSTER_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FLAGS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    AUTHORITY_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    USER_AGENT_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_CODE_FIELD_NUMBER: _ClassVar[int]
    GRPC_STATUS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    log_name: str
    reporter: str
    kind: str
    source_workload: str
    source_workload_namespace: str
    source_principal: str
    destination_workload: str
    destination_workload_namespace: str
    destination_principal: str
    destination_service: str
    request_protocol: str
    connection_security_policy: str
    start_time_ms: int
    duration_ms: float
    upstream_cluster: str
    response_flags: str
    request_id: str
    method: str
    authority: str
    path: str
    user_agent: str
    response_code: int
    grpc_status: str
    request_bytes: int
    response_bytes: int
    sent_bytes: int
    received_bytes: int
    def __init__(self, node_id: _Optional[str] = ..., log_name: _Optional[str] = ..., reporter: _Optional[str] = ..., kind: _Optional[str] = ..., source_workload: _Optional[str] = ..., source_workload_namespace: _Optional[str] = ..., source_principal: _Optional[str] = ..., destination_workload: _Optional[str] = ..., destination_workload_namespace: _Optional[str] = ..., destination_principal: _Optional[str] = ..., destination_service: _Optional[str] = ..., request_protocol: _Optional[str] = ..., connection_security_policy: _Optional[str] = ..., start_time_ms: _Optional[int] = ..., duration_ms: _Optional[float] = ..., upstream_cluster: _Optional[str] = ..., response_flags: _Optional[str] = ..., request_id: _Optional[str] = ..., method: _Optional[str] = ..., authority: _Optional[str] = ..., path: _Optional[str] = ..., user_agent: _Optional[str] = ..., response_code: _Optional[int] = ..., grpc_status: _Optional[str] = ..., request_bytes: _Optional[int] = ..., response_bytes: _Optional[int] = ..., sent_bytes: _Optional[int] = ..., received_bytes: _Optional[int] = ...) -> None: ...
