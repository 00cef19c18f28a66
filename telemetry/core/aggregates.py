"""Running totals per label set in plain structures: counts and per-bucket histogram counts.

The edge resolves a label set to its slot once per kind of entry (cached), then adds to plain ints;
the exporter reads the totals at scrape time, so there is no exporter call per entry or per batch.
Nothing here knows Prometheus.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable

from telemetry.structs import ENVOY_BUCKETS, OVERFLOW, Labels

BUCKET_COUNT = len(ENVOY_BUCKETS) + 1  # the last slot is +Inf


def bucket_of(value: float) -> int:
    """Index of the first bucket whose upper bound (le) is >= value."""
    return bisect_left(ENVOY_BUCKETS, value)


class HttpSeries:
    """One HTTP label set: request count and three histograms as per-bucket (not cumulative) counts."""

    __slots__ = (
        "count",
        "duration",
        "duration_sum",
        "request_bytes",
        "request_sum",
        "response_bytes",
        "response_sum",
    )

    def __init__(self) -> None:
        self.count = 0
        self.duration = [0] * BUCKET_COUNT
        self.duration_sum = 0.0
        self.request_bytes = [0] * BUCKET_COUNT
        self.request_sum = 0.0
        self.response_bytes = [0] * BUCKET_COUNT
        self.response_sum = 0.0


class TcpSeries:
    __slots__ = ("closed", "opened", "received", "sent")

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0
        self.opened = 0
        self.closed = 0


class HttpTally:
    """One kind's HTTP entries within one batch, added to its series once at the end of the batch.

    Byte sums stay exact ints until then; the compiled scanner (remixer/kit/native/als_scanner.pyx) keeps
    the same tallies in C and applies them in the same order, so both readers leave bit-identical series.
    """

    __slots__ = (
        "count",
        "duration",
        "duration_sum",
        "request_bytes",
        "request_sum",
        "response_bytes",
        "response_sum",
    )

    def __init__(self) -> None:
        self.count = 0
        self.duration = [0] * BUCKET_COUNT
        self.duration_sum = 0.0
        self.request_bytes = [0] * BUCKET_COUNT
        self.request_sum = 0
        self.response_bytes = [0] * BUCKET_COUNT
        self.response_sum = 0

    def observe(self, duration_ms: float, request_bytes: int, response_bytes: int) -> None:
        self.count += 1
        self.duration[bisect_left(ENVOY_BUCKETS, duration_ms)] += 1
        self.duration_sum += duration_ms
        self.request_bytes[bisect_left(ENVOY_BUCKETS, request_bytes)] += 1
        self.request_sum += request_bytes
        self.response_bytes[bisect_left(ENVOY_BUCKETS, response_bytes)] += 1
        self.response_sum += response_bytes

    def apply(self, series: HttpSeries) -> None:
        series.count += self.count
        _add_buckets(series.duration, self.duration)
        series.duration_sum += self.duration_sum
        _add_buckets(series.request_bytes, self.request_bytes)
        series.request_sum += self.request_sum
        _add_buckets(series.response_bytes, self.response_bytes)
        series.response_sum += self.response_sum


class TcpTally:
    """One kind's TCP logs within one batch (see HttpTally): the bytes and the connections opened and closed
    that they book (per-connection deltas, telemetry/edge/decoding.py)."""

    __slots__ = ("closed", "opened", "received", "sent")

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0
        self.opened = 0
        self.closed = 0

    def observe(self, sent: int, received: int, opened: int, closed: int) -> None:
        self.sent += sent
        self.received += received
        self.opened += opened
        self.closed += closed

    def apply(self, series: TcpSeries) -> None:
        series.sent += self.sent
        series.received += self.received
        series.opened += self.opened
        series.closed += self.closed


def _add_buckets(series: list[int], tally: list[int]) -> None:
    for i, n in enumerate(tally):
        if n:
            series[i] += n


class Aggregates:
    """Running totals per label set, with a cap on label sets per metric family and one overflow series."""

    def __init__(self, *, http_label_count: int, tcp_label_count: int, max_series: int) -> None:
        self.http: dict[Labels, HttpSeries] = {}
        self.tcp: dict[Labels, TcpSeries] = {}
        self.max_series = max_series
        self._http_overflow: Labels = (OVERFLOW,) * http_label_count
        self._tcp_overflow: Labels = (OVERFLOW,) * tcp_label_count
        # Label sets that arrived after the cap was reached and were folded into the overflow series.
        self.overflowed = {"http": 0, "tcp": 0}

    def http_slot(self, labels: Labels) -> HttpSeries:
        """The running totals for a label set (the overflow series once the cap is reached)."""
        slot = self.http.get(labels)
        if slot is None:
            if len(self.http) >= self.max_series:
                self.overflowed["http"] += 1
                labels = self._http_overflow
                slot = self.http.get(labels)
            if slot is None:
                slot = self.http[labels] = HttpSeries()
        return slot

    def tcp_slot(self, labels: Labels) -> TcpSeries:
        slot = self.tcp.get(labels)
        if slot is None:
            if len(self.tcp) >= self.max_series:
                self.overflowed["tcp"] += 1
                labels = self._tcp_overflow
                slot = self.tcp.get(labels)
            if slot is None:
                slot = self.tcp[labels] = TcpSeries()
        return slot

    def http_items(self) -> Iterable[tuple[Labels, HttpSeries]]:
        return list(self.http.items())

    def tcp_items(self) -> Iterable[tuple[Labels, TcpSeries]]:
        return list(self.tcp.items())


def cumulative(counts: list[int]) -> list[int]:
    """Per-bucket counts -> Prometheus' cumulative bucket counts (same length, last is +Inf)."""
    total, out = 0, []
    for n in counts:
        total += n
        out.append(total)
    return out
