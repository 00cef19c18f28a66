from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Duration(_message.Message):
    __slots__ = ("seconds", "nanos")
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    NANOS_FIELD_NUMBER: _ClassVar[int]
    seconds: int
    nanos: int
    def __init__(self, seconds: _Optional[int] = ..., nanos: _Optional[int] = ...) -> None: ...

class StringPair(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class AnyPair(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: bytes
    def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...

class Common(_message.Message):
    __slots__ = ("downstream_local_address", "tls_properties", "start_time", "time_to_last_downstream_tx_byte", "upstream_remote_address", "upstream_cluster", "response_flags", "filter_state_objects", "duration", "stream_id", "access_log_type")
    DOWNSTREAM_LOCAL_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TLS_PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_LAST_DOWNSTREAM_TX_BYTE_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_REMOTE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_CLUSTER_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FLAGS_FIELD_NUMBER: _ClassVar[int]
    FILTER_STATE_OBJECTS_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    ACCESS_LOG_TYPE_FIELD_NUMBER: _ClassVar[int]
    downstream_local_address: bytes
    tls_properties: bytes
    start_time: Duration
    time_to_last_downstream_tx_byte: Duration
    upstream_remote_address: bytes
    upstream_cluster: str
    response_flags: bytes
    filter_state_objects: _containers.RepeatedCompositeFieldContainer[AnyPair]
    duration: Duration
    stream_id: bytes
    access_log_type: int
    def __init__(self, downstream_local_address: _Optional[bytes] = ..., tls_properties: _Optional[bytes] = ..., start_time: _Optional[_Union[Duration, _Mapping]] = ..., time_to_last_downstream_tx_byte: _Optional[_Union[Duration, _Mapping]] = ..., upstream_remote_address: _Optional[bytes] = ..., upstream_cluster: _Optional[str] = ..., response_flags: _Optional[bytes] = ..., filter_state_objects: _Optional[_Iterable[_Union[AnyPair, _Mapping]]] = ..., duration: _Optional[_Union[Duration, _Mapping]] = ..., stream_id: _Optional[bytes] = ..., access_log_type: _Optional[int] = ...) -> None: ...

class Request(_message.Message):
    __slots__ = ("request_method", "authority", "path", "user_agent", "request_id", "request_headers_bytes", "request_body_bytes", "request_headers")
    REQUEST_METHOD_FIELD_NUMBER: _ClassVar[int]
    AUTHORITY_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    USER_AGENT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_HEADERS_BYTES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_BODY_BYTES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_HEADERS_FIELD_NUMBER: _ClassVar[int]
    request_method: int
    authority: str
    path: str
    user_agent: str
    request_id: str
    request_headers_bytes: int
    request_body_bytes: int
    request_headers: _containers.RepeatedCompositeFieldContainer[StringPair]
    def __init__(self, request_method: _Optional[int] = ..., authority: _Optional[str] = ..., path: _Optional[str] = ..., user_agent: _Optional[str] = ..., request_id: _Optional[str] = ..., request_headers_bytes: _Optional[int] = ..., request_body_bytes: _Optional[int] = ..., request_headers: _Optional[_Iterable[_Union[StringPair, _Mapping]]] = ...) -> None: ...

class Response(_message.Message):
    __slots__ = ("response_code", "response_headers_bytes", "response_body_bytes", "response_headers", "response_trailers")
    RESPONSE_CODE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_HEADERS_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_BODY_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_HEADERS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_TRAILERS_FIELD_NUMBER: _ClassVar[int]
    response_code: bytes
    response_headers_bytes: int
    response_body_bytes: int
    response_headers: _containers.RepeatedCompositeFieldContainer[StringPair]
    response_trailers: _containers.RepeatedCompositeFieldContainer[StringPair]
    def __init__(self, response_code: _Optional[bytes] = ..., response_headers_bytes: _Optional[int] = ..., response_body_bytes: _Optional[int] = ..., response_headers: _Optional[_Iterable[_Union[StringPair, _Mapping]]] = ..., response_trailers: _Optional[_Iterable[_Union[StringPair, _Mapping]]] = ...) -> None: ...

class HttpEntry(_message.Message):
    __slots__ = ("common_properties", "request", "response")
    COMMON_PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    common_properties: Common
    request: Request
    response: Response
    def __init__(self, common_properties: _Optional[_Union[Common, _Mapping]] = ..., request: _Optional[_Union[Request, _Mapping]] = ..., response: _Optional[_Union[Response, _Mapping]] = ...) -> None: ...

class Connection(_message.Message):
    __slots__ = ("received_bytes", "sent_bytes")
    RECEIVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    SENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    received_bytes: int
    sent_bytes: int
    def __init__(self, received_bytes: _Optional[int] = ..., sent_bytes: _Optional[int] = ...) -> None: ...

class TcpEntry(_message.Message):
    __slots__ = ("common_properties", "connection_properties")
    COMMON_PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    common_properties: Common
    connection_properties: Connection
    def __init__(self, common_properties: _Optional[_Union[Common, _Mapping]] = ..., connection_properties: _Optional[_Union[Connection, _Mapping]] = ...) -> None: ...

class HttpEntries(_message.Message):
    __slots__ = ("log_entry",)
    LOG_ENTRY_FIELD_NUMBER: _ClassVar[int]
    log_entry: _containers.RepeatedCompositeFieldContainer[HttpEntry]
    def __init__(self, log_entry: _Optional[_Iterable[_Union[HttpEntry, _Mapping]]] = ...) -> None: ...

class TcpEntries(_message.Message):
    __slots__ = ("log_entry",)
    LOG_ENTRY_FIELD_NUMBER: _ClassVar[int]
    log_entry: _containers.RepeatedCompositeFieldContainer[TcpEntry]
    def __init__(self, log_entry: _Optional[_Iterable[_Union[TcpEntry, _Mapping]]] = ...) -> None: ...

class StreamAccessLogsMessage(_message.Message):
    __slots__ = ("identifier", "http_logs", "tcp_logs")
    IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    HTTP_LOGS_FIELD_NUMBER: _ClassVar[int]
    TCP_LOGS_FIELD_NUMBER: _ClassVar[int]
    identifier: bytes
    http_logs: HttpEntries
    tcp_logs: TcpEntries
    def __init__(self, identifier: _Optional[bytes] = ..., http_logs: _Optional[_Union[HttpEntries, _Mapping]] = ..., tcp_logs: _Optional[_Union[TcpEntries, _Mapping]] = ...) -> None: ...
