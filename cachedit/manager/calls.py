"""Call placement: which run, step and CFG branch a model call belongs to.

An adapter opens a call with what it knows (the timestep, a branch key such as ComfyUI's cond
uuids, the input's shape/dtype/device, the step index when the caller knows the schedule). The
placer turns that into (run, step, branch) with the RunTracker, gives the branch fresh buffers
when its input signature changed, and announces run boundaries on the bus.

A call whose timestep is still on its way from the GPU (a DeferredScalar) is *pending*: the
blocks before the probe run unaffected, and the call is placed just before its decision, so a
CUDA timestep never drains the GPU queue at the start of a call.

Each thread has its own call in progress, runs and probe buffers (`ThreadCalls`): two threads
sampling clones of one model (ComfyUI's multi-GPU work units: one thread per device) get exactly
what running them one after the other gives.
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from typing import Callable, Dict, Hashable, List, Optional, Union

import torch

from ..events import bus
from .buffers import ProbeBuffers
from .state import BranchState, RunState, RunTracker


class DeferredScalar:
    """A GPU scalar (the timestep) copied to the host without waiting for the GPU.

    Reading a CUDA timestep with `.item()` at the start of a call drains the GPU queue and leaves
    the GPU idle while Python prepares the next kernels. Instead the copy is queued, and `read()`
    waits only for it (queued before the probe blocks, so those keep the GPU busy meanwhile)."""

    __slots__ = ("host", "event")

    def __init__(self, tensor: torch.Tensor) -> None:
        first = tensor.reshape(-1)[:1]
        self.event: Optional[torch.cuda.Event] = None
        if first.is_cuda:
            self.host = first.to("cpu", non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.host = first.detach().clone()  # a CPU tensor the caller might still write into

    def read(self) -> float:
        """The value (waits for the copy only, not for work queued after it)."""
        if self.event is not None:
            self.event.synchronize()
        return float(self.host[0])


Timestep = Union[float, None, DeferredScalar]


@dataclasses.dataclass(frozen=True)
class CallRequest:
    """What the adapter knows about a model call when it opens it."""

    timestep: Timestep
    branch_key: Optional[Hashable]  # the caller's key for the CFG branch (None: position within the step)
    signature: tuple  # (shape, dtype, device) of the main input: a change gives the branch fresh buffers
    total_steps: Optional[int] = None
    step_index: Optional[int] = None  # the caller knows the step (ComfyUI's sigma schedule)
    # The caller's own sampling progress in [0, 1], used instead of RunState.progress (ComfyUI: the
    # sigma's percent through model_sampling, so start/end_percent mean what ComfyUI's nodes mean).
    progress: Optional[float] = None
    # How far the noise level has come down, in [0, 1], for error feedback's step spans (the step a
    # reused output moves the image by; ComfyUI: 1 - sigma / sigma_max on flow models). None: the
    # caller's `progress` when it gave one, else RunState.noise_progress.
    noise_progress: Optional[float] = None
    # The model's main input (the latent the sampler hands it): sampler_noise.py follows its path.
    model_input: Optional[torch.Tensor] = None
    # The model adds something between its blocks in this call (a ControlNet's per-block residuals,
    # Wan VACE hints, ComfyUI "double_block" patches): segments cache their blocks' own residuals
    # and a reused step lets those additions through fresh (protocol.py).
    injected: bool = False
    # What gives this call's hidden stream its form besides the latent, when the caller knows it
    # (ComfyUI: the shapes of the reference latents Flux Kontext / Qwen-Image-Edit append); None:
    # the hidden stream's shape stands for it. CFG branches of different form get a cut budget
    # (feedback.UNEVEN_BRANCHES_SCALE); a text prompt's length is not a difference of form.
    form: Optional[tuple] = None


class CallState:
    """Everything about one model call that the block protocol needs."""

    __slots__ = ("pending", "run", "step", "branch", "branch_key", "reuse", "decided", "probe_base",
                 "probe_base_version", "probe_owned", "seg_in", "seg_in_versions", "seg_out", "progress", "timestep",
                 "final", "pruned", "noise_progress", "model_input", "injected", "seg_acc", "form")

    def __init__(self, request: CallRequest) -> None:
        self.pending: Optional[CallRequest] = request  # until placed
        self.run: Optional[RunState] = None
        self.step = -1
        self.branch: Optional[BranchState] = None
        self.branch_key: Hashable = None
        self.reuse = False
        self.decided = False
        self.probe_base: Optional[torch.Tensor] = None
        self.probe_base_version = 0
        self.probe_owned = False  # the probe tensor was computed here (may be written into later)
        self.seg_in: Dict[int, Dict[str, torch.Tensor]] = {}
        self.seg_in_versions: Dict[int, Dict[str, int]] = {}
        self.seg_out: Dict[int, Dict[str, Optional[torch.Tensor]]] = {}
        self.progress = 0.0
        self.noise_progress = 0.0  # error feedback's progress (CallRequest.noise_progress)
        self.timestep: Optional[float] = None
        self.final = False  # the run's last step (known or foreseen)
        self.pruned = 0  # DBPrune: blocks pruned in this call
        self.model_input: Optional[torch.Tensor] = request.model_input
        self.injected = request.injected
        self.form = request.form
        self.seg_acc: Dict[int, torch.Tensor] = {}  # injected computed calls: sum of the segment's block residuals so far


class ThreadCalls(threading.local):
    """What one thread's calls of a model share: the call in progress, the runs, the probe buffers."""

    def __init__(self, trackers: "weakref.WeakSet[RunTracker]", buffers: "weakref.WeakSet[ProbeBuffers]") -> None:
        self.current: Optional[CallState] = None
        self.tracker = RunTracker()
        self.buffers = ProbeBuffers()
        trackers.add(self.tracker)  # every thread's, for accounting and resets
        buffers.add(self.buffers)


class CallPlacer:
    """Places calls in their run, step and branch, and announces run starts and ends."""

    def __init__(self, key: int, name: str, lock: threading.RLock, run_ended: Callable[[RunState], dict]) -> None:
        self.key = key
        self.name = name
        self.lock = lock
        self._trackers: "weakref.WeakSet[RunTracker]" = weakref.WeakSet()
        self._buffers: "weakref.WeakSet[ProbeBuffers]" = weakref.WeakSet()
        self.local = ThreadCalls(self._trackers, self._buffers)
        self.default_total_steps: Optional[int] = None  # DBCacheConfig.num_inference_steps
        self.refresh_every: Optional[int] = None  # DBCacheConfig.force_refresh_step_hint
        self.refresh_repeat = False  # force_refresh_step_policy == "repeat"
        self._run_ended = run_ended  # the engine's end-of-run work; returns the extra payload of run_finished
        self.on_run_started: Optional[Callable[[RunState, CallRequest], None]] = None  # the engine's run-start work
        self.on_moved_evaluation: Optional[Callable[[RunState], None]] = None  # a run's first Heun-type evaluation

    @property
    def tracker(self) -> RunTracker:
        """This thread's RunTracker."""
        return self.local.tracker

    def all_trackers(self) -> List[RunTracker]:
        """Every thread's RunTracker (threads that ended are gone)."""
        return list(self._trackers)

    def all_buffers(self) -> List[ProbeBuffers]:
        """Every thread's probe buffers."""
        return list(self._buffers)

    def place(self, call: CallState) -> None:
        """Place a pending call (once; later calls do nothing)."""
        request = call.pending
        if request is None:
            return
        call.pending = None
        timestep = request.timestep.read() if isinstance(request.timestep, DeferredScalar) else request.timestep
        total_steps = request.total_steps if request.total_steps is not None else self.default_total_steps
        with self.lock:
            previous_run = self.tracker.run
            run, step, key, reason = self.tracker.advance(timestep, request.branch_key, total_steps=total_steps,
                                                          step_index=request.step_index,
                                                          refresh_every=self.refresh_every,
                                                          refresh_repeat=self.refresh_repeat)
            if reason:
                if previous_run is not None:
                    self._announce_finished(previous_run)
                if self.on_run_started is not None:
                    self.on_run_started(run, request)
                if bus.run_started.receivers:
                    bus.run_started.send(self.key, name=self.name, run=run.index, reason=reason)
            if run.watch_latents and self._moved_evaluation(run, step, request.model_input):
                run.watch_latents, run.step_input = False, None
                if self.on_moved_evaluation is not None:
                    self.on_moved_evaluation(run)
            branch = run.branch(key)
            if branch.signature != request.signature:
                if branch.signature is not None and bus.branch_reset.receivers:
                    bus.branch_reset.send(self.key, name=self.name, run=run.index, branch=branch.index,
                                          reason="shape/dtype/device changed")
                branch.clear_buffers()
                branch.signature = request.signature
            branch.begin_step(step)
            run.executed_calls += 1
            call.run, call.step, call.branch, call.branch_key = run, step, branch, key
            call.progress = request.progress if request.progress is not None else run.progress(timestep)
            call.noise_progress = (request.noise_progress if request.noise_progress is not None
                                   else request.progress if request.progress is not None
                                   else run.noise_progress(timestep))
            call.timestep = timestep
            call.final = self._is_final(run, branch, step, call.progress)

    @staticmethod
    def _moved_evaluation(run: RunState, step: int, x: Optional[torch.Tensor]) -> bool:
        """Whether this call evaluates the model at the step's timestep on another latent than the
        step's first call did: a Heun-type sampler's second evaluation (its corrector point, then the
        next step's start, share a timestep), where CFG branches and repeated conditionings pass the
        same latent. Host-side only (which storage, no values read); the first call's latent is held
        until the step ends, so a later call's fresh latent cannot take over its freed memory."""
        if not torch.is_tensor(x):
            return False
        first = run.step_input
        if first is None or first[0] != step:
            run.step_input = (step, x)
            return False
        held = first[1]
        return x.shape == held.shape and x.data_ptr() != held.data_ptr()

    @staticmethod
    def _is_final(run: RunState, branch: BranchState, step: int, progress: float) -> bool:
        """Whether `step` is the run's last: from the step count when known, else when one more step
        at the pace of the last one would reach the end of sampling."""
        if run.total_steps:
            final = step >= run.total_steps - 1
        else:
            previous = branch.step_progress
            final = previous is not None and 0.0 < progress - previous and 2 * progress - previous >= 0.999
        if branch.progress_step != step:
            branch.step_progress, branch.progress_step = progress, step
        return final

    def abort(self, call: CallState) -> None:
        """A call failed: drop its branch's buffers and end the run, so nothing half-written is reused."""
        with self.lock:
            if call.branch is not None:
                call.branch.clear_buffers()
            self.tracker.abort()  # a call that failed before it was placed never touched a branch

    def finish_run(self) -> None:
        """Close the current run (announced if it ran anything); the next call starts a new one."""
        with self.lock:
            run = self.tracker.close()
            if run is not None:
                self._announce_finished(run)

    def _announce_finished(self, run: RunState) -> None:
        details = self._run_ended(run)
        if bus.run_finished.receivers and run.executed_calls:
            bus.run_finished.send(self.key, name=self.name, run=run.index, record=run.record,
                                  cache_bytes=run.buffer_bytes(), **details)
