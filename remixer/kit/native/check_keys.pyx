# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Decision-cache keys read straight from CheckRequest wire bytes: a cache hit needs no upb message.

A key holds the raw bytes of every field the snapshot's referenced attributes derive from (request.path
for request.query.*, source.principal and x-forwarded-client-cert for source.namespace, ...), each with
its presence. Equal keys mean equal attribute values, so a hit answers what evaluation would; unequal
keys may still hold equal values (another varint spelling), which only costs a miss.

A key is given only for the shape Envoy sends, read exactly as upb would merge it (the last of a
field wins, repeated messages merge, the last map entry for a key wins). Anything else -- a field this
reader does not know, another wire type, a oneof case it does not follow, metadata, a group, invalid
UTF-8 in any string, truncation -- gives None, and the caller takes the upb path, which decides it as
before. tests/policy/test_checkwire.py holds the keys to the attribute values upb yields.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memcmp

from remixer.kit.native.wire cimport OK, Span, read_span, read_tag, read_text, read_varint


cdef extern from "Python.h":
    bytes PyBytes_FromStringAndSize(const char* v, Py_ssize_t n)
    str PyUnicode_DecodeUTF8(const char* s, Py_ssize_t n, const char* errors)


cdef enum:  # the fixed fields a key can hold
    S_ADDRESS = 0
    S_SERVICE
    S_PRINCIPAL
    D_ADDRESS
    D_PORT
    D_SERVICE
    HTTP_ID
    METHOD
    PATH
    HOST
    SCHEME
    N_FIELDS

cdef enum:  # the maps a key can read entries of
    HEADERS = 0
    S_LABELS
    D_LABELS
    CONTEXT
    N_MAPS

cdef enum:
    MAX_NAMES = 64
    MAX_ENTRIES = 256  # map entries read_input takes (more: the upb path)
    REFUSED = 1  # not a shape this reader vouches for: take the upb path

# The tags of the fields read (check_fields.txt), from Envoy's descriptors.
include "_check_fields.pxi"

# Attribute -> the fixed fields and map entries its value is computed from (policy.core.attributes).
_FIELDS = {
    "source.address": (S_ADDRESS,),
    "source.principal": (S_PRINCIPAL,),
    "source.trust_domain": (S_PRINCIPAL,),
    "source.namespace": (S_PRINCIPAL,),
    "source.service_account": (S_PRINCIPAL,),
    "source.service": (S_SERVICE,),
    "destination.address": (D_ADDRESS,),
    "destination.port": (D_PORT,),
    "destination.host": (HOST,),
    "destination.service": (D_SERVICE,),
    "request.id": (HTTP_ID,),
    "request.method": (METHOD,),
    "request.path": (PATH,),
    "request.url": (PATH,),
    "request.scheme": (SCHEME,),
}
_ENTRIES = {  # attribute -> map entries it reads, besides its fixed fields
    "source.principal": ((HEADERS, "x-forwarded-client-cert"),),
    "source.trust_domain": ((HEADERS, "x-forwarded-client-cert"),),
    "source.namespace": ((HEADERS, "x-forwarded-client-cert"),),
    "source.service_account": ((HEADERS, "x-forwarded-client-cert"),),
    "request.id": ((HEADERS, "x-request-id"),),
}
_FAMILIES = {  # attribute prefix -> the map its suffix names an entry of
    "request.headers.": HEADERS,
    "source.labels.": S_LABELS,
    "destination.labels.": D_LABELS,
    "context.": CONTEXT,
}


cdef struct Name:
    const uint8_t* ptr
    Py_ssize_t len
    int map  # HEADERS, S_LABELS, ...


cdef struct Found:
    Span fields[N_FIELDS]
    bint has_field[N_FIELDS]
    # Keys: the wanted map entries (names) and the values found for them.
    const Name* names
    int n_names
    bint any_map[N_MAPS]
    Span entries[MAX_NAMES]
    bint has_entry[MAX_NAMES]
    # read_input: every map entry, in wire order.
    bint collect
    int n_all
    Span all_keys[MAX_ENTRIES]
    Span all_values[MAX_ENTRIES]
    uint8_t all_maps[MAX_ENTRIES]


cdef class KeyReader:
    """Builds decision-cache keys for one snapshot's referenced attributes.

    `usable` is False when an attribute's sources are beyond this reader (the caller then keys on the
    attribute values as before)."""

    cdef readonly bint usable
    cdef bint wanted[N_FIELDS]
    cdef Name names[MAX_NAMES]
    cdef int n_names
    cdef bint any_map[N_MAPS]
    cdef list _keep  # the bytes `names` point into

    def __init__(self, attributes, *, str jwt_header):
        cdef int i
        cdef bytes raw
        for i in range(N_FIELDS):
            self.wanted[i] = False
        for i in range(N_MAPS):
            self.any_map[i] = False
        self.n_names = 0
        self._keep = []
        self.usable = True
        for name in attributes:
            entries = list(_ENTRIES.get(name, ()))
            fields = _FIELDS.get(name)
            if name.startswith("request.query."):
                fields = (PATH,)
            elif name.startswith("request.jwt."):
                fields = ()
                entries.append((HEADERS, jwt_header))
            elif fields is None:
                for prefix, family in _FAMILIES.items():
                    if name.startswith(prefix):
                        fields = ()
                        entries.append((family, name[len(prefix):]))
                        break
            if fields is None:
                self.usable = False
                return
            for i in fields:
                self.wanted[i] = True
            for family, entry in entries:
                raw = entry.encode()
                if (family, raw) in self._keep:
                    continue
                if self.n_names == MAX_NAMES:
                    self.usable = False
                    return
                self._keep.append((family, raw))
                self.names[self.n_names].ptr = <const uint8_t*>PyBytes_AS_STRING(raw)
                self.names[self.n_names].len = PyBytes_GET_SIZE(raw)
                self.names[self.n_names].map = family
                self.any_map[family] = True
                self.n_names += 1

    def key(self, bytes data):
        """The key of a CheckRequest's bytes, or None: not a shape this reader vouches for."""
        cdef Found found
        if not self.usable or scan(data, self, False, &found):
            return None
        return self._pack(&found)

    cdef bytes _pack(self, Found* found):
        # Per source, in plan order: 0 (absent) or 1, a 4-byte length and the raw bytes.
        cdef Py_ssize_t size = 0
        cdef int i
        for i in range(N_FIELDS):
            if self.wanted[i]:
                size += 5 + found.fields[i].len if found.has_field[i] else 1
        for i in range(self.n_names):
            size += 5 + found.entries[i].len if found.has_entry[i] else 1
        cdef bytes out = PyBytes_FromStringAndSize(NULL, size)
        cdef char* w = PyBytes_AS_STRING(out)
        for i in range(N_FIELDS):
            if self.wanted[i]:
                w = put_source(w, found.has_field[i], found.fields[i])
        for i in range(self.n_names):
            w = put_source(w, found.has_entry[i], found.entries[i])
        return out


def read_input(bytes data):
    """CheckInput's fields (in its order) from a CheckRequest's bytes, or None: take the upb path.

    The same values as grpc_authz.check_input on the upb message, maps as plain dicts."""
    cdef Found found
    cdef int i
    if scan(data, _NOTHING, True, &found):
        return None
    cdef list maps = [{} for i in range(N_MAPS)]
    cdef dict target
    for i in range(found.n_all):
        target = maps[found.all_maps[i]]
        target[_text(found.all_keys[i])] = _text(found.all_values[i])
    cdef dict headers = maps[HEADERS]
    return (
        _field(&found, METHOD),
        _field(&found, PATH),
        _field(&found, HOST),
        _field(&found, SCHEME),
        headers.get("x-request-id") or _field(&found, HTTP_ID),
        headers,
        _field(&found, S_ADDRESS),
        _field(&found, S_PRINCIPAL),
        _field(&found, S_SERVICE),
        maps[S_LABELS],
        _field(&found, D_ADDRESS),
        _port(&found),
        _field(&found, D_SERVICE),
        maps[D_LABELS],
        maps[CONTEXT],
    )


# The map entries log_fields reads: [0] x-request-id, [1] x-forwarded-client-cert.
cdef KeyReader _LOGGED = KeyReader(("request.id", "source.principal"), jwt_header="")
cdef KeyReader _NOTHING = KeyReader((), jwt_header="")


def log_fields(bytes data):
    """A decision record's fields, or None (take the upb path): request id, source address, principal,
    the x-forwarded-client-cert header (None when absent), source service, host, destination service
    and port, method, path. The principal falls back to XFCC only through the caller's
    attributes.peer_principal, which reads it as rules do."""
    cdef Found found
    if scan(data, _LOGGED, False, &found):
        return None
    cdef str request_id = _text(found.entries[0]) if found.has_entry[0] else ""
    return (
        request_id or _field(&found, HTTP_ID),
        _field(&found, S_ADDRESS),
        _field(&found, S_PRINCIPAL),
        _text(found.entries[1]) if found.has_entry[1] else None,
        _field(&found, S_SERVICE),
        _field(&found, HOST),
        _field(&found, D_SERVICE),
        _port(&found),
        _field(&found, METHOD),
        _field(&found, PATH),
    )


cdef uint32_t _port(Found* found) noexcept:
    cdef uint64_t port = 0
    cdef const uint8_t* p
    if found.has_field[D_PORT]:
        p = found.fields[D_PORT].ptr
        read_varint(&p, p + found.fields[D_PORT].len, &port)
    return <uint32_t>port  # uint32: upb keeps the low 32 bits


cdef inline str _text(Span s):
    return PyUnicode_DecodeUTF8(<const char*>s.ptr, s.len, NULL)  # already validated


cdef inline str _field(Found* found, int field):
    return _text(found.fields[field]) if found.has_field[field] else ""


cdef int scan(bytes data, KeyReader reader, bint collect, Found* found) noexcept:
    """Walk a CheckRequest into `found`: the reader's map entries, or every entry when `collect`."""
    cdef int i
    cdef Span whole
    found.names = reader.names
    found.n_names = reader.n_names
    for i in range(N_MAPS):
        found.any_map[i] = reader.any_map[i]
    found.collect = collect
    found.n_all = 0
    for i in range(N_FIELDS):
        found.has_field[i] = False
    for i in range(found.n_names):
        found.has_entry[i] = False
    whole.ptr = <const uint8_t*>PyBytes_AS_STRING(data)
    whole.len = PyBytes_GET_SIZE(data)
    return scan_check_request(whole, found)


cdef inline char* put_source(char* w, bint present, Span value) noexcept:
    cdef uint32_t n = <uint32_t>value.len
    if not present:
        w[0] = 0
        return w + 1
    w[0] = 1
    memcpy(w + 1, &n, 4)
    if n:
        memcpy(w + 5, value.ptr, n)
    return w + 5 + n


# ---- the walk: one function per message, each refusing what it does not know --------------------


cdef inline int text(const uint8_t** p, const uint8_t* end, Found* found, int field) noexcept:
    cdef Span value
    if read_text(p, end, &value):
        return REFUSED
    if field >= 0:
        found.fields[field] = value
        found.has_field[field] = True
    return OK


cdef inline int varint(const uint8_t** p, const uint8_t* end, Found* found, int field) noexcept:
    cdef const uint8_t* start = p[0]
    cdef uint64_t ignored
    if read_varint(p, end, &ignored):
        return REFUSED
    if field >= 0:
        found.fields[field].ptr = start
        found.fields[field].len = p[0] - start
        found.has_field[field] = True
    return OK


cdef inline int message(const uint8_t** p, const uint8_t* end, Span* out) noexcept:
    return REFUSED if read_span(p, end, out) else OK


cdef int scan_check_request(Span msg, Found* found) noexcept:
    cdef const uint8_t* p = msg.ptr
    cdef const uint8_t* end = msg.ptr + msg.len
    cdef uint32_t tag
    cdef Span sub
    while p < end:
        if read_tag(&p, end, &tag) or tag != T_CheckRequest_attributes:
            return REFUSED
        if message(&p, end, &sub) or scan_attributes(sub, found):
            return REFUSED
    return OK


cdef int scan_attributes(Span msg, Found* found) noexcept:
    cdef const uint8_t* p = msg.ptr
    cdef const uint8_t* end = msg.ptr + msg.len
    cdef uint32_t tag
    cdef Span sub
    cdef int err
    while p < end:
        if read_tag(&p, end, &tag) or tag & 7 != 2:
            return REFUSED
        if message(&p, end, &sub):
            return REFUSED
        if tag == T_AttributeContext_source:
            err = scan_peer(sub, found, S_ADDRESS, S_SERVICE, S_PRINCIPAL, S_LABELS)
        elif tag == T_AttributeContext_destination:
            err = scan_peer(sub, found, D_ADDRESS, D_SERVICE, -1, D_LABELS)
        elif tag == T_AttributeContext_request:
            err = scan_request(sub, found)
        elif tag == T_AttributeContext_context_extensions:
            err = scan_entry(sub, found, CONTEXT)
        elif tag == T_AttributeContext_metadata_context or tag == T_AttributeContext_route_metadata_context:
            err = REFUSED if sub.len else OK  # Envoy sends them empty unless configured to fill them
        elif tag == T_AttributeContext_tls_session:
            err = scan_tls_session(sub)
        else:
            return REFUSED
        if err:
            return REFUSED
    return OK


cdef int scan_peer(
    Span msg, Found* found, int address, int service, int principal, int labels
) noexcept:
    cdef const uint8_t* p = msg.ptr
    cdef const uint8_t* end = msg.ptr + msg.len
    cdef uint32_t tag
    cdef Span sub
    cdef int err
    while p < end:
        if read_tag(&p, end, &tag):
            return REFUSED
        if tag == T_Peer_address:
            err = message(&p, end, &sub) or scan_address(sub, found, address)
        elif tag == T_Peer_service:
            err = text(&p, end, found, service)
        elif tag == T_Peer_labels:
            err = message(&p, end, &sub) or scan_entry(sub, found, labels)
        elif tag == T_Peer_principal:
            err = text(&p, end, found, principal)
        elif tag == T_Peer_certificate:
            err = text(&p, end, found, -1)
        else:
            return REFUSED
        if err:
            return REFUSED
    return OK


cdef int scan_address(Span msg, Found* found, int address) noexcept:
    cdef const uint8_t* p = msg.ptr
    cdef const uint8_t* end = msg.ptr + msg.len
    cdef uint32_t tag
    cdef Span sub
    while p < end:
        # socket_address only: pipe and envoy_internal_address share its oneof.
        if read_tag(&p, end, &tag) or tag != T_Address_socket_address:
            return REFUSED
        if message(&p, end, &sub) or scan_socket_address(sub, found, address):
            return REFUSED
    return OK


cdef int scan_socket_address(Span msg, Found* found, int address) noexcept:
    cdef const uint8_t* p = msg.ptr
    cdef const uint8_t* end = msg.ptr + msg.len
    cdef uint32_t tag
    cdef int err
    # Destination port: the field after the address in the enum. named_port (4) shares the port's
    # oneof and is refused.
    cdef int port = D_PORT if address == D_ADDRESS else -1
    while p < end:
        if read_tag(&p, end, &tag):
            return REFUSED
        if tag == T_SocketAddress_protocol or tag == T_SocketAddress_ipv4_compat:
            err = varint(&p, end, found, -1)
        elif tag == T_SocketAddress_address:
            err = text(&p, end, found, address)
        elif tag == T_SocketAddress_port_value:
            err = varint(&p, end, found, port)
        elif tag == T_SocketAddress_resolver_name:
            err = text(&p, end, found, -1)
        else:
            return REFUSED
        if err:
            return REFUSED
    return OK


cdef int scan_request(Span msg, Found* found) noexcept:
    cdef const uint8_t* p = msg.ptr
    cdef const uint8_t* end = msg.ptr + msg.len
    cdef uint32_t tag
    cdef Span sub
    while p < end:
        if read_tag(&p, end, &tag) or message(&p, end, &sub):
            return REFUSED
        if tag == T_Request_time:
            if scan_timestamp(sub):
                return REFUSED
        elif tag == T_Request_http:
            if scan_http(sub, found):
                return REFUSED
        else:
            return REFUSED
    return OK


cdef int scan_timestamp(Span msg) noexcept:
    cdef const uint8_t* p = msg.ptr
    cdef const uint8_t* end = msg.ptr + msg.len
    cdef uint32_t tag
    cdef uint64_t ignored
    while p < end:
        if read_tag(&p, end, &tag) or (tag != T_Timestamp_seconds and tag != T_Timestamp_nanos):
            return REFUSED
        if read_varint(&p, end, &ignored):
            return REFUSED
    return OK


cdef int scan_http(Span msg, Found* found) noexcept:
    cdef const uint8_t* p = msg.ptr
    cdef const uint8_t* end = msg.ptr + msg.len
    cdef uint32_t tag
    cdef Span sub
    cdef int err
    while p < end:
        if read_tag(&p, end, &tag):
            return REFUSED
        if tag == T_HttpRequest_id:
            err = text(&p, end, found, HTTP_ID)
        elif tag == T_HttpRequest_method:
            err = text(&p, end, found, METHOD)
        elif tag == T_HttpRequest_headers:
            err = message(&p, end, &sub) or scan_entry(sub, found, HEADERS)
        elif tag == T_HttpRequest_path:
            err = text(&p, end, found, PATH)
        elif tag == T_HttpRequest_host:
            err = text(&p, end, found, HOST)
        elif tag == T_HttpRequest_scheme:
            err = text(&p, end, found, SCHEME)
        elif (
            tag == T_HttpRequest_query
            or tag == T_HttpRequest_fragment
            or tag == T_HttpRequest_protocol
            or tag == T_HttpRequest_body
        ):
            err = text(&p, end, found, -1)
        elif tag == T_HttpRequest_size:
            err = varint(&p, end, found, -1)
        elif tag == T_HttpRequest_raw_body:  # bytes, not checked
            err = message(&p, end, &sub)
        else:  # header_map (encode_raw_headers) among others
            return REFUSED
        if err:
            return REFUSED
    return OK


cdef int scan_tls_session(Span msg) noexcept:
    cdef const uint8_t* p = msg.ptr
    cdef const uint8_t* end = msg.ptr + msg.len
    cdef uint32_t tag
    cdef Span ignored
    while p < end:
        if read_tag(&p, end, &tag) or tag != T_TLSSession_sni or read_text(&p, end, &ignored):
            return REFUSED
    return OK


cdef int scan_entry(Span msg, Found* found, int map) noexcept:
    """One map<string, string> entry; the last entry with a wanted key sets its value."""
    cdef const uint8_t* p = msg.ptr
    cdef const uint8_t* end = msg.ptr + msg.len
    cdef uint32_t tag
    cdef Span key
    cdef Span value
    cdef const Name* name
    cdef int i
    key.ptr = value.ptr = NULL
    key.len = value.len = 0
    while p < end:
        if read_tag(&p, end, &tag):
            return REFUSED
        if tag == T_MAP_KEY:
            if read_text(&p, end, &key):
                return REFUSED
        elif tag == T_MAP_VALUE:
            if read_text(&p, end, &value):
                return REFUSED
        else:
            return REFUSED
    if found.collect:
        if found.n_all == MAX_ENTRIES:
            return REFUSED
        found.all_keys[found.n_all] = key
        found.all_values[found.n_all] = value
        found.all_maps[found.n_all] = map
        found.n_all += 1
    elif found.any_map[map]:
        for i in range(found.n_names):
            name = &found.names[i]
            if name.map == map and name.len == key.len and (
                key.len == 0 or memcmp(name.ptr, key.ptr, key.len) == 0
            ):
                found.entries[i] = value
                found.has_entry[i] = True
    return OK
