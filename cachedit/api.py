"""Public API: cache-dit compatible functions plus CacheDit's own. A thin client of the manager."""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any, Dict, List, Optional, Sequence

from torch import nn

from .config import (
    LEGACY_CACHE_KWARGS,
    LEGACY_CALIBRATOR_KWARGS,
    BasicCacheConfig,
    CalibratorConfig,
    GlobalConfig,
    resolve_options,
)
from .events import report
from .events.stats import CacheStats
from .manager import get_manager
from .manager.blocks import NoBlocksFoundError

logger = logging.getLogger("cachedit")

# cache-dit arguments CacheDit accepts and ignores (it runs no parallelism/quantization of its own).
_IGNORED_CACHE_DIT_KWARGS = ("params_modifiers", "parallelism_config", "attention_backend", "quantize_config",
                             "cache_type", "extra_cache_config")
_TRANSFORMER_ATTRS = ("transformer", "transformer_2", "transformer_3")


def _is_comfy_patcher(obj: Any) -> bool:
    return hasattr(obj, "model_options") and hasattr(obj, "clone") and hasattr(obj, "model")


def _targets(obj: Any) -> List[nn.Module]:
    """The modules to accelerate in `obj`: a pipeline's transformer(s) (or UNet), or `obj` itself."""
    if isinstance(obj, nn.Module):
        return [obj]
    found = [getattr(obj, a) for a in _TRANSFORMER_ATTRS if isinstance(getattr(obj, a, None), nn.Module)]
    if not found and isinstance(getattr(obj, "unet", None), nn.Module):
        found = [obj.unet]
    if not found:
        raise ValueError(
            f"obj={type(obj).__name__} is not supported; allowed: a diffusers DiffusionPipeline (with a transformer "
            f"or unet), a torch.nn.Module, or a ComfyUI ModelPatcher")
    return found


def enable_cache(
    obj: Any,
    cache_config: Optional[BasicCacheConfig] = None,
    calibrator_config: Optional[CalibratorConfig] = None,
    *,
    strategy: Optional[str] = None,
    skip_interval: Optional[int] = None,
    warmup_steps: Optional[int] = None,
    noise_scale: Optional[float] = None,
    debug: Optional[bool] = None,
    blocks: Optional[Sequence[Any]] = None,
    start_percent: Optional[float] = None,
    end_percent: Optional[float] = None,
    name: Optional[str] = None,
    **legacy: Any,
) -> Any:
    """Accelerate a pipeline, transformer, any DiT module, or a ComfyUI ModelPatcher; returns it.

    `strategy`: "adaptive" (default; DBCache's measured rule), "fixed" (after `warmup_steps`,
    one step in every `skip_interval` reuses) or "dynamic" (reuse grows with progress, up to
    `skip_interval` steps in a row). `cache_config` / `calibrator_config` and cache-dit's legacy
    keyword arguments (`Fn_compute_blocks=`, `residual_diff_threshold=`, `enable_taylorseer=`...)
    work as in cache-dit. `blocks`: names of the block lists to cache when detection should be
    overridden. For a ComfyUI ModelPatcher a patched clone is returned; use the return value.
    """
    unknown = [k for k in legacy if k not in LEGACY_CACHE_KWARGS + LEGACY_CALIBRATOR_KWARGS + _IGNORED_CACHE_DIT_KWARGS]
    if unknown:
        raise ValueError(
            f"{unknown[0]}={legacy[unknown[0]]!r} is not a known enable_cache argument; allowed keyword arguments: "
            f"strategy, skip_interval, warmup_steps, noise_scale, debug, blocks, start_percent, end_percent, name, "
            f"{', '.join(LEGACY_CACHE_KWARGS + LEGACY_CALIBRATOR_KWARGS)}")
    ignored = [k for k in legacy if k in _IGNORED_CACHE_DIT_KWARGS and legacy[k] is not None]
    if ignored:
        logger.warning("cachedit: ignoring cache-dit arguments %s (no parallelism/quantization here)", ignored)
    if blocks is not None and isinstance(blocks, (str, nn.ModuleList)):
        blocks = [blocks]
    manager = get_manager()
    options = resolve_options(
        cache_config, calibrator_config, strategy=strategy, skip_interval=skip_interval, warmup_steps=warmup_steps,
        noise_scale=noise_scale, debug=debug, global_config=manager.global_config, legacy=legacy, blocks=blocks,
        start_percent=start_percent, end_percent=end_percent)
    if _is_comfy_patcher(obj):
        from .adapters import comfyui  # noqa: PLC0415 (ComfyUI is only importable inside ComfyUI)

        return comfyui.enable(obj, options, name=name)
    for i, module in enumerate(_targets(obj)):
        entry = manager.accelerate_module(module, copy.deepcopy(options), name=name if i == 0 else None)
        report.warn_setup(entry.engine)
    return obj


def disable_cache(obj: Any) -> Any:
    """Remove CacheDit from `obj`: the original forward runs again, bit-identical to never having
    enabled it. Pipelines and modules are restored in place and returned (a no-op for objects never
    accelerated); for a ComfyUI ModelPatcher a clean clone is returned (ComfyUI nodes never modify
    their input), so use the return value."""
    if _is_comfy_patcher(obj):
        from .adapters import comfyui  # noqa: PLC0415

        return comfyui.disable(obj)
    manager = get_manager()
    for module in _targets(obj):
        manager.release(module)
    return obj


def _entries_of(obj: Any) -> list:
    manager = get_manager()
    if _is_comfy_patcher(obj):
        from .adapters import comfyui  # noqa: PLC0415

        return comfyui.entries(obj)
    try:
        modules = _targets(obj)
    except ValueError:
        return []
    return [e for e in (manager.entry(m) for m in modules) if e is not None]


def summary(obj: Any, details: bool = False, logging: bool = True, **kwargs: Any) -> List[CacheStats]:
    """Per accelerated module: cache-dit's CacheStats fields plus hit rate, blocks computed/skipped
    and estimated compute saved. Logs cache-dit's table when `logging` is True."""
    manager = get_manager()
    results: List[CacheStats] = []
    for entry in _entries_of(obj):
        stats = manager.snapshot(entry)
        results.append(stats)
        if logging:
            _log_summary(entry.name, stats, details)
    return results or [CacheStats()]


def _log_summary(name: str, s: CacheStats, details: bool) -> None:
    def row(label: str, cached: int, diffs: Dict[str, float]) -> None:
        values = sorted(v for v in diffs.values() if v >= 0) or [0.0]

        def q(p: float) -> float:
            return round(report.percentile(values, p), 3)

        logger.info("| %s | Diffs P00 | Diffs P25 | Diffs P50 | Diffs P75 | Diffs P95 | Diffs Min | Diffs Max |", label)
        logger.info("|-------------|-----------|-----------|-----------|-----------|-----------|-----------|-----------|")
        logger.info("| %-11d | %-9s | %-9s | %-9s | %-9s | %-9s | %-9s | %-9s |", cached, q(0), q(0.25), q(0.5), q(0.75),
                    q(0.95), round(values[0], 3), round(values[-1], 3))

    logger.info("\n⚡️Cache Steps and Residual Diffs Statistics: %s, Executed Steps: %d, Transformer Executed Steps: %d\n",
                name, s.accumulated_executed_steps, s.accumulated_transformer_executed_steps)
    row("Cache Steps", s.accumulated_cached_steps, s.residual_diffs)
    if s.cfg_cached_steps or s.cfg_residual_diffs:
        row("CFG Cache Steps", s.cfg_accumulated_cached_steps, s.cfg_residual_diffs)
    logger.info("CacheDit: strategy=%s hit_rate=%.1f%% blocks computed/skipped=%d/%d estimated compute saved=%.1f%%",
                s.strategy, 100 * s.hit_rate, s.blocks_computed, s.blocks_skipped, 100 * s.estimated_compute_saved)
    if details:
        logger.info("Cache Steps: %d, %s", s.accumulated_cached_steps, s.cached_steps)
        logger.info("Residual Diffs: %d, %s", len(s.residual_diffs), s.residual_diffs)


def strify(obj: Any) -> str:
    """cache-dit's compact tag of a cache setup, e.g. `DBCache_F1B0_W8I1M0MC0_R0.08_T0O0_S12`.

    Accepts an accelerated object, a CacheStats (or list of them) or a dict of options."""
    if isinstance(obj, list):
        obj = obj[0] if obj else CacheStats()
    if isinstance(obj, CacheStats):
        opts, cached = obj.cache_options, obj.accumulated_cached_steps
    elif isinstance(obj, dict):
        opts, cached = obj, None
        if "cache_config" not in opts:
            config = BasicCacheConfig().update(**{k: v for k, v in obj.items() if k in LEGACY_CACHE_KWARGS})
            opts = {"cache_config": config}
    else:
        entries = _entries_of(obj)
        if not entries:
            return ""
        stats = summary(obj, logging=False)[0]
        opts, cached = stats.cache_options, stats.accumulated_cached_steps
    config = opts.get("cache_config") if opts else None
    if config is None:
        return ""
    calibrator = opts.get("calibrator_config")
    cal = calibrator.strify() if calibrator is not None and getattr(calibrator, "enable_calibrator", False) else "T0O0"
    text = f"{config.strify()}_{cal}"
    if cached:
        text += f"_S{cached}"
    return text


def refresh_context(obj: Any, **kwargs: Any) -> Any:
    """Start a fresh run on the next call, optionally with new settings (`num_inference_steps=`,
    any DBCacheConfig field, or `cache_config=` / `calibrator_config=`), as in cache-dit."""
    kwargs.pop("verbose", None)
    entries = _entries_of(obj)
    if not entries:
        raise ValueError(f"obj={type(obj).__name__} is not accelerated; allowed: an object passed to enable_cache first")
    for entry in entries:
        engine = entry.engine
        options = copy.deepcopy(engine.options)
        if "cache_config" in kwargs and kwargs["cache_config"] is not None:
            new = kwargs["cache_config"]
            options.cache_config = type(options.cache_config)(**{f.name: copy.deepcopy(getattr(new, f.name))
                                                                  for f in dataclasses.fields(BasicCacheConfig)})
        if "calibrator_config" in kwargs:
            options.calibrator_config = copy.deepcopy(kwargs["calibrator_config"])
        unknown = [k for k in kwargs if k not in LEGACY_CACHE_KWARGS and k not in ("cache_config", "calibrator_config")]
        if unknown:
            raise ValueError(f"{unknown[0]}={kwargs[unknown[0]]!r} is not a refresh_context argument; allowed: "
                             f"cache_config, calibrator_config, {', '.join(LEGACY_CACHE_KWARGS)}")
        options.cache_config.update(**{k: v for k, v in kwargs.items() if k in LEGACY_CACHE_KWARGS})
        options.validate()
        engine.finish_run()
        engine.reconfigure(options)
        entry.rehook()
    return obj


def set_global_config(
    default_skip_interval: Optional[int] = None,
    default_strategy: Optional[str] = None,
    default_warmup_steps: Optional[int] = None,
    default_noise_scale: Optional[float] = None,
    global_debug: Optional[bool] = None,
) -> GlobalConfig:
    """Set process-wide defaults for later `enable_cache` calls; returns the new GlobalConfig.

    `global_debug` also turns the debug log on or off for models already accelerated."""
    manager = get_manager()
    new = dataclasses.replace(manager.global_config)
    for field, value in (("default_skip_interval", default_skip_interval), ("default_strategy", default_strategy),
                         ("default_warmup_steps", default_warmup_steps), ("default_noise_scale", default_noise_scale),
                         ("global_debug", global_debug)):
        if value is not None:
            setattr(new, field, value)
    new.validate()
    manager.global_config = new
    if global_debug is not None:
        for entry in manager.entries():
            entry.engine.options.debug = global_debug
            manager.logs.set_model(entry.key, debug=global_debug, log_runs=entry.engine.options.log_runs)
    return new


def get_global_stats() -> dict:
    """Totals over every accelerated model (`total_cache_hits`, `total_cache_misses`, `hit_rate`,
    `models_tracked`) and per-model entries under `models`."""
    return get_manager().global_stats()


def reset_cache_stats(obj: Any = None) -> None:
    """Zero the stats of `obj` (or of every model when None). Cached tensors are not touched."""
    manager = get_manager()
    if obj is None:
        manager.stats.reset()
        return
    entries = _entries_of(obj)
    if not entries:
        raise ValueError(f"obj={type(obj).__name__} is not accelerated; allowed: an object passed to enable_cache, or None")
    for entry in entries:
        manager.stats.reset(entry.key)


__all__ = ["NoBlocksFoundError", "disable_cache", "enable_cache", "get_global_stats", "refresh_context",
           "reset_cache_stats", "set_global_config", "strify", "summary"]
