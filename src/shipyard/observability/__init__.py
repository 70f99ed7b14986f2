"""Watching the server: Prometheus metrics (more arrives with monitoring)."""
