"""The block protocol: what happens around one hooked block, for every framework.

Each hooked block is replaced by `block_forward(engine, index, codec, run)`. Per call it
*enters* (reports the block's input streams where its role needs them; on a reused step, returns
the segment's reused output instead of running), *runs* the original block, and *leaves*
(reports the output streams where its role needs them). An adapter supplies only translation:

- `run(*args, **kwargs)`: the original block (or the patch it replaces);
- a `StreamCodec` that reads the input streams from the block's arguments, reads the output
  streams from what it returned, and builds what it would have returned from streams.

When the model adds something between blocks in a call (`CallState.injected`: a ControlNet's
per-block residuals, Wan VACE), a computed call also sums each middle block's own residual, and a
reused call returns the reused output at the segment's first block and hands every later
block's input on unchanged, so the additions made between the skipped blocks arrive fresh.

Streams are named tensors: "hidden" (image tokens) and "encoder" (text tokens). Everything but the
original block runs outside torch.compile graphs, so a compiled model keeps its blocks compiled
and the decisions eager.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Protocol

import torch

from .engine import CacheEngine, eager

Streams = Dict[str, Optional[torch.Tensor]]


class StreamCodec(Protocol):
    """How one framework's block arguments and outputs map to streams."""

    @property
    def ready(self) -> bool:
        """Whether `make_output` can build an output yet (some layouts are learned from a first call)."""

    def read_inputs(self, args: tuple, kwargs: dict) -> Streams:
        """The block's input streams."""

    def read_outputs(self, out: Any) -> Streams:
        """The streams in what the block returned."""

    def make_output(self, streams: Streams, args: tuple, kwargs: dict) -> Any:
        """What the block would have returned, from streams."""

    def learn(self, out: Any, args: tuple, kwargs: dict) -> None:
        """Learn the output layout from a computed call (called until `ready`)."""


def block_forward(engine: CacheEngine, index: int, codec: StreamCodec, run: Callable[..., Any]) -> Callable[..., Any]:
    """The replacement of block `index`: call it with the block's own arguments."""
    role = engine.layout.roles[index]
    segment = role.segment

    @eager
    def enter(call, args: tuple, kwargs: dict) -> Any:
        """Report the input; returns the reused output, or None to run the block."""
        if not (role.middle and call.reuse):
            streams = codec.read_inputs(args, kwargs)
            if role.first:
                engine.probe_input(call, streams)  # with Fn=0 this decides
            if role.prune:
                if not engine.prune_input(call, segment, streams, codec.ready):
                    return None  # DBPrune: this block runs
            else:
                if role.segment_first:
                    engine.segment_input(call, segment, streams)
                if not (role.middle and call.reuse):
                    return None
        elif role.segment_first:
            engine.segment_input(call, segment, codec.read_inputs(args, kwargs))
        reused = call.seg_out.get(segment)
        if reused is None or not codec.ready:
            return None  # the segment's first block ran something else (another node's patch): compute
        return codec.make_output(reused, args, kwargs)

    @eager
    def leave(call, out: Any, args: tuple, kwargs: dict) -> None:
        """Report the output where the role needs it."""
        if not codec.ready:
            codec.learn(out, args, kwargs)
        probe = role.probe and not call.decided
        if probe or (role.segment_last and not call.reuse):
            streams = codec.read_outputs(out)
            if probe:
                engine.probe_output(call, streams.get("hidden"))  # decides
            if role.segment_last and not call.reuse:
                engine.segment_output(call, segment, streams)

    @eager
    def passes_on(call, args: tuple, kwargs: dict) -> Any:
        """An injected reused call, past the segment's first block: hand the input on as it came
        (the segment's first block returned the reused output; the model's additions between
        blocks since then stay in it). None: compute (the segment's first block ran)."""
        if call.seg_out.get(segment) is None or not codec.ready:
            return None
        return codec.make_output(codec.read_inputs(args, kwargs), args, kwargs)

    @eager
    def injected_input(args: tuple, kwargs: dict) -> Optional[torch.Tensor]:
        """An injected computed call: the block's hidden input, for its own residual."""
        hidden_in = codec.read_inputs(args, kwargs).get("hidden")
        return hidden_in.clone() if hidden_in is not None and engine.blocks.copy_inputs else hidden_in

    @eager
    def injected_output(call, hidden_in: Optional[torch.Tensor], out: Any, args: tuple, kwargs: dict) -> None:
        """An injected computed call: add the block's own residual to the segment's, then leave."""
        if not codec.ready:
            codec.learn(out, args, kwargs)
        engine.block_residual(call, segment, hidden_in, codec.read_outputs(out).get("hidden"))
        if role.segment_last:
            leave(call, out, args, kwargs)

    injectable = role.middle and not role.prune  # DBPrune's one-block segments hold their block's residual already

    def forward(*args: Any, **kwargs: Any) -> Any:
        call = engine.current
        if call is None:
            return run(*args, **kwargs)
        if role.reads_input or (role.middle and call.reuse):
            if injectable and call.injected and call.reuse and not role.segment_first:
                passed = passes_on(call, args, kwargs)
                if passed is not None:
                    return passed
            reused = enter(call, args, kwargs)
            if reused is not None:
                return reused
        if injectable and call.injected and not call.reuse:
            hidden_in = injected_input(args, kwargs)
            out = run(*args, **kwargs)
            injected_output(call, hidden_in, out, args, kwargs)
            return out
        out = run(*args, **kwargs)
        if not codec.ready or (role.probe and not call.decided) or (role.segment_last and not call.reuse):
            leave(call, out, args, kwargs)
        return out

    return torch.compiler.disable(forward, recursive=False)  # the original block itself still compiles
