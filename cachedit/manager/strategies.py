"""Strategies: per step and per branch, compute or reuse.

A strategy sees the branch's counters, the step, the sampling progress and (for `adaptive`) a
callable that measures the probe's change; it returns (reuse, diff). Only `adaptive` measures,
so only it pays the one GPU->CPU sync a decision needs; `fixed` and `dynamic` decide from the
step alone and never sync.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

from ..config import CacheOptions
from .state import BranchState

DiffFn = Callable[[], Optional[float]]  # None: nothing to compare against (no computed step yet)
Decision = Tuple[bool, Optional[float]]


class Strategy:
    """Base: warmup, the sampling window, steps masks and the caps every strategy honours."""

    name = "base"
    needs_probe = False

    def __init__(self, options: CacheOptions) -> None:
        self.options = options
        self.config = options.cache_config

    # -- shared gates -------------------------------------------------------------------------
    def warmup_steps(self) -> range:
        """Steps that always compute (cache-dit's rule: a truncated by the mask's leading ones)."""
        cfg = self.config
        limit = cfg.max_warmup_steps
        if cfg.steps_computation_mask is not None:
            leading = 0
            for m in cfg.steps_computation_mask:
                if m != 1:
                    break
                leading += 1
            limit = min(limit, leading)
        return range(0, limit, cfg.warmup_interval)

    def gate(self, branch: BranchState, step: int, progress: float) -> Optional[bool]:
        """True/False when a shared rule settles the decision, None to let the strategy decide."""
        cfg = self.config
        if step in self.warmup_steps():
            return False
        if not (self.options.start_percent <= progress <= self.options.end_percent):
            return False
        if cfg.steps_computation_mask is not None:
            mask = cfg.steps_computation_mask
            if step < len(mask) and mask[step] == 1:
                return False
            if cfg.steps_computation_policy == "static":
                return branch.last_computed_step >= 0
        if cfg.max_cached_steps >= 0 and len(branch.cached_steps) >= cfg.max_cached_steps:
            return False
        if cfg.max_continuous_cached_steps >= 0 and branch.continuous_cached_steps >= cfg.max_continuous_cached_steps:
            return False
        acc = cfg.max_accumulated_residual_diff_threshold
        if acc is not None and acc > 0.0 and branch.accumulated_residual_diff >= acc:
            return False
        return None

    def decide(self, branch: BranchState, step: int, progress: float, diff_fn: DiffFn) -> Decision:
        """Return (reuse, measured diff or None)."""
        raise NotImplementedError


class FixedStrategy(Strategy):
    """After warmup, one step in every `skip_interval` reuses the cache."""

    name = "fixed"

    def decide(self, branch: BranchState, step: int, progress: float, diff_fn: DiffFn) -> Decision:
        gated = self.gate(branch, step, progress)
        if gated is not None:
            return gated and branch.last_computed_step >= 0, None
        if branch.last_computed_step < 0:
            return False, None
        k = self.options.skip_interval
        first = len(self.warmup_steps()) and self.warmup_steps()[-1] + 1
        return (step - first) % k == k - 1, None


class DynamicStrategy(Strategy):
    """Reuse more as sampling progresses (late steps change least): the allowed streak of reused
    steps grows from 0 to `skip_interval` with progress; a computed step ends every streak."""

    name = "dynamic"

    def decide(self, branch: BranchState, step: int, progress: float, diff_fn: DiffFn) -> Decision:
        gated = self.gate(branch, step, progress)
        if gated is not None:
            return gated and branch.last_computed_step >= 0, None
        if branch.last_computed_step < 0:
            return False, None
        budget = int(progress * self.options.skip_interval + 0.5)
        return branch.continuous_cached_steps < budget, None


class AdaptiveStrategy(Strategy):
    """DBCache's rule: reuse when the probe residual's relative L1 change since the last
    computed step is below `residual_diff_threshold` (0 disables reuse, >= 1 always reuses)."""

    name = "adaptive"
    needs_probe = True

    def decide(self, branch: BranchState, step: int, progress: float, diff_fn: DiffFn) -> Decision:
        gated = self.gate(branch, step, progress)
        if gated is not None:
            return gated, None
        threshold = float(self.config.residual_diff_threshold)
        if threshold <= 0.0:
            branch.record_diff(step, -0.0)
            return False, None
        if threshold >= 1.0:
            branch.record_diff(step, -1.0)
            return branch.last_computed_step >= 0, None
        diff = diff_fn()
        if diff is None:
            return False, None
        branch.record_diff(step, diff)
        return diff < threshold, diff


STRATEGY_CLASSES = {cls.name: cls for cls in (FixedStrategy, DynamicStrategy, AdaptiveStrategy)}


def make_strategy(options: CacheOptions) -> Strategy:
    """The strategy object for `options.strategy`."""
    return STRATEGY_CLASSES[options.strategy](options)
