"""Small summaries of measured samples, shared by the measuring and the reporting code."""

from __future__ import annotations

import statistics


def quantile(values: list[float], q: float) -> float | None:
    """The q-quantile (0..1), interpolated between samples; None for no samples."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    cuts = statistics.quantiles(values, n=1000, method="inclusive")
    return cuts[max(0, min(len(cuts) - 1, round(q * 1000) - 1))]


def median(values: list[float]) -> float | None:
    return quantile(values, 0.5)
