"""What ran inside the transformer blocks (block compute, attention executions) and what a cache
holds (cache memory), measured the same way for every cache and every bundled layout.

Block lists: Flux `transformer_blocks` + `single_transformer_blocks`, Wan `blocks`, Qwen-Image
`transformer_blocks`, Z-Image its refiners (which run on every step, whatever a cache does) and
`layers` (any module with those attributes).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

BLOCK_LIST_NAMES = ("transformer_blocks", "single_transformer_blocks", "blocks", "noise_refiner", "context_refiner",
                    "layers", "double_stream_blocks", "single_stream_blocks")


# ----------------------------------------------------------------------------------------------
# What ran: block compute counters (one method for every cache)
# ----------------------------------------------------------------------------------------------
def block_lists(transformer: nn.Module) -> List[nn.Module]:
    """Every block of the transformer's block lists, in order (see BLOCK_LIST_NAMES)."""
    out: List[nn.Module] = []
    for name in BLOCK_LIST_NAMES:
        blocks = getattr(transformer, name, None)
        if isinstance(blocks, nn.ModuleList):
            out.extend(blocks)
    return out


def _attention_modules(block: nn.Module) -> List[nn.Module]:
    """The attention modules of a block: submodules with a linear `to_q` (Flux/Qwen `attn`, Wan `attn1`/`attn2`)."""
    return [m for _, m in block.named_modules() if isinstance(getattr(m, "to_q", None), nn.Linear)]


class ComputeCounter:
    """Counts what really executes inside the transformer blocks, for any cache.

    * `attn`: executions of each block's attention modules (a pre-hook on `to_q`, which runs only
      when the attention is really computed — caches that replace a block, its attention module
      (diffusers TaylorSeer / PAB / FasterCache) or the whole stack all skip it);
    * `macs`: multiply-accumulates of every nn.Linear inside the blocks plus the attention core
      (2 * B * Lq * Lk * D per attention: joint attention over image + text tokens for Flux and
      Qwen-Image, self-attention over the image tokens and cross-attention to the text for Wan;
      the lengths are read from each call), i.e. the block compute actually done. Divide by an
      uncached run's numbers for "fraction computed".
    Pre-hooks run in `Module.__call__`, so they see real calls whatever a cache does to `forward`.
    `seq_len` is accepted for old callers and unused (the lengths come from the calls).
    """

    def __init__(self, transformer: nn.Module, seq_len: Optional[int] = None) -> None:
        self.blocks = block_lists(transformer)
        self.attn = [0] * len(self.blocks)
        self.macs = 0.0
        self.handles: List[Any] = []
        for i, block in enumerate(self.blocks):
            for mod in block.modules():
                if isinstance(mod, nn.Linear):
                    self.handles.append(mod.register_forward_pre_hook(self._linear_hook(mod)))
            for attn in _attention_modules(block):
                lengths: Dict[str, Tuple[int, int]] = {}
                self.handles.append(attn.register_forward_pre_hook(self._shape_hook(attn, lengths), with_kwargs=True))
                self.handles.append(attn.to_q.register_forward_pre_hook(self._attn_hook(i, attn.to_q.out_features, lengths)))

    def _linear_hook(self, mod: nn.Linear):
        macs_per_row = mod.in_features * mod.out_features

        def hook(module, args):
            x = args[0]
            self.macs += x.numel() // mod.in_features * macs_per_row

        return hook

    @staticmethod
    def _shape_hook(attn: nn.Module, lengths: Dict[str, Tuple[int, int]]):
        # joint attention over image + text: diffusers' add_q_proj; HiDream's to_q_t, whose text comes third
        # (HiDreamAttention(hidden_states, hidden_states_masks, encoder_hidden_states, ...))
        hidream = getattr(attn, "to_q_t", None) is not None
        joint = hidream or getattr(attn, "add_q_proj", None) is not None
        text_at = 2 if hidream else 1

        def hook(module, args, kwargs):
            hs = kwargs.get("hidden_states", args[0] if args else None)
            ehs = kwargs.get("encoder_hidden_states", args[text_at] if len(args) > text_at else None)
            if not torch.is_tensor(hs) or hs.ndim < 3:
                return None
            lq = hs.shape[-2]
            if torch.is_tensor(ehs) and ehs.ndim >= 3:
                lengths["qk"] = (lq + ehs.shape[-2],) * 2 if joint else (lq, ehs.shape[-2])
            else:
                lengths["qk"] = (lq, lq)
            return None

        return hook

    def _attn_hook(self, index: int, inner: int, lengths: Dict[str, Tuple[int, int]]):
        def hook(module, args):
            self.attn[index] += 1
            x = args[0]
            lq, lk = lengths.get("qk", (x.shape[-2], x.shape[-2]))
            self.macs += 2.0 * x.shape[0] * lq * lk * inner

        return hook

    def reset(self) -> None:
        self.attn = [0] * len(self.blocks)
        self.macs = 0.0

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


# ----------------------------------------------------------------------------------------------
# Cache memory: tensors reachable from a cache's state objects
# ----------------------------------------------------------------------------------------------
def reachable_tensor_bytes(roots: Iterable[Any], exclude_ptrs: set, max_depth: int = 8) -> int:
    """Bytes of distinct tensors reachable from `roots` through dicts, sequences and object
    attributes (modules are not descended into; parameters/buffers in `exclude_ptrs` skipped)."""
    seen_obj: set = set()
    tensors: Dict[tuple, int] = {}

    def visit(obj: Any, depth: int) -> None:
        if obj is None or depth > max_depth or isinstance(obj, (str, bytes, int, float, bool, type)):
            return
        if id(obj) in seen_obj:
            return
        seen_obj.add(id(obj))
        if isinstance(obj, torch.Tensor):
            if obj.device.type == "meta":
                return
            try:
                storage = obj.untyped_storage()
                key = (obj.device.type, storage.data_ptr())
                if storage.data_ptr() in exclude_ptrs:
                    return
                tensors[key] = max(tensors.get(key, 0), storage.nbytes())
            except Exception:  # noqa: BLE001
                pass
            return
        if isinstance(obj, nn.Module):
            return
        if isinstance(obj, dict):
            for v in list(obj.values()):
                visit(v, depth + 1)
            return
        if isinstance(obj, (list, tuple, set, frozenset)):
            for v in list(obj):
                visit(v, depth + 1)
            return
        if callable(obj) and not hasattr(obj, "__dict__"):
            return
        d = getattr(obj, "__dict__", None)
        if d is not None:
            for k, v in list(d.items()):
                if k in ("fn_ref", "_module_ref", "module", "transformer", "_model_ref"):
                    continue
                visit(v, depth + 1)
        slots = getattr(type(obj), "__slots__", ())
        for s in slots if isinstance(slots, (tuple, list)) else ():
            visit(getattr(obj, s, None), depth + 1)

    for r in roots:
        visit(r, 0)
    return sum(tensors.values())


def param_ptrs(model: nn.Module) -> set:
    ptrs = set()
    for t in list(model.parameters()) + list(model.buffers()):
        ptrs.add(t.untyped_storage().data_ptr())
    return ptrs


def diffusers_hook_roots(transformer: nn.Module) -> List[Any]:
    """State managers of every diffusers hook under `transformer`."""
    roots = []
    for _, mod in transformer.named_modules():
        reg = mod.__dict__.get("_diffusers_hook")
        if reg is not None:
            roots.extend(reg.hooks.values())
    return roots

