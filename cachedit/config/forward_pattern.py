"""cache-dit's `ForwardPattern`: which streams a transformer block takes and returns, in which order.

A block list described by a `BlockAdapter` declares one pattern; CacheDit's pattern codec
(`cachedit/manager/patterns.py`) reads and builds the block's streams from it. The patterns are
cache-dit's, with the same members and fields:

| pattern | takes (In) | returns (Out) |
|---|---|---|
| Pattern_0 | hidden_states, encoder_hidden_states | (hidden_states, encoder_hidden_states) |
| Pattern_1 | hidden_states, encoder_hidden_states | (encoder_hidden_states, hidden_states) |
| Pattern_2 | hidden_states, encoder_hidden_states | hidden_states |
| Pattern_3 | hidden_states | hidden_states |
| Pattern_4 | hidden_states | (hidden_states, encoder_hidden_states) |
| Pattern_5 | hidden_states | (encoder_hidden_states, hidden_states) |
"""

from __future__ import annotations

import enum
import inspect
from typing import List, Optional

from torch import nn


class ForwardPattern(enum.Enum):
    """How a block's forward maps to streams (cache-dit's members and fields)."""

    def __init__(self, Return_H_First: bool, Return_H_Only: bool, Forward_H_only: bool, In: tuple, Out: tuple,
                 Supported: bool) -> None:
        self.Return_H_First = Return_H_First  # outputs are (hidden, encoder) rather than (encoder, hidden)
        self.Return_H_Only = Return_H_Only  # the block returns hidden_states alone
        self.Forward_H_only = Forward_H_only  # the block takes hidden_states alone (no encoder input)
        self.In = In
        self.Out = Out
        self.Supported = Supported

    Pattern_0 = (True, False, False, ("hidden_states", "encoder_hidden_states"),
                 ("hidden_states", "encoder_hidden_states"), True)
    Pattern_1 = (False, False, False, ("hidden_states", "encoder_hidden_states"),
                 ("encoder_hidden_states", "hidden_states"), True)
    Pattern_2 = (False, True, False, ("hidden_states", "encoder_hidden_states"), ("hidden_states",), True)
    Pattern_3 = (False, True, True, ("hidden_states",), ("hidden_states",), True)
    Pattern_4 = (True, False, True, ("hidden_states",), ("hidden_states", "encoder_hidden_states"), True)
    Pattern_5 = (False, False, True, ("hidden_states",), ("encoder_hidden_states", "hidden_states"), True)

    @staticmethod
    def supported_patterns() -> List["ForwardPattern"]:
        """Every pattern CacheDit (and cache-dit) supports."""
        return list(ForwardPattern)

    def mismatch(self, block: nn.Module, check_num_outputs: bool = False) -> Optional[str]:
        """What in `block`'s forward contradicts this pattern (None when it matches).

        As cache-dit checks it: every input name in `In` must be a parameter of `forward`, and with
        `check_num_outputs` the number of `torch.Tensor` in the return annotation (when annotated)
        must equal the number of outputs in `Out`. A block wrapping its real block in `.block`
        (HiDream) is checked through it."""
        inner = getattr(block, "block", None)
        if isinstance(inner, nn.Module):
            block = inner
        sig = forward_signature(block)
        params = list(sig.parameters)
        missing = [name for name in self.In if name not in params]
        if missing:
            return f"{type(block).__name__}.forward({', '.join(params)}) has no parameter {', '.join(missing)}"
        if check_num_outputs:
            annotated = str(sig.return_annotation).count("torch.Tensor")
            if annotated > 0 and annotated != len(self.Out):
                return (f"{type(block).__name__}.forward is annotated to return {annotated} tensor(s), "
                        f"the pattern returns {len(self.Out)}")
        return None

    @staticmethod
    def matching(block: nn.Module) -> List["ForwardPattern"]:
        """The patterns whose inputs `block`'s forward takes (for error messages)."""
        return [p for p in ForwardPattern if p.mismatch(block) is None]


def forward_signature(block: nn.Module) -> inspect.Signature:
    """The signature of the block's class `forward`, without `self` (an installed hook does not hide it)."""
    sig = inspect.signature(type(block).forward)
    return sig.replace(parameters=list(sig.parameters.values())[1:])


__all__ = ["ForwardPattern", "forward_signature"]
