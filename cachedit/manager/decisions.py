"""Decisions: compute or reuse, for one placed call.

The decider asks the strategy, applies what the engine knows (a reuse needs everything it would
reuse), records the outcome on the branch and in the run's record, and announces it on the bus.
It is also the one place a decision's metric is read (`measure`): the relative L1 change of the
probe that DBCache compares with its threshold, as sums read with the single host copy a decision
needs, together with the reuse error measured at the last computed step (error feedback); under
torch.distributed, reduced over the model's ranks in that same place (distributed.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch

from ..events import bus
from .buffers import sub_into
from .calls import CallState
from . import sampler_noise
from .distributed import DecisionGroup, rank_vector
from .feedback import ErrorFeedback
from .state import BranchState, StepRecord
from .strategies import Decision, Strategy


def change_sums(previous: torch.Tensor, current: torch.Tensor,
                scratch: Optional[torch.Tensor] = None) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """(sum |previous - current|, sum |previous|) as float32 0-dim tensors, without a host sync
    (None when the shapes differ). `scratch` (same shape) takes the difference."""
    if previous.shape != current.shape:
        return None
    diff = sub_into(scratch, previous, current)
    return (torch.linalg.vector_norm(diff, 1, dtype=torch.float32),
            torch.linalg.vector_norm(previous, 1, dtype=torch.float32))


def ratio(num: float, den: float) -> float:
    """num / den, with a floor on the denominator (an all-zero probe)."""
    return num / max(den, 1e-12)


@dataclasses.dataclass
class Measured:
    """What a decision's measurement read (on every rank alike under torch.distributed)."""

    diff: Optional[float]  # relative change; None: nothing to compare against (on some rank)
    can_reuse: bool  # everything a reuse needs is there (on every rank)
    extra: List[float]  # the caller's extra scalars (summed over ranks)


def _batch(branch: BranchState) -> int:
    """Batch size of the branch's main input (the length of per-element error vectors)."""
    signature = branch.signature
    shape = signature[0] if signature else ()
    return int(shape[0]) if shape else 1


def _worst(nums: List[float], dens: List[float]) -> float:
    """The largest relative error over batch elements: one image off is an image off."""
    return max(ratio(n, d) for n, d in zip(nums, dens))


class Decider:
    """Runs the strategy for a call and records and announces what it decided."""

    def __init__(self, key: int, name: str, strategy: Strategy, feedback: Optional[ErrorFeedback] = None,
                 group: Optional[DecisionGroup] = None) -> None:
        self.key = key
        self.name = name
        self.strategy = strategy
        self.feedback = feedback
        self.group = group  # torch.distributed: where decisions are reduced (None: never)
        # With error feedback, the CFG branches of a step (separate calls) all follow the first one's
        # decision: guidance amplifies the difference of the branches' reuse errors, and a step where
        # only one branch reuses has no error to cancel against (bundled models, 28 steps, batch 1,
        # quality preset: 39.3 -> 44.7 dB on Qwen, 42.7 -> 44.6 on FLUX). cache-dit decides each
        # branch on its own; explicit cache-dit configs keep that.
        self.follow_lead = feedback is not None
        # With error feedback, a run whose sampler adds noise at every step computes every step
        # (sampler_noise.py); explicit cache-dit configs keep cache-dit's behaviour.
        self.check_noise = feedback is not None

    @property
    def threshold(self) -> Optional[float]:
        """The threshold decisions are compared with now (None for strategies that do not measure)."""
        return self.strategy.threshold

    # -- the metric -------------------------------------------------------------------------------
    def measure(self, branch: BranchState, previous: Optional[torch.Tensor], current: Optional[torch.Tensor],
                can_reuse: bool, scratch: Optional[torch.Tensor] = None,
                extra: Sequence[torch.Tensor] = ()) -> Measured:
        """The relative change previous -> current, with the decision's one host copy. An error
        measured at the last computed step (error feedback) and `extra` scalars are read in the same
        copy; the error is fed back first, so the threshold this decision compares with knows it.
        Under torch.distributed every rank joins one reduction here, whatever it has (see
        distributed.py): the change, the flags and the error are the world's."""
        sums = change_sums(previous, current, scratch) if previous is not None and current is not None else None
        group = self.group.group() if self.group is not None else None
        if group is None:
            return self._measure_local(branch, sums, can_reuse, extra)
        return self._measure_world(branch, sums, can_reuse, extra, group, _batch(branch))

    def _noise_parts(self, branch: BranchState, device: torch.device, fixed: bool = False) -> List[torch.Tensor]:
        """sampler_noise's [seen, cosine] for the decision's host copy ([] when not checked)."""
        return sampler_noise.parts(branch, device, fixed) if self.check_noise else []

    def _measure_local(self, branch: BranchState, sums: Optional[tuple], can_reuse: bool,
                       extra: Sequence[torch.Tensor]) -> Measured:
        noise = self._noise_parts(branch, next((t.device for t in [*(sums or ()), *extra]), torch.device("cpu")))
        if sums is None:  # nothing to compare yet; `extra` is still read (its reader expects it)
            parts = list(extra) + noise
            values = torch.cat([p.reshape(-1).to(torch.float64) for p in parts]).tolist() if parts else []
            if noise:
                sampler_noise.read(branch, *values[len(extra):])
            return Measured(None, can_reuse, values[:len(extra)])
        parts = list(sums) + list(extra) + noise
        errors = branch.error_sums
        if errors is not None:
            parts += list(errors)
        values = torch.cat([p.reshape(-1).to(torch.float64) for p in parts]).tolist()  # the decision's one sync
        k = 2 + len(extra)
        if noise:
            sampler_noise.read(branch, *values[k:k + 2])  # before the error: a noisy run's error calibrates nothing
        k_errors = k + len(noise)
        if errors is not None:
            n = errors[0].numel()
            self._observe(branch, _worst(values[k_errors:k_errors + n], values[k_errors + n:]))
        return Measured(ratio(values[0], values[1]), can_reuse, values[2:k])

    def _measure_world(self, branch: BranchState, sums: Optional[tuple], can_reuse: bool,
                       extra: Sequence[torch.Tensor], group: Any, batch: int) -> Measured:
        errors = branch.error_sums
        if errors is not None and errors[0].numel() != batch:
            errors = None  # not per element of this batch: left out everywhere alike
        device = next((t.device for t in (list(sums or ()) + list(extra) + list(errors or ()))), torch.device("cpu"))
        zero, one = torch.zeros(1, device=device), torch.ones(1, device=device)
        nothing = torch.zeros(batch, device=device)
        noise = self._noise_parts(branch, device, fixed=True)
        parts = [*(sums or (zero, zero)), one if sums is not None else zero, one if can_reuse else zero,
                 one if errors is not None else zero, *(errors or (nothing, nothing)), *noise, *extra]
        values = self.group.reduce(rank_vector(parts, device), group).tolist()  # the decision's one sync
        world = group.size()
        valid, everyone_can, all_errors = (round(v) == world for v in values[2:5])
        k = 5 + 2 * batch
        if noise:
            sampler_noise.read(branch, *values[k:k + 2])  # the ranks' mean cosine
            k += 2
        if all_errors:
            self._observe(branch, _worst(values[5:5 + batch], values[5 + batch:5 + 2 * batch]))
        else:
            branch.error_sums = None
        return Measured(ratio(values[0], values[1]) if valid else None, everyone_can, values[k:])

    # -- error feedback ---------------------------------------------------------------------------
    def flush(self, branch: BranchState) -> None:
        """Read an error still waiting on `branch` (no probe was measured at this decision, or the
        run ends): a reduction of its own under torch.distributed."""
        if branch.error_sums is None:
            return
        if self.group is not None and self.group.group() is not None:
            self.measure(branch, None, None, can_reuse=False)
            return
        nums, dens = torch.stack(branch.error_sums).tolist()
        self._observe(branch, _worst(nums, dens))

    def _observe(self, branch: BranchState, error: float) -> None:
        record = branch.computed_record
        branch.error_sums = None
        if record is None or self.feedback is None:
            return
        record.error = error
        if branch.noisy:
            return  # the sampler adds noise: this error says nothing about the model's other runs
        diff = branch.computed_lead_diff if branch.computed_lead_diff is not None else record.diff
        self.feedback.observe(branch.computed_gap, branch.computed_progress, error, diff,
                              provisional=branch.error_provisional, step=(branch.computed_run, record.step))
        if bus.error_measured.receivers:
            fb = self.feedback
            bus.error_measured.send(self.key, name=self.name, step=record.step, branch=record.branch, error=error,
                                    diff=record.diff, gap=branch.computed_gap, budget=fb.run_budget(),
                                    threshold=fb.threshold_at(max(1, branch.computed_gap), branch.computed_progress, fb.span))

    # -- the decision -----------------------------------------------------------------------------
    def decide(self, call: CallState, measure: Callable[[bool], Measured], can_reuse: bool, skipped_blocks: int,
               total_blocks: int) -> Decision:
        """Decide for `call` (placed), set `call.reuse`, record it; returns the strategy's decision.

        `measure(can_reuse)`: the metric, called by strategies that read one (adaptive), at most once.
        `can_reuse`: everything a reuse needs is there on this rank (else the call computes whatever
        the strategy says; when the metric is measured, on every rank); `skipped_blocks` of
        `total_blocks` are what a reuse saves."""
        branch, step = call.branch, call.step
        outcome = {"can_reuse": can_reuse}

        def measured() -> Optional[float]:
            result = measure(can_reuse)
            outcome["can_reuse"] = result.can_reuse
            return result.diff

        # once noisy, the run computes on: nothing more to read; nor past the run's reuse end (a high-order
        # sampler under strong guidance, sampler_kind.py), whose turns would read as noise and say so
        if self.check_noise and not branch.noisy and not self.feedback.past_reuse_end(call.noise_progress):
            sampler_noise.track(branch, step, call.model_input)
        decision = self.strategy.decide(branch, step, call.progress, measured, final=call.final,
                                        noise_progress=call.noise_progress)
        self.flush(branch)  # an error the strategy's measurement did not read yet
        threshold = decision.threshold if decision.threshold is not None else self.threshold
        if decision.recorded is not None:
            branch.record_diff(step, decision.recorded)
        reuse = decision.reuse and outcome["can_reuse"]
        recorded = branch.residual_diffs.get(str(step), decision.diff)
        lead_diff = recorded
        if self.follow_lead:
            shape = call.form if call.form is not None else (
                tuple(call.probe_base.shape) if call.probe_base is not None else None)
            form = (shape, call.injected)
            # the first branch to decide at this step leads
            lead, lead_diff, lead_form = call.run.leads.setdefault(step, (reuse, recorded, form))
            reuse = lead and outcome["can_reuse"]
            if lead_form != form and self.feedback is not None:
                self.feedback.uneven_branches = True
        run_record = call.run.record
        if branch.noisy and run_record.noisy_from is None:
            run_record.noisy_from = step
        if run_record.noisy_from is not None or branch.noise_doubt:
            reuse = False  # the sampler adds noise each step: a reuse would change the image (sampler_noise.py)
        call.decided = True
        call.reuse = reuse
        record = StepRecord(step, branch.index, reuse, recorded, threshold)
        call.run.record.steps.append(record)
        if reuse:
            branch.record_cached(step)
        else:
            branch.computed_gap = step - branch.last_computed_step if branch.last_computed_step >= 0 else 0
            branch.computed_progress = call.noise_progress
            branch.computed_run = call.run.index
            # The error a reuse would have made here is calibrated against the change the step's decision
            # read: the lead's, when the branches follow it (a branch that changes more than the lead
            # then reads as a larger error per unit of change, and the lead's threshold drops)
            branch.computed_lead_diff = lead_diff
            branch.last_computed_step = step
            branch.computed_record = record
        signal = bus.cache_hit if reuse else bus.step_computed
        if signal.receivers:
            signal.send(self.key, name=self.name, run=call.run.index, step=step, branch=branch.index, diff=recorded,
                        threshold=threshold, blocks=total_blocks - skipped_blocks if reuse else total_blocks,
                        total_blocks=total_blocks)
        return decision
