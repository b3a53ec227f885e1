"""Step-level reuse, for models without a block list CacheDit can hook (UNets, unknown models).

The whole model is one segment: its residual is output minus input, and a reused step returns
input + that residual. Concat-channel models (more input than output channels, e.g. image-to-
video) compare and add on the first `C_out` channels. The adaptive decision here reads the input's
change, scaled by how much the output changed per unit of input change between the last two
computed steps, accumulated over reused steps (EasyCache's estimate).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from ..config import CacheOptions
from .block_reuse import add_noise
from .buffers import sample_l1
from .calls import CallState
from .decisions import Decider, Measured, change_sums, ratio


def _matching_channels(t: torch.Tensor, like: Optional[torch.Tensor]) -> torch.Tensor:
    """`t` cut to `like`'s channel count (dim 1) when they differ (concat-channel inputs)."""
    if like is not None and t.dim() >= 2 and like.dim() == t.dim() and t.shape[1] != like.shape[1]:
        return t[:, : like.shape[1]]
    return t


class StepReuse:
    """Whole-step reuse: output = input + cached (output - input)."""

    def __init__(self, options: CacheOptions, decider: Decider, measure_errors: bool = False) -> None:
        self.options = options
        self.decider = decider
        self.measure_errors = measure_errors

    def run(self, call: CallState, x: torch.Tensor, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Decide for `call` (input `x`), then return the reused output or `compute()`'s."""
        branch = call.branch

        def measure(can_reuse: bool) -> Measured:
            zero = torch.zeros((), device=x.device)
            rate_sums = branch.rate_sums or [zero] * 4  # read with the decision, not where it was computed
            result = self.decider.measure(branch, branch.last_input, x, can_reuse, extra=rate_sums)
            branch.rate_sums = None
            out_num, out_den, in_num, in_den = result.extra
            if in_num > 0.0 and out_den > 0.0:
                branch.output_rate = ratio(out_num, out_den) / ratio(in_num, in_den)
            if result.diff is not None:
                rate = branch.output_rate if branch.output_rate is not None else 1.0
                result.diff = branch.accumulated_change + rate * result.diff
            return result

        decision = self.decider.decide(call, measure, can_reuse=branch.last_output is not None, skipped_blocks=1,
                                       total_blocks=1)
        if call.reuse:
            if decision.diff is not None:
                branch.accumulated_change = decision.diff
            delta = branch.last_output
            if self.options.noise_scale > 0.0:
                delta = add_noise(delta, self.options.noise_scale)
            return _matching_channels(x, branch.last_output) + delta
        out = compute()
        base = _matching_channels(x, out)
        residual = out - base if base.shape == out.shape else None
        last_input, last_output = branch.last_input, branch.last_output
        if residual is not None and last_output is not None and last_output.shape == residual.shape:
            if self.measure_errors:
                # error feedback: what reusing here would have been off by, relative to the output (no sync)
                branch.error_sums = [sample_l1(residual - last_output), sample_l1(out)]
            if last_input is not None and last_input.shape == x.shape:
                # how much the output moved per unit of input change, read at the next decision
                branch.rate_sums = [*change_sums(last_output, residual), *change_sums(last_input, x)]
        branch.accumulated_change = 0.0
        branch.last_input = x
        branch.last_output = residual
        if residual is not None:
            branch.residuals[0] = {"hidden": residual}
        return out
