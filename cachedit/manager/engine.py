"""The cache engine of one accelerated model: block-level residual reuse, framework-agnostic.

Blocks (all block lists, in execution order) split into Fn | Mn | Bn. Per model call:
1. `begin_call` places the call in a run, step and branch (RunTracker) and returns a CallState.
2. At block 0's input the engine keeps the hidden stream; after block Fn-1 the probe residual
   (its output minus that input) goes to the strategy, which decides compute or reuse.
3. Computing: each middle *segment* (the middle blocks of one block list) runs; its residual
   (output minus input, per stream) is stored. Reusing: each segment returns its input plus the
   stored residual (TaylorSeer-extrapolated if enabled) without running a block.
4. Bn blocks always run. `end_call` closes the call (an exception ends the run).

Adapters (torch module hooks, ComfyUI block patches) translate block arguments to named
streams ("hidden", "encoder", ...) and call `block_input` / `block_output` at the few blocks that
matter; every other block only checks `call.reuse`.
"""

from __future__ import annotations

import threading
from typing import Dict, Hashable, List, Optional, Sequence, Union

import torch

from ..config import CacheOptions
from ..events import bus
from .state import BranchState, RunTracker, StepRecord
from .strategies import make_strategy
from .taylorseer import TaylorSeries

def _eager(fn):
    """Keep cache bookkeeping out of torch.compile graphs: decisions run eagerly, blocks compile."""
    return torch.compiler.disable(fn, recursive=True)


ROLE_FIRST = 1  # block 0: its hidden input is the probe base
ROLE_PROBE = 2  # block Fn-1: its output gives the probe, the decision follows
ROLE_MID = 4  # a middle block: skipped on reuse
ROLE_SEG_FIRST = 8  # first middle block of a segment: its input is the segment base
ROLE_SEG_LAST = 16  # last middle block of a segment: its output gives the segment residual


def _version(t: Optional[torch.Tensor]) -> int:
    """In-place write counter of a tensor; -1 for inference tensors (torch.inference_mode(), as
    ComfyUI samples), which keep none: adapters for such callers pass clone_inputs up front."""
    if t is None or t.is_inference():
        return -1
    return t._version


def relative_l1(previous: torch.Tensor, current: torch.Tensor, scratch: Optional[torch.Tensor] = None) -> Optional[float]:
    """mean|prev - cur| / mean|prev| as one float (the single host sync of a decision).

    `scratch` (same shape) takes the difference so no full-size temporary is allocated."""
    if previous.shape != current.shape:
        return None
    diff = sub_into(scratch, previous, current)
    num = torch.linalg.vector_norm(diff, 1)
    den = torch.linalg.vector_norm(previous, 1)
    return float((num / den.clamp_min(1e-12)).item())


def sub_into(buffer: Optional[torch.Tensor], a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a - b, written into `buffer` when it fits (no per-step allocation of hidden-state-sized
    tensors: on CPU fresh large allocations page-fault, and that cost more than the math)."""
    if buffer is not None and buffer.shape == a.shape and buffer.dtype == a.dtype and buffer.device == a.device:
        return torch.sub(a, b, out=buffer)
    return a - b


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


class CallState:
    """Everything about one model call that block hooks need.

    A call whose timestep is still on its way from the GPU (DeferredScalar) is *pending*: blocks
    before the probe run unaffected, and the engine places it in its run/step/branch just before
    the decision (`CacheEngine.place`)."""

    __slots__ = ("run", "step", "branch", "branch_key", "reuse", "decided", "probe_base", "probe_base_version", "probe_owned",
                 "seg_in", "seg_in_versions", "seg_out", "progress", "timestep", "pending")

    def __init__(self, pending: tuple) -> None:
        self.pending: Optional[tuple] = pending  # (timestep, branch_key, signature, total_steps, step_index) until placed
        self.run = None
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
        self.timestep: Optional[float] = None


class CacheEngine:
    """Runtime of one accelerated model (owned by the CacheManager, found through a weakref)."""

    def __init__(self, key: int, name: str, options: CacheOptions, list_lengths: Sequence[int], *,
                 clone_inputs: bool = False) -> None:
        self.key = key
        self.name = name
        self.options = options
        self.strategy = make_strategy(options)
        self.tracker = RunTracker()
        self.current: Optional[CallState] = None
        self.enabled = True
        self.lock = threading.RLock()
        # Copy segment inputs before blocks run: needed for blocks that write into their inputs (the
        # adapter says so up front; otherwise it is switched on when a version counter shows it).
        self.clone_inputs = clone_inputs
        # Engine-wide buffers shared by every branch (calls are sequential): the next probe is
        # written into the spare, the probe difference into the scratch.
        self.probe_spare: Optional[torch.Tensor] = None
        self.diff_scratch: Optional[torch.Tensor] = None
        self.configure_blocks(list_lengths)

    # -- layout -----------------------------------------------------------------------------------
    def configure_blocks(self, list_lengths: Sequence[int]) -> None:
        """Compute each block's role from the list lengths and Fn/Bn."""
        self.list_lengths = list(list_lengths)
        n = sum(self.list_lengths)
        self.num_blocks = n
        self.step_level = n == 0
        cfg = self.options.cache_config
        fn = min(cfg.Fn_compute_blocks, n)
        bn = min(cfg.Bn_compute_blocks, n - fn)
        self.fn, self.bn = fn, bn
        mid_start, mid_end = fn, n - bn
        self.num_middle = max(0, mid_end - mid_start)
        roles = [0] * n
        segment_of = [-1] * n
        segments: List[range] = []
        offset = 0
        for length in self.list_lengths:
            lo, hi = max(offset, mid_start), min(offset + length, mid_end)
            if lo < hi:
                seg = len(segments)
                segments.append(range(lo, hi))
                for i in range(lo, hi):
                    roles[i] |= ROLE_MID
                    segment_of[i] = seg
                roles[lo] |= ROLE_SEG_FIRST
                roles[hi - 1] |= ROLE_SEG_LAST
            offset += length
        if n:
            roles[0] |= ROLE_FIRST
            roles[max(fn - 1, 0)] |= ROLE_PROBE if fn > 0 else 0
        self.roles = roles
        self.segment_of = segment_of
        self.segments = segments

    def reconfigure(self, options: CacheOptions) -> None:
        """Switch to new options (the caller re-installs hooks: block roles may change)."""
        with self.lock:
            self.options = options
            self.strategy = make_strategy(options)
            self.configure_blocks(self.list_lengths)
            self.tracker.run = None
            self.tracker.refresh()

    def hooked_blocks(self) -> List[int]:
        """Indices that need a hook (all others can run untouched)."""
        return [i for i, r in enumerate(self.roles) if r]

    # -- calls ------------------------------------------------------------------------------------
    @_eager
    def begin_call(self, timestep: Union[float, None, DeferredScalar], branch_key: Optional[Hashable], signature: tuple, *,
                   total_steps: Optional[int] = None, step_index: Optional[int] = None) -> Optional[CallState]:
        """Open a call; None when the engine is disabled. A float/None timestep places the call in
        its run/step/branch now; a DeferredScalar one when the decision needs it (`place`)."""
        if not self.enabled:
            return None
        call = CallState((timestep, branch_key, signature, total_steps, step_index))
        self.current = call
        if not isinstance(timestep, DeferredScalar) or self.fn == 0 or self.step_level:
            self.place(call)
        return call

    def place(self, call: CallState) -> None:
        """Place a pending call in its run, step and branch (once; later calls do nothing)."""
        if call.pending is None:
            return
        timestep, branch_key, signature, total_steps, step_index = call.pending
        call.pending = None
        if isinstance(timestep, DeferredScalar):
            timestep = timestep.read()
        with self.lock:
            previous_run = self.tracker.run
            if total_steps is None:
                total_steps = self.options.cache_config.num_inference_steps
            run, step, key, reason = self.tracker.advance(timestep, branch_key, total_steps=total_steps, step_index=step_index)
            if reason:
                if previous_run is not None:
                    self._emit_run_finished(previous_run)
                if bus.run_started.receivers:
                    bus.run_started.send(self.key, name=self.name, run=run.index, reason=reason)
            branch = run.branch(key)
            if branch.signature != signature:
                if branch.signature is not None and bus.run_started.receivers:
                    bus.run_started.send(self.key, name=self.name, run=run.index, reason="branch shape/dtype/device changed")
                branch.clear_buffers()
                branch.signature = signature
            branch.begin_step(step)
            run.executed_calls += 1
            call.run, call.step, call.branch, call.branch_key = run, step, branch, key
            call.progress = run.progress(timestep)
            call.timestep = timestep

    def run_call(self, call: CallState, fn):
        """Run the model call placed by `begin_call`, then close it (as failed on an exception)."""
        try:
            out = fn()
        except BaseException:
            self.end_call(call, failed=True)
            raise
        self.end_call(call)
        return out

    @_eager
    def end_call(self, call: Optional[CallState], failed: bool = False) -> None:
        """Close a call; on failure the run ends so nothing half-written is ever reused."""
        if call is None:
            return
        if self.current is call:
            self.current = None
        if failed:
            with self.lock:
                if call.branch is not None:
                    call.branch.clear_buffers()
                self.tracker.abort()  # a call that failed before it was placed never touched a branch
            return
        if not call.decided:
            # A model call that never reached the probe (no blocks ran): count it as computed.
            self._decide(call, None)

    def finish_run(self) -> None:
        """Close the current run explicitly (ComfyUI: end of sampling); the next call starts a new one."""
        with self.lock:
            run = self.tracker.run
            if run is not None and run.executed_calls:
                self._emit_run_finished(run)
            self.tracker.run = None
            self.tracker.refresh()

    def _emit_run_finished(self, run) -> None:
        if bus.run_finished.receivers and run.executed_calls:
            bus.run_finished.send(self.key, name=self.name, run=run.index, record=run.record, options=self.options,
                                  cache_bytes=run.buffer_bytes(),
                                  middle_share=self.num_middle / self.num_blocks if self.num_blocks else 1.0)

    # -- block protocol ---------------------------------------------------------------------------
    @_eager
    def block_input(self, call: CallState, index: int, streams: Dict[str, torch.Tensor]) -> None:
        """Called with the input streams of block 0 and of each segment's first block."""
        role = self.roles[index]
        if role & ROLE_FIRST:
            hidden = streams.get("hidden")
            if hidden is not None and self.clone_inputs and self.fn > 0:
                hidden = hidden.clone()
            call.probe_base = hidden
            call.probe_base_version = _version(hidden)
            if self.fn == 0:
                self._decide(call, hidden)
        if role & ROLE_SEG_FIRST:
            seg = self.segment_of[index]
            if call.reuse:
                call.seg_out[seg] = self._reused_streams(call, seg, streams)
            else:
                if self.clone_inputs:
                    streams = {k: v.clone() if v is not None else None for k, v in streams.items()}
                call.seg_in[seg] = streams
                call.seg_in_versions[seg] = {k: _version(v) for k, v in streams.items() if v is not None}

    @_eager
    def block_output(self, call: CallState, index: int, streams: Dict[str, Optional[torch.Tensor]]) -> None:
        """Called with the output streams of block Fn-1 and of each segment's last block (computed)."""
        role = self.roles[index]
        if role & ROLE_PROBE and not call.decided:
            hidden = streams.get("hidden")
            base = call.probe_base
            if base is not None and _version(base) != call.probe_base_version:
                self.clone_inputs = True  # block 0 wrote into its input: copy it from the next call on
                base = None
            if not self.strategy.needs_probe:
                probe = None  # fixed/dynamic decide from the step alone
            elif base is not None and hidden is not None and base.shape == hidden.shape:
                probe = sub_into(self.probe_spare, hidden, base)
                self.probe_spare = None
                call.probe_owned = True
            else:
                probe = hidden
            self._decide(call, probe)
        if role & ROLE_SEG_LAST and not call.reuse:
            seg = self.segment_of[index]
            inputs = call.seg_in.pop(seg, None)
            versions = call.seg_in_versions.pop(seg, {})
            if inputs is None:
                return
            if any(_version(inputs[k]) != v for k, v in versions.items()):
                # A block changed its input in place: this residual is wrong. Drop it, and copy inputs from now on.
                self.clone_inputs = True
                call.branch.residuals.pop(seg, None)
                call.branch.last_computed_step = -1
                return
            branch = call.branch
            previous = branch.residuals.get(seg, {})
            order = self.options.taylorseer_order
            residual: Dict[str, torch.Tensor] = {}
            for name, out in streams.items():
                base = inputs.get(name)
                if out is None or base is None or out.shape != base.shape:
                    continue
                if order:
                    series = branch.taylor.get((seg, name))
                    if series is None:
                        series = branch.taylor[(seg, name)] = TaylorSeries(order)
                    residual[name] = series.update_residual(out, base, call.step)
                else:
                    residual[name] = sub_into(previous.get(name), out, base)  # overwrite last step's buffer
            branch.residuals[seg] = residual

    @_eager
    def reused_segment(self, call: CallState, index: int) -> Dict[str, Optional[torch.Tensor]]:
        """Streams a skipped middle block returns (its segment's input plus the cached residual)."""
        return call.seg_out[self.segment_of[index]]

    def _reused_streams(self, call: CallState, seg: int, streams: Dict[str, torch.Tensor]) -> Dict[str, Optional[torch.Tensor]]:
        residual = call.branch.residuals.get(seg, {})
        order = self.options.taylorseer_order
        noise = self.options.noise_scale
        out: Dict[str, Optional[torch.Tensor]] = {}
        for name, value in streams.items():
            delta = residual.get(name)
            if value is None or delta is None or delta.shape != value.shape:
                out[name] = value
                continue
            series = call.branch.taylor.get((seg, name)) if order else None
            if noise > 0.0:
                if series is not None:
                    delta = series.predict(call.step)
                delta = delta + torch.randn_like(delta) * (noise * delta.std())
                out[name] = value + delta
            elif series is not None:
                out[name] = series.add_prediction(value, call.step)
            else:
                out[name] = value + delta
        return out

    # -- decisions --------------------------------------------------------------------------------
    def _can_reuse(self, branch: BranchState) -> bool:
        """A reuse needs every segment's residual from a computed step of this branch."""
        if branch.last_computed_step < 0:
            return False
        return all(seg in branch.residuals for seg in range(len(self.segments)))

    def _decide(self, call: CallState, probe: Optional[torch.Tensor]) -> None:
        self.place(call)
        branch = call.branch
        step = call.step

        def diff_fn() -> Optional[float]:
            if probe is None or branch.probe is None:
                return None
            if self.diff_scratch is None or self.diff_scratch.shape != probe.shape:
                self.diff_scratch = torch.empty_like(probe)
            return relative_l1(branch.probe, probe, self.diff_scratch)

        reuse, diff = self.strategy.decide(branch, step, call.progress, diff_fn)
        reuse = bool(reuse) and self._can_reuse(branch)
        call.decided = True
        call.reuse = reuse
        if reuse:
            branch.record_cached(step)
        else:
            branch.last_computed_step = step
            if probe is not None:
                # double buffering: the old probe becomes the next call's scratch for the new one
                if call.probe_owned and branch.probe is not None:
                    self.probe_spare = branch.probe
                branch.probe = probe
        if reuse and call.probe_owned:
            self.probe_spare = probe  # not kept: reuse its memory for the next probe
        recorded = branch.residual_diffs.get(str(step), diff)
        threshold = float(self.options.cache_config.residual_diff_threshold) if self.strategy.needs_probe else None
        call.run.record.steps.append(StepRecord(step, branch.index, reuse, recorded, threshold))
        signal = bus.cache_hit if reuse else bus.step_computed
        if signal.receivers:
            skipped = self.num_middle if reuse else 0
            signal.send(self.key, name=self.name, run=call.run.index, step=step, branch=branch.index,
                        diff=recorded, threshold=threshold, blocks=self.num_blocks - skipped, total_blocks=self.num_blocks)

    # -- step level (no block list) ---------------------------------------------------------------
    @_eager
    def step_level_call(self, call: CallState, x: torch.Tensor, compute):
        """Whole-model reuse for modules without blocks: output = input + cached (output - input).

        `compute()` runs the model and returns its main output tensor. Concat-channel models
        (more input than output channels) compare and add on the first `C_out` channels.
        """
        branch = call.branch

        def sliced(t: torch.Tensor, like: Optional[torch.Tensor]) -> torch.Tensor:
            if like is not None and t.dim() >= 2 and like.dim() == t.dim() and t.shape[1] != like.shape[1]:
                return t[:, : like.shape[1]]
            return t

        def diff_fn() -> Optional[float]:
            if branch.last_input is None:
                return None
            d_in = relative_l1(branch.last_input, x)
            if d_in is None:
                return None
            rate = branch.output_rate if branch.output_rate is not None else 1.0
            return branch.accumulated_change + rate * d_in

        self._decide(call, None) if not self.strategy.needs_probe else self._decide_step_level(call, diff_fn)
        if call.reuse and branch.last_output is not None:
            base = sliced(x, branch.last_output)
            delta = branch.last_output
            if self.options.noise_scale > 0.0:
                delta = delta + torch.randn_like(delta) * (self.options.noise_scale * delta.std())
            return base + delta
        out = compute()
        residual = out - sliced(x, out) if sliced(x, out).shape == out.shape else None
        if branch.last_output is not None and residual is not None and branch.last_input is not None:
            d_in = relative_l1(branch.last_input, x)
            d_out = relative_l1(branch.last_output, residual)
            if d_in and d_out is not None:
                branch.output_rate = d_out / d_in
        branch.accumulated_change = 0.0
        branch.last_input = x
        branch.last_output = residual
        if residual is not None:
            branch.residuals[0] = {"hidden": residual}
        return out

    def _decide_step_level(self, call: CallState, diff_fn) -> None:
        branch = call.branch
        step = call.step
        reuse, diff = self.strategy.decide(branch, step, call.progress, diff_fn)
        reuse = bool(reuse) and branch.last_output is not None
        if diff is not None and reuse:
            branch.accumulated_change = diff
        call.decided = True
        call.reuse = reuse
        if reuse:
            branch.record_cached(step)
        else:
            branch.last_computed_step = step
        threshold = float(self.options.cache_config.residual_diff_threshold)
        recorded = branch.residual_diffs.get(str(step), diff)
        call.run.record.steps.append(StepRecord(step, branch.index, reuse, recorded, threshold))
        signal = bus.cache_hit if reuse else bus.step_computed
        if signal.receivers:
            signal.send(self.key, name=self.name, run=call.run.index, step=step, branch=branch.index,
                        diff=recorded, threshold=threshold, blocks=0 if reuse else 1, total_blocks=1)

    # -- housekeeping -----------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the current run and every buffer (the next call starts clean)."""
        with self.lock:
            self.tracker.run = None
            self.tracker.refresh()
            self.current = None

    def buffer_bytes(self) -> int:
        """Bytes of cached tensors held now."""
        run = self.tracker.run
        own = sum(t.numel() * t.element_size() for t in (self.probe_spare, self.diff_scratch) if t is not None)
        return own + (run.buffer_bytes() if run is not None else 0)
