"""CacheDit Accelerate / Advanced Config / Cache Control: thin clients of `cachedit`'s API.

Every node returns a new MODEL (a patched clone); the input MODEL is never modified, so one
loader can feed accelerated and plain branches of the same workflow.
"""

from __future__ import annotations

import cachedit
from cachedit.config import (ADAPTIVE_DEFAULT_TAYLORSEER_ORDER, ADAPTIVE_DEFAULTS, CACHE_DEVICES, DEFAULT_QUALITY,
                             QUALITY_PRESETS)
from cachedit.manager.distributed import POLICIES as DISTRIBUTED_POLICIES
from cachedit.manager.strategies import STRATEGIES
from comfy_api.latest import io

from .schema import combo_error, make_schema


class CacheDitAccelerate(io.ComfyNode):
    """One input, nothing to tune: the library's adaptive defaults."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return make_schema(
            node_id="CacheDitAccelerate",
            display_name="CacheDit Accelerate",
            search_aliases=("model speedup", "模型加速"),
            description="Speeds up sampling of diffusion transformers (Flux, Wan, Qwen-Image, HunyuanVideo, LTXV, SD3, "
                        "Lumina2, HiDream...) by reusing the middle blocks' work on steps where it barely changes. "
                        "Adaptive defaults; other models fall back to whole-step reuse.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to accelerate (from a loader, LoRA or any model node)."),
                io.Combo.Input("preset", options=list(QUALITY_PRESETS), default=DEFAULT_QUALITY,
                               tooltip="quality: closest to the uncached result. balanced: the default. fast: reuse "
                                       "more. Each is an error budget the cache measures itself against, plus "
                                       "per-run rules: few-step (distilled) runs, runs of 20+ steps (second-order "
                                       "prediction), Wan 2.2's two experts, UNets."),
            ],
            outputs=[
                io.Model.Output(tooltip="The accelerated model; connect it to KSampler. The input model is unchanged."),
            ],
        )

    @classmethod
    def validate_inputs(cls, preset: str | None = None) -> bool | str:
        """The preset must be one of its options (see schema.combo_error)."""
        return combo_error(cls.define_schema(), {"preset": preset}) or True

    @classmethod
    def execute(cls, model, preset: str = DEFAULT_QUALITY) -> io.NodeOutput:
        return io.NodeOutput(cachedit.enable_cache(model, quality=preset))


class CacheDitAdvancedConfig(io.ComfyNode):
    """Every knob of the cache, with the adaptive defaults preset."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        d = ADAPTIVE_DEFAULTS
        return make_schema(
            node_id="CacheDitAdvancedConfig",
            display_name="CacheDit Advanced Config",
            search_aliases=("residual diff threshold", "TaylorSeer", "Fn Bn", "高级配置", "阈值"),
            description="CacheDit with every setting exposed: the strategy (adaptive, fixed, dynamic), DBCache's "
                        "Fn/Bn blocks and threshold, TaylorSeer, warmup and the sampling window.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to accelerate."),
                io.Combo.Input("strategy", options=list(STRATEGIES), default="adaptive",
                               tooltip="adaptive: reuse when the probe (the blocks' input, or the first Fn blocks' "
                                       "output) barely changed (measured each step). fixed: after warmup, every "
                                       "skip_interval-th step reuses. dynamic: reuse more as sampling progresses, up "
                                       "to skip_interval steps in a row."),
                io.Int.Input("skip_interval", default=2, min=1, max=10,
                             tooltip="fixed: one step in every skip_interval reuses the cache. dynamic: the longest "
                                     "run of reused steps. Unused by adaptive."),
                io.Int.Input("warmup_steps", default=d["max_warmup_steps"], min=0, max=20,
                             tooltip="The first steps always compute (the image's layout forms there)."),
                io.Float.Input("noise_scale", default=0.0, min=0.0, max=0.1, step=0.001,
                               tooltip="Adds noise of this relative size to reused residuals; can hide banding on "
                                       "long reuse streaks. 0 = off."),
                io.Boolean.Input("debug", default=False,
                                 tooltip="Print one console line per step (decision, measured diff, threshold)."),
                io.Float.Input("residual_diff_threshold", default=d["residual_diff_threshold"], min=0.0, max=1.0,
                               step=0.01, tooltip="adaptive: reuse when the probe's relative change since the last "
                                                  "computed step is below this. Higher = faster, lower = closer to "
                                                  "the uncached image. 0 never reuses."),
                io.Int.Input("Fn_compute_blocks", default=d["Fn_compute_blocks"], min=0, max=64,
                             tooltip="First blocks that always compute; their output change is the probe adaptive "
                                     "measures. 0 (default): the probe is the blocks' input, and a reused step "
                                     "runs no block."),
                io.Int.Input("Bn_compute_blocks", default=d["Bn_compute_blocks"], min=0, max=64,
                             tooltip="Last blocks that always compute, refining a reused result."),
                io.Int.Input("max_continuous_cached_steps", default=d["max_continuous_cached_steps"], min=-1, max=50,
                             tooltip="At most this many reused steps in a row, then one computes. -1 = no limit."),
                io.Boolean.Input("taylorseer", default=bool(ADAPTIVE_DEFAULT_TAYLORSEER_ORDER),
                                 tooltip="TaylorSeer: extrapolate reused residuals from the last computed steps "
                                         "instead of repeating the last one."),
                io.Int.Input("taylorseer_order", default=max(1, ADAPTIVE_DEFAULT_TAYLORSEER_ORDER), min=1, max=4,
                             tooltip="Order of the TaylorSeer extrapolation (1 = linear)."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Reuse only from this point of the denoising on, measured in noise level "
                                       "(sigma) like ComfyUI's EasyCache and ControlNet percents: the same "
                                       "point for every sampler, scheduler and step split (Wan 2.2's two "
                                       "experts)."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Reuse only until this point of the denoising, measured in noise level "
                                       "(sigma) like start_percent."),
                io.Combo.Input("cache_device", options=list(CACHE_DEVICES), default="auto",
                               tooltip="Where the cached residuals are kept. auto: on the GPU unless ComfyUI is low "
                                       "on VRAM, then in its offload memory (RAM). model: always beside the model. "
                                       "cpu: always in RAM (copied to the GPU ahead of each reuse).", optional=True),
                io.Combo.Input("distributed", options=list(DISTRIBUTED_POLICIES), default="auto",
                               tooltip="Multi-GPU packs that run one torch.distributed rank per GPU: auto makes every "
                                       "rank reuse the same steps (one small all-reduce per decision; needed when the "
                                       "ranks share one image). off: each rank decides alone (ranks sampling "
                                       "unrelated images). No effect in a single process.", optional=True),
            ],
            outputs=[
                io.Model.Output(tooltip="The accelerated model; connect it to KSampler. The input model is unchanged."),
            ],
        )

    @classmethod
    def validate_inputs(cls, start_percent: float, end_percent: float, noise_scale: float,
                        residual_diff_threshold: float, strategy: str | None = None, cache_device: str | None = None,
                        distributed: str | None = None) -> bool | str:
        """Checked before the workflow runs. ComfyUI skips its own min/max checks for every input a
        validate_inputs receives (so it takes named arguments only, never **kwargs: the others keep
        ComfyUI's checks), and a NaN passes those checks anyway (every comparison with NaN is
        false): the FLOAT inputs are checked here, against the schema's own bounds. A linked input
        (None here) is checked when the node runs. Combo values are checked against their options
        (ComfyUI does not check them; the optional ones may be absent)."""
        schema = cls.define_schema()  # not GET_SCHEMA: it writes onto the class, which the server locks
        error = combo_error(schema, {"strategy": strategy, "cache_device": cache_device, "distributed": distributed})
        if error:
            return error
        values = {"start_percent": start_percent, "end_percent": end_percent, "noise_scale": noise_scale,
                  "residual_diff_threshold": residual_diff_threshold}
        bounds = {i.id: (i.min, i.max) for i in schema.inputs if i.id in values}
        for name, value in values.items():
            low, high = bounds[name]
            if value is not None and not low <= value <= high:  # False for NaN
                return f"{name}={value} is invalid; allowed: a number in [{low}, {high}]"
        if start_percent is not None and end_percent is not None and start_percent > end_percent:
            return f"start_percent={start_percent} is above end_percent={end_percent}; allowed: start_percent <= end_percent"
        return True

    @classmethod
    def execute(cls, model, strategy, skip_interval, warmup_steps, noise_scale, debug, residual_diff_threshold,
                Fn_compute_blocks, Bn_compute_blocks, max_continuous_cached_steps, taylorseer, taylorseer_order,
                start_percent, end_percent, cache_device: str = "auto", distributed: str = "auto") -> io.NodeOutput:
        patched = cachedit.enable_cache(
            model, strategy=strategy, skip_interval=skip_interval, warmup_steps=warmup_steps, noise_scale=noise_scale,
            debug=debug, start_percent=start_percent, end_percent=end_percent,
            Fn_compute_blocks=Fn_compute_blocks, Bn_compute_blocks=Bn_compute_blocks,
            residual_diff_threshold=residual_diff_threshold, max_continuous_cached_steps=max_continuous_cached_steps,
            enable_taylorseer=bool(taylorseer), taylorseer_order=taylorseer_order if taylorseer else 0,
            cache_device=cache_device, distributed=distributed)
        return io.NodeOutput(patched)


class CacheDitCacheControl(io.ComfyNode):
    """Switch the cache off without rewiring the workflow."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return make_schema(
            node_id="CacheDitCacheControl",
            display_name="CacheDit Cache Control",
            search_aliases=("disable cache", "bypass cache", "cache off", "缓存控制", "关闭缓存"),
            description="Turns CacheDit off (or leaves it on) for the model passing through, without rewiring. "
                        "Off gives exactly the original model's output.",
            inputs=[
                io.Model.Input("model", tooltip="A model accelerated by CacheDit (any other model passes unchanged)."),
                io.Boolean.Input("enabled", default=True,
                                 tooltip="On: keep the cache. Off: sample exactly like the model without CacheDit."),
            ],
            outputs=[
                io.Model.Output(tooltip="The model with the cache on or off."),
            ],
        )

    @classmethod
    def execute(cls, model, enabled) -> io.NodeOutput:
        return io.NodeOutput(model if enabled else cachedit.disable_cache(model))
