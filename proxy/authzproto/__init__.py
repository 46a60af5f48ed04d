"""Envoy's ext_authz gRPC API (`envoy.service.auth.v3.Authorization/Check`): the subset Ami
sends and reads, with Envoy's packages, names and field numbers; `make proto` generates the
`*_pb2` modules beside the `.proto` files."""
