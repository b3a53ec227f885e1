"""Runnable examples of every CacheDit API call, on the bundled model (no downloads).

    python examples.py            # run them all
    python examples.py strategies # run one (names below)

Each example is a function; read it top to bottom. With diffusers pipelines the calls are the
same: pass the pipeline (`enable_cache(pipe)`), CacheDit accelerates `pipe.transformer` (and
`pipe.transformer_2` for two-expert models such as Wan 2.2).
"""

from __future__ import annotations

import sys

import torch

import cachedit
import cachedit as cache_dit  # the drop-in spelling for code written for cache-dit
from cachedit.bundled import digits

LABELS = list(range(8))


def _generate(model, steps: int = 28, cfg_mode: str = "batched") -> torch.Tensor:
    return digits.generate(model, LABELS, num_steps=steps, guidance_scale=3.0, seed=0, cfg_mode=cfg_mode)


def example_one_line() -> None:
    """enable_cache with good defaults (the `adaptive` strategy), then summary and disable_cache."""
    model = digits.load_model()
    reference = _generate(model)
    cachedit.enable_cache(model.transformer)
    images = _generate(model)
    stats = cachedit.summary(model.transformer, logging=False)[0]
    print(f"reused steps {stats.cached_steps}, hit rate {stats.hit_rate:.0%}, "
          f"PSNR {digits.psnr(images, reference):.1f} dB, accuracy {digits.digit_accuracy(images, LABELS):.2f}")
    cachedit.disable_cache(model.transformer)
    assert torch.equal(_generate(model), reference)  # disabled: bit-identical to never enabled


def example_strategies() -> None:
    """The three strategies and CacheDit's own knobs: skip_interval, warmup_steps, noise_scale, debug."""
    model = digits.load_model()
    for kwargs in ({"strategy": "fixed", "skip_interval": 2, "warmup_steps": 3},
                   {"strategy": "dynamic", "skip_interval": 3, "warmup_steps": 2},
                   {"strategy": "adaptive", "warmup_steps": 3, "noise_scale": 0.0, "debug": False}):
        cachedit.enable_cache(model.transformer, **kwargs)
        _generate(model)
        print(kwargs, "->", cachedit.summary(model.transformer, logging=False)[0].cached_steps)
    cachedit.disable_cache(model.transformer)


def example_cache_dit_configs() -> None:
    """cache-dit's DBCacheConfig + TaylorSeerCalibratorConfig, steps_mask and strify."""
    model = digits.load_model()
    cache_dit.enable_cache(
        model.transformer,
        cache_config=cache_dit.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.2,
                                             max_warmup_steps=4, max_continuous_cached_steps=3),
        calibrator_config=cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=1),
    )
    _generate(model)
    print(cache_dit.strify(model.transformer))
    cache_dit.summary(model.transformer)  # logs cache-dit's statistics table
    mask = cache_dit.steps_mask(total_steps=28, mask_policy="fast")  # 1 = compute, 0 = may reuse
    cache_dit.enable_cache(model.transformer, cache_config=cache_dit.DBCacheConfig(
        Fn_compute_blocks=1, Bn_compute_blocks=0, steps_computation_mask=mask, steps_computation_policy="dynamic"))
    _generate(model)
    print("mask", "".join(map(str, mask)), "->", cache_dit.summary(model.transformer, logging=False)[0].cached_steps)
    cache_dit.disable_cache(model.transformer)


def example_legacy_kwargs() -> None:
    """cache-dit's legacy keyword arguments (they start from cache-dit's own defaults)."""
    model = digits.load_model()
    cache_dit.enable_cache(model.transformer, Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.2,
                           max_warmup_steps=4, enable_taylorseer=True, taylorseer_order=1)
    _generate(model)
    print(cache_dit.strify(model.transformer))
    cache_dit.disable_cache(model.transformer)


def example_refresh_context() -> None:
    """refresh_context: start a fresh run now, optionally with new settings."""
    model = digits.load_model()
    cachedit.enable_cache(model.transformer, strategy="fixed", skip_interval=2)
    _generate(model, steps=28)
    cachedit.refresh_context(model.transformer, num_inference_steps=12, max_cached_steps=3)
    _generate(model, steps=12)
    print("after refresh:", cachedit.summary(model.transformer, logging=False)[0].cached_steps)
    cachedit.disable_cache(model.transformer)


def example_global_config_and_stats() -> None:
    """set_global_config, get_global_stats and reset_cache_stats, with two models at once."""
    cachedit.set_global_config(default_strategy="fixed", default_skip_interval=3, default_warmup_steps=2)
    a, b = digits.load_model(), digits.load_model()
    cachedit.enable_cache(a.transformer, name="expert_high_noise")
    cachedit.enable_cache(b.transformer, name="expert_low_noise", skip_interval=2)
    _generate(a)
    _generate(b, cfg_mode="separate")
    stats = cachedit.get_global_stats()
    print(f"hits {stats['total_cache_hits']} misses {stats['total_cache_misses']} rate {stats['hit_rate']:.0%} "
          f"models {stats['models_tracked']}")
    for key, model_stats in stats["models"].items():
        print(" ", key, model_stats["cache_hits"], model_stats["blocks_skipped"], model_stats["cache_bytes"])
    cachedit.reset_cache_stats(a.transformer)  # one model
    cachedit.reset_cache_stats()  # all
    cachedit.set_global_config(default_strategy="adaptive", default_skip_interval=2)
    cachedit.get_manager().global_config.default_warmup_steps = None
    cachedit.disable_cache(a.transformer)
    cachedit.disable_cache(b.transformer)


def example_debug_log() -> None:
    """debug=True: one key=value line per step (decision, measured diff, blocks computed)."""
    model = digits.load_model()
    cachedit.enable_cache(model.transformer, debug=True)
    _generate(model, steps=8)
    cachedit.disable_cache(model.transformer)


def example_explicit_blocks() -> None:
    """Name the block lists yourself when detection picks the wrong ones (or raises)."""
    model = digits.load_model()
    cachedit.enable_cache(model.transformer, blocks=["transformer_blocks", "single_transformer_blocks"])
    _generate(model, steps=12)
    print(cachedit.get_global_stats()["models"])
    cachedit.disable_cache(model.transformer)


EXAMPLES = {name[len("example_"):]: fn for name, fn in globals().items() if name.startswith("example_")}

if __name__ == "__main__":
    torch.set_num_threads(2)
    chosen = sys.argv[1:] or list(EXAMPLES)
    for name in chosen:
        print(f"\n=== {name}: {EXAMPLES[name].__doc__.splitlines()[0]}")
        EXAMPLES[name]()
