"""Ami test suite."""

import os

# The gRPC tests run grpcio servers and clients inside the test process, which also forks
# subprocesses (proxies, control planes): gRPC's fork support would run its handlers in
# children and, with its threads running, can abort them. Set before grpc is first imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
