"""Ami's control plane and CLI; ``__version__`` is the project's one version (pyproject.toml
reads it, the proxy reports it: meshctl/api/build.py)."""

__version__ = "0.1.0"
