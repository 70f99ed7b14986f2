"""Batch and streaming scoring: file jobs (local worker processes or Ray Data) and Redis streams."""
