"""Structured logs, request ids and Prometheus metrics."""
