"""Public API: cache-dit compatible functions plus CacheDit's own. A thin client of the manager."""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any, List, Optional, Sequence

from torch import nn

from .adapters.block_adapter import BlockAdapter
from .config import (
    LEGACY_CACHE_KWARGS,
    LEGACY_CALIBRATOR_KWARGS,
    BasicCacheConfig,
    CacheOptions,
    CalibratorConfig,
    GlobalConfig,
    TaylorSeerCalibratorConfig,
    resolve_options,
)
from .config.cache_dit import copy_cache_config
from .config.params_modifier import flatten_modifiers
from .config.presets import expert_of, family_of
from .config.yaml import CALIBRATOR_KEYS, load_cache_config
from .events import report
from .events.stats import CacheStats
from .events.summary_log import log_summary
from .manager import get_manager
from .manager.blocks import NoBlocksFoundError
from .manager.manager import ListSpec
from .manager.patterns import PatternCodec
from .targets import check_flag, check_target, entries_of, is_comfy_patcher, targets_of

logger = logging.getLogger("cachedit")

# cache-dit arguments CacheDit accepts and ignores (it sets no attention backend and quantizes nothing).
_IGNORED_CACHE_DIT_KWARGS = ("attention_backend", "quantize_config", "cache_type",
                             "extra_cache_config")


def enable_cache(
    obj: Any,
    cache_config: Optional[BasicCacheConfig] = None,
    calibrator_config: Optional[CalibratorConfig] = None,
    params_modifiers: Any = None,
    *,
    strategy: Optional[str] = None,
    skip_interval: Optional[int] = None,
    warmup_steps: Optional[int] = None,
    noise_scale: Optional[float] = None,
    debug: Optional[bool] = None,
    blocks: Optional[Sequence[Any]] = None,
    start_percent: Optional[float] = None,
    end_percent: Optional[float] = None,
    quality: Optional[str] = None,
    error_budget: Optional[float] = None,
    distributed: Optional[str] = None,
    process_group: Any = None,
    parallelism_config: Any = None,
    cache_device: Optional[str] = None,
    name: Optional[str] = None,
    **legacy: Any,
) -> Any:
    """Accelerate a pipeline, transformer, any DiT module, a BlockAdapter, or a ComfyUI ModelPatcher; returns it.

    `strategy`: "adaptive" (default; DBCache's measured rule), "fixed" (after `warmup_steps`,
    one step in every `skip_interval` reuses) or "dynamic" (reuse grows with progress, up to
    `skip_interval` steps in a row). `quality`: "quality", "balanced" (default) or "fast", the
    error budget adaptive keeps by measuring the error it makes and moving its threshold
    (`error_budget=`: the same as a number, the relative error a reused step may make).
    With the preset's defaults (no cache config, warmup or window given) the preset also applies its
    per-family rules to each run (few-step runs, Wan 2.2's experts, UNets: config/presets.py).
    `cache_device`: where cached residuals live, "auto" (default: the model's device, in ComfyUI
    its offload device when VRAM is low), "model" or "cpu" (pinned host memory, copied ahead of use).
    `cache_config` / `calibrator_config` and cache-dit's legacy keyword arguments
    (`Fn_compute_blocks=`, `residual_diff_threshold=`, `enable_taylorseer=`...) work as in cache-dit,
    threshold fixed, unless `quality` / `error_budget` is given too. `blocks`: names of the block
    lists to cache when detection should be overridden. Under torch.distributed every rank takes
    the same decisions: `distributed="auto"` (default) reduces them over `process_group`, else the
    model's own (diffusers context parallelism, a tensor-parallel mesh), else the default group;
    "off" never reduces. `parallelism_config=ParallelismConfig(ulysses_size=..., ring_size=..., tp_size=...)`
    (or a dict of its fields) first shards the transformer(s) across the ranks, as cache-dit does:
    context parallelism through diffusers, tensor parallelism (FLUX, Wan layouts) through torch.
    `BlockAdapter(...)`: cache exactly the block lists it names (each list its own
    cache context, as in cache-dit). `params_modifiers`: a ParamsModifier per block list (with an
    adapter) or per transformer. For a ComfyUI ModelPatcher a patched clone is returned; use the
    return value.
    """
    unknown = [k for k in legacy if k not in LEGACY_CACHE_KWARGS + LEGACY_CALIBRATOR_KWARGS + _IGNORED_CACHE_DIT_KWARGS]
    if unknown:
        raise ValueError(
            f"{unknown[0]}={legacy[unknown[0]]!r} is not a known enable_cache argument; allowed keyword arguments: "
            f"strategy, skip_interval, warmup_steps, noise_scale, debug, blocks, start_percent, end_percent, "
            f"quality, error_budget, distributed, process_group, parallelism_config, cache_device, name, "
            f"{', '.join(LEGACY_CACHE_KWARGS + LEGACY_CALIBRATOR_KWARGS)}")
    if name is not None and not isinstance(name, str):
        raise ValueError(f"name={name!r} is invalid; allowed: a string (the model's name in stats and logs) or None")
    check_target(obj, "enable_cache")
    ignored = [k for k in legacy if k in _IGNORED_CACHE_DIT_KWARGS and legacy[k] is not None]
    if ignored:
        logger.warning("cachedit: ignoring cache-dit arguments %s (CacheDit sets no attention backend and quantizes nothing)", ignored)
    if blocks is not None and isinstance(blocks, (str, nn.ModuleList)):
        blocks = [blocks]
    manager = get_manager()
    options = resolve_options(
        cache_config, calibrator_config, strategy=strategy, skip_interval=skip_interval, warmup_steps=warmup_steps,
        noise_scale=noise_scale, debug=debug, global_config=manager.global_config, legacy=legacy, blocks=blocks,
        start_percent=start_percent, end_percent=end_percent, error_budget=error_budget, quality=quality,
        distributed=distributed, cache_device=cache_device)
    if is_comfy_patcher(obj):
        from .adapters import comfyui  # noqa: PLC0415 (ComfyUI is only importable inside ComfyUI)

        if parallelism_config is not None:
            raise ValueError(f"parallelism_config={parallelism_config!r} is invalid for a ComfyUI model; allowed: None "
                             f"(a multi-GPU pack parallelizes the model; CacheDit reduces its decisions over the "
                             f"ranks, see README 'Multi-GPU')")
        return comfyui.enable(obj, options, name=name, process_group=process_group)
    if parallelism_config is not None:
        _parallelize(obj, parallelism_config)
    if isinstance(obj, BlockAdapter):
        return _enable_adapter(obj, options, params_modifiers, name, process_group)
    modifiers = flatten_modifiers(params_modifiers)
    modules = targets_of(obj)
    for i, module in enumerate(modules):
        module_options = modifiers[i].apply(options) if i < len(modifiers) else copy.deepcopy(options)
        entry = manager.accelerate_module(module, module_options, name=name if i == 0 else None,
                                          process_group=process_group)
        entry.engine.family = family_of(module, entry.engine.step_level)  # what a preset's rules go by
        entry.engine.expert = expert_of(i, len(modules), entry.engine.family)
        report.warn_setup(entry.engine)
    if not isinstance(obj, nn.Module):
        manager.watch_guidance(obj, modules)  # a pipeline: its CFG scale sets each run's error budget
    return obj


def _parallelize(obj: Any, parallelism_config: Any) -> None:
    """Shard every transformer enable_cache is about to cache (cachedit/parallel)."""
    from .parallel import parallelize  # noqa: PLC0415 (torch.distributed.tensor only when asked for)

    for module in targets_of(obj):  # a BlockAdapter's transformer(s) too
        parallelize(module, parallelism_config)


def _enable_adapter(adapter: BlockAdapter, options: CacheOptions, params_modifiers: Any, name: Optional[str],
                    process_group: Any = None) -> BlockAdapter:
    """Hook the lists a BlockAdapter names: one engine per list, modifier i for list i (cache-dit's order)."""
    plans = adapter.plan()
    modifiers = flatten_modifiers(adapter.params_modifiers if adapter.params_modifiers is not None else params_modifiers)
    if adapter.has_separate_cfg and options.cache_config.enable_separate_cfg is None:
        options.cache_config.enable_separate_cfg = True  # as cache-dit reads the adapter's flag
    k, planned = 0, []
    for i, plan in enumerate(plans):  # every list checked before anything is hooked
        label = name if i == 0 and name else type(plan.transformer).__name__
        specs = []
        for list_name, blocks, pattern in zip(plan.names, plan.blocks, plan.patterns):
            list_options = modifiers[k].apply(options) if k < len(modifiers) else copy.deepcopy(options)
            k += 1
            codec = None
            if pattern is not None:
                if not pattern.Return_H_Only and pattern.Forward_H_only and list_options.cache_config.Fn_compute_blocks < 1:
                    raise ValueError(f"Fn_compute_blocks=0 with forward_pattern={pattern} ({label}.{list_name}); allowed: "
                                     f">= 1 (the encoder stream this pattern returns starts at a computed block)")
                codec = PatternCodec(pattern, blocks[0], f"{label}.{list_name}").view
            specs.append(ListSpec(list_name, blocks, list_options, codec))
        planned.append((plan.transformer, specs, label))
    manager = get_manager()
    for transformer, specs, label in planned:
        entry = manager.accelerate_lists(transformer, specs, name=label, process_group=process_group)
        for engine in entry.engines:
            report.warn_setup(engine)
    if adapter.pipe is not None:
        manager.link_pipe(adapter.pipe, [p.transformer for p in plans])
        manager.watch_guidance(adapter.pipe, [p.transformer for p in plans])
    return adapter


def disable_cache(obj: Any) -> Any:
    """Remove CacheDit from `obj`: the original forward runs again, bit-identical to never having
    enabled it. Pipelines and modules are restored in place and returned (a no-op for objects never
    accelerated); for a ComfyUI ModelPatcher a clean clone is returned (ComfyUI nodes never modify
    their input), so use the return value."""
    check_target(obj, "disable_cache")
    if is_comfy_patcher(obj):
        from .adapters import comfyui  # noqa: PLC0415

        return comfyui.disable(obj)
    manager = get_manager()
    for module in targets_of(obj):
        manager.release(module)
    pipe = obj.pipe if isinstance(obj, BlockAdapter) else obj
    if pipe is not None and not isinstance(pipe, nn.Module):
        manager.unlink_pipe(pipe)
    return obj


def summary(obj: Any, details: bool = False, logging: bool = True, **kwargs: Any) -> List[CacheStats]:
    """Per accelerated module (per block list with a BlockAdapter): cache-dit's CacheStats fields
    plus hit rate, blocks computed/skipped and estimated compute saved. With `logging`, logs
    cache-dit's statistics table through the "cachedit" logger; `details=True` adds the reused
    steps and every step's measured diff. `obj=None` gives one empty CacheStats, as in cache-dit;
    other keyword arguments are accepted and ignored, as in cache-dit."""
    check_flag("summary", "details", details)
    check_flag("summary", "logging", logging)
    manager = get_manager()
    results: List[CacheStats] = []
    for entry in entries_of(obj):
        for engine in entry.engines:
            stats = manager.snapshot(entry, engine)
            results.append(stats)
            if logging:
                log_summary(stats, details)
    return results or [CacheStats()]


def strify(obj: Any) -> str:
    """cache-dit's compact tag of a cache setup, e.g. `DBCache_F1B0_W8I1M0MC0_R0.08_T0O0_S12`.

    Accepts an accelerated object, a CacheStats (or list of them) or a dict of options: either
    `{"cache_config": ..., "calibrator_config": ...}` or DBCacheConfig fields (`Fn_compute_blocks`...)."""
    if isinstance(obj, list):
        if not all(isinstance(o, CacheStats) for o in obj):
            raise ValueError(f"obj={obj!r} is invalid for strify(); allowed: a list of CacheStats (what summary returns)")
        obj = obj[0] if obj else CacheStats()
    if isinstance(obj, CacheStats):
        opts, cached, pruned = obj.cache_options, obj.accumulated_cached_steps, obj.pruned_ratio
    elif isinstance(obj, dict):
        opts, cached, pruned = obj, None, None
        allowed = LEGACY_CACHE_KWARGS + ("cache_config", "calibrator_config", "strategy", "cache_type") + \
            _IGNORED_CACHE_DIT_KWARGS
        unknown = [k for k in obj if k not in allowed]
        if unknown:
            raise ValueError(f"obj has the key {unknown[0]!r}, which strify() does not know; allowed keys: "
                             f"{', '.join(dict.fromkeys(allowed))}")
        if "cache_config" not in opts:
            config = BasicCacheConfig().update(**{k: v for k, v in obj.items() if k in LEGACY_CACHE_KWARGS})
            opts = {"cache_config": config}
        elif opts["cache_config"] is not None and not isinstance(opts["cache_config"], BasicCacheConfig):
            raise ValueError(f"cache_config={opts['cache_config']!r} is invalid for strify(); allowed: a DBCacheConfig")
    else:
        check_target(obj, "strify")
        entries = entries_of(obj)
        if not entries:
            return ""
        stats = summary(obj, logging=False)[0]
        opts, cached, pruned = stats.cache_options, stats.accumulated_cached_steps, stats.pruned_ratio
    config = opts.get("cache_config") if opts else None
    if config is None:
        return ""
    calibrator = opts.get("calibrator_config")
    cal = calibrator.strify() if calibrator is not None and getattr(calibrator, "enable_calibrator", False) else "T0O0"
    prune = f"_P{round(pruned * 100, 2)}" if pruned is not None and str(config.cache_type) == "DBPrune" else ""
    text = f"{config.strify()}{prune}_{cal}"
    if cached:
        text += f"_S{cached}"
    return text


def refresh_context(obj: Any, **kwargs: Any) -> Any:
    """Start a fresh run on the next call, optionally with new settings, as in cache-dit:
    `num_inference_steps=`, any DBCacheConfig field, the TaylorSeer keys (`enable_taylorseer=`,
    `taylorseer_order=`...), or `cache_config=` / `calibrator_config=`. Accepts what enable_cache
    accepted (a pipeline, transformer or BlockAdapter); every block list's context is refreshed."""
    check_target(obj, "refresh_context")
    if "verbose" in kwargs:
        check_flag("refresh_context", "verbose", kwargs.pop("verbose"))
    entries = entries_of(obj)
    if not entries:
        raise ValueError(f"obj={type(obj).__name__} is not accelerated; allowed: an object passed to enable_cache first")
    unknown = [k for k in kwargs if k not in LEGACY_CACHE_KWARGS + CALIBRATOR_KEYS + ("cache_config", "calibrator_config")]
    if unknown:
        raise ValueError(f"{unknown[0]}={kwargs[unknown[0]]!r} is not a refresh_context argument; allowed: "
                         f"cache_config, calibrator_config, {', '.join(LEGACY_CACHE_KWARGS + CALIBRATOR_KEYS)}")
    fields = {k: v for k, v in kwargs.items() if k not in ("cache_config", "calibrator_config")}
    partial, calibrator = load_cache_config(fields, reset=True)  # the fields given, all others None
    for entry in entries:
        for engine in entry.engines:
            options = copy.deepcopy(engine.options)
            if kwargs.get("cache_config") is not None:
                new = kwargs["cache_config"]
                if not isinstance(new, BasicCacheConfig):
                    raise ValueError(f"cache_config={new!r} is invalid for refresh_context(); allowed: a DBCacheConfig")
                options.cache_config = copy_cache_config(new)  # a DBPruneConfig switches the model to DBPrune
            if "calibrator_config" in kwargs:
                if kwargs["calibrator_config"] is not None and \
                        not isinstance(kwargs["calibrator_config"], TaylorSeerCalibratorConfig):
                    raise ValueError(f"calibrator_config={kwargs['calibrator_config']!r} is invalid for refresh_context(); "
                                     f"allowed: a TaylorSeerCalibratorConfig or None")
                options.calibrator_config = copy.deepcopy(kwargs["calibrator_config"])
            elif "enable_taylorseer" in fields:
                options.calibrator_config = copy.deepcopy(calibrator)
            options.cache_config.update(**partial.as_dict())
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
            for engine in entry.engines:
                engine.options.debug = global_debug
                manager.logs.set_model(engine.key, debug=global_debug, log_runs=engine.options.log_runs)
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
    check_target(obj, "reset_cache_stats")
    entries = entries_of(obj)
    if not entries:
        raise ValueError(f"obj={type(obj).__name__} is not accelerated; allowed: an object passed to enable_cache, or None")
    for entry in entries:
        for engine in entry.engines:
            manager.stats.reset(engine.key)


__all__ = ["NoBlocksFoundError", "disable_cache", "enable_cache", "get_global_stats", "refresh_context",
           "reset_cache_stats", "set_global_config", "strify", "summary"]
