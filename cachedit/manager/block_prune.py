"""DBPrune (cache-dit's Dynamic Block Prune): each prunable block decides for itself, per step and
CFG branch, whether it runs.

The layout (`BlockLayout.build_prune`) makes every block outside the first Fn, the last Bn and
`non_prune_block_ids` of its list a one-block segment. At such a block's input the strategy
(`PruneStrategy`) compares the relative L1 change of the block's hidden input since the last step
that ran it with the threshold. The change is measured by the decider (`Decider.measure`): the one
host copy a block's decision needs, and under torch.distributed the same reduction over the model's
ranks as DBCache's decisions, so every rank prunes the same blocks. A pruned block returns its input
plus the residual it produced when it last ran (`BlockReuse.reused`, TaylorSeer-extrapolated with a
calibrator); a block that runs stores its residual and keeps its input (`BlockReuse.segment_output`).

When the call ends, its outcome is recorded and announced once: a call that pruned any block is a
reused step (cache-dit's `pruned_steps`), and the event carries the pruned block count and every
diff measured at the step (cache-dit's `pruned_blocks` and per-step `residual_diffs` lists).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from ..config import CacheOptions
from ..events import bus
from .block_reuse import PRUNE_INPUT, BlockReuse, Streams
from .calls import CallState
from .decisions import Decider
from .layout import BlockLayout
from .state import StepRecord
from .strategies import PruneStrategy


class BlockPrune:
    """Per-block prune decisions of one engine, and their per-call record."""

    def __init__(self, key: int, name: str, layout: BlockLayout, strategy: PruneStrategy, decider: Decider,
                 blocks: BlockReuse, scratch_like: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.key = key
        self.name = name
        self.layout = layout
        self.strategy = strategy
        self.decider = decider
        self.blocks = blocks
        self.scratch_like = scratch_like  # a buffer for the input difference (no allocation per block)

    def enter(self, call: CallState, seg: int, streams: Streams, can_build: bool) -> bool:
        """A prunable block's input (the call placed): True when it is pruned (its output is in
        `call.seg_out[seg]`), False when it runs (its input is kept for its residual).
        `can_build`: the adapter can build the block's output from streams."""
        branch, step = call.branch, call.step
        residual = branch.residuals.get(seg)
        previous: Optional[torch.Tensor] = residual.get(PRUNE_INPUT) if residual else None
        hidden = streams.get("hidden")
        outcome = {"can": can_build and previous is not None}

        def measure() -> Optional[float]:
            scratch = self.scratch_like(hidden) if previous is not None and hidden is not None else None
            result = self.decider.measure(branch, previous, hidden, outcome["can"], scratch)
            outcome["can"] = result.can_reuse
            return result.diff

        decision = self.strategy.decide(branch, step, call.progress, measure)
        if decision.recorded is not None and previous is not None:
            branch.residual_diffs.setdefault(str(step), []).append(decision.recorded)
        if not (decision.reuse and outcome["can"]):
            self.blocks.segment_input(call, seg, streams)
            return False
        if not branch.cached_steps or branch.cached_steps[-1] != step:
            branch.record_cached(step)  # the step counts as pruned once
        call.pruned += 1
        call.seg_out[seg] = self.blocks.reused(call, seg, streams)
        return True

    def finish(self, call: CallState) -> None:
        """The call ends (placed): record its outcome and announce it with the pruned block count."""
        call.decided = True
        branch, step = call.branch, call.step
        reused = call.pruned > 0
        diffs = list(branch.residual_diffs.get(str(step), []))
        measured = [d for d in diffs if d >= 0.0]
        diff = sum(measured) / len(measured) if measured else None
        threshold = self.strategy.threshold_at(branch, step)
        call.run.record.steps.append(StepRecord(step, branch.index, reused, diff, threshold))
        if not reused:
            branch.last_computed_step = step
        total = self.layout.num_blocks
        signal = bus.cache_hit if reused else bus.step_computed
        if signal.receivers:
            signal.send(self.key, name=self.name, run=call.run.index, step=step, branch=branch.index, diff=diff,
                        threshold=threshold, blocks=total - call.pruned, total_blocks=total,
                        pruned_blocks=call.pruned, diffs=diffs)


def prune_layout(options: CacheOptions, list_lengths: Sequence[int]) -> BlockLayout:
    """The DBPrune layout of block lists of these lengths (ValueError for a model without blocks)."""
    cfg = options.cache_config
    if not list_lengths or not sum(list_lengths):
        raise ValueError("cache_type=DBPrune is invalid for a model without transformer blocks; allowed: "
                         "cache_type=DBCache (whole steps are cached), or blocks=['<block list name>']")
    return BlockLayout.build_prune(list_lengths, cfg.Fn_compute_blocks, cfg.Bn_compute_blocks, cfg.non_prune_block_ids)
