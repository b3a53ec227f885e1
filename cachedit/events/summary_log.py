"""`summary()`'s log: cache-dit's statistics table (and with `details=True` its per-step lists),
line for line, through the stdlib logger "cachedit", plus one line of CacheDit's own counters.

Percentiles are computed as numpy's default (linear interpolation) over every recorded diff,
cache-dit's markers for warmup (-0.0) and capped (-1.0) steps included, so the table reads the
same as cache-dit's for the same steps.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Sequence

from .report import error_percentiles
from .stats import CacheStats

logger = logging.getLogger("cachedit")

_HEADER = "| {label} | Diffs P00 | Diffs P25 | Diffs P50 | Diffs P75 | Diffs P95 | Diffs Min | Diffs Max |"


def linear_percentile(values: Sequence[float], q: float) -> float:
    """The `q` (0-100) percentile with linear interpolation between ranks (numpy's default)."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def table_lines(label: str, cached: int, diffs: Dict[str, Any]) -> List[str]:
    """cache-dit's three table lines (header, rule, values) for one set of recorded diffs."""
    values = [v for d in diffs.values() for v in (d if isinstance(d, list) else [d])]  # DBPrune: lists per step
    cells = [round(linear_percentile(values, q), 3) for q in (0, 25, 50, 75, 95)]
    cells += [round(min(values), 3), round(max(values), 3)]
    width = len(label)
    return [_HEADER.format(label=label), "|" + "-" * (width + 2) + "|" + "-----------|" * 7,
            f"| {cached:<{width}} | " + " | ".join(f"{c:<9}" for c in cells) + " |"]


def log_summary(s: CacheStats, details: bool = False) -> None:
    """Log one model's (or block list's) statistics as cache-dit does, then CacheDit's counters."""
    name = s.name
    logger.info("\n🤗Cache Context Options: %s\n\n%s", name, s.cache_options)
    if s.residual_diffs:
        logger.info("\n⚡️Cache Steps and Residual Diffs Statistics: %s, Executed Steps: %d, Transformer Executed "
                    "Steps: %d\n", name, s.accumulated_executed_steps, s.accumulated_transformer_executed_steps)
        for line in table_lines("Cache Steps", s.accumulated_cached_steps, s.residual_diffs):
            logger.info(line)
        logger.info("")
        if details:
            logger.info("📚Cache Steps and Residual Diffs Details: %s\n", name)
            logger.info("Cache Steps: %d, %s", s.accumulated_cached_steps, s.cached_steps)
            logger.info("Residual Diffs: %d, %s", len(s.residual_diffs), s.residual_diffs)
    if s.cfg_residual_diffs:
        logger.info("\n⚡️CFG Cache Steps and Residual Diffs Statistics: %s\n", name)
        for line in table_lines("CFG Cache Steps", s.cfg_accumulated_cached_steps, s.cfg_residual_diffs):
            logger.info(line)
        if details:
            logger.info("📚CFG Cache Steps and Residual Diffs Details: %s\n", name)
            logger.info("CFG Cache Steps: %d, %s", s.cfg_accumulated_cached_steps, s.cfg_cached_steps)
            logger.info("CFG Residual Diffs: %d, %s", len(s.cfg_residual_diffs), s.cfg_residual_diffs)
    if s.pruned_ratio is not None:
        logger.info("Dynamic Block Prune Ratio: %s%% (%d/%d)", round(s.pruned_ratio * 100, 2), sum(s.pruned_blocks),
                    sum(s.actual_blocks))
    logger.info("CacheDit: %s strategy=%s hit_rate=%.1f%% blocks computed/skipped=%d/%d estimated compute saved=%.1f%%",
                name, s.strategy, 100 * s.hit_rate, s.blocks_computed, s.blocks_skipped,
                100 * s.estimated_compute_saved)
    if s.error_budget is not None:
        errors = error_percentiles(list(s.reuse_errors.values()) + list(s.cfg_reuse_errors.values()), s.error_budget)
        if errors:
            logger.info("CacheDit error feedback: %s budget=%g measured reuse error (last run) median=%.4g max=%.4g, "
                        "%d of %d computed steps over budget", name, s.error_budget, errors["error_p50"],
                        errors["error_max"], errors["errors_over_budget"], errors["errors_measured"])
    if s.sampler_noise_step is not None:
        logger.info("CacheDit: %s the last run's sampler added new noise at every step (ancestral / SDE): every step "
                    "from step %d on was computed", name, s.sampler_noise_step)


__all__ = ["linear_percentile", "log_summary", "table_lines"]
