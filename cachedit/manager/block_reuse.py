"""Block-level reuse: each middle segment's residual, kept on computed steps and added back on
reused ones.

On a computed step the segment's input streams are kept at its first block and its residual
(output minus input, per stream: hidden and encoder tokens) is stored at its last block. On a
reused step the segment returns its input plus that residual (TaylorSeer-extrapolated when a
calibrator is on, with optional noise) without running a block. A block that writes into its
own input makes a residual wrong: it is detected through tensor version counters, the residual
is dropped and inputs are copied from then on.

When the model adds something between the blocks of a segment (a ControlNet's per-block
residuals, Wan VACE hints: `CallState.injected`), the residual is the sum of the segment's blocks'
own residuals instead (kept block by block on computed steps), so the additions are not cached
with it: a reused step gets them fresh between the skipped blocks (protocol.py) and would count
them twice otherwise. When additions start or stop (a ControlNet's end percent) the branch
computes that call and the next, and TaylorSeer forecasts start again from those two.

With error feedback on, every computed step also measures, before storing, how far the reused (or
predicted) hidden residual would have been from the one just computed, relative to the segment's
output, per batch element: sums kept on the device, read at the next decision.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import torch

from ..config import CacheOptions
from .buffers import sample_l1, sub_into, tensor_version
from .calls import CallState
from .layout import BlockLayout
from .state import BranchState
from .taylorseer import TaylorSeries

Streams = Dict[str, Optional[torch.Tensor]]
_CORE = ("hidden", "encoder")  # the streams every codec knows; others are extra (see segment_output)
PRUNE_INPUT = "prune_input"  # DBPrune: kept with a block's residual, its hidden input at that step (not a stream)


class BlockReuse:
    """Stores and restores segment residuals of one model."""

    def __init__(self, options: CacheOptions, layout: BlockLayout, copy_inputs: bool,
                 scratch_like: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> None:
        self.options = options
        self.layout = layout
        self.scratch_like = scratch_like  # set: measure reuse errors for error feedback (in that scratch buffer)
        # Copy segment inputs before blocks run: needed for blocks that write into their inputs (the
        # adapter says so up front; otherwise it is switched on when a version counter shows it).
        self.copy_inputs = copy_inputs
        self.keep_inputs = bool(layout.segments) and all(layout.roles[s[0]].prune for s in layout.segments)

    def can_reuse(self, branch: BranchState) -> bool:
        """A reuse needs every segment's residual from a computed step of this branch."""
        if branch.last_computed_step < 0:
            return False
        return all(seg in branch.residuals for seg in range(len(self.layout.segments)))

    @staticmethod
    def follow_additions(branch: BranchState, injected: bool, step: int) -> None:
        """Before a call's decision at `step`: when additions between blocks start or stop (a
        ControlNet's end percent), the residuals and their TaylorSeer history belong to the other
        regime: they are dropped, and this call and the next compute, so forecasts start from two
        steps of the new one."""
        if branch.residuals_injected != injected:
            branch.residuals_injected = injected
            branch.taylor.clear()
            branch.settling = 2
            branch.additions_changed_step = step
        if branch.settling:
            branch.residuals.clear()
            branch.settling -= 1

    def block_residual(self, call: CallState, seg: int, hidden_in: Optional[torch.Tensor],
                       hidden_out: Optional[torch.Tensor]) -> None:
        """An injected computed call: add one middle block's own residual to its segment's sum
        (float32: a sum over many blocks). A block without a matching hidden stream spoils the
        sum (None): the segment's residual is then output minus input, as without additions."""
        if seg in call.seg_acc and call.seg_acc[seg] is None:
            return
        if hidden_in is None or hidden_out is None or hidden_in.shape != hidden_out.shape:
            call.seg_acc[seg] = None
            return
        acc = call.seg_acc.get(seg)
        if acc is None:
            call.seg_acc[seg] = hidden_out.to(torch.float32, copy=True).sub_(hidden_in)
        else:
            acc.add_(hidden_out).sub_(hidden_in)

    def segment_input(self, call: CallState, seg: int, streams: Streams) -> None:
        """At a segment's first block: build the reused streams, or keep the input for the residual."""
        if call.reuse:
            call.seg_out[seg] = self.reused(call, seg, streams)
            return
        if self.copy_inputs:
            streams = {k: v.clone() if v is not None else None for k, v in streams.items()}
        call.seg_in[seg] = streams
        call.seg_in_versions[seg] = {k: tensor_version(v) for k, v in streams.items() if v is not None}

    def segment_output(self, call: CallState, seg: int, streams: Streams) -> None:
        """At a segment's last block on a computed step: store its residual per stream."""
        inputs = call.seg_in.pop(seg, None)
        versions = call.seg_in_versions.pop(seg, {})
        if inputs is None:
            return
        branch = call.branch
        acc = call.seg_acc.pop(seg, None)
        if acc is not None and streams.get("hidden") is not None and inputs.get("hidden") is not None:
            # the blocks' own residuals: what the segment would output without the additions between them
            streams = {**streams, "hidden": inputs["hidden"].add(acc).to(streams["hidden"].dtype)}
        if any(tensor_version(inputs[k]) != v for k, v in versions.items()):
            # A block changed its input in place: this residual is wrong. Drop it, and copy inputs from now on.
            self.copy_inputs = True
            branch.residuals.pop(seg, None)
            branch.last_computed_step = -1
            return
        if any(out is not None and inputs.get(name) is None for name, out in streams.items() if name not in _CORE):
            # An extra stream (blocks.py: LTX-2's audio tokens) with no input to add a residual to: on its
            # block's first call, before the stream was known, or an output no argument matches. This
            # residual could not rebuild the segment's output, so it is not kept: no reuse until one can.
            branch.residuals.pop(seg, None)
            return
        previous = branch.residuals.get(seg, {})
        order = self.options.taylorseer_order
        residual: Dict[str, torch.Tensor] = {}
        for name, out in streams.items():
            base = inputs.get(name)
            if out is None or base is None or out.shape != base.shape:
                continue
            if name == "hidden" and self.scratch_like is not None:
                self._measure_error(branch, seg, out, base, previous.get(name), call.step)
            if order:
                series = branch.taylor.get((seg, name))
                if series is None:
                    series = branch.taylor[(seg, name)] = TaylorSeries(order)
                residual[name] = series.update_residual(out, base, call.step)
            else:
                residual[name] = sub_into(previous.get(name), out, base)  # overwrite last step's buffer
        if self.keep_inputs and inputs.get("hidden") is not None:
            residual[PRUNE_INPUT] = inputs["hidden"]  # DBPrune compares the block's next input with it
        branch.residuals[seg] = residual

    def _measure_error(self, branch: BranchState, seg: int, out: torch.Tensor, base: torch.Tensor,
                       previous: Optional[torch.Tensor], step: int) -> None:
        """Add this segment's reuse error at `step` to the branch's sums (before the residual is stored)."""
        series = branch.taylor.get((seg, "hidden"))
        # One computed step before this one: the forecast would have been the last residual itself,
        # which no TaylorSeer reuse one step on is; the error only stands in until a real one is
        # measured (feedback.py, provisional ratios).
        branch.error_provisional = series is not None and series.order > 0 and len(series.terms) == 1
        scratch = self.scratch_like(out)
        if series is not None and series.terms:
            num = series.prediction_error(out, base, step, scratch)
        elif previous is not None and previous.shape == out.shape:
            num = sample_l1(sub_into(scratch, out, base).sub_(previous))
        else:
            return
        den = sample_l1(out)
        if branch.error_sums is None:
            branch.error_sums = [num, den]
        else:
            branch.error_sums = [branch.error_sums[0] + num, branch.error_sums[1] + den]

    def reused(self, call: CallState, seg: int, streams: Streams) -> Streams:
        """The segment's output on a reused step: input + cached (or extrapolated) residual."""
        residual = call.branch.residuals.get(seg, {})
        order = self.options.taylorseer_order
        noise = self.options.noise_scale
        out: Streams = {}
        for name, value in streams.items():
            delta = residual.get(name)
            if value is None or delta is None or delta.shape != value.shape:
                out[name] = value
                continue
            series = call.branch.taylor.get((seg, name)) if order else None
            if noise > 0.0:
                if series is not None:
                    delta = series.predict(call.step)
                out[name] = value + add_noise(delta, noise)
            elif series is not None:
                out[name] = series.add_prediction(value, call.step)
            else:
                out[name] = value + delta
        return out


def add_noise(delta: torch.Tensor, scale: float) -> torch.Tensor:
    """`delta` plus Gaussian noise of `scale` times its standard deviation (noise_scale)."""
    return delta + torch.randn_like(delta) * (scale * delta.std())
