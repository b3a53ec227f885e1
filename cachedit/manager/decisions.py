"""Decisions: compute or reuse, for one placed call.

The decider asks the strategy, applies what the engine knows (a reuse needs everything it would
reuse), records the outcome on the branch and in the run's record, and announces it on the bus.
It is also the one place a decision's metric is computed (`relative_change`): the relative L1
change that DBCache compares with its threshold, read with the single host sync a decision needs.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..events import bus
from .buffers import sub_into
from .calls import CallState
from .state import StepRecord
from .strategies import Decision, Measure, Strategy


def relative_change(previous: torch.Tensor, current: torch.Tensor, scratch: Optional[torch.Tensor] = None) -> Optional[float]:
    """mean|previous - current| / mean|previous| as a float (None when the shapes differ).

    `scratch` (same shape) takes the difference so no full-size temporary is allocated."""
    if previous.shape != current.shape:
        return None
    diff = sub_into(scratch, previous, current)
    num = torch.linalg.vector_norm(diff, 1)
    den = torch.linalg.vector_norm(previous, 1)
    return float((num / den.clamp_min(1e-12)).item())


class Decider:
    """Runs the strategy for a call and records and announces what it decided."""

    def __init__(self, key: int, name: str, strategy: Strategy) -> None:
        self.key = key
        self.name = name
        self.strategy = strategy

    @property
    def threshold(self) -> Optional[float]:
        """The threshold decisions are compared with (None for strategies that do not measure)."""
        if not self.strategy.needs_probe:
            return None
        return float(self.strategy.config.residual_diff_threshold)

    def decide(self, call: CallState, measure: Measure, can_reuse: bool, skipped_blocks: int, total_blocks: int) -> Decision:
        """Decide for `call` (placed), set `call.reuse`, record it; returns the strategy's decision.

        `can_reuse`: everything a reuse needs is there (else the call computes whatever the
        strategy says); `skipped_blocks` of `total_blocks` are what a reuse saves."""
        branch, step = call.branch, call.step
        decision = self.strategy.decide(branch, step, call.progress, measure)
        if decision.recorded is not None:
            branch.record_diff(step, decision.recorded)
        reuse = decision.reuse and can_reuse
        call.decided = True
        call.reuse = reuse
        if reuse:
            branch.record_cached(step)
        else:
            branch.last_computed_step = step
        recorded = branch.residual_diffs.get(str(step), decision.diff)
        threshold = self.threshold
        call.run.record.steps.append(StepRecord(step, branch.index, reuse, recorded, threshold))
        signal = bus.cache_hit if reuse else bus.step_computed
        if signal.receivers:
            signal.send(self.key, name=self.name, run=call.run.index, step=step, branch=branch.index, diff=recorded,
                        threshold=threshold, blocks=total_blocks - skipped_blocks if reuse else total_blocks,
                        total_blocks=total_blocks)
        return decision
