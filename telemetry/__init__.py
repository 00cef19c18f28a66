"""The telemetry card: Envoy's gRPC access-log stream -> Istio-standard metrics, Kafka records, call edges.

Layers: core/ (pure), edge/ (Envoy protos <-> plain values), adapters/ (Prometheus, SQL, record encodings),
pipeline.py (per-batch application, call-edge flushing), app.py (composition: `build_part`).
"""
