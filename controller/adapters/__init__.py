"""I/O at the edges: Prometheus, SQL, Kubernetes, files. Each translates its library's errors into
controller.errors types, so callers never catch a third-party exception."""
