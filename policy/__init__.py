"""policy: the Envoy ext_authz Check service (rules, lists, quotas, decision cache, decision logs).

Layers: core/ decides (pure), edge/ speaks gRPC/HTTP/admin, adapters/ does I/O, service.py runs it,
app.py composes it into a `remixer.kit.parts.Part`.
"""
