"""Block layout: what each block of a model does for the cache, from its block lists and Fn/Bn.

All block lists of a model, in execution order, split into three parts: Fn first blocks that
always run (their output change is the probe the decision reads), the middle blocks that a
reused step skips, and Bn last blocks that always run. The middle blocks of one block list form
a *segment*: its residual (output minus input, per stream) is what a reused step adds back.
"""

from __future__ import annotations

import dataclasses
from typing import List, Sequence, Tuple


@dataclasses.dataclass(frozen=True)
class BlockRole:
    """What one block does for the cache (a block with no role runs untouched and is not hooked)."""

    index: int
    first: bool = False  # block 0: its hidden input is the probe base (with Fn=0, the decision's input)
    probe: bool = False  # block Fn-1: its output minus block 0's input is the probe; the decision follows
    middle: bool = False  # skipped on a reused step
    segment: int = -1  # the middle segment it belongs to (-1: none)
    segment_first: bool = False  # its input is the segment's input
    segment_last: bool = False  # its output gives the segment's residual
    prune: bool = False  # DBPrune: a one-block segment that decides for itself whether it runs

    @property
    def hooked(self) -> bool:
        """Whether the block needs a hook at all."""
        return self.first or self.probe or self.middle

    @property
    def reads_input(self) -> bool:
        """Whether the block's input streams matter to the cache."""
        return self.first or self.segment_first


@dataclasses.dataclass(frozen=True)
class BlockLayout:
    """Roles of every block of one model (no block: the model is cached whole steps at a time)."""

    list_lengths: Tuple[int, ...]
    fn: int  # first blocks always computed (Fn_compute_blocks, capped at the block count)
    bn: int  # last blocks always computed
    roles: Tuple[BlockRole, ...]
    segments: Tuple[range, ...]  # block indices of each middle segment

    @classmethod
    def build(cls, list_lengths: Sequence[int], fn_blocks: int, bn_blocks: int) -> "BlockLayout":
        """The layout of block lists of these lengths with Fn / Bn compute blocks."""
        lengths = tuple(int(n) for n in list_lengths)
        n = sum(lengths)
        fn = min(fn_blocks, n)
        bn = min(bn_blocks, n - fn)
        mid_start, mid_end = fn, n - bn
        fields: List[dict] = [dict(index=i) for i in range(n)]
        segments: List[range] = []
        offset = 0
        for length in lengths:
            lo, hi = max(offset, mid_start), min(offset + length, mid_end)
            if lo < hi:
                for i in range(lo, hi):
                    fields[i].update(middle=True, segment=len(segments))
                fields[lo]["segment_first"] = True
                fields[hi - 1]["segment_last"] = True
                segments.append(range(lo, hi))
            offset += length
        if n:
            fields[0]["first"] = True
            if fn > 0:
                fields[fn - 1]["probe"] = True
        return cls(lengths, fn, bn, tuple(BlockRole(**f) for f in fields), tuple(segments))

    @classmethod
    def build_prune(cls, list_lengths: Sequence[int], fn_blocks: int, bn_blocks: int,
                    non_prune_ids: Sequence[int] = ()) -> "BlockLayout":
        """DBPrune's layout (cache-dit's `get_non_prune_blocks_ids`): every block but the first Fn,
        the last Bn and `non_prune_ids` is a one-block segment that may be pruned on its own. Block
        lists count as one sequence, as DBCache's layout does (cache-dit's FLUX adapter joins its
        two lists the same way); a BlockAdapter gives each list an engine of its own."""
        lengths = tuple(int(n) for n in list_lengths)
        n = sum(lengths)
        fn, bn = min(fn_blocks, n), min(bn_blocks, n)
        keep = set(range(fn)) | set(range(n - bn, n)) | {i for i in non_prune_ids if i < n}
        roles: List[BlockRole] = []
        segments: List[range] = []
        for index in range(n):
            if index in keep:
                roles.append(BlockRole(index))
                continue
            roles.append(BlockRole(index, middle=True, segment=len(segments), segment_first=True, segment_last=True,
                                   prune=True))
            segments.append(range(index, index + 1))
        return cls(lengths, fn, bn, tuple(roles), tuple(segments))

    @property
    def num_blocks(self) -> int:
        return len(self.roles)

    @property
    def num_middle(self) -> int:
        """Blocks a reused step skips."""
        return sum(len(s) for s in self.segments)

    @property
    def step_level(self) -> bool:
        """No block list: whole steps are reused (output minus input)."""
        return not self.roles

    @property
    def middle_share(self) -> float:
        """Share of the block compute a reused step saves (1.0 at step level)."""
        return self.num_middle / self.num_blocks if self.roles else 1.0

    def hooked_blocks(self) -> List[int]:
        """Indices of the blocks that need a hook (all others run untouched)."""
        return [r.index for r in self.roles if r.hooked]
