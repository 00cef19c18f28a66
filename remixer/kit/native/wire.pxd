# cython: language_level=3
# Protocol-buffer wire primitives shared by the compiled readers (telemetry's access-log scanner,
# policy's CheckRequest keys). Inline: each module gets its own copy, with no call across modules.
# The rules are upb's, so a reader built on them refuses exactly what FromString refuses.

from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy


cdef enum:  # why a message is refused (0: it is not)
    OK = 0
    E_TRUNCATED
    E_VARINT
    E_TAG
    E_FIELD_ZERO
    E_WIRE_TYPE
    E_LENGTH
    E_GROUP
    E_DEPTH
    E_UTF8
    E_MEMORY
    E_UNKNOWN  # a field the reader does not know, from a reader that refuses them


cdef struct Span:
    const uint8_t* ptr
    Py_ssize_t len


cdef inline int read_base128(const uint8_t** cursor, const uint8_t* end, int most, uint64_t* out) noexcept:
    """A base-128 number of at most `most` bytes: OK, E_TRUNCATED, or -1 when longer (each caller
    names that error). Bits past 64 are dropped, as upb does."""
    cdef const uint8_t* p = cursor[0]
    cdef uint64_t value = 0
    cdef uint64_t byte
    cdef int i
    for i in range(most):
        if p >= end:
            return E_TRUNCATED
        byte = p[0]
        p += 1
        value |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            out[0] = value
            cursor[0] = p
            return OK
    return -1


cdef inline int read_varint(const uint8_t** cursor, const uint8_t* end, uint64_t* out) noexcept:
    cdef int err = read_base128(cursor, end, 10, out)
    return E_VARINT if err < 0 else err


cdef inline int read_any_tag(const uint8_t** cursor, const uint8_t* end, uint32_t* out) noexcept:
    """A tag, field number 0 included: upb skips such fields inside an unknown group."""
    cdef const uint8_t* p = cursor[0]
    cdef uint64_t value
    cdef int err
    if p < end and p[0] < 0x80:  # one-byte tags: nearly all of them
        out[0] = p[0]
        cursor[0] = p + 1
        return OK
    err = read_base128(&p, end, 5, &value)
    if err:
        return E_TAG if err < 0 else err
    if value > 0xFFFFFFFF:
        return E_TAG
    out[0] = <uint32_t>value
    cursor[0] = p
    return OK


cdef inline int read_tag(const uint8_t** cursor, const uint8_t* end, uint32_t* out) noexcept:
    """A tag of a message field: field number 0 is malformed there, as upb says."""
    cdef const uint8_t* start = cursor[0]
    cdef int err = read_any_tag(cursor, end, out)
    if not err and out[0] >> 3 == 0:
        cursor[0] = start
        return E_FIELD_ZERO
    return err


cdef inline int read_span(const uint8_t** cursor, const uint8_t* end, Span* out) noexcept:
    """A length-delimited field. upb reads its length as at most 5 bytes (even 0 padded to 6 is refused)."""
    cdef const uint8_t* p = cursor[0]
    cdef uint64_t size
    cdef int err = read_base128(&p, end, 5, &size)
    if err:
        return E_LENGTH if err < 0 else err
    if size >= 0x7FFFFFFF or size > <uint64_t>(end - p):
        return E_LENGTH
    out.ptr = p
    out.len = <Py_ssize_t>size
    cursor[0] = p + size
    return OK


cdef inline int valid_utf8(const uint8_t* s, Py_ssize_t n) noexcept:
    """Well-formed UTF-8 as upb (utf8_range) and Python's strict decoder define it."""
    cdef Py_ssize_t i = 0
    cdef uint64_t word
    cdef uint8_t c
    cdef uint8_t c1
    while i < n:
        if i + 8 <= n:
            memcpy(&word, s + i, 8)
            if word & 0x8080808080808080ULL == 0:
                i += 8
                continue
        c = s[i]
        if c < 0x80:
            i += 1
        elif c < 0xC2:  # a continuation byte, or an overlong 2-byte form
            return 0
        elif c < 0xE0:
            if i + 1 >= n or s[i + 1] & 0xC0 != 0x80:
                return 0
            i += 2
        elif c < 0xF0:
            if i + 2 >= n:
                return 0
            c1 = s[i + 1]
            if (c == 0xE0 and c1 < 0xA0) or (c == 0xED and c1 >= 0xA0):  # overlong, surrogate
                return 0
            if c1 & 0xC0 != 0x80 or s[i + 2] & 0xC0 != 0x80:
                return 0
            i += 3
        elif c < 0xF5:
            if i + 3 >= n:
                return 0
            c1 = s[i + 1]
            if (c == 0xF0 and c1 < 0x90) or (c == 0xF4 and c1 >= 0x90):  # overlong, past U+10FFFF
                return 0
            if c1 & 0xC0 != 0x80 or s[i + 2] & 0xC0 != 0x80 or s[i + 3] & 0xC0 != 0x80:
                return 0
            i += 4
        else:
            return 0
    return 1


cdef inline int read_text(const uint8_t** cursor, const uint8_t* end, Span* out) noexcept:
    cdef int err = read_span(cursor, end, out)
    if err:
        return err
    if not valid_utf8(out.ptr, out.len):
        return E_UTF8
    return OK
