"""Ami test suite."""
