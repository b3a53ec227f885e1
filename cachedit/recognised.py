"""What CacheDit caches without a BlockAdapter, and cache-dit's helpers around it:
`supported_pipelines`, `get_adapter`, `block_range`.

CacheDit has no per-model registry: it finds block lists by their names (`KNOWN_BLOCK_LISTS`:
diffusers', ComfyUI's and the original code bases') or, failing that, as the longest list of
identical attention blocks. `RECOGNISED_TRANSFORMERS` names the diffusers transformers this finds
at block level (a test builds each and checks the lists); other models are found the same way.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from torch import nn

from .adapters.block_adapter import BlockAdapter
from .manager.blocks import KNOWN_BLOCK_LISTS, find_block_lists

# diffusers transformer class -> the block lists CacheDit caches in it, in execution order
RECOGNISED_TRANSFORMERS: Dict[str, Tuple[str, ...]] = {
    "FluxTransformer2DModel": ("transformer_blocks", "single_transformer_blocks"),
    "ChromaTransformer2DModel": ("transformer_blocks", "single_transformer_blocks"),
    "SD3Transformer2DModel": ("transformer_blocks",),
    "WanTransformer3DModel": ("blocks",),
    "HunyuanVideoTransformer3DModel": ("transformer_blocks", "single_transformer_blocks"),
    "QwenImageTransformer2DModel": ("transformer_blocks",),
    "LTXVideoTransformer3DModel": ("transformer_blocks",),
    "Lumina2Transformer2DModel": ("layers",),
    "ZImageTransformer2DModel": ("layers",),
    "HiDreamImageTransformer2DModel": ("double_stream_blocks", "single_stream_blocks"),
}


def supported_pipelines(**kwargs: Any) -> Tuple[int, List[str]]:
    """cache-dit's `(count, names)`: the diffusers transformer classes CacheDit caches at block level
    without an adapter. Pipelines holding one of them (as `transformer` / `transformer_2`) work too,
    and so does any module whose blocks sit in a list named one of `KNOWN_BLOCK_LISTS`."""
    names = list(RECOGNISED_TRANSFORMERS)
    return len(names), names


def get_adapter(pipe: Any) -> BlockAdapter:
    """The BlockAdapter that describes what `enable_cache(pipe)` caches by itself: per transformer,
    its block lists as one list in execution order (one cache context, as CacheDit runs it), with
    `forward_pattern=None` (each block's layout learned from its first call). Edit and pass it to
    `enable_cache` to change what is cached."""
    if isinstance(pipe, BlockAdapter):
        return pipe
    if isinstance(pipe, nn.Module):
        transformers = [pipe]
    else:
        transformers = [getattr(pipe, a) for a in ("transformer", "transformer_2", "transformer_3")
                        if isinstance(getattr(pipe, a, None), nn.Module)]
    if not transformers:
        raise ValueError(f"pipe={type(pipe).__name__} has no transformer; allowed: a diffusers pipeline with a "
                         f"transformer, or an nn.Module with block lists ({', '.join(KNOWN_BLOCK_LISTS)})")
    blocks, names = [], []
    for transformer in transformers:
        lists = find_block_lists(transformer)
        if not lists:
            raise ValueError(f"pipe={type(pipe).__name__}: no block list found in {type(transformer).__name__}; "
                             f"allowed: a model with block lists ({', '.join(KNOWN_BLOCK_LISTS)}), or describe it "
                             f"with BlockAdapter(blocks=...)")
        joined = nn.ModuleList([b for _, bl in lists for b in bl]) if len(lists) > 1 else lists[0][1]
        blocks.append(joined)
        names.append("+".join(n for n, _ in lists))
    return BlockAdapter(pipe=None if isinstance(pipe, nn.Module) else pipe,
                        transformer=transformers[0] if len(transformers) == 1 else transformers,
                        blocks=blocks[0] if len(blocks) == 1 else blocks,
                        blocks_name=names[0] if len(names) == 1 else names, forward_pattern=None,
                        check_forward_pattern=False)


def block_range(start: int, end: int, step: int = 1) -> List[int]:
    """cache-dit's block index helper: `range(start, end, step)` plus blocks 0 and end-1, sorted
    ([] when start > end, end <= 0 or step <= 1)."""
    if start > end or end <= 0 or step <= 1:
        return []
    return sorted({0, *range(start, end, step), end - 1})


__all__ = ["RECOGNISED_TRANSFORMERS", "block_range", "get_adapter", "supported_pipelines"]
