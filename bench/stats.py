"""Summaries of timing samples."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any


def percentile(samples: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between closest ranks."""
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Summary:
    n: int
    p50: float
    p95: float
    p99: float
    mean: float

    @classmethod
    def of(cls, samples: list[float]) -> Summary:
        return cls(
            n=len(samples),
            p50=percentile(samples, 50),
            p95=percentile(samples, 95),
            p99=percentile(samples, 99),
            mean=statistics.fmean(samples) if samples else float("nan"),
        )


def recorded(samples: list[float]) -> dict[str, Any]:
    """Samples as a result records them: every one, and their summary."""
    return {"samples_s": samples, "summary": Summary.of(samples).__dict__}
