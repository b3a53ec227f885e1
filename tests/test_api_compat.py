"""The cache-dit surface CacheDit promises: names, dataclass fields and defaults, CacheStats fields."""

from __future__ import annotations

import dataclasses

import pytest

import cachedit

cache_dit = pytest.importorskip("cache_dit", reason="cache-dit is a test dependency (pip install -e .[test])")

CACHE_DIT_NAMES = ["enable_cache", "disable_cache", "summary", "strify", "refresh_context", "steps_mask",
                   "DBCacheConfig", "BasicCacheConfig", "TaylorSeerCalibratorConfig", "CalibratorConfig", "CacheType",
                   "cache_type"]
OUR_NAMES = ["set_global_config", "get_global_stats", "reset_cache_stats", "CacheStats", "CacheManager", "get_manager"]


@pytest.mark.parametrize("name", CACHE_DIT_NAMES + OUR_NAMES)
def test_public_names_exist_and_are_documented(name):
    obj = getattr(cachedit, name)
    if name in CACHE_DIT_NAMES:
        assert hasattr(cache_dit, name)
    assert obj.__doc__ and obj.__doc__.strip()


def _defaults(cls):
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()  # type: ignore[misc]
    return out


@pytest.mark.parametrize("ours, theirs", [
    (cachedit.DBCacheConfig, cache_dit.DBCacheConfig),
    (cachedit.TaylorSeerCalibratorConfig, cache_dit.TaylorSeerCalibratorConfig),
])
def test_config_fields_and_defaults_match_cache_dit(ours, theirs):
    mine, ref = _defaults(ours), _defaults(theirs)
    for name, value in ref.items():
        assert name in mine, name
        assert str(mine[name]) == str(value), name


def test_config_methods_and_strify_match_cache_dit():
    kwargs = dict(Fn_compute_blocks=1, Bn_compute_blocks=2, residual_diff_threshold=0.12, max_warmup_steps=4,
                  warmup_interval=2, max_cached_steps=10, max_continuous_cached_steps=3, num_inference_steps=28,
                  enable_separate_cfg=True)
    assert cachedit.DBCacheConfig(**kwargs).strify() == cache_dit.DBCacheConfig(**kwargs).strify()
    mask = cachedit.steps_mask(total_steps=28, mask_policy="fast")
    assert (cachedit.DBCacheConfig(steps_computation_mask=mask).strify()
            == cache_dit.DBCacheConfig(steps_computation_mask=mask).strify())
    ours = cachedit.DBCacheConfig().update(Fn_compute_blocks=2, unknown_key=1, max_warmup_steps=None)
    assert ours.Fn_compute_blocks == 2 and ours.max_warmup_steps == 8
    assert cachedit.DBCacheConfig().empty(Fn_compute_blocks=3).as_dict()["Fn_compute_blocks"] == 3
    assert cachedit.DBCacheConfig().reset().Bn_compute_blocks is None
    for order in (1, 2):
        assert (cachedit.TaylorSeerCalibratorConfig(taylorseer_order=order).strify()
                == cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=order).strify())
    assert cachedit.cache_type("db_cache") is cachedit.CacheType.DBCache
    assert str(cachedit.CacheType.DBCache) == "DBCache"


def test_cache_stats_has_every_cache_dit_field():
    theirs = {f.name for f in dataclasses.fields(cache_dit.summary.__globals__["CacheStats"])}
    ours = {f.name for f in dataclasses.fields(cachedit.CacheStats)}
    assert theirs <= ours
    assert {"hit_rate", "blocks_computed", "blocks_skipped", "estimated_compute_saved"} <= ours


@pytest.mark.parametrize("total", [4, 6, 8, 9, 10, 12, 15, 16, 20, 28, 30, 40, 50, 64, 100])
@pytest.mark.parametrize("policy", ["slow", "medium", "fast", "ultra"])
def test_steps_mask_matches_cache_dit(total, policy):
    assert cachedit.steps_mask(total_steps=total, mask_policy=policy) == cache_dit.steps_mask(
        total_steps=total, mask_policy=policy)


def test_steps_mask_bins_match_cache_dit():
    for bins in (([4, 2], [1, 3]), ([8, 1, 1], [2, 2]), ([1], [5])):
        assert cachedit.steps_mask(*bins) == cache_dit.steps_mask(*bins)
        total = sum(bins[0]) + sum(bins[1]) - 1
        assert cachedit.steps_mask(*bins, total_steps=total) == cache_dit.steps_mask(*bins, total_steps=total)


def test_every_public_api_function_has_a_docstring():
    import inspect

    import cachedit.api as api

    for name in api.__all__:
        obj = getattr(api, name)
        assert inspect.getdoc(obj), name
