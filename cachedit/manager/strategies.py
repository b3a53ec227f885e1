"""Strategies: per step and per branch, compute or reuse.

A strategy sees the branch's counters, the step, the sampling progress and (for `adaptive`) a
callable that measures the probe's change; it returns a `Decision` and changes nothing: the
decider records it. Only `adaptive` measures, so only it pays the one GPU->CPU sync a decision
needs; `fixed` and `dynamic` decide from the step alone and never sync. Whether a reuse is
possible at all (a computed step with every residual kept) is the engine's business, not theirs.

Shared conditions every strategy honours, each computed once from the config: warmup (cache-dit's
rule: `max_warmup_steps`, every `warmup_interval`-th, truncated by a steps mask's leading ones),
the sampling window (start/end percent), the steps mask, and the caps (total, consecutive,
accumulated diff).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable, Dict, Optional, Type

from .feedback import ErrorFeedback
from .state import BranchState

if TYPE_CHECKING:
    from ..config import CacheOptions

Measure = Callable[[], Optional[float]]  # the probe's relative change; None: nothing to compare against


@dataclasses.dataclass(frozen=True)
class Decision:
    """What a strategy decided for one (step, branch)."""

    reuse: bool
    diff: Optional[float] = None  # the measured change (None: not measured)
    recorded: Optional[float] = None  # what residual_diffs keeps for the step (cache-dit's -0.0 / -1.0 markers)
    threshold: Optional[float] = None  # error feedback: the threshold this decision compared with


COMPUTE = Decision(False)
REUSE = Decision(True)



class Strategy:
    """Base: the shared conditions; subclasses decide what is left in `choose`."""

    name = "base"
    needs_probe = False  # True: decisions read the probe (the engine keeps it, and pays one sync per decision)

    def __init__(self, options: "CacheOptions", feedback: Optional[ErrorFeedback] = None) -> None:
        self.options = options
        self.feedback = feedback
        cfg = self.config = options.cache_config
        limit = cfg.max_warmup_steps
        mask = cfg.steps_computation_mask
        if mask is not None:
            leading = next((i for i, m in enumerate(mask) if m != 1), len(mask))
            limit = min(limit, leading)
        self.warmup = range(0, limit, cfg.warmup_interval)
        self.first_step_after_warmup = self.warmup[-1] + 1 if self.warmup else 0
        self.compute_by_mask = frozenset(i for i, m in enumerate(mask) if m == 1) if mask is not None else frozenset()
        self.static_mask = mask is not None and cfg.steps_computation_policy == "static"
        acc = cfg.max_accumulated_residual_diff_threshold
        self.accumulated_cap = acc if acc is not None and acc > 0.0 else None

    # -- shared conditions ------------------------------------------------------------------------
    @property
    def threshold(self) -> Optional[float]:
        """The threshold decisions compare with now (None for strategies that do not measure)."""
        return None

    def in_warmup(self, step: int) -> bool:
        return step in self.warmup

    def outside_window(self, progress: float) -> bool:
        return not (self.options.start_percent <= progress <= self.options.end_percent)

    def capped(self, branch: BranchState) -> bool:
        """A cap on reuse is reached: total reused steps, reused steps in a row, accumulated diff."""
        cfg = self.config
        if 0 <= cfg.max_cached_steps <= len(branch.cached_steps):
            return True
        if 0 <= cfg.max_continuous_cached_steps <= branch.continuous_cached_steps:
            return True
        return self.accumulated_cap is not None and branch.accumulated_residual_diff >= self.accumulated_cap

    def decide(self, branch: BranchState, step: int, progress: float, measure: Measure, final: bool = False,
               noise_progress: Optional[float] = None) -> Decision:
        """Compute or reuse at `step` (no side effects); `final`: the run's last step; `noise_progress`:
        how far the noise level has come (error feedback's spans), where it differs from `progress`."""
        if self.in_warmup(step) or self.outside_window(progress) or step in self.compute_by_mask:
            return COMPUTE
        if self.static_mask:
            return REUSE  # a static mask reuses every step it does not mark (caps do not apply, as in cache-dit)
        if self.capped(branch):
            return COMPUTE
        return self.choose(branch, step, progress, measure)

    def choose(self, branch: BranchState, step: int, progress: float, measure: Measure) -> Decision:
        """The strategy's own rule, once every shared condition allows a reuse."""
        raise NotImplementedError


class FixedStrategy(Strategy):
    """After warmup, one step in every `skip_interval` reuses the cache."""

    name = "fixed"

    def choose(self, branch: BranchState, step: int, progress: float, measure: Measure) -> Decision:
        k = self.options.skip_interval
        return Decision((step - self.first_step_after_warmup) % k == k - 1)


class DynamicStrategy(Strategy):
    """Reuse more as sampling progresses (late steps change least): the allowed streak of reused
    steps grows from 0 to `skip_interval` with progress; a computed step ends every streak."""

    name = "dynamic"

    def choose(self, branch: BranchState, step: int, progress: float, measure: Measure) -> Decision:
        allowed = int(progress * self.options.skip_interval + 0.5)
        return Decision(branch.continuous_cached_steps < allowed)


class AdaptiveStrategy(Strategy):
    """DBCache's rule: reuse when the probe residual's relative L1 change since the last
    computed step is below `residual_diff_threshold` (0 disables reuse, >= 1 always reuses)."""

    name = "adaptive"

    needs_probe = True

    @property
    def threshold(self) -> float:
        return float(self.config.residual_diff_threshold)

    def decide(self, branch: BranchState, step: int, progress: float, measure: Measure, final: bool = False,
               noise_progress: Optional[float] = None) -> Decision:
        if self.feedback is None:
            return super().decide(branch, step, progress, measure)
        # Error feedback: the probe is measured at every decision (warmup and caps included), so that
        # each error measured at a computed step has the probe change over the same span.
        if self.outside_window(progress) or step in self.compute_by_mask:
            return COMPUTE
        diff = measure()
        if diff is None:
            return COMPUTE
        # the feedback's spans and buckets follow the noise level (a step's reuse error moves the
        # image by the step's sigma span); the window above follows the caller's progress
        threshold = self.feedback.threshold(step - branch.last_computed_step,
                                            progress if noise_progress is None else noise_progress)
        # the final step always computes: a reused last step shows directly in the image
        # past_reuse_end: a high-order multistep sampler under strong guidance (sampler_kind.py)
        reuse = not self.in_warmup(step) and not final and diff < threshold and not self.capped(branch) \
            and not self.first_streak_capped(branch) and not self.feedback.past_reuse_end(noise_progress)
        return Decision(reuse, diff=diff, recorded=diff, threshold=threshold)

    def first_streak_capped(self, branch: BranchState) -> bool:
        """A preset's cap on the run's first streak is reached: every step reused so far is in the
        current streak, and there are `first_streak_max` of them (see config/options.py)."""
        cap = self.options.first_streak_max
        streak = branch.continuous_cached_steps
        return cap is not None and streak >= cap and len(branch.cached_steps) == streak

    def choose(self, branch: BranchState, step: int, progress: float, measure: Measure) -> Decision:
        threshold = float(self.config.residual_diff_threshold)
        if threshold <= 0.0:
            return Decision(False, recorded=-0.0)
        if threshold >= 1.0:
            return Decision(True, recorded=-1.0)
        diff = measure()
        if diff is None:
            return COMPUTE
        return Decision(diff < threshold, diff=diff, recorded=diff)


class PruneStrategy(Strategy):
    """DBPrune's rule for one block (cache-dit's `can_prune`): outside warmup, the mask's compute
    steps and the caps, prune when the relative L1 change of the block's input since the last step
    that ran it is below the threshold (0 disables pruning, >= 1 always prunes). Decided per block:
    a step counts as pruned once any block was, and the caps read the steps before this one. Not a
    user-selectable strategy: `cache_type=DBPrune` (a DBPruneConfig) selects it."""

    name = "prune"

    @property
    def threshold(self) -> float:
        return float(self.config.residual_diff_threshold)

    def threshold_at(self, branch: BranchState, step: int) -> float:
        """The threshold for the next block at `step`: with `enable_dynamic_prune_threshold`, relaxed
        to the mean of the step's first five positive diffs times the relax ratio, when that lies
        between the configured threshold and the cap (cache-dit's `get_residual_diff_threshold`)."""
        cfg = self.config
        threshold = float(cfg.residual_diff_threshold)
        if not cfg.enable_dynamic_prune_threshold:
            return threshold
        diffs = [d for d in branch.residual_diffs.get(str(step), [])[:5] if d > 0.0]
        if not diffs:
            return threshold
        relaxed = sum(diffs) / len(diffs) * cfg.dynamic_prune_threshold_relax_ratio
        cap = cfg.max_dynamic_prune_threshold if cfg.max_dynamic_prune_threshold is not None else 2 * threshold
        return relaxed if threshold < relaxed < cap else threshold

    def capped_at(self, branch: BranchState, step: int) -> bool:
        """Total and consecutive pruned-step caps, counting the steps before `step` (cache-dit's
        prune context never accumulates diffs, so the accumulated cap does not apply)."""
        cfg = self.config
        if 0 <= cfg.max_cached_steps <= len(branch.cached_steps):
            return True
        streak = branch.continuous_cached_steps
        if branch.cached_steps and branch.cached_steps[-1] == step:
            streak -= 1
        return 0 <= cfg.max_continuous_cached_steps <= streak

    def decide(self, branch: BranchState, step: int, progress: float, measure: Measure, final: bool = False,
               noise_progress: Optional[float] = None) -> Decision:
        if self.in_warmup(step) or self.outside_window(progress) or step in self.compute_by_mask:
            return COMPUTE
        if self.static_mask:
            return REUSE
        if self.capped_at(branch, step):
            return COMPUTE
        threshold = self.threshold_at(branch, step)
        if threshold <= 0.0:
            return COMPUTE
        if threshold >= 1.0:
            return Decision(True, recorded=-1.0, threshold=threshold)
        diff = measure()
        if diff is None:
            return COMPUTE
        return Decision(diff < threshold, diff=diff, recorded=diff, threshold=threshold)


STRATEGIES: Dict[str, Type[Strategy]] = {cls.name: cls for cls in (FixedStrategy, DynamicStrategy, AdaptiveStrategy)}
"""The one registry of strategy names (validation and the nodes read it)."""


def make_strategy(options: "CacheOptions", feedback: Optional[ErrorFeedback] = None) -> Strategy:
    """The strategy object for `options.strategy` (adaptive reads its threshold from `feedback` if
    given); a DBPrune config runs `PruneStrategy`, which takes neither another strategy nor a budget."""
    if is_prune(options):
        if options.strategy != "adaptive":
            raise ValueError(f"strategy={options.strategy!r} is invalid with cache_type=DBPrune; allowed: 'adaptive' "
                             f"(DBPrune measures every prunable block)")
        if options.error_budget is not None:
            raise ValueError(f"error_budget={options.error_budget!r} is invalid with cache_type=DBPrune; allowed: None "
                             f"(no quality / error_budget: DBPrune keeps its threshold as configured)")
        if getattr(options, "cache_device", "model") == "cpu":
            raise ValueError("cache_device='cpu' is invalid with cache_type=DBPrune; allowed: 'auto' or 'model' "
                             "(pruned blocks read their residuals on the model's device)")
        return PruneStrategy(options)
    return STRATEGIES[options.strategy](options, feedback)


def is_prune(options: "CacheOptions") -> bool:
    """Whether `options` run DBPrune (cache_type DBPrune)."""
    return str(options.cache_config.cache_type) == "DBPrune"
