"""Wire contract (protobuf) and declarative resource schema shared by control plane and proxy."""
