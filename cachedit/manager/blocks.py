"""Finding the transformer block lists of a model, and reading/writing a block's streams.

Discovery prefers well-known block-list names (diffusers, ComfyUI and original code bases) in
the order the model registered them; otherwise the largest list of identical modules that look
like transformer blocks. Refiner lists that run on separate streams before the main stack
(Lumina2's noise/context refiners) are never picked.

`BlockIO` maps a block's arguments and outputs to named streams ("hidden", "encoder"): the
stream codec of the block protocol for plain PyTorch blocks. It uses diffusers' own block registry
when the class is registered there and otherwise learns the output layout from the first computed
call, matching outputs to inputs by shape. An output that is neither stream but has the shape of
another argument is a stream of its own, named after that argument (LTX-2's blocks return video and
audio tokens); an output no argument matches cannot be rebuilt, and its block list is never reused.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

KNOWN_BLOCK_LISTS = (
    "transformer_blocks", "single_transformer_blocks",  # diffusers
    "double_blocks", "single_blocks",  # Flux / Chroma / HunyuanVideo originals and ComfyUI
    "joint_blocks",  # SD3 (ComfyUI MMDiT)
    "double_stream_blocks", "single_stream_blocks",  # HiDream
    "blocks", "layers",  # Wan, Lumina2 / Z-Image, generic
)
EXCLUDED_LISTS = ("noise_refiner", "context_refiner", "refiner", "down_blocks", "up_blocks", "input_blocks",
                  "output_blocks", "downsamplers", "upsamplers", "resnets", "attentions", "embed", "norm")
logger = logging.getLogger("cachedit")
HIDDEN_NAMES = ("hidden_states", "x", "img", "hidden", "h", "image_tokens")
ENCODER_NAMES = ("encoder_hidden_states", "context", "txt", "encoder_hidden", "text_tokens")


class NoBlocksFoundError(ValueError):
    """The model has no transformer block list that CacheDit can use."""


def _homogeneous(mlist: nn.ModuleList) -> bool:
    return len(mlist) > 0 and len({type(m) for m in mlist}) == 1


def _looks_like_block(module: nn.Module) -> bool:
    for name, sub in module.named_modules():
        lname = (name.rsplit(".", 1)[-1] + type(sub).__name__).lower()
        if "attn" in lname or "attention" in lname:
            return True
    return False


def find_block_lists(model: nn.Module, names: Optional[Sequence[Any]] = None) -> List[Tuple[str, nn.ModuleList]]:
    """The block lists to cache, in execution order, as (attribute path, ModuleList).

    `names` (optional): attribute names/paths (e.g. "transformer_blocks") or ModuleList objects
    chosen by the user. Raises NoBlocksFoundError when an explicitly named list is missing.
    """
    if names:
        chosen = []
        for item in names:
            if isinstance(item, nn.ModuleList):
                chosen.append((f"<list {len(chosen)}>", item))
                continue
            obj: Any = model
            for part in str(item).split("."):
                obj = getattr(obj, part, None)
            if not isinstance(obj, nn.ModuleList) or len(obj) == 0:
                raise NoBlocksFoundError(
                    f"blocks={item!r}: no non-empty nn.ModuleList at that attribute of {type(model).__name__}; "
                    f"allowed: the name of a block list, e.g. one of {[n for n, _ in _candidate_lists(model)] or KNOWN_BLOCK_LISTS[:4]}")
            chosen.append((str(item), obj))
        return chosen
    candidates = _candidate_lists(model)
    known = [(n, m) for n, m in candidates if n.rsplit(".", 1)[-1] in KNOWN_BLOCK_LISTS]
    if known:
        # Keep the lists that live on the same parent as the shallowest known one (the main stack;
        # Chroma registers its guidance approximator's `layers` before its transformer blocks).
        main = min(known, key=lambda nm: nm[0].count("."))[0]
        parent = main.rsplit(".", 1)[0] if "." in main else ""
        return [(n, m) for n, m in known if (n.rsplit(".", 1)[0] if "." in n else "") == parent]
    blocky = [(n, m) for n, m in candidates if _looks_like_block(m[0])]
    if blocky:
        return [max(blocky, key=lambda nm: len(nm[1]))]
    return []


def _candidate_lists(model: nn.Module, max_depth: int = 2) -> List[Tuple[str, nn.ModuleList]]:
    found: List[Tuple[str, nn.ModuleList]] = []

    def visit(module: nn.Module, prefix: str, depth: int) -> None:
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            if any(name == ex or name.startswith(ex) for ex in EXCLUDED_LISTS):
                continue
            if isinstance(child, nn.ModuleList):
                if _homogeneous(child):
                    found.append((path, child))
            elif depth < max_depth:
                visit(child, path + ".", depth + 1)

    visit(model, "", 0)
    return found


class BlockIO:
    """How to read a block's input/output streams and build its output from streams."""

    def __init__(self, block: nn.Module) -> None:
        self.cls = type(block)
        params = list(inspect.signature(block.forward).parameters.values())
        self.param_index = {p.name: i for i, p in enumerate(params) if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)}
        self.inputs: Dict[str, str] = {}  # stream -> argument name
        hidden_arg, encoder_arg = self._registered_args()
        for stream, candidates, explicit in (("hidden", HIDDEN_NAMES, hidden_arg), ("encoder", ENCODER_NAMES, encoder_arg)):
            if explicit and (explicit in self.param_index or explicit in {p.name for p in params}):
                self.inputs[stream] = explicit
                continue
            for cand in candidates:
                if cand in self.param_index:
                    self.inputs[stream] = cand
                    break
        if "hidden" not in self.inputs and params:
            self.inputs["hidden"] = params[0].name  # first argument is the hidden stream by convention
        self.output_kind: Optional[str] = None  # "tensor" | "sequence" | "dict"
        self.output_index: Dict[str, Any] = {}
        self.output_len = 0
        self._init_from_registry()

    def _registered_args(self) -> Tuple[Optional[str], Optional[str]]:
        meta = _diffusers_metadata(self.cls)
        if meta is None:
            return None, None
        return getattr(meta, "hidden_states_argument_name", None), getattr(meta, "encoder_hidden_states_argument_name", None)

    def _init_from_registry(self) -> None:
        meta = _diffusers_metadata(self.cls)
        if meta is None or meta.return_encoder_hidden_states_index is None:
            return  # single-tensor blocks and unknown classes: learned from the first output
        self.output_kind = "sequence"
        self.output_index = {"hidden": meta.return_hidden_states_index, "encoder": meta.return_encoder_hidden_states_index}
        self.output_len = 2

    @property
    def ready(self) -> bool:
        """Whether the output layout is known (from diffusers' registry or a first computed call)."""
        return self.output_kind is not None

    def learn(self, output: Any, args: tuple, kwargs: dict) -> None:
        """Learn the output layout from a computed call's arguments and output."""
        self.learn_output(output, self.read_inputs(args, kwargs), self._tensor_arguments(args, kwargs))

    def _tensor_arguments(self, args: tuple, kwargs: dict) -> List[Tuple[str, torch.Tensor]]:
        """(name, tensor) of every tensor argument of a call, those named like a hidden stream first."""
        names = {i: n for n, i in self.param_index.items()}
        found = [(names[i], a) for i, a in enumerate(args) if i in names and isinstance(a, torch.Tensor)]
        found += [(n, v) for n, v in kwargs.items() if isinstance(v, torch.Tensor)]
        return sorted(found, key=lambda nv: "hidden" not in nv[0])  # stable: call order within each group

    def read_inputs(self, args: tuple, kwargs: dict) -> Dict[str, Optional[torch.Tensor]]:
        """The input streams of one call."""
        streams: Dict[str, Optional[torch.Tensor]] = {}
        for stream, arg in self.inputs.items():
            if arg in kwargs:
                value = kwargs[arg]
            else:
                idx = self.param_index.get(arg)
                value = args[idx] if idx is not None and idx < len(args) else None
            if isinstance(value, torch.Tensor):
                streams[stream] = value
        return streams

    def learn_output(self, output: Any, inputs: Dict[str, Optional[torch.Tensor]],
                     arguments: Sequence[Tuple[str, torch.Tensor]] = ()) -> None:
        """Work out which output is which stream (once, on a computed call). `arguments`: the call's
        tensor arguments, for outputs that are neither the hidden nor the encoder stream."""
        if isinstance(output, torch.Tensor):
            self.output_kind = "tensor"
            return
        if isinstance(output, dict):
            self.output_kind = "dict"
            self.output_index = {s: s for s in output}
            return
        if isinstance(output, (tuple, list)):
            self.output_kind = "sequence"
            self.output_len = len(output)
            index: Dict[str, int] = {}
            used = set()
            for stream in ("hidden", "encoder"):
                ref = inputs.get(stream)
                if ref is None:
                    continue
                matches = [i for i, o in enumerate(output) if isinstance(o, torch.Tensor) and o.shape == ref.shape and i not in used]
                if matches:
                    index[stream] = matches[0]
                    used.add(matches[0])
            if "hidden" not in index:
                index["hidden"] = 0
                used.add(0)
            taken = set(self.inputs.values())
            for i, o in enumerate(output):
                if i in used or not isinstance(o, torch.Tensor):
                    continue
                name = next((n for n, a in arguments if n not in taken and a.shape == o.shape), None)
                if name is not None:  # a stream of its own (LTX-2: audio_hidden_states), read from now on
                    self.inputs[name] = name
                    taken.add(name)
                else:  # no input to add a residual to: segments holding it are never reused (block_reuse.py)
                    name = f"output_{i}"
                    _warn_once(self.cls, f"cachedit: {self.cls.__name__} returns {len(output)} outputs and CacheDit "
                                         f"cannot rebuild output {i} (shape {tuple(o.shape)}) from its arguments; "
                                         f"every step is computed")
                index[name] = i
            self.output_index = index
            return
        raise TypeError(f"{self.cls.__name__} returns {type(output).__name__}; CacheDit handles tensors, tuples and dicts")

    def read_outputs(self, output: Any) -> Dict[str, Optional[torch.Tensor]]:
        """The output streams of one computed call."""
        if self.output_kind == "tensor":
            return {"hidden": output}
        return {s: output[i] for s, i in self.output_index.items()}

    def make_output(self, streams: Dict[str, Optional[torch.Tensor]], args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        """Build what the block would have returned, from streams (the arguments are not needed here)."""
        if self.output_kind == "tensor":
            return streams["hidden"]
        if self.output_kind == "dict":
            return dict(streams)
        out: List[Any] = [None] * self.output_len
        for stream, i in self.output_index.items():
            out[i] = streams.get(stream)
        return tuple(out)


_WARNED: set = set()


def _warn_once(cls: type, message: str) -> None:
    if cls not in _WARNED:
        _WARNED.add(cls)
        logger.warning(message)


def _diffusers_metadata(cls: type):
    try:
        from diffusers.hooks._helpers import TransformerBlockRegistry
    except Exception:  # diffusers is optional
        return None
    try:
        return TransformerBlockRegistry.get(cls)
    except Exception:
        return None
