"""Containers: lifecycle, start queue, quotas, templates, health, idle stop, re-adoption."""
