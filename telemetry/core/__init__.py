"""Pure telemetry logic: labels, paths, aggregation. No I/O, no clock reads, no protobuf."""
