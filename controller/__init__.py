"""The Sidecar controller: Prometheus call metrics -> dependency graph -> Istio Sidecar scopes.

Layers: `core/` is pure (rows in, manifests and plans out, `now` passed in); `adapters/` do the
I/O (Prometheus, SQL, Kubernetes, files); `reconciling` runs one pass; `app` composes; `cli` is
what `remixer controller ...` calls.

Entry points for the rest of remixer:
- `controller.cli.add_arguments(parser)` / `controller.cli.run(args, settings, data_dir=None) -> int`
  (`run-once`, `loop`, `graph`; exit 0 wrote or nothing to write, 1 guard refused, 2 bad usage,
  3 source or sink failure);
- `controller.app.admin_router(settings)`: `GET /v1/graph` (JSON, DOT, GraphML) and `GET /graph` (page);
- `controller.settings.ControllerSettings`: the `controller:` settings section.
"""
