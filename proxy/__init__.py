"""Ami sidecar proxy: the data plane (uvloop + httptools)."""
