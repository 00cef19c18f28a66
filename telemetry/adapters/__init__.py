"""I/O and library adapters: Prometheus exporter, record encoders, the SQL call-edge store."""
