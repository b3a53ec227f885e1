"""The caches under test, each as a `Method`: how to enable it on a bare diffusers transformer,
what to do before each generation, how to read its cache memory and cached steps, how to undo it.

Three families: `ours` (cachedit), `cache-dit` (the real package, on the transformer alone) and
`diffusers` (the hooks built into diffusers 0.42: FirstBlockCache, TaylorSeerCache, MagCache,
FasterCache, PyramidAttentionBroadcast, SeaCache). One cache at a time on a model, always. (diffusers'
TextKVCache is exact and hooks NucleusMoE-Image blocks only: nothing of it applies to these layouts.)
"""

from __future__ import annotations

import ast
import contextlib
import io
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .common import SampleHooks, diffusers_cache_api, diffusers_hook_roots, param_ptrs, reachable_tensor_bytes


@dataclass
class Method:
    """One row of a results table."""

    name: str
    family: str  # "uncached" | "ours" | "cache-dit" | "diffusers"
    series: str  # chart series
    enable: Callable[[nn.Module, int, SampleHooks], None]
    disable: Callable[[nn.Module], None] = lambda t: None
    before_run: Callable[[nn.Module], None] = lambda t: None
    diffusers_context: bool = False
    # After the quality run: {"cache_bytes": int|None, "cached_steps": int|None, "note": str}
    report: Callable[[nn.Module], Dict[str, Any]] = lambda t: {}
    # Before each quality generation: zero the cache's own counters (its cache/calibration state stays)
    reset_stats: Callable[[nn.Module], None] = lambda t: None
    # Measure cache memory by walking these roots after every step (None: the method reports it).
    memory_roots: Optional[Callable[[nn.Module], List[Any]]] = None
    params: Dict[str, Any] = field(default_factory=dict)  # for the tables / defaults report


# ----------------------------------------------------------------------------------------------
# ours
# ----------------------------------------------------------------------------------------------
def _ours_report(transformer: nn.Module) -> Dict[str, Any]:
    import cachedit

    stats = cachedit.summary(transformer, logging=False)[0]
    me = cachedit.get_manager().entry(transformer)
    gstats = cachedit.get_global_stats()["models"]
    entry = gstats.get(f"{me.name}#{me.key:x}") if me is not None else None  # every copy has the same name
    cache_bytes = entry["cache_bytes"] if entry else stats.cache_bytes
    return {"cache_bytes": cache_bytes, "cached_steps": stats.accumulated_cached_steps,
            "compute_saved": stats.estimated_compute_saved, "tag": cachedit.strify(stats)}


def _reset_ours_stats(t: nn.Module) -> None:
    import cachedit

    cachedit.reset_cache_stats(t)


def preset_tag(preset: str) -> str:
    """A preset's budgets, e.g. `error budget 0.2; 20+ steps: TS2 at 0.2, 24+ at 0.22, 50+: MC5; first
    streak 3` (the long-run rule; the first-streak cap of runs below 50 steps)."""
    from cachedit.config.options import FIRST_STREAK_MAX, LONG_RUN_STEPS, LONG_RUN_TAYLORSEER_ORDER, QUALITY_PRESETS
    from cachedit.config.presets import LONGER_RUN_MAX_IN_A_ROW, LONGER_RUN_STEPS, SHORT_LONG_RUN_STEPS, long_run_budget

    return (f"error budget {QUALITY_PRESETS[preset]:g}; {LONG_RUN_STEPS}+ steps: TS{LONG_RUN_TAYLORSEER_ORDER} at "
            f"{long_run_budget(preset, LONG_RUN_STEPS):g}, {SHORT_LONG_RUN_STEPS}+ at "
            f"{long_run_budget(preset, SHORT_LONG_RUN_STEPS):g}, "
            f"{LONGER_RUN_STEPS}+: MC{LONGER_RUN_MAX_IN_A_ROW}; first streak {FIRST_STREAK_MAX}")


def default_tag() -> str:
    """What `cachedit.enable_cache(pipe)` runs with, e.g. `balanced: F0B0 W2 MC4 TS1, error budget
    0.15; 20+ steps: TS2 at 0.15, 24+ at 0.2, 50+: MC5; first streak 3` (the presets' run rules)."""
    from cachedit.config import ADAPTIVE_DEFAULT_TAYLORSEER_ORDER as ts, ADAPTIVE_DEFAULTS as d
    from cachedit.config.options import DEFAULT_QUALITY

    return (f"{DEFAULT_QUALITY}: F{d['Fn_compute_blocks']}B{d['Bn_compute_blocks']} W{d['max_warmup_steps']}"
            f" MC{d['max_continuous_cached_steps']}" + (f" TS{ts}" if ts else "") + f", {preset_tag(DEFAULT_QUALITY)}")


class PipelineView:
    """What a diffusers pipeline shows the cache when its call starts: the transformer and the run's
    steps (`num_timesteps`). The benchmark samples with its own loop; enabling the cache on this view
    instead of the bare transformer lets the preset rows see a run as a user who passes the
    pipeline to `enable_cache` does (and as ComfyUI always does): the presets' per-run rules apply."""

    def __init__(self, transformer: nn.Module, steps: int) -> None:
        self.transformer = transformer
        self.num_timesteps = steps


_VIEWS: Dict[int, PipelineView] = {}  # id(transformer) -> its view (the cache holds it weakly)


def ours(name: str, series: str, **kwargs: Any) -> Method:
    """CacheDit with `cachedit.enable_cache(transformer, **kwargs)`, enabled once per row: error
    feedback's calibration carries over from one generation to the next, as it does for a user
    (stats are reset before each generation). With no kwargs (the library defaults) the row name
    gets the default's tag (`default_tag`)."""
    if not kwargs:
        name = f"{name}: {default_tag()}"

    def enable(t: nn.Module, steps: int, hooks: SampleHooks) -> None:
        import cachedit

        view = _VIEWS[id(t)] = PipelineView(t, steps)
        cachedit.enable_cache(view, **kwargs)
        cachedit.reset_cache_stats(t)

    def disable(t: nn.Module) -> None:
        import cachedit

        cachedit.disable_cache(t)
        _VIEWS.pop(id(t), None)

    params = dict(kwargs)
    cfg = params.pop("cache_config", None)
    cal = params.pop("calibrator_config", None)
    if cfg is not None:
        params.update(Fn=cfg.Fn_compute_blocks, Bn=cfg.Bn_compute_blocks, threshold=cfg.residual_diff_threshold,
                      warmup=cfg.max_warmup_steps, max_continuous_cached_steps=cfg.max_continuous_cached_steps)
    params["taylorseer_order"] = cal.taylorseer_order if cal is not None else 0
    if not kwargs or "quality" in kwargs or "error_budget" in kwargs:
        params["_feedback"] = True  # the threshold moves with the measured error (calibration carried over)
    return Method(name=name, family="ours", series=series, enable=enable, disable=disable, report=_ours_report,
                  reset_stats=_reset_ours_stats, params=params)


def _ours_configs(threshold: float, warmup: int, mc: int, order: int, fn: int, bn: int) -> Dict[str, Any]:
    import cachedit

    cfg = cachedit.DBCacheConfig(Fn_compute_blocks=fn, Bn_compute_blocks=bn, residual_diff_threshold=threshold,
                                 max_warmup_steps=warmup, max_continuous_cached_steps=mc)
    cal = cachedit.TaylorSeerCalibratorConfig(taylorseer_order=order) if order else None
    return dict(cache_config=cfg, calibrator_config=cal)


def ours_adaptive(threshold: float, warmup: int = 3, mc: int = 3, order: int = 0, fn: int = 1, bn: int = 0,
                  series: Optional[str] = None, name: Optional[str] = None) -> Method:
    """Ours with a fixed threshold (cache-dit's rule: an explicit cache config, no error budget)."""
    ts = f" TS{order}" if order else ""
    name = name or f"ours adaptive F{fn}B{bn} R{threshold:g} W{warmup} MC{mc}{ts}"
    if series is None:
        series = "ours adaptive" if not order else ("ours adaptive+TaylorSeer" if order == 1 else "ours adaptive+TaylorSeer o2")
    return ours(name, series, **_ours_configs(threshold, warmup, mc, order, fn, bn))


def ours_feedback(budget: float, warmup: int = 3, mc: int = 3, order: int = 1, fn: int = 1, bn: int = 0,
                  series: str = "ours feedback (error budget)", threshold: float = 0.24) -> Method:
    """Ours with error feedback at `budget` on the given knobs (`threshold` is only the starting point)."""
    ts = f" TS{order}" if order else ""
    return ours(f"ours feedback F{fn}B{bn} E{budget:g} W{warmup} MC{mc}{ts}", series, error_budget=budget,
                **_ours_configs(threshold, warmup, mc, order, fn, bn))


def stride_mask(total: int, warmup: int, first: int, stride: int) -> List[int]:
    """A static steps mask (1 = compute) of `total` steps: the first `warmup` steps, then one after
    `first` reused steps, then one every `stride` steps; the steps after the last one are reused.
    TaylorSeer-style interval caching (diffusers' TaylorSeerCache: `disable_cache_before_step`,
    `cache_interval`) with a first window of its own."""
    mask = [1 if i < warmup else 0 for i in range(total)]
    i = warmup + first
    while i < total:
        mask[i] = 1
        i += stride
    return mask


def stride_tag(warmup: int, first: int, stride: int) -> str:
    return f"stride mask W{warmup} F{first} S{stride}"


def computed_steps_mask(total: int, computed: Sequence[int]) -> List[int]:
    """A static steps mask (1 = compute) of `total` steps computing exactly the steps in `computed`
    (a mask searched per model, see `steps_tag`)."""
    if not computed or min(computed) < 0 or max(computed) >= total:
        raise ValueError(f"computed={list(computed)} must be step indices in 0..{total - 1}")
    wanted = set(computed)
    return [1 if i in wanted else 0 for i in range(total)]


def steps_tag(computed: Sequence[int]) -> str:
    return "mask steps " + ",".join(str(i) for i in computed)


_STEPS_ROW = re.compile(r"^(ours|cache-dit F1B0) mask steps ((?:\d+,)*\d+) TS(\d)$")


def steps_mask_row(name: str) -> Optional[Method]:
    """The row a name like `ours mask steps 0,1,5,9,15,20,24 TS3` (or `cache-dit F1B0 mask steps ...`)
    stands for: a static mask of hand-picked computed steps, not in any tuning grid (None for any
    other name). benchmarks.head_to_head --extra times such rows next to a table's contenders."""
    match = _STEPS_ROW.match(name)
    if match is None:
        return None
    family, steps, order = match.group(1), [int(i) for i in match.group(2).split(",")], int(match.group(3))
    if steps != sorted(set(steps)):
        raise ValueError(f"row {name!r}: its computed steps must be distinct and rising")
    if family == "ours":
        return ours_static_mask(steps_tag(steps), lambda total: computed_steps_mask(total, steps), order)
    return cache_dit_method(name, "cache-dit tuned", warmup=min(steps), order=order,
                            mask_of=lambda total: computed_steps_mask(total, steps), mask_tag=steps_tag(steps))


def ours_stride(warmup: int, first: int, stride: int, order: int = 2, series: str = "ours tuned") -> Method:
    """Ours with a static `stride_mask` (cache-dit's `steps_computation_mask`, policy "static"): no
    probe, no block computed on a reused step (Fn 0), TaylorSeer `order` forecasts."""
    return ours_static_mask(stride_tag(warmup, first, stride), lambda total: stride_mask(total, warmup, first, stride),
                            order, series)


def ours_static_mask(tag: str, mask_of: Callable[[int], List[int]], order: int = 2,
                     series: str = "ours tuned") -> Method:
    """Ours computing the steps `mask_of(total steps)` marks (static policy, no probe: Fn 0), the
    others forecast with TaylorSeer `order`; the row is named `ours <tag> TS<order>`."""
    import cachedit

    method = ours("ours", series)  # replaced below: a static mask, not the default's settings
    method.name = f"ours {tag} TS{order}"
    method.params.pop("_feedback", None)

    def enable(t: nn.Module, steps: int, hooks: SampleHooks) -> None:
        cfg = cachedit.DBCacheConfig(Fn_compute_blocks=0, Bn_compute_blocks=0, residual_diff_threshold=0.08,
                                     max_warmup_steps=0, max_continuous_cached_steps=-1,
                                     steps_computation_mask=mask_of(steps), steps_computation_policy="static")
        view = _VIEWS[id(t)] = PipelineView(t, steps)
        cachedit.enable_cache(view, cache_config=cfg,
                              calibrator_config=cachedit.TaylorSeerCalibratorConfig(taylorseer_order=order))
        cachedit.reset_cache_stats(t)

    method.enable = enable
    method.params.update(Fn=0, Bn=0, taylorseer_order=order, mask=tag, static=True)
    return method


def ours_old_default() -> Method:
    """The previous library default: the fixed threshold 0.24 with TaylorSeer order 1."""
    return ours_adaptive(0.24, 3, 3, order=1, fn=1, series="ours old default (fixed)",
                         name="ours old default: F1B0 R0.24 W3 MC3 TS1 (fixed threshold)")


# ----------------------------------------------------------------------------------------------
# cache-dit
# ----------------------------------------------------------------------------------------------
def _quiet_cache_dit() -> None:
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("cache_dit") or "Cache-DiT" in name:
            logging.getLogger(name).setLevel(logging.ERROR)


def _cache_dit_report(transformer: nn.Module) -> Dict[str, Any]:
    import cache_dit

    with contextlib.redirect_stdout(io.StringIO()):
        stats = cache_dit.summary(transformer, logging=False)
    # One count per context (Wan and Qwen-Image get two contexts that cache in lockstep): the largest
    cached = max((len(s.cached_steps or []) + len(getattr(s, "cfg_cached_steps", None) or []) for s in stats), default=0)
    return {"cached_steps": cached, "cached_steps_list": [list(s.cached_steps or []) for s in stats]}


# The layouts cache-dit knows only through their pipelines: the BlockAdapter its own adapter for that
# pipeline builds (block lists, forward pattern or one per list, check_forward_pattern, other BlockAdapter
# arguments; a patch_functor by its class name in cache_dit.caching.patch_functors).
# Z-Image's blocks take `x` and LTX-Video's return no text stream: no forward-pattern check there.
_CACHE_DIT_ADAPTERS: Dict[str, Tuple[Tuple[str, ...], str, bool, Dict[str, Any]]] = {
    "sd3": (("transformer_blocks",), "Pattern_1", True, {}),
    "zimage": (("layers",), "Pattern_3", False, {}),
    "ltx": (("transformer_blocks",), "Pattern_2", False, {}),
    "hunyuan": (("transformer_blocks", "single_transformer_blocks"), "Pattern_0", True, {"check_num_outputs": False}),
    # cache-dit runs HiDream's two lists through its own copy of the model's forward (HiDreamPatchFunctor)
    "hidream": (("double_stream_blocks", "single_stream_blocks"), ("Pattern_0", "Pattern_3"), True,
                {"check_num_outputs": True, "patch_functor": "HiDreamPatchFunctor"}),
}
# Layouts whose blocks return no text stream (SD3's last block is context-pre-only): cache-dit's encoder
# calibrator has nothing to forecast there, and cache-dit 1.5.3's asserts on SD3's missing state.
_NO_TEXT_OUTPUT = ("sd3", "zimage", "ltx")


def _bundled_arch(t: nn.Module) -> Optional[str]:
    """`arch_of(t)`, or None for a transformer of none of the bundled layouts."""
    try:
        return arch_of(t)
    except ValueError:
        return None


def _cache_dit_target(t: nn.Module) -> Any:
    """What cache-dit is enabled on: the transformer itself, or for the layouts in _CACHE_DIT_ADAPTERS
    the BlockAdapter cache-dit's own adapter for their pipeline builds."""
    from cache_dit import BlockAdapter, ForwardPattern

    spec = _CACHE_DIT_ADAPTERS.get(_bundled_arch(t))
    if spec is None:
        return t
    names, pattern, check, extra = spec
    lists = [getattr(t, n) for n in names]
    patterns = [ForwardPattern[p] for p in pattern] if isinstance(pattern, tuple) else [ForwardPattern[pattern]] * len(lists)
    if "patch_functor" in extra:
        from cache_dit.caching import patch_functors

        extra = dict(extra, patch_functor=getattr(patch_functors, extra["patch_functor"])())
    return BlockAdapter(transformer=t, blocks=lists[0] if len(lists) == 1 else lists,
                        forward_pattern=patterns[0] if len(lists) == 1 else patterns, check_forward_pattern=check, **extra)


def cache_dit_method(name: str, series: str, *, fn: int = 1, bn: int = 0, threshold: float = 0.08, warmup: int = 8,
                     mc: int = -1, order: int = 0, mask_policy: Optional[str] = None, mask_static: bool = False,
                     separate_cfg: bool = False, stride: Optional[Tuple[int, int, int]] = None,
                     mask_of: Optional[Callable[[int], List[int]]] = None, mask_tag: Optional[str] = None) -> Method:
    """The real cache-dit on the transformer alone. `num_inference_steps` is set in its config so
    its persistent context refreshes per generation (verified by the determinism check).
    `enable_separate_cfg` is told how the sampler calls the model (the benchmark batches CFG into
    one call): left to cache-dit, it assumes separate cond/uncond calls for Wan and Qwen-Image and
    then never caches a batched-CFG run. `stride`: (warmup, first, stride) of a static `stride_mask`
    instead of a mask policy; `mask_of` (named `mask_tag`): any other static mask, by step count."""

    built: Dict[str, Any] = {}
    if stride is not None:  # a stride mask is one static mask among others
        mask_of, mask_tag = (lambda total: stride_mask(total, *stride)), stride_tag(*stride)

    def enable(t: nn.Module, steps: int, hooks: SampleHooks) -> None:
        import cache_dit

        _quiet_cache_dit()
        kwargs: Dict[str, Any] = dict(Fn_compute_blocks=fn, Bn_compute_blocks=bn, residual_diff_threshold=threshold,
                                      max_warmup_steps=warmup, max_continuous_cached_steps=mc, num_inference_steps=steps,
                                      enable_separate_cfg=separate_cfg)
        if mask_policy is not None:
            kwargs["steps_computation_mask"] = cache_dit.steps_mask(total_steps=steps, mask_policy=mask_policy)
            kwargs["steps_computation_policy"] = "static" if mask_static else "dynamic"
        if mask_of is not None:
            kwargs["steps_computation_mask"] = mask_of(steps)
            kwargs["steps_computation_policy"] = "static"
        built["cache_config"] = lambda: cache_dit.DBCacheConfig(**kwargs)
        encoder = _bundled_arch(t) not in _NO_TEXT_OUTPUT  # see _NO_TEXT_OUTPUT
        built["calibrator_config"] = lambda: (cache_dit.TaylorSeerCalibratorConfig(
            taylorseer_order=order, enable_encoder_calibrator=encoder) if order else None)
        with contextlib.redirect_stdout(io.StringIO()):
            cache_dit.enable_cache(_cache_dit_target(t), cache_config=built["cache_config"](),
                                   calibrator_config=built["calibrator_config"]())
        _quiet_cache_dit()

    def before_run(t: nn.Module) -> None:
        # The documented transformer-only refresh. Relying on the num_inference_steps auto-refresh
        # alone leaks state into the next generation (seen with steps masks: same cached steps,
        # different images run to run), so every generation starts from a refreshed context.
        import cache_dit

        with contextlib.redirect_stdout(io.StringIO()):
            cache_dit.refresh_context(t, cache_config=built["cache_config"](),
                                      calibrator_config=built["calibrator_config"]())

    def disable(t: nn.Module) -> None:
        import cache_dit

        with contextlib.redirect_stdout(io.StringIO()):
            cache_dit.disable_cache(t)

    def roots(t: nn.Module) -> List[Any]:
        return [getattr(t, "_context_manager", None)]

    return Method(name=name, family="cache-dit", series=series, enable=enable, disable=disable, report=_cache_dit_report,
                  before_run=before_run, memory_roots=roots, params=dict(Fn=fn, Bn=bn, threshold=threshold, warmup=warmup,
                                                  max_continuous_cached_steps=mc, taylorseer_order=order,
                                                  mask=mask_tag or mask_policy, static=mask_static or mask_of is not None,
                                                  separate_cfg=separate_cfg,
                                                  stride=stride))


# ----------------------------------------------------------------------------------------------
# diffusers built-in caches
# ----------------------------------------------------------------------------------------------
def arch_of(t: nn.Module) -> str:
    """Which bundled layout a transformer is (by its diffusers class)."""
    from cachedit.bundled.archs import ARCHS

    name = type(t).__name__
    for arch, spec in ARCHS.items():
        if spec.transformer_class == name:
            return arch
    raise ValueError(f"transformer class {name!r} is none of the bundled layouts' ({sorted(ARCHS)})")


# Block lists (PAB) and attention modules (FasterCache) per layout.
PAB_BLOCKS = {"flux": ("transformer_blocks", "single_transformer_blocks"), "wan": ("blocks",), "qwen": ("transformer_blocks",),
              "sd3": ("transformer_blocks",), "zimage": ("layers",), "ltx": ("transformer_blocks",),
              "hunyuan": ("transformer_blocks", "single_transformer_blocks"),
              "hidream": ("double_stream_blocks", "single_stream_blocks")}
ATTN_PATTERNS = {"flux": ("^transformer_blocks.*attn", "^single_transformer_blocks.*attn"), "wan": ("^blocks.*attn",),
                 "qwen": ("^transformer_blocks.*attn",), "sd3": ("^transformer_blocks.*attn",),
                 "zimage": ("^layers.*attention",), "ltx": ("^transformer_blocks.*attn",),
                 "hunyuan": ("^transformer_blocks.*attn", "^single_transformer_blocks.*attn"),
                 "hidream": ("^double_stream_blocks.*attn", "^single_stream_blocks.*attn")}

TAYLORSEER_PATTERNS = {"wan": [r"^blocks\.\d+\.attn1", r"^blocks\.\d+\.attn2"],
                       "zimage": [r"^layers\.\d+\.attention"],
                       "hidream": [r"^double_stream_blocks\.\d+\.block\.attn1", r"^single_stream_blocks\.\d+\.block\.attn1"]}
# others: diffusers' defaults


def _diffusers_reset(t: nn.Module) -> None:
    diffusers_cache_api(t, "_reset_stateful_cache")()


def _diffusers_disable(t: nn.Module) -> None:
    if getattr(t, "_cache_config", None) is not None:
        diffusers_cache_api(t, "disable_cache")()


def diffusers_method(name: str, series: str, make_config: Callable[[int, SampleHooks], Any], params: Dict[str, Any],
                     context: bool = True) -> Method:
    def enable(t: nn.Module, steps: int, hooks: SampleHooks) -> None:
        hooks.arch = arch_of(t)
        diffusers_cache_api(t, "enable_cache")(make_config(steps, hooks))

    return Method(name=name, family="diffusers", series=series, enable=enable, disable=_diffusers_disable,
                  before_run=_diffusers_reset, diffusers_context=context, memory_roots=diffusers_hook_roots,
                  params=params)


def diffusers_fbc(threshold: float) -> Method:
    from diffusers.hooks import FirstBlockCacheConfig

    return diffusers_method(f"diffusers FBC R{threshold:g}", "diffusers FBC",
                            lambda steps, hooks: FirstBlockCacheConfig(threshold=threshold), {"threshold": threshold})


def diffusers_taylorseer(interval: int, order: int = 1, before: int = 3) -> Method:
    from diffusers.hooks import TaylorSeerCacheConfig

    # float32 factors: the model runs in float32 (the bf16 default would add its own rounding error).
    # Wan: diffusers' default patterns (re.fullmatch "^blocks.*attn") miss attn1/attn2, so they are named.
    return diffusers_method(
        f"diffusers TaylorSeer I{interval} O{order} W{before}", "diffusers TaylorSeer",
        lambda steps, hooks: TaylorSeerCacheConfig(cache_interval=interval, disable_cache_before_step=before,
                                                   max_order=order, taylor_factors_dtype=torch.float32,
                                                   cache_identifiers=TAYLORSEER_PATTERNS.get(hooks.arch)),
        {"cache_interval": interval, "max_order": order, "disable_cache_before_step": before})


def diffusers_magcache(threshold: float, max_skip: int = 3, retention: float = 0.2,
                       ratios: Optional[Dict[int, List[float]]] = None) -> Method:
    """MagCache with ratios from diffusers' own calibration mode (`calibrate_magcache`), run by the
    benchmark for each step count before the first MagCache row (`ratios` is filled in then)."""
    from diffusers.hooks import MagCacheConfig

    store: Dict[int, List[float]] = ratios if ratios is not None else {}

    def make(steps: int, hooks: SampleHooks):
        return MagCacheConfig(threshold=threshold, max_skip_steps=max_skip, retention_ratio=retention,
                              num_inference_steps=steps, mag_ratios=list(store[steps]))

    return diffusers_method(f"diffusers MagCache R{threshold:g} K{max_skip}", "diffusers MagCache", make,
                            {"threshold": threshold, "max_skip_steps": max_skip, "retention_ratio": retention,
                             "_needs_magcache_ratios": True, "_ratios_store": store})


def _sea_raw_vision(t: nn.Module, args: tuple, kwargs: Dict[str, Any]) -> Optional[List[torch.Tensor]]:
    """SeaCache's view of the latents being denoised: one [C, T, H, W] tensor per batch row. diffusers
    builds it itself for Wan text-to-video only; the image layouts get this callback (Flux and
    Qwen-Image pass packed [B, N, C*4] tokens, SD3 [B, C, H, W] latents; T = 1)."""
    from cachedit.bundled.archs import unpack_latents

    x = kwargs.get("hidden_states", args[0] if args else None)
    if not isinstance(x, torch.Tensor):
        return None
    if x.ndim == 3:
        x = unpack_latents(x)
    if x.ndim == 4:
        x = x.unsqueeze(2)
    return list(x.unbind(0)) if x.ndim == 5 else None


def diffusers_seacache(threshold: float, max_cached: int = 2, order: int = 1) -> Method:
    """SeaCache (diffusers 0.42): reuse the block stack's residual (order 1: linearly extrapolated)
    while the accumulated relative change of a spectrally filtered view of the input latents stays
    under `threshold`; the first and last steps always compute (its defaults). On SD3 it never reuses:
    it records a residual only with the last block's text output, which SD3's context-pre-only last
    block does not return (it logs 'cache hit without residual history' and runs full)."""
    from diffusers.hooks import SeaCacheConfig

    def make(steps: int, hooks: SampleHooks):
        return SeaCacheConfig(threshold=threshold, residual_order=order, max_consecutive_cached=max_cached,
                              raw_vision_callback=None if hooks.arch == "wan" else _sea_raw_vision)

    return diffusers_method(f"diffusers SeaCache R{threshold:g} K{max_cached} O{order}", "diffusers SeaCache", make,
                            {"threshold": threshold, "max_consecutive_cached": max_cached, "residual_order": order})


def diffusers_pab(skip: int, lo: float = 100, hi: float = 800) -> Method:
    from diffusers.hooks import PyramidAttentionBroadcastConfig

    def make(steps: int, hooks: SampleHooks):
        return PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=skip, spatial_attention_timestep_skip_range=(lo, hi),
            spatial_attention_block_identifiers=PAB_BLOCKS[hooks.arch],
            current_timestep_callback=lambda: hooks.current_timestep[0])

    return diffusers_method(f"diffusers PAB S{skip} T({lo:g},{hi:g})", "diffusers PAB", make,
                            {"spatial_attention_block_skip_range": skip, "timestep_range": (lo, hi)})


def diffusers_fastercache(skip: int = 2, uncond_skip: int = 5, distilled: bool = True) -> Method:
    """`distilled=True` turns off FasterCache's CFG-branch approximation, which needs 4-D/5-D
    latents (it crashes on Flux's packed [B, N, C] tokens); the attention cache still runs."""
    from diffusers.hooks import FasterCacheConfig

    def make(steps: int, hooks: SampleHooks):
        return FasterCacheConfig(
            spatial_attention_block_skip_range=skip, spatial_attention_timestep_skip_range=(-1, 681),
            unconditional_batch_skip_range=uncond_skip, unconditional_batch_timestep_skip_range=(-1, 641),
            spatial_attention_block_identifiers=ATTN_PATTERNS[hooks.arch],
            tensor_format="BCHW", is_guidance_distilled=distilled,
            _unconditional_conditional_input_kwargs_identifiers=["hidden_states", "encoder_hidden_states", "timestep",
                                                                  "pooled_projections"],
            current_timestep_callback=lambda: hooks.current_timestep[0])

    label = f"diffusers FasterCache S{skip}" + ("" if distilled else f" U{uncond_skip}")
    return diffusers_method(label, "diffusers FasterCache", make,
                            {"spatial_attention_block_skip_range": skip, "unconditional_batch_skip_range": None if distilled else uncond_skip})


def calibrate_magcache(transformer: nn.Module, run: Callable[[SampleHooks], Any], steps: int) -> List[float]:
    """diffusers' MagCache calibration mode: one uncached-equivalent run that prints the ratios."""
    from diffusers.hooks import MagCacheConfig

    diffusers_cache_api(transformer, "enable_cache")(MagCacheConfig(calibrate=True, num_inference_steps=steps))
    buf = io.StringIO()
    try:
        diffusers_cache_api(transformer, "_reset_stateful_cache")()
        with contextlib.redirect_stdout(buf):
            run(SampleHooks(diffusers_context=True))
    finally:
        diffusers_cache_api(transformer, "disable_cache")()
    text = buf.getvalue()
    start = text.index("[", text.index("Calibration Complete"))
    ratios = ast.literal_eval(text[start:text.index("]", start) + 1])
    if len(ratios) != steps:
        raise RuntimeError(f"MagCache calibration returned {len(ratios)} ratios for {steps} steps")
    return [float(r) for r in ratios]


def memory_of(method: Method, transformer: nn.Module, exclude: Optional[set] = None) -> int:
    if method.memory_roots is None:
        return 0
    return reachable_tensor_bytes(method.memory_roots(transformer), exclude if exclude is not None else param_ptrs(transformer))
