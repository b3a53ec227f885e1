"""The cache engine of one accelerated model, framework-agnostic: it puts its parts together.

- `layout` (layout.py): which blocks are first, probe, middle (skipped on reuse) and tail;
- `placer` (calls.py): which run, step and CFG branch a call belongs to;
- `decider` (decisions.py): compute or reuse, via the strategy (strategies.py), recorded and announced;
- `feedback` (feedback.py): with an error budget, the adaptive threshold calibrated from measured errors;
- `blocks` (block_reuse.py): each middle segment's residual, stored and added back;
- `steps` (step_reuse.py): whole-step reuse for models without blocks;
- `buffers` (buffers.py): the probe-sized buffers every branch shares.

Per model call: `begin_call` opens it; the block protocol (protocol.py), driven by an adapter's
hooks, reports block 0's input (`probe_input`) and block Fn-1's output (`probe_output`: the probe,
then the decision), and each segment's input and output (`segment_input` / `segment_output`);
`end_call` closes it (an exception ends the run, so nothing half-written is ever reused).
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Callable, Hashable, List, Optional, Sequence

import torch

from ..config import CacheOptions, cfg_compat
from ..config.presets import RunInfo, RunSettings, apply_settings, plan_run
from ..events import report
from . import sampler_kind
from .block_prune import BlockPrune, prune_layout
from .block_reuse import BlockReuse, Streams
from .buffers import ProbeBuffers, tensor_version
from .calls import CallPlacer, CallRequest, CallState, DeferredScalar, Timestep
from .decisions import Decider, Measured
from .distributed import DecisionGroup
from .feedback import UNEVEN_BRANCHES_SCALE, ErrorFeedback
from .guidance import PipelineRun
from .layout import BlockLayout
from .placement import CachePlacement, bytes_by_device
from .step_reuse import StepReuse
from .strategies import is_prune, make_strategy


def eager(fn):
    """Keep cache bookkeeping out of torch.compile graphs: decisions run eagerly, blocks compile."""
    return torch.compiler.disable(fn, recursive=True)


class CacheEngine:
    """Runtime of one accelerated model (owned by the CacheManager, found through a weakref)."""

    def __init__(self, key: int, name: str, options: CacheOptions, list_lengths: Sequence[int], *,
                 clone_inputs: bool = False, group: Optional[DecisionGroup] = None) -> None:
        self.key = key
        self.name = name
        self.group = group  # torch.distributed: where decisions are reduced (distributed.py)
        self.lock = threading.RLock()
        self.enabled = True
        self._warned_warmup = False  # the one-time "warmup covers the whole run" warning was given
        self._warned_noise = False  # the one-time "the sampler adds noise at every step" warning was given
        self.placer = CallPlacer(key, name, self.lock, self._run_ended)
        self.placer.on_run_started = self._run_started
        self.placer.on_moved_evaluation = self._moved_evaluation
        self.family = "dit"  # config/presets.py: set by whoever enables the cache (from the model's class)
        self.expert: Optional[str] = None  # Wan 2.2: "high" / "low" when the caller knows (presets.expert_of)
        self.run_settings: Optional[RunSettings] = None  # what the preset chose for the current/last run
        # The run's CFG scale and steps where the caller has no RunInfo for them (a diffusers
        # pipeline: guidance.probe_for)
        self.pipeline_probe: Optional[Callable[[], PipelineRun]] = None
        self.placement = CachePlacement(options.cache_device)
        self._configure(options, list_lengths, clone_inputs)

    def _configure(self, options: CacheOptions, list_lengths: Sequence[int], clone_inputs: bool) -> None:
        cfg = options.cache_config
        self.options = self.base_options = options  # options: this run's (a preset's rules applied)
        self.placement.mode = options.cache_device
        self.layout = prune_layout(options, list_lengths) if is_prune(options) else \
            BlockLayout.build(list_lengths, cfg.Fn_compute_blocks, cfg.Bn_compute_blocks)
        self.feedback: Optional[ErrorFeedback] = None
        if options.error_budget is not None and options.strategy == "adaptive":
            self.feedback = ErrorFeedback(options.error_budget, float(cfg.residual_diff_threshold))
        self.strategy = make_strategy(options, self.feedback)
        self.decider = Decider(self.key, self.name, self.strategy, self.feedback, self.group)
        self.blocks = BlockReuse(options, self.layout, clone_inputs, self.scratch_like if self.feedback else None)
        self.steps = StepReuse(options, self.decider, measure_errors=self.feedback is not None)
        self.pruner = BlockPrune(self.key, self.name, self.layout, self.strategy, self.decider, self.blocks,
                                 self.scratch_like) if is_prune(options) else None
        self.placer.default_total_steps = cfg.num_inference_steps
        self.placer.refresh_every = cfg.force_refresh_step_hint
        self.placer.refresh_repeat = cfg.force_refresh_step_policy == "repeat"
        cfg_compat.warn_differences(options)

    def _run_ended(self, run) -> dict:
        """A run ends: read the errors still waiting on its branches; the run_finished payload."""
        for branch in run.branches.values():
            self.decider.flush(branch)
        cfg_compat.notice_run(self.options, len(run.branches))
        if run.executed_calls and not self._warned_warmup:
            self._warned_warmup = report.warn_warmup_covers_run(self, run.step + 1, run.record.reused)
        if not self._warned_noise:
            self._warned_noise = report.warn_sampler_noise(self, run.record)
        setting = self.run_settings.label() if self.run_settings is not None else None
        fb = self.feedback
        return {"options": self.options, "middle_share": self.layout.middle_share, "family": self.family,
                "setting": setting, "cache_bytes_by_device": self.buffer_bytes_by_device(run),
                "error_budget": self.run_budget(),
                "guidance": fb.guidance if fb is not None and fb.guidance_scale() < 1.0 else None,
                "uneven_branches": (f"budget x{UNEVEN_BRANCHES_SCALE:g}"
                                    if fb is not None and fb.uneven_branches else None),
                "sampler": self._sampler_note()}

    def _sampler_note(self) -> Optional[str]:
        """What the run's sampler did to the budget (sampler_kind.py), e.g. `uni_pc: budget x0.6, no
        reuse after 15% of the noise`; None when nothing."""
        fb = self.feedback
        if fb is None or fb.sampler_scale() >= 1.0:
            return None
        end = fb.reuse_end()
        return f"{fb.sampler}: budget x{fb.sampler_scale():g}" + (
            f", no reuse after {end:.0%} of the noise" if end is not None else "")

    def run_budget(self) -> Optional[float]:
        """The error budget of the current/last run (CFG scale, branches and sampler applied), None without feedback."""
        return self.feedback.run_budget() if self.feedback is not None else None

    def expect_run(self, info: RunInfo) -> None:
        """What the caller knows about the next run of this thread (ComfyUI: its sigmas)."""
        self.placer.local.hint = info

    def _run_started(self, run, request: CallRequest) -> None:
        """A run starts: with a preset, its family rules pick this run's settings (presets.py)."""
        hint = getattr(self.placer.local, "hint", None)
        self.placer.local.hint = None
        piped = self.pipeline_probe() if self.pipeline_probe is not None else None
        if run.total_steps is None and piped is not None and piped.steps and self.expert is None:
            # The pipeline's step count ends the run and marks its last step, which always computes. Without
            # it the last step is guessed from the pace of the one before, which a shifted schedule (its last
            # step the longest) misses: SD3-layout model, shift 3, 20 steps: the last step was reused.
            run.total_steps = piped.steps
        if self.feedback is not None:  # guidance and higher-order samplers carry reuse errors further: the budget follows
            guidance = hint.guidance if hint is not None else None
            if guidance is None and piped is not None:
                guidance = piped.guidance
            self.feedback.guidance = guidance
            sampler = hint.sampler if hint is not None else None
            self.feedback.sampler = sampler if sampler is not None or piped is None else piped.sampler
            self.feedback.uneven_branches = False  # until this run's branches show otherwise (decisions.py)
        # Heun-type calls matter only to feedback with no sampler named: otherwise no latent is held or compared
        run.watch_latents = self.feedback is not None and self.feedback.sampler is None
        if self.base_options.preset is None:
            return
        info = hint if hint is not None else RunInfo(run.total_steps, request.progress or 0.0)
        steps = run.total_steps if run.total_steps is not None else piped.steps if piped is not None else None
        if info.total_steps is None and steps is not None:
            info = dataclasses.replace(info, total_steps=steps)
        self.run_settings = plan_run(self.base_options.preset, self.family, info, self.layout.step_level, self.expert,
                                     self.base_options.default_taylorseer)
        self.options = apply_settings(self.base_options, self.run_settings)
        self.blocks.options = self.steps.options = self.options  # TaylorSeer's order is the run's
        self.strategy = self.decider.strategy = make_strategy(self.options, self.feedback)
        if self.feedback is not None:
            self.feedback.budget = self.options.error_budget
            self.feedback.use_predictor(self.options.taylorseer_order)

    def _moved_evaluation(self, run) -> None:
        """A step of this run evaluated the model twice on different latents (calls.py): a Heun-type
        sampler. When the caller named no sampler (a transformer in a loop of its own), error
        feedback's budget follows that kind from here on (sampler_kind.SECOND_EVALUATION); only such
        runs are watched (_run_started)."""
        self.feedback.sampler = sampler_kind.SECOND_EVALUATION

    def reconfigure(self, options: CacheOptions) -> None:
        """Switch to new options (the caller re-installs hooks: block roles may change)."""
        with self.lock:
            self._configure(options, self.layout.list_lengths, self.blocks.copy_inputs)
            for tracker in self.placer.all_trackers():
                tracker.close()

    # -- this thread's calls ----------------------------------------------------------------------
    @property
    def current(self) -> Optional[CallState]:
        """This thread's call in progress (None between calls)."""
        return self.placer.local.current

    @current.setter
    def current(self, call: Optional[CallState]) -> None:
        self.placer.local.current = call

    @property
    def buffers(self) -> ProbeBuffers:
        """This thread's probe buffers."""
        return self.placer.local.buffers

    def scratch_like(self, t: torch.Tensor) -> torch.Tensor:
        """This thread's scratch buffer, shaped like `t`."""
        return self.placer.local.buffers.scratch_like(t)

    # -- what adapters and reports read -----------------------------------------------------------
    @property
    def tracker(self):
        """This thread's RunTracker (its `run` is the run in progress, None between runs)."""
        return self.placer.tracker

    @property
    def fn(self) -> int:
        return self.layout.fn

    @property
    def bn(self) -> int:
        return self.layout.bn

    @property
    def num_blocks(self) -> int:
        return self.layout.num_blocks

    @property
    def num_middle(self) -> int:
        return self.layout.num_middle

    @property
    def step_level(self) -> bool:
        return self.layout.step_level

    @property
    def level(self) -> str:
        """"block" or "step": how this model is cached (the label stats and logs show)."""
        return "step" if self.layout.step_level else "block"

    def hooked_blocks(self) -> List[int]:
        """Indices of the blocks that need a hook (all others can run untouched)."""
        return self.layout.hooked_blocks()

    # -- calls ------------------------------------------------------------------------------------
    @eager
    def begin_call(self, timestep: Timestep, branch_key: Optional[Hashable], signature: tuple, *,
                   total_steps: Optional[int] = None, step_index: Optional[int] = None,
                   progress: Optional[float] = None, noise_progress: Optional[float] = None,
                   model_input: Optional[torch.Tensor] = None, injected: bool = False,
                   form: Optional[tuple] = None) -> Optional[CallState]:
        """Open a call; None when the engine is disabled. A float/None timestep places the call in
        its run/step/branch now; a DeferredScalar one when the decision needs it (`place`).
        `progress`: the caller's own sampling progress (see CallRequest), else counted in steps;
        `noise_progress`: how far the noise level has come (error feedback's spans, CallRequest);
        `model_input`: the latent the sampler gave the model (sampler_noise.py); `injected`: the
        model adds something between its blocks in this call (CallRequest.injected); `form`: what
        shapes its hidden stream besides the latent (CallRequest.form)."""
        if not self.enabled:
            return None
        call = CallState(CallRequest(timestep, branch_key, signature, total_steps, step_index, progress, noise_progress,
                                     model_input, injected, form))
        self.current = call
        if not isinstance(timestep, DeferredScalar) or self.layout.fn == 0 or self.layout.step_level:
            self.placer.place(call)
        return call

    def place(self, call: CallState) -> None:
        """Place a pending call in its run, step and branch (once; later calls do nothing)."""
        self.placer.place(call)

    def run_call(self, call: CallState, fn: Callable[[], object]):
        """Run the model call opened by `begin_call`, then close it (as failed on an exception)."""
        try:
            out = fn()
        except BaseException:
            self.end_call(call, failed=True)
            raise
        self.end_call(call)
        return out

    @eager
    def end_call(self, call: Optional[CallState], failed: bool = False) -> None:
        """Close a call; on failure the run ends so nothing half-written is ever reused."""
        if call is None:
            return
        if self.current is call:
            self.current = None
        if failed:
            self.placer.abort(call)
            return
        if not call.decided and self.pruner is not None:
            self.placer.place(call)
            self.pruner.finish(call)  # DBPrune: the call's pruned blocks, recorded and announced
        elif not call.decided:
            # A model call that never reached the probe (no blocks ran): count it as computed.
            self._decide(call, None)
        if self._offloaded(call):
            self.placement.unstage(call.branch, computed=not call.reuse)  # residuals back to the cache's device

    def _offloaded(self, call: CallState) -> bool:
        """The cache of this call's branch lives off the model's device (block level only)."""
        if self.placement.mode == "model" or self.layout.step_level or call.branch is None:
            return False
        signature = call.branch.signature
        return bool(signature) and self.placement.offloaded(signature[2])

    def finish_run(self) -> None:
        """Close the current run explicitly (ComfyUI: end of sampling); the next call starts a new one."""
        self.placer.finish_run()

    def reset(self) -> None:
        """Forget the current run and every buffer (the next call starts clean)."""
        with self.lock:
            for tracker in self.placer.all_trackers():
                tracker.close()
            self.current = None

    # -- block level (called by the block protocol) -----------------------------------------------
    @eager
    def probe_input(self, call: CallState, streams: Streams) -> None:
        """Block 0's input: the probe's base (with Fn=0 the decision reads it directly)."""
        hidden = streams.get("hidden")
        if hidden is not None and self.blocks.copy_inputs and self.layout.fn > 0:
            hidden = hidden.clone()
        call.probe_base = hidden
        call.probe_base_version = tensor_version(hidden)
        if self.layout.fn == 0:
            self._decide(call, hidden)

    @eager
    def probe_output(self, call: CallState, hidden: Optional[torch.Tensor]) -> None:
        """Block Fn-1's output: the probe (its change since block 0's input), then the decision."""
        base = call.probe_base
        if base is not None and tensor_version(base) != call.probe_base_version:
            self.blocks.copy_inputs = True  # block 0 wrote into its input: copy it from the next call on
            base = None
        if not self.strategy.needs_probe:
            probe = None  # fixed/dynamic decide from the step alone
        elif base is not None and hidden is not None and base.shape == hidden.shape:
            probe = self.buffers.probe(hidden, base)
            call.probe_owned = True
        else:
            probe = hidden
        self._decide(call, probe)

    @eager
    def prune_input(self, call: CallState, segment: int, streams: Streams, can_build: bool) -> bool:
        """DBPrune: a prunable block's input; True when the block is pruned (its output is ready)."""
        self.placer.place(call)
        return self.pruner.enter(call, segment, streams, can_build)

    @eager
    def segment_input(self, call: CallState, segment: int, streams: Streams) -> None:
        """A segment's first block's input (on a reused step: build what the segment returns)."""
        self.blocks.segment_input(call, segment, streams)

    @eager
    def block_residual(self, call: CallState, segment: int, hidden_in: Optional[torch.Tensor],
                       hidden_out: Optional[torch.Tensor]) -> None:
        """An injected computed call: one middle block's own residual (block_reuse.py)."""
        self.blocks.block_residual(call, segment, hidden_in, hidden_out)

    @eager
    def segment_output(self, call: CallState, segment: int, streams: Streams) -> None:
        """A segment's last block's output on a computed step: store the segment's residual."""
        self.blocks.segment_output(call, segment, streams)

    def _decide(self, call: CallState, probe: Optional[torch.Tensor]) -> None:
        """Block-level decision from the probe (None: strategies that need none, or no block ran)."""
        self.placer.place(call)
        branch = call.branch

        def measure(can_reuse: bool) -> Measured:
            shared = self._partner_diff(call)
            if shared is not None:
                return Measured(shared, can_reuse, [])  # cfg_diff_compute_separate=False: the partner's diff
            scratch = self.buffers.scratch_like(probe) if probe is not None and branch.probe is not None else None
            return self.decider.measure(branch, branch.probe, probe, can_reuse, scratch)

        self.blocks.follow_additions(branch, call.injected, call.step)
        self.decider.decide(call, measure, self.blocks.can_reuse(branch), self.layout.num_middle, self.layout.num_blocks)
        if self._offloaded(call):
            # the stored residuals go to the model's device now, ahead of the blocks that read them
            reads = call.reuse or self.options.taylorseer_order > 0 or self.feedback is not None
            self.placement.stage(branch, branch.signature[2], copy=reads)
        if call.reuse:
            if call.probe_owned:
                self.buffers.give_back(probe)  # not kept: its memory takes the next probe
        elif probe is not None:
            # double buffering: the old probe becomes the next call's spare for the new one
            if call.probe_owned:
                self.buffers.give_back(branch.probe)
            branch.probe = probe

    def _partner_diff(self, call: CallState) -> Optional[float]:
        """cache-dit's `cfg_diff_compute_separate=False` (with enable_separate_cfg=True): a CFG
        branch decides with the diff its non-CFG partner recorded at this step, if it did."""
        cfg = self.options.cache_config
        if not cfg.enable_separate_cfg or cfg.cfg_diff_compute_separate:
            return None
        main = 1 if cfg.cfg_compute_first else 0
        if call.branch.index == main:
            return None
        partner = next((b for b in call.run.branches.values() if b.index == main), None)
        return partner.residual_diffs.get(str(call.step)) if partner is not None else None

    # -- step level -------------------------------------------------------------------------------
    @eager
    def step_level_call(self, call: CallState, x: torch.Tensor, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Whole-model reuse for modules without blocks: output = input + cached (output - input).
        `compute()` runs the model and returns its main output tensor."""
        self.placer.place(call)
        return self.steps.run(call, x, compute)

    # -- housekeeping -----------------------------------------------------------------------------
    def buffer_bytes(self) -> int:
        """Bytes of cached tensors held now, every thread's."""
        runs = [t.run for t in self.placer.all_trackers() if t.run is not None]
        return sum(b.nbytes() for b in self.placer.all_buffers()) + sum(r.buffer_bytes() for r in runs)

    def buffer_bytes_by_device(self, ended=None) -> dict:
        """Bytes of cached tensors held now per device ("cuda:0", "cpu"...), the probe buffers
        included (`ended`: a run just closed, whose buffers are still held)."""
        runs = [t.run for t in self.placer.all_trackers() if t.run is not None and t.run is not ended]
        runs += [ended] if ended is not None else []
        tensors = [t for b in self.placer.all_buffers() for t in (b.spare, b.scratch)]
        return bytes_by_device(tensors + [t for r in runs for t in r.buffer_tensors()])
