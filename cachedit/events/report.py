"""Reporting helpers shared by the summary, the logs and the ComfyUI stats node: percentiles of
measured diffs, the speedup a run's reuse implies, and the warnings about a model's setup."""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Sequence

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


def error_percentiles(errors: Sequence[float], budget: Optional[float], digits: int = 4) -> Dict[str, Any]:
    """Error feedback over one run: the budget, the median and largest measured reuse error and how
    many of the measured computed steps were over the budget ({} when nothing was measured).

    `errors` are the relative errors a reuse would have made at computed steps (StepRecord.error):
    a median well under the budget means the reuses around it cost little; errors over the budget
    mean the probe underestimated the change there, and the threshold came down after them."""
    values = [e for e in errors if e is not None and e >= 0]
    if not values:
        return {}
    out: Dict[str, Any] = {"error_p50": round(percentile(values, 0.5), digits), "error_max": round(max(values), digits),
                           "errors_measured": len(values)}
    if budget is not None:
        out["error_budget"] = budget
        out["errors_over_budget"] = sum(1 for e in values if e > budget)
    return out


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


def warn_warmup_covers_run(engine: Any, steps: int, reused: int = 0) -> bool:
    """Say once per model when warmup left no step of a run that could reuse (a 4-8 step distilled
    model with a warmup of 3: the one step after warmup is the last, never reused).
    `steps`: the run's steps, `reused`: its reused decisions. Returns whether it warned."""
    strategy = engine.strategy
    if steps <= 0 or reused or (engine.num_middle == 0 and not engine.step_level):
        return False
    outside = sum(1 for s in range(steps) if not strategy.in_warmup(s))
    if outside > 1 or not len(strategy.warmup):
        return False
    warmup = len(strategy.warmup)
    logger.warning("cachedit: %s: warmup (%d steps) covered the run (%d steps; a last step is never reused), so "
                   "nothing could be reused. Lower warmup_steps (max_warmup_steps), e.g. to 1 for a 4-8 step "
                   "distilled model.", engine.name, warmup, steps)
    return True


def warn_sampler_noise(engine: Any, record: Any) -> bool:
    """Say once per model when a run's sampler added fresh noise at every step (ancestral / SDE
    samplers), so that run computed every step from `record.noisy_from` on. Returns whether it warned."""
    step = getattr(record, "noisy_from", None)
    if step is None:
        return False
    logger.warning("cachedit: %s: the sampler adds new noise at every step (an ancestral or SDE sampler), so reusing "
                   "a step would change the image; this run computed every step from step %d. For speed pick a "
                   "deterministic sampler (euler, dpmpp_2m, uni_pc, deis, res_multistep).", engine.name, step)
    return True

