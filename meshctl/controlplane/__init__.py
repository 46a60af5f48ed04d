"""`meshctl serve`: resource store, HTTP API, reconcile loop, config push, registry, CA."""
