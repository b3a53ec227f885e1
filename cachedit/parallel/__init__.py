"""`enable_cache(..., parallelism_config=)`: shard the transformer(s), then cache them (one call, as
in cache-dit). The cache itself needs nothing from here: its decisions are reduced over the
model's ranks whatever parallelized it (`cachedit/manager/distributed.py`).

Context parallelism goes through diffusers' `enable_parallelism` (the model's `_cp_plan`), tensor
parallelism through torch's `parallelize_module` (`tensor.py`). Every rank calls `enable_cache`
with the same config, after `torch.distributed.init_process_group` (torchrun), with the model on
its device.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Union

from torch import nn

from .config import ParallelismBackend, ParallelismConfig

logger = logging.getLogger("cachedit")

ConfigLike = Union[ParallelismConfig, Dict[str, Any]]


def as_parallelism_config(value: ConfigLike) -> ParallelismConfig:
    """A ParallelismConfig from one or from a dict of its fields (a YAML section)."""
    if isinstance(value, ParallelismConfig):
        return value
    if isinstance(value, dict):
        return ParallelismConfig.from_dict(value)
    raise ValueError(f"parallelism_config={value!r} is invalid; allowed: a cachedit.ParallelismConfig, a dict of its "
                     f"fields, or None")


def _world() -> int:
    import torch.distributed as dist  # noqa: PLC0415

    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("parallelism_config needs torch.distributed: launch one process per device (torchrun "
                         "--nproc-per-node=N) and call torch.distributed.init_process_group() before enable_cache")
    return dist.get_world_size()


# diffusers attention backends that cannot return the log-sum-exp ring attention merges with.
_NO_LSE_BACKENDS = ("native", "_native_math", "_native_efficient", "_native_npu", "_native_xla")


def _attention_backend(transformer: nn.Module) -> str:
    """The diffusers attention backend `transformer` runs: set on its processors, else the global one."""
    for module in transformer.modules():
        backend = getattr(getattr(module, "processor", None), "_attention_backend", None)
        if backend is not None:
            return str(getattr(backend, "value", backend))
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry  # noqa: PLC0415

    backend = _AttentionBackendRegistry.get_active_backend()[0]
    return str(getattr(backend, "value", backend))


def _context_parallel(transformer: nn.Module, config: ParallelismConfig, ulysses: int, ring: int) -> None:
    name = type(transformer).__name__
    if not hasattr(transformer, "enable_parallelism"):
        raise ValueError(f"parallelism_config.ulysses_size/ring_size is not supported for {name}: context "
                         f"parallelism runs through diffusers; allowed: a diffusers ModelMixin transformer")
    if getattr(transformer, "_cp_plan", None) is None and config.cp_plan is None:
        raise ValueError(f"parallelism_config.ulysses_size/ring_size: {name} has no context-parallel plan in "
                         f"diffusers; allowed: a model with one (Flux, Wan, QwenImage, HunyuanVideo, LTX...) or "
                         f"parallelism_config.cp_plan")
    if getattr(transformer, "_parallel_config", None) is not None:
        raise ValueError(f"parallelism_config: {name} is already parallelized (enable_parallelism was called); "
                         f"allowed: parallelism_config=None for a model parallelized by the caller")
    from diffusers import ContextParallelConfig  # noqa: PLC0415

    if config.attention_backend is not None:
        transformer.set_attention_backend(config.attention_backend)
    backend = _attention_backend(transformer)
    if ring > 1 and backend in _NO_LSE_BACKENDS:
        raise ValueError(f"parallelism_config.ring_size={ring} needs an attention backend that returns the log-sum-exp "
                         f"(ring attention merges with it); {name} runs {backend!r}; allowed: ring_size=1 (use "
                         f"ulysses_size), or parallelism_config.attention_backend='flash' / '_native_cudnn' / "
                         f"'_native_flash' / 'sage' on a device that has it")
    rotate = "alltoall" if config.ring_rotate_method == "alltoall" else "allgather"  # diffusers has no p2p
    cp = ContextParallelConfig(ulysses_degree=ulysses, ring_degree=ring, rotate_method=rotate,
                               convert_to_fp32=bool(config.ring_convert_to_fp32))
    transformer.enable_parallelism(config=cp, cp_plan=config.cp_plan)


def parallelize(transformer: nn.Module, config: ConfigLike) -> ParallelismConfig:
    """Shard `transformer` across the world as `config` says; returns the config it ran.

    Raises ValueError naming the field when the world, the model or the backend cannot do it."""
    config = as_parallelism_config(config)
    config.check_supported()
    world = _world()
    sizes = config.sizes(world)
    cp, tp = sizes["ulysses"] * sizes["ring"], sizes["tp"]
    if cp > 1 and tp > 1:
        raise ValueError(f"parallelism_config sets ulysses_size/ring_size ({sizes['ulysses']}x{sizes['ring']}) and "
                         f"tp_size={tp}; allowed: context parallelism or tensor parallelism, not both (hybrid is not "
                         f"run by CacheDit)")
    if cp * tp != world:
        raise ValueError(f"parallelism_config ulysses_size x ring_size x tp_size = {cp * tp} but the world has "
                         f"{world} ranks; allowed: sizes whose product is {world} (or one size 'auto')")
    if cp == 1 and tp == 1:
        raise ValueError(f"parallelism_config sets no size above 1 ({sizes}); allowed: ulysses_size, ring_size or "
                         f"tp_size > 1")
    backend = config.backend
    if tp > 1:
        if backend not in (ParallelismBackend.AUTO, ParallelismBackend.NATIVE_PYTORCH):
            raise ValueError(f"parallelism_config.backend={backend.value!r} with tp_size={tp}; allowed: 'Auto' or "
                             f"'Native_PyTorch'")
        from .tensor import apply_tensor_parallel  # noqa: PLC0415

        apply_tensor_parallel(transformer, tp)
    else:
        if backend not in (ParallelismBackend.AUTO, ParallelismBackend.CACHE_DIT, ParallelismBackend.NATIVE_DIFFUSER):
            raise ValueError(f"parallelism_config.backend={backend.value!r} with context parallelism; allowed: "
                             f"'Auto', 'Native_Diffuser' or 'CACHE_DIT'")
        _context_parallel(transformer, config, sizes["ulysses"], sizes["ring"])
    logger.info("cachedit: %s parallelized: ulysses %d, ring %d, tp %d over %d ranks", type(transformer).__name__,
                sizes["ulysses"], sizes["ring"], sizes["tp"], world)
    return config


__all__ = ["ParallelismBackend", "ParallelismConfig", "as_parallelism_config", "parallelize"]
