"""Watching models in production: Prometheus metrics (more arrives with the monitoring issue)."""
