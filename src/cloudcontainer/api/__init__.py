"""The HTTP API: one router per resource, sharing errors, limits and dependencies."""
