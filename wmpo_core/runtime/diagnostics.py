"""Small helpers the runtime nodes share for /diagnostics and throttled logging."""

from __future__ import annotations

from collections import deque

import numpy as np


class RollingStats:
    """The last `window` samples of a quantity (latency, period) with percentiles."""

    def __init__(self, window: int = 200):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self._values: deque[float] = deque(maxlen=window)
        self.total = 0

    def add(self, value: float) -> None:
        self._values.append(float(value))
        self.total += 1

    def __len__(self) -> int:
        return len(self._values)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self._values, q)) if self._values else float("nan")

    def mean(self) -> float:
        return float(np.mean(self._values)) if self._values else float("nan")

    def last(self) -> float:
        return self._values[-1] if self._values else float("nan")

    def summary(self, prefix: str, scale: float = 1000.0, unit: str = "ms") -> dict[str, str]:
        """{prefix_p50_ms, prefix_p99_ms, prefix_max_ms, prefix_count} as strings for KeyValue."""
        return {
            f"{prefix}_p50_{unit}": f"{self.percentile(50) * scale:.2f}",
            f"{prefix}_p99_{unit}": f"{self.percentile(99) * scale:.2f}",
            f"{prefix}_max_{unit}": f"{(max(self._values) if self._values else float('nan')) * scale:.2f}",
            f"{prefix}_count": str(self.total),
        }


class Throttle:
    """Allow one message per key per `period_s` (rclpy's throttle needs a fixed call site)."""

    def __init__(self, period_s: float = 2.0):
        self.period_s = period_s
        self._last: dict[str, float] = {}

    def allow(self, key: str, now: float) -> bool:
        last = self._last.get(key)
        if last is not None and now - last < self.period_s:
            return False
        self._last[key] = now
        return True
