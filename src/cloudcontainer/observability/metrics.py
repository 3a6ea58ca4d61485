"""Prometheus metrics, in a registry owned by each app (several apps may share a process)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_requests = Counter(
            "cloudcontainer_http_requests_total",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "cloudcontainer_http_request_duration_seconds",
            "Time to answer HTTP requests, by method and route template.",
            ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        # (method, route, status) -> the two labelled series: `labels()` checks and locks on
        # every call, and the set is bounded (route templates, not paths).
        self._http_series: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.http_in_flight = Gauge(
            "cloudcontainer_http_requests_in_flight",
            "HTTP requests being answered now.",
            registry=self.registry,
        )
        self.watch_events = Counter(
            "cloudcontainer_watch_events_total",
            "File-watch events handed to event-stream clients.",
            registry=self.registry,
        )
        self.watch_bytes = Counter(
            "cloudcontainer_watch_content_bytes_total",
            "File content (base64) in file-watch events handed to clients.",
            registry=self.registry,
        )
        self.watch_resumes = Counter(
            "cloudcontainer_watch_resumes_total",
            "Watches paused for a slow client or a replaced agent, then resumed from the "
            "agent's journal.",
            registry=self.registry,
        )

    def http_request_done(self, method: str, route: str, status: int, seconds: float) -> None:
        series = self._http_series.get((method, route, status))
        if series is None:
            series = (
                self.http_requests.labels(method, route, str(status)),
                self.http_latency.labels(method, route),
            )
            self._http_series[(method, route, status)] = series
        series[0].inc()
        series[1].observe(seconds)
