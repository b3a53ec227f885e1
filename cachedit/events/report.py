"""Reporting helpers shared by the summary, the logs and the ComfyUI stats node: percentiles of
measured diffs, the speedup a run's reuse implies, and the warnings about a model's setup."""

from __future__ import annotations

import logging
from typing import Any, Dict, Sequence

logger = logging.getLogger("cachedit")


def percentile(values: Sequence[float], p: float) -> float:
    """The `p` (0..1) percentile of `values` by nearest rank (values need not be sorted)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * (len(ordered) - 1) + 0.5))]


def diff_percentiles(values: Sequence[float], digits: int = 4) -> Dict[str, float]:
    """p25 / p50 / p75 / max of measured diffs, rounded ({} when there are none)."""
    if not values:
        return {}
    return {f"diff_{name}": round(percentile(values, p), digits)
            for name, p in (("p25", 0.25), ("p50", 0.5), ("p75", 0.75), ("max", 1.0))}


def estimated_speedup(reused: int, decisions: int, middle_share: float) -> float:
    """Transformer speedup implied by reusing `reused` of `decisions` model calls, each reuse
    skipping `middle_share` of the block compute."""
    if not decisions:
        return 1.0
    return 1.0 / max(1e-6, 1.0 - middle_share * reused / decisions)


def warn_setup(engine: Any, detail: str = "", hint: str = " Pass blocks=['<list name>'] to use block-level caching.") -> None:
    """Say once, at enable time, when a model cannot be cached at block level or cannot reuse at all."""
    if engine.step_level:
        logger.warning("cachedit: no transformer blocks found in %s%s; caching whole steps (output - input) "
                       "instead.%s", engine.name, detail, hint)
    elif engine.num_middle == 0:
        logger.warning("cachedit: %s has %d blocks and Fn=%d/Bn=%d compute all of them: nothing can be reused. "
                       "Lower Fn_compute_blocks.", engine.name, engine.num_blocks, engine.fn, engine.bn)
