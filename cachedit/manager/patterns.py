"""The stream codec of the block protocol for block lists that declare a `ForwardPattern`.

A `BlockAdapter` says how its blocks are called (cache-dit's Pattern_0 ... Pattern_5); this codec
reads the "hidden" / "encoder" streams from a block's arguments and outputs by that declaration,
instead of learning them as `BlockIO` does. Inputs are found by name (`hidden_states`,
`encoder_hidden_states`) in the call, else at the pattern's position (0, 1), as cache-dit passes them.

Patterns 4 and 5 take no encoder stream but return one: as in cache-dit, the encoder stream a
segment starts from is the one the block before it returned (the probe block's output), so a
reused step returns that plus the cached encoder residual. One `PatternCodec` serves a whole list;
`view(index)` gives each hooked block its codec.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import nn

from ..config.forward_pattern import ForwardPattern, forward_signature

Streams = Dict[str, Optional[torch.Tensor]]
_STREAM = {"hidden_states": "hidden", "encoder_hidden_states": "encoder"}


class PatternMismatchError(TypeError):
    """A block's call or output contradicts the ForwardPattern declared for its list."""


class PatternCodec:
    """Reads and builds one block list's streams from its declared ForwardPattern."""

    def __init__(self, pattern: ForwardPattern, block: nn.Module, label: str) -> None:
        self.pattern = pattern
        self.label = label  # e.g. "MyDiT.blocks", for error messages
        params = forward_signature(block).parameters.values()
        positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        # stream -> (argument name, position): the name in the call, else the pattern's position
        self.inputs = {_STREAM[name]: (name, positional.index(name) if name in positional else i)
                       for i, name in enumerate(pattern.In)}
        self.outputs: Dict[str, int] = {}  # stream -> index in a returned sequence (empty: a bare tensor)
        self.seq_type: Optional[type] = None  # tuple / list as returned; None: a bare tensor
        self.learned = False
        self._encoder_out: Optional[torch.Tensor] = None  # encoder stream the last read output carried

    def view(self, index: int, block: Optional[nn.Module] = None) -> "_BlockView":
        """The codec of block `index` of the list (block 0 starts a call: nothing before it);
        a CodecFactory for TorchHooks."""
        return _BlockView(self, index == 0)

    # -- the codec, shared by the list's blocks ---------------------------------------------------
    def _arguments(self, args: tuple, kwargs: dict) -> Streams:
        streams: Streams = {}
        for stream, (name, pos) in self.inputs.items():
            value = kwargs[name] if name in kwargs else (args[pos] if pos < len(args) else None)
            if isinstance(value, torch.Tensor):
                streams[stream] = value
        return streams

    def read_inputs(self, args: tuple, kwargs: dict, first: bool) -> Streams:
        streams = self._arguments(args, kwargs)
        carried, self._encoder_out = self._encoder_out, None
        if "encoder" not in streams and not self.pattern.Return_H_Only and carried is not None and not first:
            streams["encoder"] = carried  # Pattern_4/5: the encoder stream the previous block returned
        return streams

    def read_outputs(self, out: Any) -> Streams:
        if self.seq_type is None:
            streams: Streams = {"hidden": out}
        else:
            streams = {s: out[i] for s, i in self.outputs.items()}
        encoder = streams.get("encoder")
        self._encoder_out = encoder if isinstance(encoder, torch.Tensor) else None
        return streams

    def make_output(self, streams: Streams) -> Any:
        if self.seq_type is None:
            return streams["hidden"]
        out: list = [None] * (max(self.outputs.values()) + 1)
        for stream, i in self.outputs.items():
            out[i] = streams.get(stream)
        return self.seq_type(out)

    def learn(self, out: Any, args: tuple, kwargs: dict) -> None:
        """Check the first computed output against the pattern and note its container."""
        self.learned = True
        if isinstance(out, torch.Tensor):
            return  # a bare tensor is the hidden stream (cache-dit reads it so for every pattern)
        if not isinstance(out, (tuple, list)):
            self._fail(f"returned a {type(out).__name__}")
        n = len(out)
        if n > len(self.pattern.Out) or n == 0:
            self._fail(f"returned {n} outputs")
        self.seq_type = type(out)
        if n == 1:
            self.outputs = {"hidden": 0}
            return
        hidden_at = 0 if self.pattern.Return_H_First else 1
        self.outputs = {"hidden": hidden_at, "encoder": 1 - hidden_at}
        hidden_in = self._arguments(args, kwargs).get("hidden")
        got, other = out[hidden_at], out[1 - hidden_at]
        if (isinstance(hidden_in, torch.Tensor) and isinstance(got, torch.Tensor) and isinstance(other, torch.Tensor)
                and got.shape != hidden_in.shape and other.shape == hidden_in.shape):
            self._fail(f"returned hidden_states at position {1 - hidden_at} (shape {tuple(other.shape)}), "
                       f"not at {hidden_at} (shape {tuple(got.shape)})")

    def _fail(self, seen: str) -> None:
        raise PatternMismatchError(
            f"forward_pattern={self.pattern} does not match the blocks of {self.label}: a block {seen}; "
            f"{self.pattern.name} returns {self.pattern.Out}. Allowed: the pattern that describes the block "
            f"({', '.join(p.name for p in ForwardPattern)}), see cachedit.ForwardPattern")


class _BlockView:
    """The StreamCodec of one block: the list's PatternCodec, knowing whether the block is the list's first."""

    __slots__ = ("codec", "first")

    def __init__(self, codec: PatternCodec, first: bool) -> None:
        self.codec = codec
        self.first = first

    @property
    def ready(self) -> bool:
        return self.codec.learned

    def read_inputs(self, args: tuple, kwargs: dict) -> Streams:
        return self.codec.read_inputs(args, kwargs, self.first)

    def read_outputs(self, out: Any) -> Streams:
        return self.codec.read_outputs(out)

    def make_output(self, streams: Streams, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        return self.codec.make_output(streams)

    def learn(self, out: Any, args: tuple, kwargs: dict) -> None:
        self.codec.learn(out, args, kwargs)


__all__ = ["PatternCodec", "PatternMismatchError"]
