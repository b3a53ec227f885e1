"""Error feedback: the adaptive threshold calibrated from the errors the cache actually makes.

A probe threshold means different things on different models: the same relative change of the
first block's residual comes with a small reuse error on one model and a visible one on another.
Every computed step shows the truth: the residual the cache would have reused there (the last
one, or TaylorSeer's prediction) against the one just computed. Its relative error (to the
segment's output, what the rest of the model sees; the worst batch element counts) is paired with
the probe change measured at the same step over the same span (`gap` steps since the previous
computed step): their ratio is what one unit of probe change costs in error on this model.

Per gap and per quarter of the sampling progress (the ratio drifts over a run), the ratio is
smoothed in log space; a reuse at gap k is allowed while ratio x probe change stays within the
budget, so the probe threshold at gap k is budget / ratio. A gap not measured yet borrows the
nearest shorter gap's ratio, scaled up by sqrt(k / j) (errors grow faster than the probe over a
longer span). The ratios are kept across runs of the same model, so a second generation starts
calibrated; before the first measurement the configured threshold is used.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, Optional, Tuple

BUCKETS = 4  # sampling progress is split in this many parts


def bucket_of(progress: float) -> int:
    """The progress bucket of a decision (0: first quarter of sampling ... 3: last quarter)."""
    return min(BUCKETS - 1, max(0, int(progress * BUCKETS)))


@dataclasses.dataclass
class ErrorFeedback:
    """Per-model calibration of probe change -> reuse error, and the thresholds it implies."""

    budget: float  # relative error a reuse may make
    initial_threshold: float  # used until a first ratio is measured
    smoothing: float = 0.5  # weight of a new measurement in a log-ratio average
    log_ratios: Dict[Tuple[int, int], float] = dataclasses.field(default_factory=dict)  # (gap, bucket) -> log(error / change)
    observations: int = 0

    def observe(self, gap: int, progress: float, error: float, diff: Optional[float]) -> None:
        """Take one measured (error, probe change) pair over `gap` steps at sampling `progress`."""
        if gap < 1 or diff is None or not diff > 0.0 or not error > 0.0 or not math.isfinite(error):
            return
        self.observations += 1
        sample = math.log(error / diff)
        key = (gap, bucket_of(progress))
        old = self.log_ratios.get(key)
        self.log_ratios[key] = sample if old is None else old + self.smoothing * (sample - old)

    def ratio(self, gap: int, progress: float) -> Optional[float]:
        """Expected error per unit of probe change over `gap` steps at `progress` (None: nothing
        measured yet). The nearest progress bucket with measurements is used (the later one on a
        tie), then the longest measured gap not above `gap`, scaled by sqrt(gap / g); when only
        longer gaps were measured, the shortest of them."""
        if not self.log_ratios:
            return None
        here = bucket_of(progress)
        bucket = min({b for _, b in self.log_ratios}, key=lambda b: (abs(b - here), -b))
        gaps = [g for g, b in self.log_ratios if b == bucket]
        shorter = [g for g in gaps if g <= gap]
        if not shorter:
            return math.exp(self.log_ratios[(min(gaps), bucket)])
        g = max(shorter)
        return math.exp(self.log_ratios[(g, bucket)]) * math.sqrt(gap / g)

    def threshold(self, gap: int, progress: float) -> float:
        """The probe change below which a reuse at `gap` steps keeps within the budget."""
        r = self.ratio(gap, progress)
        return self.initial_threshold if r is None else self.budget / r
