"""Pure policy logic: documents -> compiled snapshot -> decisions; quota arithmetic; decision cache.

No I/O, no clock reads (callers pass `now`), no grpc/fastapi/sqlalchemy/redis/prometheus_client.
"""
