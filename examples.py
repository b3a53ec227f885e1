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


class _Layer(torch.nn.Module):
    """One block of the tiny DiT below: forward(hidden_states, t) -> hidden_states (ForwardPattern.Pattern_3)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, dim), torch.nn.GELU(), torch.nn.Linear(dim, dim))

    def forward(self, hidden_states: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return hidden_states + 0.2 * self.mlp(hidden_states + t)


class _DoubleLayer(torch.nn.Module):
    """A two-stream block: forward(hidden_states, encoder_hidden_states, t) -> (hidden, encoder) (Pattern_0)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.img, self.txt = _Layer(dim), _Layer(dim)

    def forward(self, hidden_states, encoder_hidden_states, t):
        context = encoder_hidden_states.mean(dim=1, keepdim=True)
        return self.img(hidden_states + context, t), self.txt(encoder_hidden_states, t)


class MyDiT(torch.nn.Module):
    """A DiT that is not from diffusers: two-stream `double_blocks`, then single-stream `layers`."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.double_blocks = torch.nn.ModuleList([_DoubleLayer(dim) for _ in range(2)])
        self.layers = torch.nn.ModuleList([_Layer(dim) for _ in range(8)])

    def forward(self, x: torch.Tensor, context: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        t = (timestep / 1000).reshape(-1, 1, 1)
        for block in self.double_blocks:
            x, context = block(x, context, t)
        for layer in self.layers:
            x = layer(x, t)
        return x


def _generate_own(model: MyDiT, steps: int = 28) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x, context = torch.randn(2, 16, 32, generator=g), torch.randn(2, 4, 32, generator=g)
    with torch.no_grad():
        for t in torch.linspace(1000, 1000 / steps, steps):
            x = x - model(x, context, t.expand(2)) / steps
    return x


def example_own_transformer() -> None:
    """BlockAdapter + ForwardPattern: cache your own (non-diffusers) DiT's block lists."""
    model = MyDiT()
    reference = _generate_own(model)
    adapter = cachedit.enable_cache(
        cachedit.BlockAdapter(transformer=model, blocks=[model.double_blocks, model.layers],
                              forward_pattern=[cachedit.ForwardPattern.Pattern_0, cachedit.ForwardPattern.Pattern_3]),
        cache_config=cachedit.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.05,
                                            max_warmup_steps=4))
    out = _generate_own(model)
    for stats in cachedit.summary(adapter, logging=False):  # one per block list (each its own cache context)
        print(f"{stats.name}: reused {stats.cached_steps}")
    print(f"max |cached - uncached| = {(out - reference).abs().max():.4f}")
    cachedit.disable_cache(adapter)


def example_params_modifiers() -> None:
    """ParamsModifier: one block list (or one transformer, e.g. Wan 2.2's experts) with its own settings."""
    model = MyDiT()
    cache_dit.enable_cache(
        cache_dit.BlockAdapter(transformer=model, blocks=[model.double_blocks, model.layers],
                               forward_pattern=[cache_dit.ForwardPattern.Pattern_0, cache_dit.ForwardPattern.Pattern_3]),
        cache_config=cache_dit.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.05),
        params_modifiers=[
            cache_dit.ParamsModifier(cache_config=cache_dit.DBCacheConfig().reset(max_warmup_steps=8)),
            cache_dit.ParamsModifier(cache_config=cache_dit.DBCacheConfig().reset(max_warmup_steps=2,
                                                                                  residual_diff_threshold=0.1)),
        ])
    _generate_own(model)
    for stats in cache_dit.summary(model, logging=False):
        print(f"{stats.name}: {cache_dit.strify(stats)} reused {stats.cached_steps}")
    cache_dit.disable_cache(model)


def example_load_configs() -> None:
    """load_configs: cache-dit's YAML files (cache_config, TaylorSeer keys, a named steps mask)."""
    import os
    import tempfile

    text = ("cache_config:\n  Fn_compute_blocks: 1\n  Bn_compute_blocks: 0\n  residual_diff_threshold: 0.2\n"
            "  max_warmup_steps: 4\n  num_inference_steps: 28\n  steps_computation_mask: fast\n"
            "  enable_taylorseer: true\n  taylorseer_order: 1\n")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "cache.yaml")
        with open(path, "w") as f:
            f.write(text)
        configs = cache_dit.load_configs(path)  # also: load_cache_config, load_options, load_parallelism_config
    model = digits.load_model()
    cache_dit.enable_cache(model.transformer, **configs)  # parallelism/attention/quantize sections: ignored, with a warning
    _generate(model)
    print(cache_dit.strify(model.transformer))
    cache_dit.disable_cache(model.transformer)


def example_detection_helpers() -> None:
    """supported_pipelines, get_adapter, block_range, summary(details=True), and what is out of scope."""
    count, names = cachedit.supported_pipelines()
    print(f"{count} diffusers transformers found without an adapter, e.g. {names[:3]}")
    model = digits.load_model()
    adapter = cachedit.get_adapter(model.transformer)  # what enable_cache(model.transformer) would cache
    print("blocks_name:", adapter.blocks_name, "blocks:", len(adapter.blocks))
    cachedit.enable_cache(adapter, cache_config=cachedit.DBCacheConfig(Fn_compute_blocks=1, residual_diff_threshold=0.2,
                                                                      max_warmup_steps=3))
    _generate(model, steps=12)
    import logging

    logging.basicConfig(format="%(message)s")
    logging.getLogger("cachedit").setLevel(logging.INFO)
    cachedit.summary(adapter, details=True)  # cache-dit's table plus each step's diff, via the "cachedit" logger
    logging.getLogger("cachedit").setLevel(logging.WARNING)
    cachedit.disable_cache(adapter)
    print("block_range(0, 12, 4) =", cachedit.block_range(0, 12, 4))
    try:
        cachedit.quantize  # noqa: B018 (cache-dit's quantization is out of scope)
    except AttributeError as error:
        print(error)


EXAMPLES = {name[len("example_"):]: fn for name, fn in globals().items() if name.startswith("example_")}

if __name__ == "__main__":
    torch.set_num_threads(2)
    chosen = sys.argv[1:] or list(EXAMPLES)
    for name in chosen:
        print(f"\n=== {name}: {EXAMPLES[name].__doc__.splitlines()[0]}")
        EXAMPLES[name]()
