"""Decisions: compute or reuse, for one placed call.

The decider asks the strategy, applies what the engine knows (a reuse needs everything it would
reuse), records the outcome on the branch and in the run's record, and announces it on the bus.
It is also the one place a decision's metric is read: the relative L1 change of the probe that
DBCache compares with its threshold, as sums read with the single host sync a decision needs; and,
with error feedback, the reuse error measured at the last computed step (read at the next decision).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from ..events import bus
from .buffers import sub_into
from .calls import CallState
from .feedback import ErrorFeedback
from .state import BranchState, StepRecord
from .strategies import Decision, Measure, Strategy


def change_sums(previous: torch.Tensor, current: torch.Tensor,
                scratch: Optional[torch.Tensor] = None) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """(sum |previous - current|, sum |previous|) as float32 0-dim tensors, without a host sync
    (None when the shapes differ). `scratch` (same shape) takes the difference."""
    if previous.shape != current.shape:
        return None
    diff = sub_into(scratch, previous, current)
    return (torch.linalg.vector_norm(diff, 1, dtype=torch.float32),
            torch.linalg.vector_norm(previous, 1, dtype=torch.float32))


def read_floats(tensors: List[torch.Tensor]) -> List[float]:
    """Host values of 0-dim tensors, in one device->host copy (the decision's one sync)."""
    return torch.stack([t.to(torch.float64) for t in tensors]).tolist()


def ratio(num: float, den: float) -> float:
    """num / den, with a floor on the denominator (an all-zero probe)."""
    return num / max(den, 1e-12)


def relative_change(previous: torch.Tensor, current: torch.Tensor, scratch: Optional[torch.Tensor] = None) -> Optional[float]:
    """mean|previous - current| / mean|previous| as a float (None when the shapes differ)."""
    sums = change_sums(previous, current, scratch)
    if sums is None:
        return None
    num, den = read_floats(list(sums))
    return ratio(num, den)


def _worst(nums: List[float], dens: List[float]) -> float:
    """The largest relative error over batch elements: one image off is an image off."""
    return max(ratio(n, d) for n, d in zip(nums, dens))


class Decider:
    """Runs the strategy for a call and records and announces what it decided."""

    def __init__(self, key: int, name: str, strategy: Strategy, feedback: Optional[ErrorFeedback] = None) -> None:
        self.key = key
        self.name = name
        self.strategy = strategy
        self.feedback = feedback

    @property
    def threshold(self) -> Optional[float]:
        """The threshold decisions are compared with now (None for strategies that do not measure)."""
        return self.strategy.threshold

    # -- the metric -------------------------------------------------------------------------------
    def probe_change(self, branch: BranchState, previous: torch.Tensor, current: torch.Tensor,
                     scratch: Optional[torch.Tensor] = None) -> Optional[float]:
        """The probe's relative change since the last computed step. An error measured at that
        computed step (error feedback) is read in the same sync and fed back first, so the
        threshold this decision compares with already knows it."""
        sums = change_sums(previous, current, scratch)
        if sums is None:
            return None
        if branch.error_sums is None:
            return ratio(*read_floats(list(sums)))
        nums, dens = branch.error_sums
        values = torch.cat([torch.stack(sums), nums, dens]).tolist()  # the decision's one sync
        n = nums.numel()
        self._observe(branch, _worst(values[2:2 + n], values[2 + n:]))
        return ratio(values[0], values[1])

    # -- error feedback ---------------------------------------------------------------------------
    def flush(self, branch: BranchState) -> None:
        """Read an error still waiting on `branch` (at the end of a run, or when no probe was measured)."""
        if branch.error_sums is not None:
            nums, dens = torch.stack(branch.error_sums).tolist()
            self._observe(branch, _worst(nums, dens))

    def _observe(self, branch: BranchState, error: float) -> None:
        record = branch.computed_record
        branch.error_sums = None
        if record is None or self.feedback is None:
            return
        record.error = error
        self.feedback.observe(branch.computed_gap, branch.computed_progress, error, record.diff)
        if bus.error_measured.receivers:
            bus.error_measured.send(self.key, name=self.name, step=record.step, branch=record.branch, error=error,
                                    diff=record.diff, gap=branch.computed_gap, budget=self.feedback.budget)

    # -- the decision -----------------------------------------------------------------------------
    def decide(self, call: CallState, measure: Measure, can_reuse: bool, skipped_blocks: int, total_blocks: int) -> Decision:
        """Decide for `call` (placed), set `call.reuse`, record it; returns the strategy's decision.

        `can_reuse`: everything a reuse needs is there (else the call computes whatever the
        strategy says); `skipped_blocks` of `total_blocks` are what a reuse saves."""
        branch, step = call.branch, call.step
        decision = self.strategy.decide(branch, step, call.progress, measure, final=call.final)
        self.flush(branch)  # an error the strategy's measurement did not read yet
        threshold = decision.threshold if decision.threshold is not None else self.threshold
        if decision.recorded is not None:
            branch.record_diff(step, decision.recorded)
        reuse = decision.reuse and can_reuse
        call.decided = True
        call.reuse = reuse
        recorded = branch.residual_diffs.get(str(step), decision.diff)
        record = StepRecord(step, branch.index, reuse, recorded, threshold)
        call.run.record.steps.append(record)
        if reuse:
            branch.record_cached(step)
        else:
            branch.computed_gap = step - branch.last_computed_step if branch.last_computed_step >= 0 else 0
            branch.computed_progress = call.progress
            branch.last_computed_step = step
            branch.computed_record = record
        signal = bus.cache_hit if reuse else bus.step_computed
        if signal.receivers:
            signal.send(self.key, name=self.name, run=call.run.index, step=step, branch=branch.index, diff=recorded,
                        threshold=threshold, blocks=total_blocks - skipped_blocks if reuse else total_blocks,
                        total_blocks=total_blocks)
        return decision
