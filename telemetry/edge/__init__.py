"""Wire <-> domain: the only place that knows Envoy's access-log protos."""
