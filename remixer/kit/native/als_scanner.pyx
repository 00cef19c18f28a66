# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The ALS hot path in C: StreamAccessLogsMessage bytes -> entry counts per kind, tallies, records.

decoding.StreamReader is the reference this module must match byte for byte (tests/telemetry/
test_scanner.py): the same fields (protos/remixer/v1/als_view.proto, Envoy's field numbers), the same
memo keys, the same kinds (a memo miss calls back into Python to build one), the same records. What
changes is where the work happens: one pass over the wire bytes fills flat C structs (no upb message,
no per-entry attribute reads), and per entry Python only sees the memo key. TCP logs are only validated
here: they are booked per connection (stream_id deltas) by the Python reader, and are few.

The per-field readers are not written here: als_fields.txt lists the fields read (one line each) and
remixer/kit/native/wiregen.py generates _als_fields.pxi from it and Envoy's descriptors (tags, the WireFields
struct, a scan_<Message> per message). This module keeps the top level (the log_entries oneof, the
entry list), the shared helpers those readers call, and what is done with the fields.

Wire rules are upb's for that view, so a message is rejected exactly when
als_view_pb2.StreamAccessLogsMessage.FromString would reject it: truncated data, varints over 10 bytes,
tags and lengths over 5 bytes, tags over 32 bits, field number 0, wire types 6 and 7, stray or
mismatched end-groups, lengths past the enclosing message, more than 100 nested messages or groups,
and invalid UTF-8 in the string fields the view declares. A known field with another wire type is an
unknown field (skipped), as in upb. The tests hold it to upb on edge cases and fuzzed bytes.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from libc.math cimport llround
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from remixer.kit.native.wire cimport (
    E_DEPTH,
    E_FIELD_ZERO,
    E_GROUP,
    E_LENGTH,
    E_MEMORY,
    E_TAG,
    E_TRUNCATED,
    E_UTF8,
    E_VARINT,
    E_WIRE_TYPE,
    OK,
    Span,
    read_any_tag,
    read_span,
    read_tag,
    read_text,
    read_varint,
    valid_utf8,
)


cdef extern from "Python.h":
    char* PyOS_double_to_string(double val, char format_code, int precision, int flags, int* ptype) except NULL
    int Py_DTSF_ADD_DOT_0
    bytes PyBytes_FromStringAndSize(const char* v, Py_ssize_t n)
    str PyUnicode_DecodeUTF8(const char* s, Py_ssize_t n, const char* errors)
    void PyObject_GC_UnTrack(void* op)


# ---- wire format ---------------------------------------------------------------------------------

cdef enum:
    DEPTH_LIMIT = 100  # upb's default nesting limit (Python's FromString keeps it)
    MAX_BUCKETS = 32

cdef const char* ERROR_TEXT[11]
ERROR_TEXT[OK] = b"ok"
ERROR_TEXT[E_TRUNCATED] = b"truncated"
ERROR_TEXT[E_VARINT] = b"varint longer than 10 bytes"
ERROR_TEXT[E_TAG] = b"bad tag"
ERROR_TEXT[E_FIELD_ZERO] = b"field number 0"
ERROR_TEXT[E_WIRE_TYPE] = b"bad wire type"
ERROR_TEXT[E_LENGTH] = b"bad length, or past the end of its message"
ERROR_TEXT[E_GROUP] = b"unterminated or mismatched group"
ERROR_TEXT[E_DEPTH] = b"nested too deeply"
ERROR_TEXT[E_UTF8] = b"invalid UTF-8 in a string field"
ERROR_TEXT[E_MEMORY] = b"out of memory"

# The fields telemetry reads (als_fields.txt): their tags, the WireFields struct, a scan_<Message> each
# (Duration and Timestamp included, from their descriptors).
include "_als_fields.pxi"

cdef enum:  # which case of the log_entries oneof a message holds: its field number
    LOGS_NONE = 0
    LOGS_HTTP = T_StreamAccessLogsMessage_http_logs >> 3
    LOGS_TCP = T_StreamAccessLogsMessage_tcp_logs >> 3



cdef struct Entry:
    Span whole  # the entry's own bytes: re-read for its filter state on a memo miss
    WireFields wire  # the fields als_fields.txt lists, repeated occurrences merged (last scalar wins)


cdef struct Entries:
    Entry* items
    Py_ssize_t count
    Py_ssize_t capacity


cdef int skip_field(const uint8_t** cursor, const uint8_t* end, uint32_t tag, int depth) noexcept:
    """Skip an unknown field (or a known one with another wire type: upb treats it as unknown)."""
    cdef uint64_t ignored
    cdef Span span
    cdef int wire_type = tag & 7
    if wire_type == 0:
        return read_varint(cursor, end, &ignored)
    if wire_type == 1:
        if end - cursor[0] < 8:
            return E_TRUNCATED
        cursor[0] += 8
        return OK
    if wire_type == 2:
        return read_span(cursor, end, &span)
    if wire_type == 3:
        return skip_group(cursor, end, tag >> 3, depth - 1)
    if wire_type == 5:
        if end - cursor[0] < 4:
            return E_TRUNCATED
        cursor[0] += 4
        return OK
    return E_WIRE_TYPE  # 4: an end-group outside its group; 6 and 7 do not exist


cdef int skip_group(const uint8_t** cursor, const uint8_t* end, uint32_t number, int depth) noexcept:
    cdef uint32_t tag
    cdef int err
    if depth < 0:
        return E_DEPTH
    while cursor[0] < end:
        err = read_any_tag(cursor, end, &tag)
        if err:
            return err
        if tag & 7 == 4:
            return OK if tag >> 3 == number else E_GROUP
        err = skip_field(cursor, end, tag, depth)
        if err:
            return err
    return E_GROUP


cdef inline bint span_is(Span s, const char* text, Py_ssize_t n) noexcept:
    return s.len == n and memcmp_(s.ptr, text, n)


cdef inline bint memcmp_(const uint8_t* a, const char* b, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i
    for i in range(n):
        if a[i] != <uint8_t>b[i]:
            return False
    return True


cdef Entry* new_entry(Entries* entries) noexcept:
    cdef Py_ssize_t capacity
    cdef Entry* grown
    if entries.count == entries.capacity:
        capacity = entries.capacity * 2 if entries.capacity else 64
        grown = <Entry*>PyMem_Realloc(entries.items, capacity * sizeof(Entry))
        if grown == NULL:
            return NULL
        entries.items = grown
        entries.capacity = capacity
    entries.count += 1
    memset(&entries.items[entries.count - 1], 0, sizeof(Entry))
    return &entries.items[entries.count - 1]


cdef int scan_entries(Span msg, int depth, bint tcp, Entries* entries) noexcept:
    cdef const uint8_t* p = msg.ptr
    cdef const uint8_t* end = msg.ptr + msg.len
    cdef uint32_t tag
    cdef Span span
    cdef Entry* e
    cdef int err
    if depth < 0:
        return E_DEPTH
    while p < end:
        err = read_tag(&p, end, &tag)
        if err:
            return err
        if tag == (T_TCPAccessLogEntries_log_entry if tcp else T_HTTPAccessLogEntries_log_entry):
            err = read_span(&p, end, &span)
            if not err:
                e = new_entry(entries)
                if e == NULL:
                    return E_MEMORY
                e.whole = span
                if tcp:
                    err = scan_TCPAccessLogEntry(span, depth - 1, &e.wire)
                else:
                    err = scan_HTTPAccessLogEntry(span, depth - 1, &e.wire)
        else:
            err = skip_field(&p, end, tag, depth)
        if err:
            return err
    return OK


cdef int scan_message(Span msg, Entries* entries, int* logs) noexcept:
    """The top level. http_logs / tcp_logs are a oneof: switching case drops the other's entries, and
    repeated occurrences of the same case merge (their entries append), as upb does."""
    cdef const uint8_t* p = msg.ptr
    cdef const uint8_t* end = msg.ptr + msg.len
    cdef uint32_t tag
    cdef Span span
    cdef int err
    entries.count = 0
    logs[0] = LOGS_NONE
    while p < end:
        err = read_tag(&p, end, &tag)
        if err:
            return err
        if tag == T_StreamAccessLogsMessage_http_logs or tag == T_StreamAccessLogsMessage_tcp_logs:
            err = read_span(&p, end, &span)
            if not err:
                if logs[0] != <int>(tag >> 3):
                    logs[0] = tag >> 3
                    entries.count = 0
                err = scan_entries(span, DEPTH_LIMIT - 1, tag == T_StreamAccessLogsMessage_tcp_logs, entries)
        elif tag == T_StreamAccessLogsMessage_identifier:
            err = read_span(&p, end, &span)  # bytes in the view: decoded (once per stream) elsewhere
        else:
            err = skip_field(&p, end, tag, DEPTH_LIMIT)
        if err:
            return err
    return OK


def validate(bytes data):
    """None when upb would parse `data` as the view, else why not (the scanner's own first pass)."""
    cdef Entries entries
    cdef int logs
    cdef Span msg
    entries.items = NULL
    entries.count = 0
    entries.capacity = 0
    msg.ptr = <const uint8_t*>PyBytes_AS_STRING(data)
    msg.len = PyBytes_GET_SIZE(data)
    cdef int err = scan_message(msg, &entries, &logs)
    PyMem_Free(entries.items)
    if err == E_MEMORY:
        raise MemoryError()
    return None if err == OK else ERROR_TEXT[err].decode()


# ---- JSON (byte for byte what orjson writes) ----------------------------------------------------

cdef inline char* put(char* w, const char* text, Py_ssize_t n) noexcept:
    memcpy(w, text, n)
    return w + n


cdef char* put_u64(char* w, uint64_t value) noexcept:
    cdef char digits[24]
    cdef int n = 0
    while True:
        digits[n] = <char>(48 + value % 10)
        n += 1
        value //= 10
        if value == 0:
            break
    while n:
        n -= 1
        w[0] = digits[n]
        w += 1
    return w


cdef char* put_i64(char* w, int64_t value) noexcept:
    if value < 0:
        w[0] = b"-"
        return put_u64(w + 1, <uint64_t>0 - <uint64_t>value)
    return put_u64(w, <uint64_t>value)


cdef const char* HEX = b"0123456789abcdef"


cdef char* put_escaped(char* w, const uint8_t* s, Py_ssize_t n) noexcept:
    """A JSON string body as orjson writes it: quote, backslash and C0 controls escaped, the rest raw."""
    cdef Py_ssize_t i
    cdef uint8_t c
    for i in range(n):
        c = s[i]
        if c >= 0x20 and c != 0x22 and c != 0x5C:
            w[0] = <char>c
            w += 1
        elif c == 0x22:
            w = put(w, b'\\"', 2)
        elif c == 0x5C:
            w = put(w, b"\\\\", 2)
        elif c == 0x0A:
            w = put(w, b"\\n", 2)
        elif c == 0x0D:
            w = put(w, b"\\r", 2)
        elif c == 0x09:
            w = put(w, b"\\t", 2)
        elif c == 0x08:
            w = put(w, b"\\b", 2)
        elif c == 0x0C:
            w = put(w, b"\\f", 2)
        else:
            w = put(w, b"\\u00", 4)
            w[0] = HEX[c >> 4]
            w[1] = HEX[c & 15]
            w += 2
    return w


cdef char* put_fraction_digits(char* w, int64_t micros) noexcept:
    """'.' and the six decimals of micros, without trailing zeros (at least one digit)."""
    cdef char digits[6]
    cdef int i
    cdef int last = 0
    for i in range(5, -1, -1):
        digits[i] = <char>(48 + micros % 10)
        micros //= 10
    for i in range(6):
        if digits[i] != b"0":
            last = i
    w[0] = b"."
    return put(w + 1, digits, last + 1)


cdef char* put_double(char* w, double x) except NULL:
    """orjson's float: Python's repr digits (shortest round trip); fixed notation for 1e-5 <= |x| < 1e16,
    else d.ddde+X / d.ddde-X without padding."""
    cdef double magnitude = -x if x < 0 else x
    cdef int64_t micros
    if 1e-5 <= magnitude < 1e9:
        # Millisecond durations are mostly n/1e6 exactly rounded (Envoy's nanosecond durations): then
        # those <= 15 significant digits are the shortest round trip, with no dtoa call.
        micros = llround(magnitude * 1e6)
        if <double>micros / 1e6 == magnitude:
            if x < 0:
                w[0] = b"-"
                w += 1
            w = put_u64(w, <uint64_t>(micros // 1000000))
            return put_fraction_digits(w, micros % 1000000)
    return put_repr(w, x)


cdef char* put_repr(char* w, double x) except NULL:
    cdef char* text = PyOS_double_to_string(x, b"r", 0, Py_DTSF_ADD_DOT_0, NULL)
    try:
        return put_repr_text(w, text)
    finally:
        PyMem_Free(text)


cdef char* put_repr_text(char* w, const char* text) except NULL:
    cdef Py_ssize_t n = 0
    cdef Py_ssize_t e = -1
    cdef Py_ssize_t i
    cdef int exponent
    while text[n]:
        if text[n] == b"e":
            e = n
        n += 1
    if e < 0:
        w = put(w, text, n)
    else:
        exponent = int(text[e + 1 : n].decode())
        if exponent == -5:  # orjson writes 1.5e-05 as 0.000015
            i = 0
            if text[0] == b"-":
                w[0] = b"-"
                w += 1
                i = 1
            w = put(w, b"0.0000", 6)
            while i < e:
                if text[i] != b".":
                    w[0] = text[i]
                    w += 1
                i += 1
        else:
            w = put(w, text, e)
            w = put(w, b"e+" if exponent > 0 else b"e-", 2)
            w = put_u64(w, <uint64_t>(exponent if exponent > 0 else -exponent))
    return w


def format_float(double x):
    """duration_ms as the JSON records carry it (tests hold it to orjson.dumps)."""
    cdef char text[64]
    cdef char* end = put_double(text, x)
    return PyBytes_FromStringAndSize(text, end - text)


cdef Py_ssize_t truncated(Span s, Py_ssize_t max_chars) noexcept:
    """Bytes of s[:max_chars] in characters (str slicing), s being valid UTF-8."""
    cdef Py_ssize_t i
    cdef Py_ssize_t chars = 0
    if s.len <= max_chars:
        return s.len
    for i in range(s.len):
        if s.ptr[i] & 0xC0 != 0x80:  # a character starts here
            if chars == max_chars:
                return i
            chars += 1
    return s.len


# An HTTP entry's own record fields (access_record.proto's ENTRY fields of HTTP entries): the struct and its
# JSON writer, generated (wiregen.json_writer, `make protos`) from the fields telemetry's encoder writes.
include "_access_record.pxi"


# ---- per batch: kinds, tallies, records ----------------------------------------------------------

cdef struct Slot:
    # One kind's entries in the current batch; applied to its series once, at the end of the batch.
    PyObject* kind
    PyObject* series  # kind.http; NULL when None
    PyObject* record_key
    PyObject* prefix
    Py_ssize_t entries
    Py_ssize_t counted
    double duration_sum
    uint64_t sum_a_low  # request bytes: exact, past 2**64 through the high word
    uint64_t sum_a_high
    uint64_t sum_b_low  # response bytes
    uint64_t sum_b_high
    uint32_t duration[MAX_BUCKETS]  # entries per bucket (a message holds far fewer than 2**32)
    uint32_t request[MAX_BUCKETS]
    uint32_t response[MAX_BUCKETS]


cdef inline void add_u128(uint64_t* low, uint64_t* high, uint64_t value, uint64_t carry) noexcept:
    low[0] += value
    if low[0] < value:
        high[0] += 1
    high[0] += carry


cdef object long_of(uint64_t low, uint64_t high):
    if high == 0:
        return low
    return (<object>high << 64) | low


cdef inline int64_t floor_div(int64_t a, int64_t b) noexcept:
    cdef int64_t q = a // b  # C truncates toward zero
    if (a % b != 0) and ((a < 0) != (b < 0)):
        q -= 1
    return q


cdef extern from *:
    """
    #define SCAN_SECONDS_EXACT 9223372036854772LL
    """
    # Up to this |seconds|, seconds * 1000 plus the milliseconds of the nanos fits an int64.
    const int64_t SECONDS_EXACT "SCAN_SECONDS_EXACT"


cdef object start_ms_object(Duration* d):
    # start.seconds * 1000 + start.nanos // 1_000_000, as Python computes it
    if -SECONDS_EXACT <= d.seconds <= SECONDS_EXACT:
        return d.seconds * 1000 + floor_div(d.nanos, 1000000)
    return <object>d.seconds * 1000 + floor_div(d.nanos, 1000000)


cdef double milliseconds(Duration* d) except? -1.0:
    # seconds * 1000 + nanos / 1e6: Python converts the int to float (correctly rounded), then adds
    if -SECONDS_EXACT <= d.seconds <= SECONDS_EXACT:
        return <double>(d.seconds * 1000) + <double>d.nanos / 1e6
    return float(<object>d.seconds * 1000) + <double>d.nanos / 1e6


cdef inline int bucket_of(const double* buckets, int n, double value) noexcept:
    # bisect_left: the first bound >= value
    cdef int lo = 0
    cdef int hi = n
    cdef int mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if buckets[mid] < value:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef inline int bytes_bucket(const double* buckets, int n, uint64_t value, uint64_t carry) noexcept:
    if carry or value > 9007199254740992ULL:  # past every bound (bounds are < 2**53, checked at init)
        return n
    return bucket_of(buckets, n, <double>value)


cdef inline bint starts_with(Span s, const char* prefix, Py_ssize_t n) noexcept:
    return s.len >= n and memcmp_(s.ptr, prefix, n)


cdef str EMPTY_TEXT = ""
cdef bytes EMPTY_BYTES = b""
cdef object INT64_MIN = int("-9223372036854775808")
cdef object INT64_MAX = int("9223372036854775807")


cdef inline str text_of(Span s):
    if s.len == 0:
        return EMPTY_TEXT
    return PyUnicode_DecodeUTF8(<const char*>s.ptr, s.len, NULL)  # validated while scanning


cdef inline bytes bytes_of(Span s):
    if s.len == 0:
        return EMPTY_BYTES
    return PyBytes_FromStringAndSize(<const char*>s.ptr, s.len)


cdef tuple record_of(object key, object value):
    """(key, value) left out of the cyclic GC: it holds only str/bytes/None, so it can never be part of
    a cycle, and tracked it would make every collection walk the thousands of records awaiting Kafka
    (CPython untracks such tuples too, but only once a collection has looked at them)."""
    cdef tuple record = PyTuple_New(2)
    Py_INCREF(key)
    PyTuple_SET_ITEM(record, 0, key)
    Py_INCREF(value)
    PyTuple_SET_ITEM(record, 1, value)
    if type(value) is bytes and (key is None or type(key) is str or type(key) is bytes):
        PyObject_GC_UnTrack(<void*>record)
    return record


cdef int add_buckets(list series_buckets, uint32_t* tally, Py_ssize_t n) except -1:
    cdef Py_ssize_t i
    for i in range(n):
        if tally[i]:
            series_buckets[i] += tally[i]
    return 0


cdef int apply_http(object series, Slot* slot, Py_ssize_t n) except -1:
    # The order HttpTally.apply uses, so the float sums come out bit-identical.
    series.count += slot.counted
    add_buckets(series.duration, slot.duration, n)
    series.duration_sum += slot.duration_sum
    add_buckets(series.request_bytes, slot.request, n)
    series.request_sum += long_of(slot.sum_a_low, slot.sum_a_high)
    add_buckets(series.response_bytes, slot.response, n)
    series.response_sum += long_of(slot.sum_b_low, slot.sum_b_high)
    return 0


# Raw keys of distinct kinds a scanner remembers (a kind may have several raw keys: a field repeated
# on the wire, merged, still reads the same). Past this, they are forgotten and relearned.
cdef enum:
    MAX_RAW_KEYS = 16384


cdef inline bint is_grpc_content_type(Span ct) noexcept:
    """decoding.is_grpc_content_type: application/grpc, or application/grpc+<codec>."""
    if not starts_with(ct, b"application/grpc", 16):
        return False
    return ct.len == 16 or ct.ptr[16] == 0x2B  # '+'


cdef bytes raw_key(char tag, char flags, Span* fields, int n):
    """The fields' wire bytes, each behind its 4-byte length: equal keys iff equal fields. The memo key's
    strings are UTF-8 validated while scanning, so equal bytes and equal text are the same thing."""
    cdef Py_ssize_t size = 2
    cdef int i
    for i in range(n):
        size += 4 + fields[i].len
    cdef bytes out = PyBytes_FromStringAndSize(NULL, size)
    cdef char* w = PyBytes_AS_STRING(out)
    w[0] = tag
    w[1] = flags
    w += 2
    cdef uint32_t length
    for i in range(n):
        length = <uint32_t>fields[i].len  # spans are far below 4 GiB (the message size bounds them)
        memcpy(w, &length, 4)
        memcpy(w + 4, fields[i].ptr, fields[i].len)
        w += 4 + fields[i].len
    return out


cdef class Scanner:
    """One ALS stream's compiled reader; shares the memo (and the kinds) of the Python reader."""

    cdef dict memo
    cdef dict raw_memo  # the entry's key fields as raw wire bytes -> kind: skips building the memo key
    cdef Py_ssize_t memo_len  # len(memo) after the last scan: a smaller one means it was cleared
    cdef object http_kind
    cdef object encoder  # telemetry's RecordEncoder (records of one encoding), None when records are off
    cdef bint records
    cdef bint json_records
    cdef Py_ssize_t max_field
    cdef object path_label
    cdef object malformed
    cdef tuple methods
    cdef tuple method_utf8  # the method names' UTF-8 bytes, for the JSON writer
    cdef double buckets[MAX_BUCKETS]
    cdef int bucket_count
    cdef uint64_t http_counted
    cdef Entries entries
    cdef Slot* slots
    cdef Py_ssize_t slot_count
    cdef Py_ssize_t slot_capacity
    cdef Py_ssize_t* slot_table  # open addressing by kind identity: slot index + 1, 0 when free
    cdef Py_ssize_t table_size
    cdef char* scratch
    cdef Py_ssize_t scratch_size
    cdef bint busy

    def __cinit__(self):
        self.entries.items = NULL
        self.entries.count = 0
        self.entries.capacity = 0
        self.slots = NULL
        self.slot_table = NULL
        self.scratch = NULL

    def __init__(
        self,
        *,
        memo,
        http_kind,
        records,
        path_label,
        methods,
        buckets,
        http_counted,
        malformed,
    ):
        if not isinstance(memo, dict):
            raise TypeError("memo must be a dict")
        if len(buckets) + 1 > MAX_BUCKETS or any(not (abs(b) < 2.0**53) for b in buckets):
            raise ValueError("at most 31 finite bucket bounds below 2**53")
        if any(not 0 <= t < 64 for t in http_counted):
            raise ValueError("counted access log types must be in 0..63")
        if records is not None and records.max_field < 0:  # str slicing from the end is not truncation
            raise ValueError("max_field must be >= 0")
        self.memo = memo
        self.raw_memo = {}
        self.memo_len = len(memo)
        self.http_kind = http_kind
        self.encoder = records
        self.records = records is not None
        self.json_records = self.records and records.json
        self.max_field = records.max_field if self.records else 0
        self.path_label = path_label
        self.malformed = malformed
        self.methods = tuple(methods)
        self.method_utf8 = tuple(m.encode() for m in self.methods)
        self.bucket_count = len(buckets)
        for i, bound in enumerate(buckets):
            self.buckets[i] = bound
        self.http_counted = 0
        for t in http_counted:
            self.http_counted |= 1ULL << t

    def __dealloc__(self):
        self.release_slots()
        PyMem_Free(self.entries.items)
        PyMem_Free(self.slots)
        PyMem_Free(self.slot_table)
        PyMem_Free(self.scratch)

    def scan(self, bytes data):
        """-> ("http", entries, {kind: entries} in first-seen order, records); ("tcp", None, None, None) for
        TCP logs, validated here and booked per connection by the Python reader (decoding.StreamReader)."""
        cdef Span msg
        cdef int logs
        cdef int err
        if self.busy:
            raise RuntimeError("Scanner.scan is not reentrant")
        msg.ptr = <const uint8_t*>PyBytes_AS_STRING(data)
        msg.len = PyBytes_GET_SIZE(data)
        self.busy = True
        if len(self.memo) < self.memo_len:  # cleared elsewhere: its kinds are no longer ours to reuse
            self.raw_memo.clear()
        try:
            err = scan_message(msg, &self.entries, &logs)
            if err == E_MEMORY:
                raise MemoryError()
            if err:
                raise self.malformed(
                    f"not a StreamAccessLogsMessage ({msg.len} bytes): {ERROR_TEXT[err].decode()}"
                )
            if logs == LOGS_TCP:
                return ("tcp", None, None, None)
            return self.read()
        finally:
            self.release_slots()
            self.busy = False
            self.memo_len = len(self.memo)
            self.trim()

    cdef void trim(self) noexcept:
        """Keep no huge batch's buffers around between messages."""
        self.entries.count = 0
        if self.entries.capacity > 4096:
            PyMem_Free(self.entries.items)
            self.entries.items = NULL
            self.entries.capacity = 0
        if self.slot_capacity > 1024:
            PyMem_Free(self.slots)
            PyMem_Free(self.slot_table)
            self.slots = NULL
            self.slot_table = NULL
            self.slot_capacity = 0
            self.table_size = 0

    cdef tuple read(self):
        cdef Py_ssize_t i
        cdef Py_ssize_t count = self.entries.count
        cdef Entry* e
        cdef Slot* slot
        cdef list records = []
        cdef object kind
        for i in range(count):
            e = &self.entries.items[i]
            kind = self.http_kind_of(e)
            slot = self.slot_of(kind)
            slot.entries += 1
            self.observe_http(e, slot, records, i)
        return ("http", count, self.finish(), records)

    # ---- kinds ------------------------------------------------------------------------------------

    cdef object http_kind_of(self, Entry* e):
        """The memo key StreamReader._read_http builds, and its kind (built in Python on a miss)."""
        cdef Span grpc = e.wire.grpc_trailer if e.wire.grpc_trailer.len else e.wire.grpc_header
        # decoding.filter_state_peers: the 1.24+ object, else the wasm.* one of 1.22-1.23
        cdef Span down = e.wire.down_peer if e.wire.down_peer.len else e.wire.wasm_down_peer
        cdef Span up = e.wire.up_peer if e.wire.up_peer.len else e.wire.wasm_up_peer
        cdef bint grpc_request = is_grpc_content_type(e.wire.content_type)
        cdef Span[11] fields
        cdef bytes raw = None
        cdef PyObject* known
        if self.path_label is None:  # else the key holds a label computed in Python from the path
            fields[0] = e.wire.cluster
            fields[1] = e.wire.authority
            fields[2] = e.wire.raw_code
            fields[3] = e.wire.raw_flags
            fields[4] = e.wire.raw_tls
            fields[5] = e.wire.peer_request
            fields[6] = e.wire.peer_response
            fields[7] = grpc
            fields[8] = down
            fields[9] = up
            fields[10] = e.wire.local_address
            raw = raw_key(c'h', 1 if grpc_request else 0, fields, 11)
            known = PyDict_GetItem(self.raw_memo, raw)
            if known != NULL:
                return <object>known
        key = (
            text_of(e.wire.cluster),
            text_of(e.wire.authority),
            bytes_of(e.wire.raw_code),
            bytes_of(e.wire.raw_flags),
            bytes_of(e.wire.raw_tls),
            text_of(e.wire.peer_request),
            text_of(e.wire.peer_response),
            text_of(grpc),
            True if grpc_request else False,
            self.path_label(text_of(e.wire.path)) if self.path_label is not None else None,
            bytes_of(down),
            bytes_of(up),
            bytes_of(e.wire.local_address),
        )
        return self.kind_for(key, raw)

    cdef object kind_for(self, tuple key, bytes raw):
        """The memo's kind for key, built in Python on a miss; remembered under raw (when given)."""
        cdef Py_ssize_t before
        kind = self.memo.get(key)
        if kind is None:
            before = len(self.memo)
            kind = self.http_kind(key)
            if len(self.memo) <= before:  # the memo was full and cleared: drop the raw keys with it
                self.raw_memo.clear()
        if raw is not None:
            if len(self.raw_memo) >= MAX_RAW_KEYS:
                self.raw_memo.clear()
            self.raw_memo[raw] = kind
        return kind

    cdef Slot* slot_of(self, object kind) except NULL:
        cdef PyObject* ptr = <PyObject*>kind
        cdef size_t h
        cdef Py_ssize_t pos
        cdef Py_ssize_t index
        if self.slot_count * 2 >= self.table_size:
            self.grow_table()
        h = <size_t>ptr
        h = (h >> 4) * <size_t>0x9E3779B97F4A7C15ULL
        pos = <Py_ssize_t>((h >> 17) & <size_t>(self.table_size - 1))
        while True:
            index = self.slot_table[pos]
            if index == 0:
                break
            if self.slots[index - 1].kind == ptr:
                return &self.slots[index - 1]
            pos = (pos + 1) & (self.table_size - 1)
        return self.new_slot(kind, pos)

    cdef void grow_table(self) except *:
        cdef Py_ssize_t size = self.table_size * 2 if self.table_size else 256
        cdef Py_ssize_t* table = <Py_ssize_t*>PyMem_Realloc(self.slot_table, size * sizeof(Py_ssize_t))
        cdef Py_ssize_t i
        cdef Py_ssize_t pos
        cdef size_t h
        if table == NULL:
            raise MemoryError()
        self.slot_table = table
        self.table_size = size
        memset(table, 0, size * sizeof(Py_ssize_t))
        for i in range(self.slot_count):
            h = <size_t>self.slots[i].kind
            h = (h >> 4) * <size_t>0x9E3779B97F4A7C15ULL
            pos = <Py_ssize_t>((h >> 17) & <size_t>(size - 1))
            while table[pos]:
                pos = (pos + 1) & (size - 1)
            table[pos] = i + 1

    cdef Slot* new_slot(self, object kind, Py_ssize_t pos) except NULL:
        cdef Slot* slot
        cdef Slot* grown
        cdef Py_ssize_t capacity
        if self.slot_count == self.slot_capacity:
            capacity = self.slot_capacity * 2 if self.slot_capacity else 64
            grown = <Slot*>PyMem_Realloc(self.slots, capacity * sizeof(Slot))
            if grown == NULL:
                raise MemoryError()
            self.slots = grown
            self.slot_capacity = capacity
        series = kind.http
        record_key = kind.derived.record_key if self.records else None
        prefix = kind.record_head if self.records else None
        if self.records and not isinstance(prefix, bytes):
            raise TypeError("records need a bytes record_head")
        slot = &self.slots[self.slot_count]
        memset(slot, 0, sizeof(Slot))
        slot.kind = <PyObject*>kind
        Py_INCREF(kind)
        if series is not None:
            slot.series = <PyObject*>series
            Py_INCREF(series)
        slot.record_key = <PyObject*>record_key
        Py_INCREF(record_key)
        slot.prefix = <PyObject*>prefix
        Py_INCREF(prefix)
        self.slot_count += 1
        self.slot_table[pos] = self.slot_count
        return slot

    cdef void release_slots(self) noexcept:
        cdef Py_ssize_t i
        for i in range(self.slot_count):
            Py_XDECREF(self.slots[i].kind)
            Py_XDECREF(self.slots[i].series)
            Py_XDECREF(self.slots[i].record_key)
            Py_XDECREF(self.slots[i].prefix)
        self.slot_count = 0
        if self.slot_table != NULL:
            memset(self.slot_table, 0, self.table_size * sizeof(Py_ssize_t))

    cdef dict finish(self):
        """The batch's {kind: entries}, and each kind's tallies added to its series once."""
        cdef dict counts = {}
        cdef Py_ssize_t i
        cdef Slot* slot
        for i in range(self.slot_count):
            slot = &self.slots[i]
            counts[<object>slot.kind] = slot.entries
            if slot.series != NULL and slot.counted:
                apply_http(<object>slot.series, slot, self.bucket_count + 1)
        return counts

    # ---- entries ----------------------------------------------------------------------------------

    cdef int observe_http(self, Entry* e, Slot* slot, list records, Py_ssize_t index) except -1:
        cdef double duration_ms = milliseconds(&e.wire.duration)
        cdef uint64_t request_bytes = e.wire.request_headers_bytes + e.wire.request_body_bytes
        cdef uint64_t request_carry = request_bytes < e.wire.request_headers_bytes
        cdef uint64_t response_bytes = e.wire.response_headers_bytes + e.wire.response_body_bytes
        cdef uint64_t response_carry = response_bytes < e.wire.response_headers_bytes
        if duration_ms == 0.0:
            duration_ms = milliseconds(&e.wire.last_downstream_tx)
        if slot.series != NULL and 0 <= e.wire.access_log_type < 64 and (self.http_counted >> e.wire.access_log_type) & 1:
            slot.counted += 1
            slot.duration[bucket_of(self.buckets, self.bucket_count, duration_ms)] += 1
            slot.duration_sum += duration_ms
            slot.request[bytes_bucket(self.buckets, self.bucket_count, request_bytes, request_carry)] += 1
            add_u128(&slot.sum_a_low, &slot.sum_a_high, request_bytes, request_carry)
            slot.response[bytes_bucket(self.buckets, self.bucket_count, response_bytes, response_carry)] += 1
            add_u128(&slot.sum_b_low, &slot.sum_b_high, response_bytes, response_carry)
        if not self.records:
            return 0
        if self.json_records:
            value = self.http_json(e, slot, duration_ms, request_bytes, request_carry, response_bytes,
                                   response_carry, index)
        else:
            value = self.encoded(slot, index, {
                "start_time_ms": start_ms_object(&e.wire.start_time),
                "duration_ms": duration_ms,
                "request_id": text_of(e.wire.request_id),
                "method": self.methods[e.wire.method] if 0 <= e.wire.method < len(self.methods) else "",
                "path": text_of(e.wire.path),
                "user_agent": text_of(e.wire.user_agent),
                "request_bytes": long_of(request_bytes, request_carry),
                "response_bytes": long_of(response_bytes, response_carry),
            })
        records.append(record_of(<object>slot.record_key, value))
        return 0

    cdef object encoded(self, Slot* slot, Py_ssize_t index, dict fields):
        try:
            return self.encoder.encode(<object>slot.prefix, "http", fields)
        except (TypeError, ValueError) as exc:
            raise self.malformed(f"entry {index} cannot be encoded as a record: {exc}") from None

    cdef char* reserve(self, Py_ssize_t size) except NULL:
        cdef char* grown
        if size > self.scratch_size:
            grown = <char*>PyMem_Realloc(self.scratch, size)
            if grown == NULL:
                raise MemoryError()
            self.scratch = grown
            self.scratch_size = size
        return self.scratch

    cdef int64_t start_ms(self, Duration* d, Py_ssize_t index) except? -1:
        """start_time_ms (start.seconds * 1000 + start.nanos // 1_000_000); refused past int64, its type."""
        if -SECONDS_EXACT <= d.seconds <= SECONDS_EXACT:
            return d.seconds * 1000 + floor_div(d.nanos, 1000000)
        value = start_ms_object(d)
        if not INT64_MIN <= value <= INT64_MAX:
            raise self.malformed(f"entry {index} cannot be encoded as a record: start_time_ms out of range")
        return value

    cdef bytes finish_record(self, Slot* slot, char* w):
        cdef Py_ssize_t tail = w - self.scratch
        cdef Py_ssize_t head = PyBytes_GET_SIZE(<object>slot.prefix)
        cdef bytes value = PyBytes_FromStringAndSize(NULL, head + tail)
        cdef char* out = PyBytes_AS_STRING(value)
        memcpy(out, PyBytes_AS_STRING(<object>slot.prefix), head)
        memcpy(out + head, self.scratch, tail)
        return value

    cdef bytes http_json(
        self,
        Entry* e,
        Slot* slot,
        double duration_ms,
        uint64_t request_bytes,
        uint64_t request_carry,
        uint64_t response_bytes,
        uint64_t response_carry,
        Py_ssize_t index,
    ):
        """kind.record_head + the entry's fields: RecordEncoder.encode's bytes, built in place by the
        writer generated from access_record.proto (_access_record.pxi)."""
        cdef HttpEntryRecord r
        cdef char* w
        cdef bytes method = EMPTY_BYTES
        if request_carry or response_carry:  # past uint64, the fields' type
            raise self.malformed(f"entry {index} cannot be encoded as a record: byte count out of range")
        if 0 <= e.wire.method < len(self.method_utf8):
            method = self.method_utf8[e.wire.method]
        r.start_time_ms = self.start_ms(&e.wire.start_time, index)
        r.duration_ms = duration_ms
        r.request_id = e.wire.request_id
        r.method.ptr = <const uint8_t*>PyBytes_AS_STRING(method)
        r.method.len = PyBytes_GET_SIZE(method)
        r.path = e.wire.path
        r.user_agent = e.wire.user_agent
        r.request_bytes = request_bytes
        r.response_bytes = response_bytes
        w = put_HttpEntryRecord(self.reserve(size_HttpEntryRecord(&r)), &r, self.max_field)
        return self.finish_record(slot, w)
