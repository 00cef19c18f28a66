"""Wire <-> domain: the ext_authz gRPC servicer, the HTTP ext_authz listener, the admin API router."""
