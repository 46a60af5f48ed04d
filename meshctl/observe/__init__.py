"""Observability: scrape sidecar /metrics, aggregate golden metrics, serve the dashboard."""
