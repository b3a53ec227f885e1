"""Rank-consistent decisions under torch.distributed.

When a model runs on several ranks (context/sequence parallelism splits its tokens, tensor
parallelism its weights, CFG parallelism its branches), every rank must take the same compute-or-
reuse decision: a rank that reuses skips the middle blocks and the collectives inside them, and a
rank still computing waits for it until the process-group timeout. Each rank measures its probe on
its own shard, so its local relative change differs from its neighbours' and a threshold between
the two splits them.

`DecisionGroup.reduce` sums, once per adaptive decision and on every rank, what the decision
needs: the probe's sum |change| and sum |previous| (float64: the global ratio equals the single-
process one, for equal and unequal shards), whether the rank has a probe to compare and everything
a reuse needs, and the reuse error measured at the last computed step (error feedback), per batch
element. A rank with nothing to compare joins with zeros and flags, never skips: the global
decision reuses only when every rank can. The reduce is queued on the device and read with the
decision's one host copy; strategies that decide from the step alone (fixed, dynamic) need none.

The group: the one passed to `enable_cache(process_group=...)`, else the model's own (diffusers'
context-parallel mesh, a tensor-parallel mesh of its weights), else the default group when the
world has more than one rank. `policy="off"` never reduces (a caller that keeps ranks in step
itself, e.g. data parallelism on different prompts, where no collective runs inside the model).
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Optional

import torch

POLICIES = ("auto", "off")


def _dist():
    import torch.distributed as dist  # noqa: PLC0415 (absent on some builds)

    return dist if dist.is_available() and dist.is_initialized() else None


def model_group(model: Any) -> Any:
    """The process group a parallelized model's ranks share, or None.

    diffusers' context parallelism keeps its mesh on `model._parallel_config`; a tensor-parallel
    model's weights are DTensors on a device mesh."""
    config = getattr(model, "_parallel_config", None)
    for part in ("context_parallel_config", "tensor_parallel_config"):
        sub = getattr(config, part, None)
        mesh = getattr(sub, "_flattened_mesh", None) or getattr(sub, "_mesh", None)
        if mesh is not None:
            return mesh.get_group() if mesh.ndim == 1 else mesh._flatten().get_group()
    if isinstance(model, torch.nn.Module):
        for param in model.parameters():
            mesh = getattr(param, "device_mesh", None)  # a DTensor
            if mesh is not None:
                return mesh.get_group() if mesh.ndim == 1 else mesh._flatten().get_group()
            break
    return None


class DecisionGroup:
    """Where (and whether) an engine's decisions are reduced."""

    def __init__(self, model: Any = None, group: Any = None, policy: str = "auto") -> None:
        self._model = weakref.ref(model) if model is not None else (lambda: None)
        self.explicit = group
        self.policy = policy

    def group(self) -> Any:
        """The group to reduce over now (None: a single process, or the policy is off). Resolved at
        each decision: parallelism may be enabled after the cache."""
        if self.policy == "off":
            return None
        dist = _dist()
        if dist is None:
            return None
        group = self.explicit or model_group(self._model())
        if group is None:
            return dist.group.WORLD if dist.get_world_size() > 1 else None
        return group if dist.get_world_size(group) > 1 else None

    def reduce(self, values: torch.Tensor, group: Any) -> torch.Tensor:
        """Sum `values` (float64) over `group`, on the device its backend needs (no host sync)."""
        dist = _dist()
        backend = dist.get_backend(group)
        device = torch.device("cpu") if backend == "gloo" else values.device
        if device.type == "cpu" and values.device.type != "cpu":
            values = values.cpu()
        elif device != values.device:
            values = values.to(device)
        dist.all_reduce(values, op=dist.ReduceOp.SUM, group=group)
        return values


def rank_vector(parts: "list[torch.Tensor]", device: torch.device) -> torch.Tensor:
    """One float64 vector of scalars and per-sample vectors, on `device`."""
    return torch.cat([p.reshape(-1).to(device=device, dtype=torch.float64) for p in parts])


LocalMeasure = Callable[[], Optional[tuple]]
