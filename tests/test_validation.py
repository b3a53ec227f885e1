"""Every field of every config and every keyword of every public function: a wrong type, a value
out of range or a NaN is a ValueError / TypeError that names the parameter, the value and what is
allowed, raised before any sampling starts (nothing is hooked, nothing is registered).

cache-dit's partial-config idiom keeps working: `DBCacheConfig().empty(...)` / `.reset(...)` hold
Nones, and a complete config is required only where a run needs one (enable_cache, refresh_context).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import cachedit
from cachedit import (BlockAdapter, DBCacheConfig, ForwardPattern, GlobalConfig, ParamsModifier,
                      TaylorSeerCalibratorConfig)
from cachedit.config import ADAPTIVE_DEFAULTS, CacheOptions
from tiny_dits import TinyDiT, sample

NAN = float("nan")
INF = float("inf")

# field -> values that must be refused (wrong type, out of range, NaN); each at construction and in update()
CACHE_FIELDS_BAD = {
    "cache_type": ["NONE", 3, "FancyCache"],
    "Fn_compute_blocks": [-1, 1.0, "1", True],
    "Bn_compute_blocks": [-1, 0.5, True],
    "residual_diff_threshold": [-0.1, NAN, INF, "0.1", True],
    "max_accumulated_residual_diff_threshold": [-1.0, NAN, "x"],
    "max_warmup_steps": [-4, 2.5, NAN, False],
    "warmup_interval": [0, -1, 1.5],
    "max_cached_steps": [-2, 1.0, "all"],
    "max_continuous_cached_steps": [-2, NAN],
    "enable_separate_cfg": [1, "yes"],
    "cfg_compute_first": [0, "no"],
    "cfg_diff_compute_separate": [1],
    "num_inference_steps": [0, -28, 28.0, True],
    "steps_computation_mask": [[], [1, 2, 0], "1100", [True, False], 5],
    "steps_computation_policy": ["fast", 1],
    "force_refresh_step_hint": [0, 1.5],
    "force_refresh_step_policy": ["twice", None.__class__],
}
TAYLOR_FIELDS_BAD = {
    "taylorseer_order": [-1, 5, 1.0, True, NAN],
    "enable_calibrator": [1, "true"],
    "enable_encoder_calibrator": [0],
    "calibrator_type": ["foca", 3],
    "calibrator_cache_type": ["hidden_states", None],
    "calibrator_kwargs": [[], "x"],
}
GLOBAL_FIELDS_BAD = {
    "default_strategy": ["greedy", 1, None],
    "default_skip_interval": [0, 11, 2.0, True],
    "default_warmup_steps": [-1, 1001, 3.0],
    "default_noise_scale": [-0.1, 1.5, NAN],
    "global_debug": [1, "yes", None],
}


def _names_it(exc: Exception, name: str, value) -> None:
    """The message names the parameter, the value and what is allowed."""
    text = str(exc)
    assert name in text and "allowed" in text, text
    shown = "nan" if isinstance(value, float) and math.isnan(value) else repr(value)
    assert shown in text or str(value) in text, (shown, text)


def _cases(table):
    return [(field, value) for field, values in table.items() for value in values]


def test_db_cache_config_refuses_every_bad_field():
    assert set(CACHE_FIELDS_BAD) == {f.name for f in dataclasses.fields(DBCacheConfig)}
    for field, value in _cases(CACHE_FIELDS_BAD):
        with pytest.raises(ValueError) as exc:
            DBCacheConfig(**{field: value})
        _names_it(exc.value, field, value)
        with pytest.raises(ValueError):
            DBCacheConfig().update(**{field: value})
        with pytest.raises(ValueError):
            DBCacheConfig().reset(**{field: value})  # the partial idiom checks what it sets
        config = DBCacheConfig()
        setattr(config, field, value)  # an attribute written after construction: caught when it is used
        with pytest.raises(ValueError):
            config.validate()


def test_taylorseer_config_refuses_every_bad_field():
    assert set(TAYLOR_FIELDS_BAD) == {f.name for f in dataclasses.fields(TaylorSeerCalibratorConfig)}
    for field, value in _cases(TAYLOR_FIELDS_BAD):
        with pytest.raises(ValueError) as exc:
            TaylorSeerCalibratorConfig(**{field: value})
        _names_it(exc.value, field, value)
        if value is not None:
            with pytest.raises(ValueError):
                TaylorSeerCalibratorConfig().update(**{field: value})


def test_global_config_refuses_every_bad_field():
    assert set(GLOBAL_FIELDS_BAD) == {f.name for f in dataclasses.fields(GlobalConfig)}
    for field, value in _cases(GLOBAL_FIELDS_BAD):
        with pytest.raises(ValueError) as exc:
            GlobalConfig(**{field: value})
        _names_it(exc.value, field, value)
        if value is not None:
            with pytest.raises(ValueError):
                cachedit.set_global_config(**{field: value})
        assert cachedit.get_manager().global_config == GlobalConfig()  # a refused call changes nothing


def test_partial_configs_keep_working():
    partial = DBCacheConfig().empty(residual_diff_threshold=0.2)
    assert partial.residual_diff_threshold == 0.2 and partial.Fn_compute_blocks is None
    assert DBCacheConfig().reset(Fn_compute_blocks=2).max_warmup_steps is None
    with pytest.raises(ValueError, match="cache_type=None is invalid"):
        partial.validate()  # a run needs every field: enable_cache checks, before hooking anything
    merged = DBCacheConfig(Fn_compute_blocks=1).update(**partial.as_dict())  # ParamsModifier's merge
    assert merged.residual_diff_threshold == 0.2 and merged.Fn_compute_blocks == 1 and merged.validate() is merged
    for value in (None, [1, 0, 1], (1, 0)):  # the Optional fields accept None; a tuple mask is normalized
        config = DBCacheConfig(steps_computation_mask=value).validate()
        assert config.steps_computation_mask == (list(value) if value is not None else None)


OPTIONS_BAD = {
    "strategy": ["greedy"], "skip_interval": [0, 2.5], "noise_scale": [NAN, 2.0], "debug": [1],
    "start_percent": [-0.1, NAN], "end_percent": [1.1], "error_budget": [0.0, NAN, 2.0], "log_runs": ["yes"],
    "blocks": ["transformer_blocks", [], [3]], "cache_config": [{"Fn_compute_blocks": 1}],
    "calibrator_config": [{"taylorseer_order": 1}],
}


def test_cache_options_refuse_every_bad_field():
    for field, value in _cases(OPTIONS_BAD):
        with pytest.raises(ValueError) as exc:
            CacheOptions(**{field: value})
        assert field in str(exc.value) and "allowed" in str(exc.value)


def test_cache_options_window_order():
    with pytest.raises(ValueError, match="start_percent=0.8 is invalid; allowed: a value <= end_percent"):
        CacheOptions(start_percent=0.8, end_percent=0.2)


# -- public functions -------------------------------------------------------------------------------

ENABLE_BAD = [
    dict(strategy="greedy"), dict(strategy=1), dict(skip_interval=0), dict(skip_interval=11), dict(skip_interval=2.0),
    dict(warmup_steps=-1), dict(warmup_steps=1.5), dict(noise_scale=NAN), dict(noise_scale=-0.1), dict(debug="yes"),
    dict(blocks=[]), dict(blocks=[3]), dict(start_percent=NAN), dict(end_percent=2.0),
    dict(start_percent=0.9, end_percent=0.1), dict(quality="ultra"), dict(quality=1), dict(error_budget=NAN),
    dict(error_budget=0.0), dict(quality="fast", error_budget=0.1), dict(strategy="fixed", quality="fast"),
    dict(name=3), dict(Fn_compute_blocks=-1), dict(Bn_compute_blocks="0"), dict(residual_diff_threshold=NAN),
    dict(max_warmup_steps=-4), dict(max_cached_steps=-5), dict(max_continuous_cached_steps=1.5),
    dict(steps_computation_mask=[2]), dict(num_inference_steps=0), dict(enable_separate_cfg="no"),
    dict(enable_taylorseer="yes"), dict(enable_taylorseer=True, taylorseer_order=9),
    dict(taylorseer_order=-1), dict(enable_taylorseer=True, taylorseer_cache_type="hidden_states"),
    dict(enable_encoder_taylorseer=1), dict(cache_config={"Fn_compute_blocks": 1}),
    dict(calibrator_config=DBCacheConfig()), dict(params_modifiers="x"), dict(frobnicate=True),
]


def test_enable_cache_refuses_before_hooking_anything():
    model = TinyDiT("Pattern_3", num_blocks=4)
    for kwargs in ENABLE_BAD:
        with pytest.raises((ValueError, TypeError)) as exc:
            cachedit.enable_cache(model, **kwargs)
        text = str(exc.value)
        assert "allowed" in text and any(k in text for k in kwargs), (kwargs, text)
        assert "forward" not in model.__dict__ and all("forward" not in b.__dict__ for b in model.blocks)
        assert cachedit.get_manager().entry(model) is None


def test_functions_refuse_what_is_never_a_model():
    for obj in (None, 3, 2.5, "pipe", b"x", True):
        for fn in (cachedit.enable_cache, cachedit.disable_cache, cachedit.strify, cachedit.refresh_context):
            with pytest.raises(ValueError, match="^obj=.* is invalid for .*; allowed"):
                fn(obj)
        if obj is not None:
            with pytest.raises(ValueError, match="allowed"):
                cachedit.reset_cache_stats(obj)
    assert cachedit.summary(None, logging=False)[0].cache_hits == 0  # cache-dit's summary(None)


def test_keywords_of_the_other_functions():
    model = TinyDiT("Pattern_3", num_blocks=4)
    cachedit.enable_cache(model)
    for kwargs in (dict(details=1), dict(logging="no")):
        with pytest.raises(ValueError, match="^(details|logging)=.* is invalid for summary\\(\\); allowed: True or False"):
            cachedit.summary(model, **kwargs)
    bad_refresh = [dict(Fn_compute_blocks=-1), dict(residual_diff_threshold=NAN), dict(num_inference_steps=0),
                   dict(max_warmup_steps="3"), dict(taylorseer_order=7, enable_taylorseer=True),
                   dict(cache_config={"Fn_compute_blocks": 1}), dict(calibrator_config=3), dict(verbose=1),
                   dict(steps=28)]
    for kwargs in bad_refresh:
        with pytest.raises(ValueError, match="allowed"):
            cachedit.refresh_context(model, **kwargs)
    assert cachedit.get_manager().entry(model).engine.options.cache_config.Fn_compute_blocks == \
        ADAPTIVE_DEFAULTS["Fn_compute_blocks"]  # unchanged
    with pytest.raises(ValueError, match="^obj has the key 'Fn_blocks'"):
        cachedit.strify({"Fn_blocks": 1})
    with pytest.raises(ValueError, match="max_warmup_steps=-1 is invalid"):
        cachedit.strify({"max_warmup_steps": -1})
    with pytest.raises(ValueError, match="a list of CacheStats"):
        cachedit.strify([1, 2])
    assert cachedit.strify({"Fn_compute_blocks": 1, "Bn_compute_blocks": 0}).startswith("DBCache_F1B0")
    bad_masks = [dict(compute_bins=[2, 1]), dict(cache_bins=[1]), dict(total_steps=0), dict(total_steps=3),
                 dict(total_steps=28.0), dict(total_steps=28, mask_policy="turbo"), dict(total_steps=28, mask_policy=None),
                 dict(compute_bins=[-1], cache_bins=[1]), dict(compute_bins=[1.5], cache_bins=[1])]
    for kwargs in bad_masks:
        with pytest.raises(ValueError, match="allowed"):
            cachedit.steps_mask(**kwargs)
    with pytest.raises(ValueError, match="obj=TinyDiT is not accelerated"):
        cachedit.reset_cache_stats(TinyDiT("Pattern_3", num_blocks=2))


def test_yaml_loaders_keywords(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("cache_config:\n  max_warmup_steps: 2\n  Fn_compute_blocks: 1\n")
    assert cachedit.load_configs(str(path))["cache_config"].max_warmup_steps == 2
    with pytest.raises(TypeError, match="load_configs\\(\\) got strict=True; allowed keyword arguments"):
        cachedit.load_configs(str(path), strict=True)
    with pytest.raises(ValueError, match="return_dict='yes' is invalid"):
        cachedit.load_configs(str(path), return_dict="yes")
    with pytest.raises(ValueError, match="reset=1 is invalid"):
        cachedit.load_cache_config(str(path), reset=1)
    with pytest.raises(TypeError, match="load_parallelism_config\\(\\) got only=True"):
        cachedit.load_parallelism_config(str(path), only=True)
    with pytest.raises(ValueError, match="reset=None is invalid"):
        cachedit.load_options(str(path), reset=None)
    for body, match in (("max_warmup_steps: -1", "max_warmup_steps=-1"), ("residual_diff_threshold: .nan", "nan"),
                        ("enable_taylorseer: 'yes'", "enable_taylorseer='yes'"),
                        ("enable_taylorseer: true\ntaylorseer_order: 6", "taylorseer_order=6")):
        path.write_text(f"cache_config:\n  {body.replace(chr(10), chr(10) + '  ')}\n")
        with pytest.raises(ValueError, match=match):
            cachedit.load_configs(str(path))


def test_block_adapter_and_params_modifier_fields():
    model = TinyDiT("Pattern_3", num_blocks=4)
    for kwargs in (dict(has_separate_cfg=1), dict(auto="yes"), dict(check_forward_pattern="no"),
                   dict(blocks_policy="longest"), dict(check_num_outputs=None), dict(allow_prefixes="blocks")):
        with pytest.raises(ValueError, match="BlockAdapter .* allowed"):
            BlockAdapter(transformer=model, blocks=model.blocks, **kwargs)
    with pytest.raises(TypeError, match="forward_pattern='Pattern_9' is invalid; allowed: Pattern_0"):
        cachedit.enable_cache(BlockAdapter(transformer=model, blocks=model.blocks, forward_pattern="Pattern_9"))
    assert "forward" not in model.__dict__
    for kwargs in (dict(Fn_compute_blocks=-2), dict(taylorseer_order=9, enable_taylorseer=True),
                   dict(enable_taylorseer="on"), dict(residual_diff_threshold=NAN)):
        with pytest.raises(ValueError, match="allowed"):
            ParamsModifier(**kwargs)
    with pytest.raises(TypeError, match="ParamsModifier got Fn=1"):
        ParamsModifier(Fn=1)
    assert [p.name for p in ForwardPattern.supported_patterns()] == [f"Pattern_{i}" for i in range(6)]


def test_refused_arguments_leave_a_working_model():
    """A refused call changes nothing: the model still samples bit-identically to the original."""
    model = TinyDiT("Pattern_3", num_blocks=4)
    reference = sample(model, "Pattern_3", steps=6)
    with pytest.raises(ValueError):
        cachedit.enable_cache(model, warmup_steps=-1)
    assert torch.equal(sample(model, "Pattern_3", steps=6), reference)
    cachedit.enable_cache(model, Fn_compute_blocks=1, residual_diff_threshold=1e-9, max_warmup_steps=0)
    with pytest.raises(ValueError):
        cachedit.refresh_context(model, Bn_compute_blocks=-1)
    assert torch.equal(sample(model, "Pattern_3", steps=6), reference)
