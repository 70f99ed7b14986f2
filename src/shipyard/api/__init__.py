"""Control-plane REST API."""
