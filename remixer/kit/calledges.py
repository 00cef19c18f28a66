"""The call-edge table: written by the telemetry sink, read by the controller.

It lives here, in the thin shared package, because two cards that must not import each other
both need its exact shape. Telemetry's migrations create it; the controller only reads it.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, Integer, MetaData, String, Table

metadata = MetaData()

call_edges = Table(
    "remixer_call_edges",
    metadata,
    # Who called: the source workload as Istio names it (source_workload, source_workload_namespace).
    Column("source_namespace", String(253), primary_key=True),
    Column("source_workload", String(253), primary_key=True),
    # What was called: the destination service FQDN (e.g. reviews.default.svc.cluster.local) and port.
    Column("destination_service", String(253), primary_key=True),
    Column("destination_port", Integer, primary_key=True),
    # http | grpc | tcp
    Column("protocol", String(16), primary_key=True),
    Column("first_seen", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=False),
    Column("count", BigInteger, nullable=False),
)
