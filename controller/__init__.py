"""The Sidecar controller: Prometheus call metrics -> dependency graph -> Istio Sidecar scopes.

Layers: `core/` is pure (rows in, manifests and plans out, `now` passed in); `adapters/` do the
I/O (Prometheus, SQL, Kubernetes, files); `reconciling` runs one pass; `app` composes; `cli` is
what `remixer controller ...` calls.
"""
