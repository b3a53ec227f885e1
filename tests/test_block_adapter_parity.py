"""BlockAdapter parity with the real cache-dit: custom (non-diffusers) DiTs, every ForwardPattern.

Same model, same inputs, same DBCacheConfig: CacheDit reuses exactly the steps cache-dit reuses,
and (no calibrator) returns bit-identical outputs, for each pattern, for ParamsModifier per block
list, and across refresh_context runs of different lengths. cache-dit drives a transformer without
a pipeline through `num_inference_steps`; CacheDit needs it only where timesteps are absent.
"""

from __future__ import annotations

import logging

import pytest
import torch

import cachedit
from tiny_dits import PATTERNS, TinyDiT, TwoListDiT, inputs, sample

cache_dit = pytest.importorskip("cache_dit", reason="cache-dit is a test dependency (pip install -e .[test])")
logging.getLogger("CACHE_DIT").setLevel(logging.ERROR)

STEPS = 28
CONFIGS = [
    dict(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.03, max_warmup_steps=3),
    dict(Fn_compute_blocks=2, Bn_compute_blocks=1, residual_diff_threshold=0.06, max_warmup_steps=2,
         max_continuous_cached_steps=3),
]


def _adapter(lib, model, blocks, patterns):
    return lib.BlockAdapter(transformer=model, blocks=blocks, check_forward_pattern=True,
                            forward_pattern=[getattr(lib.ForwardPattern, p) for p in patterns])


@pytest.mark.parametrize("config", CONFIGS, ids=["F1B0_R0.03", "F2B1_R0.06_MC3"])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_each_forward_pattern_reuses_cache_dits_steps_with_identical_output(pattern, config):
    theirs_model = TinyDiT(pattern)
    adapter = cache_dit.enable_cache(_adapter(cache_dit, theirs_model, theirs_model.blocks, [pattern]),
                                     cache_config=cache_dit.DBCacheConfig(num_inference_steps=STEPS, **config))
    theirs_out = sample(theirs_model, pattern, STEPS)
    theirs = list(theirs_model.blocks._cached_steps)
    cache_dit.disable_cache(adapter)

    ours_model = TinyDiT(pattern)
    cachedit.enable_cache(_adapter(cachedit, ours_model, ours_model.blocks, [pattern]),
                          cache_config=cachedit.DBCacheConfig(**config))
    ours_out = sample(ours_model, pattern, STEPS)
    ours = cachedit.summary(ours_model, logging=False)[0].cached_steps
    cachedit.disable_cache(ours_model)

    assert ours == theirs
    assert 4 <= len(ours) <= 20  # some steps reused, some computed: the comparison means something
    assert torch.equal(ours_out, theirs_out)


@pytest.mark.parametrize("modifiers", [
    [dict(residual_diff_threshold=0.03), dict(residual_diff_threshold=0.08, Fn_compute_blocks=2)],
    [dict(max_warmup_steps=6), dict(max_cached_steps=5, Bn_compute_blocks=1)],
], ids=["thresholds_and_Fn", "warmup_and_caps"])
def test_params_modifiers_per_block_list_match_cache_dit(modifiers):
    base = dict(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.05, max_warmup_steps=3)
    patterns = ["Pattern_0", "Pattern_3"]

    def run(lib, config):
        model = TwoListDiT()
        adapter = lib.enable_cache(
            _adapter(lib, model, [model.double_blocks, model.single_blocks], patterns), cache_config=config,
            params_modifiers=[lib.ParamsModifier(cache_config=lib.DBCacheConfig().reset(**m)) for m in modifiers])
        x, e = inputs(None)
        ts = torch.linspace(1000, 0, STEPS + 1)
        with torch.no_grad():
            for i in range(STEPS):
                x = x + (ts[i + 1] - ts[i]) / 1000 * model(x, e, ts[i].expand(2))
        if lib is cache_dit:
            steps = [list(model.double_blocks._cached_steps), list(model.single_blocks._cached_steps)]
        else:
            steps = [s.cached_steps for s in cachedit.summary(model, logging=False)]
        lib.disable_cache(adapter)
        return steps, x

    theirs, theirs_out = run(cache_dit, cache_dit.DBCacheConfig(num_inference_steps=STEPS, **base))
    ours, ours_out = run(cachedit, cachedit.DBCacheConfig(**base))
    assert ours == theirs
    assert ours[0] != ours[1] and all(steps for steps in ours)  # each list decided with its own config
    assert torch.equal(ours_out, theirs_out)


def test_refresh_context_between_runs_of_different_lengths_matches_cache_dit():
    pattern = "Pattern_1"

    def run(lib):
        model = TinyDiT(pattern)
        adapter = lib.enable_cache(_adapter(lib, model, model.blocks, [pattern]), cache_config=lib.DBCacheConfig(
            Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.05, max_warmup_steps=4))
        per_run = []
        for i, steps in enumerate((16, 28, 50)):
            if i == 0:
                lib.refresh_context(model, num_inference_steps=steps)
            else:
                lib.refresh_context(model, cache_config=lib.DBCacheConfig(
                    Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.08, num_inference_steps=steps,
                    steps_computation_mask=lib.steps_mask(mask_policy="fast", total_steps=steps),
                    steps_computation_policy="dynamic"))
            sample(model, pattern, steps, timesteps=False)  # no timestep: num_inference_steps ends each run
            per_run.append(list(model.blocks._cached_steps) if lib is cache_dit
                           else cachedit.summary(model, logging=False)[0].cached_steps)
        lib.disable_cache(adapter)
        return per_run

    theirs, ours = run(cache_dit), run(cachedit)
    assert ours == theirs
    assert all(ours)  # every run reused some steps
    for steps, reused in zip((28, 50), ours[1:]):
        mask = cachedit.steps_mask(mask_policy="fast", total_steps=steps)
        assert all(mask[s] == 0 for s in reused)  # and only where the mask lets it


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _summary_lines(lib, logger_name: str, model) -> list:
    handler, logger = _Lines(), logging.getLogger(logger_name)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        lib.summary(model, details=True)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    table = [line for line in handler.lines if line.startswith("|") or line.startswith("Cache Steps:")]
    return table[:4]  # the first list's table (cache-dit logs it again for the transformer)


def test_summary_details_logs_cache_dits_table():
    pattern = "Pattern_1"
    config = dict(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.03, max_warmup_steps=3)
    theirs_model, ours_model = TinyDiT(pattern), TinyDiT(pattern)
    adapter = cache_dit.enable_cache(_adapter(cache_dit, theirs_model, theirs_model.blocks, [pattern]),
                                     cache_config=cache_dit.DBCacheConfig(num_inference_steps=STEPS, **config))
    cachedit.enable_cache(_adapter(cachedit, ours_model, ours_model.blocks, [pattern]),
                          cache_config=cachedit.DBCacheConfig(**config))
    sample(theirs_model, pattern, STEPS)
    sample(ours_model, pattern, STEPS)
    theirs = _summary_lines(cache_dit, "cache_dit.summary", theirs_model)
    ours = _summary_lines(cachedit, "cachedit", ours_model)
    theirs_diffs = dict(theirs_model.blocks._residual_diffs)
    cache_dit.disable_cache(adapter)
    assert ours == theirs
    assert ours[2].startswith("| 4           | 0.024     |") and ours[3] == "Cache Steps: 4, [3, 5, 7, 9]"
    ours_diffs = cachedit.summary(ours_model, logging=False)[0].residual_diffs
    assert ours_diffs.keys() == theirs_diffs.keys()
    assert all(abs(ours_diffs[k] - theirs_diffs[k]) < 1e-6 for k in ours_diffs)  # float32 vs float64 ratio
