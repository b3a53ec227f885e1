"""Per-model runtime state: runs, steps and CFG branches, and where run boundaries fall.

A *run* is one sampling loop. A *step* is one timestep of it; every model call at the same
timestep belongs to the same step. A *branch* is one stream of calls that must keep its own
buffers: a CFG branch (cond / uncond, batched together or called separately), or the second
evaluation of a multi-evaluation sampler. Branches are keyed by what the caller knows best
(ComfyUI's cond uuids) or, failing that, by the call's position within its step.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Hashable, List, Optional

import torch

from .buffers import tensor_bytes


@dataclasses.dataclass
class StepRecord:
    """One decision: what the chart and the debug log show."""

    step: int
    branch: int
    reused: bool
    diff: Optional[float]
    threshold: Optional[float]
    error: Optional[float] = None  # error feedback, computed steps: the error a reuse would have made here


@dataclasses.dataclass
class RunRecord:
    """Decisions of one run, kept for the stats node's chart and the per-run console line."""

    run: int
    steps: List[StepRecord] = dataclasses.field(default_factory=list)
    total_steps: Optional[int] = None
    noisy_from: Optional[int] = None  # the step where the sampler was seen adding noise (sampler_noise.py)

    @property
    def reused(self) -> int:
        """Number of (step, branch) decisions that reused the cache."""
        return sum(1 for s in self.steps if s.reused)


@dataclasses.dataclass
class BranchState:
    """Buffers and counters of one branch within one run (reset with the run)."""

    index: int
    signature: Optional[tuple] = None
    probe: Optional[torch.Tensor] = None  # probe residual of the last computed step
    residuals: Dict[int, Dict[str, torch.Tensor]] = dataclasses.field(default_factory=dict)  # segment -> stream -> residual
    residuals_injected: bool = False  # its calls add between blocks (block_reuse.py: residuals made so)
    settling: int = 0  # calls left that compute after additions started or stopped (block_reuse.py)
    additions_changed_step: int = -1  # the last step where they started or stopped (sampler_noise.py skips its cosine)
    taylor: Dict[Any, Any] = dataclasses.field(default_factory=dict)  # (segment, stream) -> TaylorSeries
    last_computed_step: int = -1
    cached_steps: List[int] = dataclasses.field(default_factory=list)
    residual_diffs: Dict[str, float] = dataclasses.field(default_factory=dict)
    continuous_cached_steps: int = 0
    accumulated_residual_diff: float = 0.0
    # error feedback: the last computed step's decision and the error measured there (read at the next decision)
    computed_record: Optional[StepRecord] = None
    computed_gap: int = 0  # steps between the last computed step and the one before it
    computed_progress: float = 0.0  # noise progress (error feedback's) at the last computed step
    computed_run: int = -1  # the run of the last computed step (its error is that step's, with other branches')
    computed_lead_diff: Optional[float] = None  # the probe change the last computed step's decision was made on
    step_progress: Optional[float] = None  # progress of the latest step seen (foresees the final step)
    progress_step: int = -1  # the step `step_progress` belongs to
    error_sums: Optional[List[torch.Tensor]] = None  # per batch element [sum |reused - computed|, sum |output|], on device
    error_provisional: bool = False  # error_sums come from a one-point forecast (feedback.py: provisional ratios)
    # step-level (no block list) state
    last_input: Optional[torch.Tensor] = None
    last_output: Optional[torch.Tensor] = None
    output_rate: Optional[float] = None  # |d out| / |d in| measured between the last two computes
    rate_sums: Optional[List[torch.Tensor]] = None  # the sums behind the next output_rate, read at the next decision
    accumulated_change: float = 0.0
    # sampler noise (sampler_noise.py): the model input's path, on device
    noise_step: int = -1  # the step whose input was taken last
    noise_input: Optional[torch.Tensor] = None  # that input, [batch, -1] float32
    noise_change: Optional[torch.Tensor] = None  # its change from the step before
    noise_pending: Optional[torch.Tensor] = None  # the cosine of the last two changes, not read yet
    noise_evidence: float = 0.0  # summed shortfalls of the cosines read (sampler_noise.NOISE_EVIDENCE)
    noise_doubt: bool = False  # the last cosine read was low: compute until the next one is read
    noisy: bool = False  # enough evidence: the sampler adds fresh noise each step
    # cache placement (placement.py): while a call uses them on the model's device, the host tensors they came from
    staged: Optional[List[Any]] = None

    def clear_buffers(self) -> None:
        """Drop every cached tensor (a shape/dtype/device change makes them meaningless)."""
        self.probe = None
        self.residuals.clear()
        self.residuals_injected = False
        self.settling = 0
        self.taylor.clear()
        self.last_input = None
        self.last_output = None
        self.output_rate = None
        self.rate_sums = None
        self.accumulated_change = 0.0
        self.last_computed_step = -1
        self.computed_record = None
        self.error_sums = None
        self.error_provisional = False
        self.staged = None

    def begin_step(self, step: int) -> None:
        """A new step starts for this branch: a computed previous step breaks the reuse streak."""
        if not self.cached_steps or self.cached_steps[-1] != step - 1:
            self.continuous_cached_steps = 0

    def record_diff(self, step: int, diff: float) -> None:
        """Keep the first diff measured at a step (cache-dit's rule) and accumulate positive ones."""
        key = str(step)
        if key not in self.residual_diffs:
            self.residual_diffs[key] = diff
            if diff > 0.0:
                self.accumulated_residual_diff += diff

    def record_cached(self, step: int) -> None:
        """Count a reused step."""
        self.cached_steps.append(step)
        self.continuous_cached_steps += 1

    def buffer_tensors(self) -> List[Optional[torch.Tensor]]:
        """This branch's cached tensors (aliases included)."""
        tensors = [self.probe, self.last_input, self.last_output]
        for streams in self.residuals.values():
            tensors.extend(streams.values())
        for series in self.taylor.values():
            tensors.extend(series.terms)
        return tensors

    def buffer_bytes(self) -> int:
        """Bytes held by this branch's cached tensors."""
        return tensor_bytes(self.buffer_tensors())


@dataclasses.dataclass
class RunState:
    """Where the current run stands: its step, timesteps seen, and branches."""

    index: int
    step: int = -1
    first_timestep: Optional[float] = None
    last_timestep: Optional[float] = None
    direction: int = 0  # -1 decreasing timesteps, +1 increasing, 0 unknown yet
    calls_in_step: int = 0
    keys_in_step: Dict[Hashable, int] = dataclasses.field(default_factory=dict)  # explicit key -> calls this step
    total_steps: Optional[int] = None
    branches: Dict[Hashable, BranchState] = dataclasses.field(default_factory=dict)
    record: RunRecord = None  # type: ignore[assignment]
    executed_calls: int = 0
    forced: bool = False  # started by force_refresh_step_hint (its generation's "once" is spent)
    # step -> its first branch's (decision, probe change, form: (stream shape or reference shapes, additions))
    leads: Dict[int, tuple] = dataclasses.field(default_factory=dict)
    # Heun-type evaluations are looked for (CallPlacer._moved_evaluation) only when the run's start asks
    # (the engine: error feedback with no sampler named), until one is found; step_input: (step, its
    # first call's latent)
    watch_latents: bool = False
    step_input: Optional[tuple] = None

    def __post_init__(self) -> None:
        if self.record is None:
            self.record = RunRecord(run=self.index)

    def branch(self, key: Hashable) -> BranchState:
        """The branch for `key`, created on first use (index = order of appearance)."""
        state = self.branches.get(key)
        if state is None:
            state = self.branches[key] = BranchState(index=len(self.branches))
        return state

    def progress(self, timestep: Optional[float]) -> float:
        """Sampling progress in [0, 1]: from the step count when the total is known, else from
        how far the timestep has moved from the run's first timestep towards zero."""
        if self.total_steps:
            return min(1.0, max(0.0, self.step / max(1, self.total_steps - 1)))
        if timestep is not None and self.first_timestep:
            return min(1.0, max(0.0, 1.0 - timestep / self.first_timestep))
        return min(1.0, self.step / 27.0)  # unknown schedule: assume a common 28-step run

    def noise_progress(self, timestep: Optional[float]) -> float:
        """How far the noise level has come down in [0, 1]: 1 - timestep / the run's first timestep
        (flow models pass sigma, or sigma x 1000, as the timestep), so a shifted schedule's short
        early steps count as short. Timesteps that rise within [0, 1] are 1 - sigma (diffusers'
        Lumina2 and Z-Image pipelines): the noise level is 1 - t. Other rising ones, or none: `progress`."""
        first = self.first_timestep
        if timestep is not None and first and self.direction <= 0:
            return min(1.0, max(0.0, 1.0 - timestep / first))
        if timestep is not None and first is not None and self.direction > 0 and 0.0 <= first < timestep <= 1.0:
            return min(1.0, (timestep - first) / (1.0 - first))  # 1 - (1 - t) / (1 - t0)
        return self.progress(timestep)

    def buffer_tensors(self) -> List[Optional[torch.Tensor]]:
        """Every branch's cached tensors."""
        return [t for b in self.branches.values() for t in b.buffer_tensors()]

    def buffer_bytes(self) -> int:
        """Bytes held by every branch of this run."""
        return sum(b.buffer_bytes() for b in self.branches.values())


class RunTracker:
    """Turns a stream of model calls into (run, step, branch) without help from the user.

    Rules: the first call starts a run; a timestep that moves against the run's direction (goes
    back up) starts a new run; an equal timestep is the same step (another CFG branch or an
    extra evaluation), keyed by the caller's branch key or the call's position in the step; a
    run that reached `num_inference_steps` ends; a run that made `force_refresh_step_hint` calls
    ends (cache-dit's hint: once per generation, or each time with the "repeat" policy); an
    exception during a call ends the run so the next call starts clean; `refresh()` forces a new run.
    """

    def __init__(self) -> None:
        self.run: Optional[RunState] = None
        self.runs_started = 0
        self._force_new = False
        self.last_reason = ""

    def refresh(self) -> None:
        """Make the next call start a new run."""
        self._force_new = True

    def close(self) -> Optional[RunState]:
        """End the current run now (the next call starts a new one); returns the run it ended."""
        run, self.run = self.run, None
        self._force_new = True
        return run

    def _new_run(self, reason: str, timestep: Optional[float], total_steps: Optional[int]) -> RunState:
        forced = reason == "force_refresh_step_hint"
        self.run = RunState(index=self.runs_started, step=0, first_timestep=timestep, last_timestep=timestep,
                            total_steps=total_steps, forced=forced)
        self.runs_started += 1
        self.last_reason = reason
        return self.run

    def advance(self, timestep: Optional[float], branch_key: Optional[Hashable], *,
                total_steps: Optional[int] = None, step_index: Optional[int] = None,
                refresh_every: Optional[int] = None, refresh_repeat: bool = False) -> tuple:
        """Place one call. Returns (run, step, branch_key, new_run_reason_or_empty). `refresh_every`:
        cache-dit's force_refresh_step_hint (a run that made that many calls ends; once per
        generation, or every time with `refresh_repeat`)."""
        run = self.run
        reason = ""
        if run is None:
            reason = "first call"
        elif self._force_new:
            reason = "refresh"
        elif step_index is not None:
            # The caller knows the step (ComfyUI: from sample_sigmas). A step index that goes back starts a new run.
            if step_index < run.step or (step_index == 0 and run.step > 0):
                reason = "step index went back"
        elif timestep is not None and run.last_timestep is not None and timestep != run.last_timestep:
            moved = 1 if timestep > run.last_timestep else -1
            if run.direction and moved != run.direction:
                reason = "timestep went back up" if moved > 0 else "timestep went back down"
        if not reason and run is not None and run.total_steps is not None and step_index is None:
            is_new_step = timestep is None or timestep != run.last_timestep
            if is_new_step and run.step + 1 >= run.total_steps:
                reason = "num_inference_steps reached"
        if not reason and run is not None and refresh_every and run.executed_calls >= refresh_every \
                and (refresh_repeat or not run.forced):
            reason = "force_refresh_step_hint"  # the rest of this generation is a new run (steps count from 0)
        if reason:
            self._force_new = False
            run = self._new_run(reason, timestep, total_steps)
            if step_index is not None:
                run.step = step_index
            run.calls_in_step = 1
            return run, run.step, self._key(run, branch_key), reason

        assert run is not None
        if step_index is not None:
            same = step_index == run.step
            if not same:
                run.step = step_index
        elif timestep is None:
            same = False
            run.step += 1
        else:
            same = timestep == run.last_timestep
            if not same:
                if not run.direction and run.last_timestep is not None:
                    run.direction = 1 if timestep > run.last_timestep else -1
                run.step += 1
        run.calls_in_step = run.calls_in_step + 1 if same else 1
        if not same:
            run.keys_in_step.clear()
        if timestep is not None:
            run.last_timestep = timestep
        if total_steps is not None:
            run.total_steps = total_steps
        return run, run.step, self._key(run, branch_key), ""

    @staticmethod
    def _key(run: RunState, branch_key: Optional[Hashable]) -> Hashable:
        """Branch key of a call: the caller's key plus how often it was seen this step (a second
        evaluation with the same conditioning, e.g. Heun's or SkipLayerGuidance's, gets its own
        branch), or the call's position within the step when the caller has no key."""
        if branch_key is None:
            return run.calls_in_step - 1
        seen = run.keys_in_step.get(branch_key, 0)
        run.keys_in_step[branch_key] = seen + 1
        return (branch_key, seen)

    def abort(self) -> None:
        """An exception interrupted a call: the next call starts a new run."""
        self._force_new = True
