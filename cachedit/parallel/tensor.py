"""Tensor parallelism for the FLUX and Wan layouts through torch's own API (`parallelize_module`).

Each attention shards its heads (q/k/v column-wise, the output projection row-wise) and each MLP
its hidden units (in column-wise, out row-wise), so a block needs one all-reduce per attention and
per MLP and its output is whole on every rank: the cache hooks around the blocks see the same
hidden states as a single process. Two layout details need care:

- FLUX single-stream blocks project `cat([attention, mlp])` with one `proj_out`. After sharding,
  rank r holds `[attention_r, mlp_r]`, so the columns of `proj_out` are reordered to that
  interleaving before the row-wise split.
- Wan normalises q and k over all heads at once (RMSNorm over `heads * head_dim`); with the heads
  split, the mean square is summed over the ranks (`ShardedRMSNorm`).

The layouts are recognised by their modules (diffusers' FluxTransformer2DModel and
WanTransformer3DModel, and any model built the same way); others get an error naming `tp_size`.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module


class ShardedRMSNorm(nn.Module):
    """RMSNorm over a feature dimension split across the ranks of `group` (one all-reduce)."""

    def __init__(self, norm: nn.RMSNorm, group: Any, rank: int, world: int) -> None:
        super().__init__()
        self.group, self.full_dim, self.eps = group, int(norm.normalized_shape[0]), norm.eps
        if self.eps is None:
            self.eps = torch.finfo(torch.float32).eps
        weight = norm.weight.detach().chunk(world, dim=0)[rank].clone() if norm.weight is not None else None
        self.weight = nn.Parameter(weight, requires_grad=False) if weight is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        square_sum = x.float().pow(2).sum(dim=-1, keepdim=True)
        dist.all_reduce(square_sum, op=dist.ReduceOp.SUM, group=self.group)
        out = (x.float() * torch.rsqrt(square_sum / self.full_dim + self.eps)).to(x.dtype)
        return out * self.weight if self.weight is not None else out


def _divide_heads(attn: nn.Module, world: int, where: str) -> None:
    heads = int(attn.heads)
    if heads % world:
        raise ValueError(f"parallelism_config.tp_size={world} is invalid for {where}: it has {heads} attention heads; "
                         f"allowed: a tp_size that divides {heads}")
    attn.heads = heads // world


def _interleave_packed_columns(linear: nn.Linear, parts: List[int], world: int) -> None:
    """Reorder the input columns of `linear` (input = cat of `parts`) so that the row-wise chunk r
    is `[part_0 chunk r, part_1 chunk r, ...]`: what rank r holds after the parts were sharded."""
    with torch.no_grad():
        pieces = torch.split(linear.weight, parts, dim=1)
        per_rank = [torch.cat([p.chunk(world, dim=1)[r] for p in pieces], dim=1) for r in range(world)]
        linear.weight.copy_(torch.cat(per_rank, dim=1))


def _flux(transformer: nn.Module, mesh: Any) -> None:
    world = mesh.size()
    for block in transformer.transformer_blocks:
        _divide_heads(block.attn, world, type(transformer).__name__)
        plan = {name: ColwiseParallel() for name in ("attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj",
                                         "attn.add_v_proj", "ff.net.0.proj", "ff_context.net.0.proj")}
        plan.update({name: RowwiseParallel() for name in ("attn.to_out.0", "attn.to_add_out", "ff.net.2", "ff_context.net.2")})
        parallelize_module(block, mesh, plan)
    for block in transformer.single_transformer_blocks:
        attention_dim = block.attn.to_q.out_features
        _interleave_packed_columns(block.proj_out, [attention_dim, block.proj_mlp.out_features], world)
        _divide_heads(block.attn, world, type(transformer).__name__)
        plan = {name: ColwiseParallel() for name in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")}
        plan["proj_out"] = RowwiseParallel()
        parallelize_module(block, mesh, plan)


def _wan(transformer: nn.Module, mesh: Any) -> None:
    world, rank, group = mesh.size(), mesh.get_local_rank(), mesh.get_group()
    for block in transformer.blocks:
        plan: Dict[str, Any] = {"ffn.net.0.proj": ColwiseParallel(), "ffn.net.2": RowwiseParallel()}
        for name in ("attn1", "attn2"):
            attn = getattr(block, name)
            if getattr(attn, "fused_projections", False):
                raise ValueError(f"parallelism_config.tp_size={world}: {type(transformer).__name__}.{name} has fused "
                                 f"q/k/v projections; allowed: an unfused model (call unfuse_qkv_projections first)")
            _divide_heads(attn, world, type(transformer).__name__)
            plan.update({f"{name}.{p}": ColwiseParallel() for p in ("to_q", "to_k", "to_v", "add_k_proj", "add_v_proj")
                         if getattr(attn, p, None) is not None})
            plan[f"{name}.to_out.0"] = RowwiseParallel()
            for norm in ("norm_q", "norm_k", "norm_added_k"):
                module = getattr(attn, norm, None)
                if isinstance(module, nn.RMSNorm):
                    setattr(attn, norm, ShardedRMSNorm(module, group, rank, world))
        parallelize_module(block, mesh, plan)


def _layout(transformer: nn.Module) -> Optional[Callable[..., None]]:
    """The plan for `transformer`'s layout, recognised by its modules, or None."""
    double = getattr(transformer, "transformer_blocks", None)
    single = getattr(transformer, "single_transformer_blocks", None)
    if isinstance(double, nn.ModuleList) and isinstance(single, nn.ModuleList) and len(double) + len(single) and \
            all(hasattr(b, "attn") and hasattr(b, "ff_context") for b in double) and \
            all(hasattr(b, "proj_mlp") and hasattr(b, "proj_out") for b in single):
        return _flux
    blocks = getattr(transformer, "blocks", None)
    if isinstance(blocks, nn.ModuleList) and len(blocks) and \
            all(hasattr(b, "attn1") and hasattr(b, "attn2") and hasattr(b, "ffn") for b in blocks):
        return _wan
    return None


def apply_tensor_parallel(transformer: nn.Module, tp_size: int) -> Any:
    """Shard `transformer` over a `tp_size`-rank mesh of the whole world; returns the mesh."""
    plan = _layout(transformer)
    if plan is None:
        raise ValueError(f"parallelism_config.tp_size={tp_size} is not supported for {type(transformer).__name__}; "
                         f"allowed: the FLUX layout (transformer_blocks + single_transformer_blocks, e.g. "
                         f"FluxTransformer2DModel, Chroma) or the Wan layout (blocks with attn1/attn2/ffn, e.g. "
                         f"WanTransformer3DModel); use ulysses_size / ring_size (context parallelism) for other models")
    device = next(transformer.parameters()).device
    mesh = init_device_mesh(device.type, (dist.get_world_size(),), mesh_dim_names=("tp",))
    plan(transformer, mesh)
    return mesh


__all__ = ["ShardedRMSNorm", "apply_tensor_parallel"]
