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
from libc.string cimport memcmp, memcpy, memset

from remixer.kit.native.wire cimport (
    E_DEPTH,
    E_MEMORY,
    E_UNKNOWN,
    OK,
    Span,
    read_span,
    read_tag,
    read_text,
    read_varint,
)


cdef extern from "Python.h":
    bytes PyBytes_FromStringAndSize(const char* v, Py_ssize_t n)
    str PyUnicode_DecodeUTF8(const char* s, Py_ssize_t n, const char* errors)


# The fields read (check_fields.txt), from Envoy's descriptors: their tags, the CheckFields struct, the
# MAP_* numbers of the maps whose entries on_entry gets, and a scan_<Message> per message, each refusing
# any field the table does not list.
include "_check_fields.pxi"

cdef enum:  # the fixed fields a key can hold, in the order a key packs them
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

cdef enum:
    MAX_NAMES = 64
    MAX_ENTRIES = 256  # map entries read_input takes (more: the upb path)
    DEPTH_LIMIT = 100  # upb's; the table's nesting is far below it

# Where each fixed field sits in CheckFields (the members check_fields.txt names).
cdef CheckFields _LAYOUT
cdef Py_ssize_t AT[N_FIELDS]
AT[S_ADDRESS] = <char*>&_LAYOUT.source_address - <char*>&_LAYOUT
AT[S_SERVICE] = <char*>&_LAYOUT.source_service - <char*>&_LAYOUT
AT[S_PRINCIPAL] = <char*>&_LAYOUT.source_principal - <char*>&_LAYOUT
AT[D_ADDRESS] = <char*>&_LAYOUT.destination_address - <char*>&_LAYOUT
AT[D_PORT] = <char*>&_LAYOUT.destination_port - <char*>&_LAYOUT
AT[D_SERVICE] = <char*>&_LAYOUT.destination_service - <char*>&_LAYOUT
AT[HTTP_ID] = <char*>&_LAYOUT.http_id - <char*>&_LAYOUT
AT[METHOD] = <char*>&_LAYOUT.method - <char*>&_LAYOUT
AT[PATH] = <char*>&_LAYOUT.path - <char*>&_LAYOUT
AT[HOST] = <char*>&_LAYOUT.host - <char*>&_LAYOUT
AT[SCHEME] = <char*>&_LAYOUT.scheme - <char*>&_LAYOUT

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
    "source.principal": ((MAP_headers, "x-forwarded-client-cert"),),
    "source.trust_domain": ((MAP_headers, "x-forwarded-client-cert"),),
    "source.namespace": ((MAP_headers, "x-forwarded-client-cert"),),
    "source.service_account": ((MAP_headers, "x-forwarded-client-cert"),),
    "request.id": ((MAP_headers, "x-request-id"),),
}
_FAMILIES = {  # attribute prefix -> the map its suffix names an entry of
    "request.headers.": MAP_headers,
    "source.labels.": MAP_source_labels,
    "destination.labels.": MAP_destination_labels,
    "context.": MAP_context,
}


cdef struct Name:
    const uint8_t* ptr
    Py_ssize_t len
    int map  # MAP_headers, MAP_source_labels, ...


cdef struct Found:
    CheckFields wire  # first: on_entry, handed &found.wire, finds the rest behind it
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
                entries.append((MAP_headers, jwt_header))
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
        cdef Span* value
        for i in range(N_FIELDS):
            if self.wanted[i]:
                value = field(found, i)
                size += 5 + value.len if value.ptr != NULL else 1
        for i in range(self.n_names):
            size += 5 + found.entries[i].len if found.has_entry[i] else 1
        cdef bytes out = PyBytes_FromStringAndSize(NULL, size)
        cdef char* w = PyBytes_AS_STRING(out)
        for i in range(N_FIELDS):
            if self.wanted[i]:
                value = field(found, i)
                w = put_source(w, value.ptr != NULL, value[0])
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
    cdef dict headers = maps[MAP_headers]
    return (
        _text(found.wire.method),
        _text(found.wire.path),
        _text(found.wire.host),
        _text(found.wire.scheme),
        headers.get("x-request-id") or _text(found.wire.http_id),
        headers,
        _text(found.wire.source_address),
        _text(found.wire.source_principal),
        _text(found.wire.source_service),
        maps[MAP_source_labels],
        _text(found.wire.destination_address),
        _port(&found),
        _text(found.wire.destination_service),
        maps[MAP_destination_labels],
        maps[MAP_context],
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
        request_id or _text(found.wire.http_id),
        _text(found.wire.source_address),
        _text(found.wire.source_principal),
        _text(found.entries[1]) if found.has_entry[1] else None,
        _text(found.wire.source_service),
        _text(found.wire.host),
        _text(found.wire.destination_service),
        _port(&found),
        _text(found.wire.method),
        _text(found.wire.path),
    )


cdef uint32_t _port(Found* found) noexcept:
    cdef uint64_t port = 0
    cdef const uint8_t* p = found.wire.destination_port.ptr
    if p != NULL:
        read_varint(&p, p + found.wire.destination_port.len, &port)
    return <uint32_t>port  # uint32: upb keeps the low 32 bits


cdef inline str _text(Span s):
    """A string field's value, already UTF-8 checked; "" when absent."""
    if s.len == 0:
        return ""
    return PyUnicode_DecodeUTF8(<const char*>s.ptr, s.len, NULL)


cdef inline Span* field(Found* found, int i) noexcept:
    return <Span*>(<char*>&found.wire + AT[i])


cdef int scan(bytes data, KeyReader reader, bint collect, Found* found) noexcept:
    """Read a CheckRequest into `found`: the reader's map entries, or every entry when `collect`."""
    cdef int i
    cdef Span whole
    memset(&found.wire, 0, sizeof(CheckFields))
    found.names = reader.names
    found.n_names = reader.n_names
    for i in range(N_MAPS):
        found.any_map[i] = reader.any_map[i]
    found.collect = collect
    found.n_all = 0
    for i in range(found.n_names):
        found.has_entry[i] = False
    whole.ptr = <const uint8_t*>PyBytes_AS_STRING(data)
    whole.len = PyBytes_GET_SIZE(data)
    return scan_CheckRequest(whole, DEPTH_LIMIT, &found.wire)


cdef inline int on_entry(CheckFields* wire, int map, Span key, Span value) noexcept:
    """One map entry, in wire order: kept when collecting, else the last entry with a wanted key sets
    that key's value (a map's semantics)."""
    cdef Found* found = <Found*>wire  # wire is found.wire, its first member
    cdef const Name* name
    cdef int i
    if found.collect:
        if found.n_all == MAX_ENTRIES:
            return E_MEMORY  # more than read_input takes: the upb path
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
