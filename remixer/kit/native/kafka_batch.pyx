# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Kafka record batches (RecordBatch v2, uncompressed) built in one pass: the bytes aiokafka's
DefaultRecordBatchBuilder writes for the same records, without its per-record cost.

aiokafka's builder takes one Python call per record and grows its buffer record by record (a realloc,
often a copy of the whole batch, every few records), then checksums with a byte-at-a-time CRC32C. Here
the batch is sized first, written once, and checksummed with the CPU's CRC32C instruction where there
is one. tests/telemetry/test_shipping.py holds the bytes to aiokafka's.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_FromStringAndSize, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy


cdef extern from *:
    """
    #include <stdint.h>
    #include <stddef.h>

    static uint32_t batch_crc_table[8][256];

    static void batch_crc_init(void) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
            batch_crc_table[0][i] = c;
        }
        for (uint32_t i = 0; i < 256; i++)
            for (int t = 1; t < 8; t++)
                batch_crc_table[t][i] = (batch_crc_table[t - 1][i] >> 8)
                    ^ batch_crc_table[0][batch_crc_table[t - 1][i] & 0xFF];
    }

    /* CRC32C (Castagnoli), slicing by 8: the portable path. */
    static uint32_t batch_crc_soft(uint32_t crc, const uint8_t* p, size_t n) {
        crc = ~crc;
        while (n && ((uintptr_t)p & 7)) { crc = (crc >> 8) ^ batch_crc_table[0][(crc ^ *p++) & 0xFF]; n--; }
        while (n >= 8) {
            uint64_t w;
            __builtin_memcpy(&w, p, 8);
            w ^= crc;  /* little endian: the CRC meets the first four bytes */
            crc = batch_crc_table[7][w & 0xFF] ^ batch_crc_table[6][(w >> 8) & 0xFF]
                ^ batch_crc_table[5][(w >> 16) & 0xFF] ^ batch_crc_table[4][(w >> 24) & 0xFF]
                ^ batch_crc_table[3][(w >> 32) & 0xFF] ^ batch_crc_table[2][(w >> 40) & 0xFF]
                ^ batch_crc_table[1][(w >> 48) & 0xFF] ^ batch_crc_table[0][w >> 56];
            p += 8; n -= 8;
        }
        while (n--) crc = (crc >> 8) ^ batch_crc_table[0][(crc ^ *p++) & 0xFF];
        return ~crc;
    }

    #if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && \\
        (__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__)
    __attribute__((target("sse4.2")))
    static uint32_t batch_crc_hard(uint32_t crc, const uint8_t* p, size_t n) {
        uint64_t c = ~crc;
        while (n >= 8) { uint64_t w; __builtin_memcpy(&w, p, 8); c = __builtin_ia32_crc32di(c, w); p += 8; n -= 8; }
        uint32_t c32 = (uint32_t)c;
        while (n--) c32 = __builtin_ia32_crc32qi(c32, *p++);
        return ~c32;
    }
    static int batch_crc_has_hard(void) { __builtin_cpu_init(); return __builtin_cpu_supports("sse4.2"); }
    #else
    static uint32_t batch_crc_hard(uint32_t crc, const uint8_t* p, size_t n) { return batch_crc_soft(crc, p, n); }
    static int batch_crc_has_hard(void) { return 0; }
    #endif

    #if (__BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__)
    #define batch_crc_soft_ok 0
    #else
    #define batch_crc_soft_ok 1
    #endif
    """
    void batch_crc_init()
    uint32_t batch_crc_soft(uint32_t crc, const uint8_t* p, size_t n)
    uint32_t batch_crc_hard(uint32_t crc, const uint8_t* p, size_t n)
    int batch_crc_has_hard()
    int batch_crc_soft_ok


batch_crc_init()
cdef bint HARD_CRC = batch_crc_has_hard()
if not batch_crc_soft_ok:
    raise ImportError("the batch builder assumes a little-endian CPU")

# RecordBatch v2 header: offsets of its fields (see aiokafka.record.default_records).
cdef enum:
    LENGTH_OFFSET = 8
    LEADER_EPOCH_OFFSET = 12
    MAGIC_OFFSET = 16
    CRC_OFFSET = 17
    ATTRIBUTES_OFFSET = 21
    LAST_OFFSET_DELTA_OFFSET = 23
    FIRST_TIMESTAMP_OFFSET = 27
    MAX_TIMESTAMP_OFFSET = 35
    PRODUCER_ID_OFFSET = 43
    PRODUCER_EPOCH_OFFSET = 51
    BASE_SEQUENCE_OFFSET = 53
    RECORD_COUNT_OFFSET = 57
    FIRST_RECORD_OFFSET = 61


cdef uint32_t crc32c(const uint8_t* p, size_t n) noexcept:
    return batch_crc_hard(0, p, n) if HARD_CRC else batch_crc_soft(0, p, n)


def crc32c_of(data):
    """CRC32C of a bytes-like object (tests compare it with aiokafka's)."""
    cdef const uint8_t[:] view = data
    return crc32c(&view[0], view.shape[0]) if view.shape[0] else 0


cdef inline int varint_size(int64_t value) noexcept:
    # Kafka's record varints are zigzag encoded
    cdef uint64_t v = (<uint64_t>value << 1) ^ <uint64_t>(value >> 63)
    cdef int n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


cdef inline char* put_varint(char* w, int64_t value) noexcept:
    cdef uint64_t v = (<uint64_t>value << 1) ^ <uint64_t>(value >> 63)
    while v >= 0x80:
        w[0] = <char>((v & 0x7F) | 0x80)
        w += 1
        v >>= 7
    w[0] = <char>v
    return w + 1


cdef inline void put_be(char* w, uint64_t value, int n) noexcept:
    cdef int i
    for i in range(n - 1, -1, -1):
        w[i] = <char>(value & 0xFF)
        value >>= 8


cdef inline Py_ssize_t body_size(Py_ssize_t offset, Py_ssize_t key_len, Py_ssize_t value_len) noexcept:
    # attributes, timestamp delta (always 0 here), offset delta, key, value, no headers
    return (
        1 + 1 + varint_size(offset)
        + (varint_size(key_len) + key_len if key_len >= 0 else 1)
        + varint_size(value_len) + value_len
        + 1
    )


def build(list records, Py_ssize_t start, Py_ssize_t batch_size, int64_t timestamp):
    """(bytearray, taken): records[start:] as one batch, stopping before the record that would reach
    batch_size (the first one always goes in, as with aiokafka), every record stamped `timestamp` (ms).
    records are (key: bytes | None, value: bytes)."""
    cdef Py_ssize_t count = 0
    cdef Py_ssize_t pos = FIRST_RECORD_OFFSET
    cdef Py_ssize_t body
    cdef Py_ssize_t key_len
    cdef Py_ssize_t i
    cdef Py_ssize_t n = len(records)
    cdef object key
    cdef object value
    cdef bytearray out
    cdef char* w
    cdef char* base
    if not 0 <= start < n:
        raise ValueError("no record to build a batch of")
    for i in range(start, n):  # size it first: one allocation, no regrowth
        key, value = records[i]
        if type(value) is not bytes or (key is not None and type(key) is not bytes):
            raise TypeError("records are (bytes | None, bytes)")
        key_len = -1 if key is None else PyBytes_GET_SIZE(key)
        body = body_size(count, key_len, PyBytes_GET_SIZE(value))
        if count and pos + body + varint_size(body) >= batch_size:
            break
        pos += body + varint_size(body)
        count += 1
    out = PyByteArray_FromStringAndSize(NULL, pos)
    base = PyByteArray_AS_STRING(out)
    w = base + FIRST_RECORD_OFFSET
    for i in range(count):  # the same objects: records is ours (a list the caller does not change)
        key, value = records[start + i]
        key_len = -1 if key is None else PyBytes_GET_SIZE(key)
        body = body_size(i, key_len, PyBytes_GET_SIZE(value))
        w = put_varint(w, body)
        w[0] = 0  # attributes
        w = put_varint(w + 1, 0)  # timestamp delta
        w = put_varint(w, i)  # offset delta
        w = put_varint(w, key_len)
        if key_len > 0:
            memcpy(w, PyBytes_AS_STRING(key), key_len)
            w += key_len
        w = put_varint(w, PyBytes_GET_SIZE(value))
        memcpy(w, PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value))
        w += PyBytes_GET_SIZE(value)
        w[0] = 0  # no headers
        w += 1
    put_be(base, 0, 8)  # base offset: the broker assigns it
    put_be(base + LENGTH_OFFSET, <uint64_t>(pos - LEADER_EPOCH_OFFSET), 4)
    put_be(base + LEADER_EPOCH_OFFSET, <uint32_t>-1, 4)
    base[MAGIC_OFFSET] = 2
    put_be(base + ATTRIBUTES_OFFSET, 0, 2)  # no compression, not transactional
    put_be(base + LAST_OFFSET_DELTA_OFFSET, <uint64_t>(count - 1), 4)
    put_be(base + FIRST_TIMESTAMP_OFFSET, <uint64_t>timestamp, 8)
    put_be(base + MAX_TIMESTAMP_OFFSET, <uint64_t>timestamp, 8)
    put_be(base + RECORD_COUNT_OFFSET, <uint64_t>count, 4)
    set_producer_state(out, -1, -1, 0)  # what aiokafka's BatchBuilder starts with; writes the CRC
    return out, count


def set_producer_state(bytearray batch, int64_t producer_id, int16_t producer_epoch, int32_t base_sequence):
    """The idempotent producer's fields, set when the sender takes the batch; the CRC covers them."""
    cdef char* base = PyByteArray_AS_STRING(batch)
    cdef Py_ssize_t size = PyByteArray_GET_SIZE(batch)
    if size < FIRST_RECORD_OFFSET:
        raise ValueError("not a record batch")
    put_be(base + PRODUCER_ID_OFFSET, <uint64_t>producer_id, 8)
    put_be(base + PRODUCER_EPOCH_OFFSET, <uint16_t>producer_epoch, 2)
    put_be(base + BASE_SEQUENCE_OFFSET, <uint32_t>base_sequence, 4)
    put_be(
        base + CRC_OFFSET,
        crc32c(<const uint8_t*>base + ATTRIBUTES_OFFSET, <size_t>(size - ATTRIBUTES_OFFSET)),
        4,
    )
