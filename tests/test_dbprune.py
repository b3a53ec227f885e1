"""DBPrune (cache-dit's Dynamic Block Prune) against the real cache-dit.

Same model, same inputs, same DBPruneConfig: CacheDit prunes the same blocks at the same steps as
cache-dit 1.5.x (pruned_steps, pruned_blocks per call, pruned_ratio), measures the same per-block
diffs and returns bit-identical outputs (no calibrator). Only block patterns 0/1/2 are compared:
cache-dit 1.5.3's DBPrune fails on Pattern_3/4/5 blocks (`_process_block_outputs()` TypeError);
CacheDit prunes them too (checked on its own below).
"""

from __future__ import annotations

import logging

import pytest
import torch

import cachedit
from cachedit.manager.layout import BlockLayout
from tiny_dits import TinyDiT, sample, sample_cfg

cache_dit = pytest.importorskip("cache_dit", reason="cache-dit is a test dependency (pip install -e .[test])")
logging.getLogger("CACHE_DIT").setLevel(logging.ERROR)

STEPS = 28
BASE = dict(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.05, max_warmup_steps=3)
CONFIGS = {
    "F1B0_R0.05": BASE,
    "F2B1_ids3_MC2": dict(Fn_compute_blocks=2, Bn_compute_blocks=1, residual_diff_threshold=0.08, max_warmup_steps=2,
                          max_continuous_cached_steps=2, non_prune_block_ids=[3]),
    "dynamic_M8": dict(BASE, enable_dynamic_prune_threshold=True, max_cached_steps=8),
    "mask_dynamic": dict(BASE, steps_computation_mask=[1] * 4 + [0, 0, 1] * 8, steps_computation_policy="dynamic"),
}


def _adapter(lib, model, pattern):
    return lib.BlockAdapter(transformer=model, blocks=model.blocks, check_forward_pattern=True,
                            forward_pattern=[getattr(lib.ForwardPattern, pattern)])


def _theirs(config: dict, pattern: str, sampler=sample):
    model = TinyDiT(pattern)
    adapter = cache_dit.enable_cache(_adapter(cache_dit, model, pattern),
                                     cache_config=cache_dit.DBPruneConfig(num_inference_steps=STEPS, **config))
    out = sampler(model, pattern, STEPS)
    b = model.blocks
    stats = dict(pruned_steps=list(b._pruned_steps), pruned_blocks=list(b._pruned_blocks), pruned_ratio=b._pruned_ratio,
                 cfg_pruned_steps=list(b._cfg_pruned_steps), cfg_pruned_blocks=list(b._cfg_pruned_blocks),
                 residual_diffs={k: list(v) for k, v in b._residual_diffs.items()})
    cache_dit.disable_cache(adapter)
    return stats, out


def _ours(config: dict, pattern: str, sampler=sample):
    model = TinyDiT(pattern)
    cachedit.enable_cache(_adapter(cachedit, model, pattern), cache_config=cachedit.DBPruneConfig(**config))
    out = sampler(model, pattern, STEPS)
    s = cachedit.summary(model, logging=False)[0]
    stats = dict(pruned_steps=s.pruned_steps, pruned_blocks=s.pruned_blocks, pruned_ratio=s.pruned_ratio,
                 cfg_pruned_steps=s.cfg_pruned_steps, cfg_pruned_blocks=s.cfg_pruned_blocks,
                 residual_diffs=s.residual_diffs)
    cachedit.disable_cache(model)
    return stats, out, s


def _same_diffs(ours: dict, theirs: dict) -> bool:
    return ours.keys() == theirs.keys() and all(
        len(ours[k]) == len(theirs[k]) and all(abs(a - b) < 1e-5 for a, b in zip(ours[k], theirs[k])) for k in ours)


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("pattern", ["Pattern_0", "Pattern_1", "Pattern_2"])
def test_prunes_the_same_blocks_as_cache_dit(pattern, name):
    config = CONFIGS[name]
    theirs, theirs_out = _theirs(config, pattern)
    ours, ours_out, summary = _ours(config, pattern)
    diffs_ours, diffs_theirs = ours.pop("residual_diffs"), theirs.pop("residual_diffs")
    assert ours == theirs
    assert _same_diffs(diffs_ours, diffs_theirs)
    assert torch.equal(ours_out, theirs_out)
    assert 3 <= len(ours["pruned_steps"]) <= 20 and sum(ours["pruned_blocks"]) > 0  # the comparison means something
    assert summary.cached_steps == ours["pruned_steps"]  # a step with a pruned block is a reused step
    assert summary.blocks_skipped == sum(ours["pruned_blocks"])
    assert summary.estimated_compute_saved == pytest.approx(ours["pruned_ratio"])


def test_partial_steps_are_pruned_block_by_block():
    """The dynamic threshold prunes some blocks of a step and not others, exactly as cache-dit."""
    theirs, _ = _theirs(CONFIGS["dynamic_M8"], "Pattern_0")
    assert any(0 < n < 5 for n in theirs["pruned_blocks"])  # 5 prunable blocks (6 - Fn 1)
    ours, _, _ = _ours(CONFIGS["dynamic_M8"], "Pattern_0")
    assert ours["pruned_blocks"] == theirs["pruned_blocks"]


def test_separate_cfg_prunes_each_branch_as_cache_dit():
    config = dict(BASE, enable_separate_cfg=True)
    theirs, theirs_out = _theirs(config, "Pattern_0", sample_cfg)
    ours, ours_out, _ = _ours(config, "Pattern_0", sample_cfg)
    for key in ("pruned_steps", "pruned_blocks", "cfg_pruned_steps", "cfg_pruned_blocks"):
        assert ours[key] == theirs[key], key
    assert ours["cfg_pruned_steps"] and torch.equal(ours_out, theirs_out)


@pytest.mark.parametrize("pattern", ["Pattern_3", "Pattern_4", "Pattern_5"])
def test_single_stream_patterns_prune_too(pattern):
    """cache-dit 1.5.3 cannot run DBPrune on these patterns; CacheDit prunes them like the others."""
    ours, out, _ = _ours(BASE, pattern)
    uncached = sample(TinyDiT(pattern), pattern, STEPS)
    assert ours["pruned_steps"] and sum(ours["pruned_blocks"]) > 0
    assert (out - uncached).abs().mean() < 0.25 * uncached.abs().mean()  # near the uncached result (DBCache: 0.2-14%)


def test_layout_never_prunes_first_last_and_listed_blocks():
    layout = BlockLayout.build_prune([4, 6], fn_blocks=2, bn_blocks=1, non_prune_ids=[5, 42])
    assert [r.index for r in layout.roles if r.prune] == [2, 3, 4, 6, 7, 8]
    assert layout.segments == tuple(range(i, i + 1) for i in (2, 3, 4, 6, 7, 8))
    assert layout.hooked_blocks() == [2, 3, 4, 6, 7, 8]


def test_config_tag_and_names_match_cache_dit():
    fields = dict(Fn_compute_blocks=2, Bn_compute_blocks=1, residual_diff_threshold=0.1, max_cached_steps=4)
    assert cachedit.DBPruneConfig(**fields).strify() == cache_dit.DBPruneConfig(**fields).strify()
    assert cachedit.DBPrune is cachedit.CacheType.DBPrune and str(cachedit.DBPrune) == "DBPrune"
    for name in ("DBPrune", "dynamic_block_prune", "db_prune", "dbp"):
        assert cachedit.cache_type(name) is cachedit.CacheType.DBPrune
    ours = {f: getattr(cachedit.DBPruneConfig(), f) for f in cache_dit.DBPruneConfig.__dataclass_fields__}
    theirs = {f: getattr(cache_dit.DBPruneConfig(), f) for f in cache_dit.DBPruneConfig.__dataclass_fields__}
    assert {k: str(v) for k, v in ours.items()} == {k: str(v) for k, v in theirs.items()}


@pytest.mark.parametrize("kwargs, field", [
    (dict(strategy="fixed"), "strategy"),
    (dict(quality="fast"), "quality"),
])
def test_dbprune_refuses_other_strategies_and_budgets(kwargs, field):
    model = TinyDiT("Pattern_0")
    with pytest.raises(ValueError, match=field):
        cachedit.enable_cache(model, cache_config=cachedit.DBPruneConfig(**BASE), **kwargs)
    cachedit.disable_cache(model)


@pytest.mark.parametrize("make, field", [
    (lambda: cachedit.DBPruneConfig(non_prune_block_ids=[-1]), "non_prune_block_ids"),
    (lambda: cachedit.DBPruneConfig(non_prune_block_ids="0,1"), "non_prune_block_ids"),
    (lambda: cachedit.DBPruneConfig(dynamic_prune_threshold_relax_ratio="x"), "dynamic_prune_threshold_relax_ratio"),
    (lambda: cachedit.DBPruneConfig(enable_dynamic_prune_threshold=1), "enable_dynamic_prune_threshold"),
    (lambda: cachedit.DBCacheConfig(cache_type="DBPrune").validate(), "cache_type"),
    (lambda: cachedit.DBCacheConfig(cache_type="LayerCache"), "cache_type"),
])
def test_invalid_prune_settings_name_the_field(make, field):
    with pytest.raises(ValueError, match=field):
        make()


def test_a_model_without_blocks_refuses_dbprune():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="DBPrune"):
        cachedit.enable_cache(model, cache_config=cachedit.DBPruneConfig(**BASE))


def test_summary_logs_the_prune_ratio(caplog):
    model = TinyDiT("Pattern_0")
    cachedit.enable_cache(model, cache_config=cachedit.DBPruneConfig(**BASE))
    sample(model, "Pattern_0", STEPS)
    with caplog.at_level(logging.INFO, logger="cachedit"):
        stats = cachedit.summary(model, details=True)[0]
    tag = cachedit.strify(model)
    cachedit.disable_cache(model)
    ratio = f"{round(stats.pruned_ratio * 100, 2)}% ({sum(stats.pruned_blocks)}/{sum(stats.actual_blocks)})"
    assert any(f"Dynamic Block Prune Ratio: {ratio}" in r.getMessage() for r in caplog.records)
    assert stats.actual_blocks == [6] * STEPS
    assert tag == f"DBPrune_F1B0_W3I1M0MC0_R0.05_P{round(stats.pruned_ratio * 100, 2)}_T0O0_S{len(stats.pruned_steps)}"


def test_refresh_context_switches_between_dbcache_and_dbprune():
    model = TinyDiT("Pattern_0")
    cachedit.enable_cache(_adapter(cachedit, model, "Pattern_0"), cache_config=cachedit.DBCacheConfig(**BASE))
    sample(model, "Pattern_0", STEPS)
    assert cachedit.summary(model, logging=False)[0].pruned_ratio is None
    cachedit.refresh_context(model, cache_config=cachedit.DBPruneConfig(**BASE, non_prune_block_ids=[2]))
    sample(model, "Pattern_0", STEPS)
    pruned = cachedit.summary(model, logging=False)[0]
    cachedit.refresh_context(model, cache_config=cachedit.DBCacheConfig(**BASE))
    sample(model, "Pattern_0", STEPS)
    cached = cachedit.summary(model, logging=False)[0]
    cachedit.disable_cache(model)
    assert max(pruned.pruned_blocks) == 4 and pruned.cache_options["cache_config"].non_prune_block_ids == [2]
    assert cached.cache_options["cache_config"].cache_type is cachedit.CacheType.DBCache and cached.cached_steps


@pytest.mark.parametrize("order", [1, 2])
def test_taylorseer_prunes_the_same_blocks_as_cache_dit(order):
    """With TaylorSeer the decisions are cache-dit's too; the extrapolated residuals differ slightly
    (CacheDit never extrapolates past the span its differences were measured over: README)."""
    def run(lib):
        model = TinyDiT("Pattern_0")
        extra = dict(num_inference_steps=STEPS) if lib is cache_dit else {}
        adapter = lib.enable_cache(_adapter(lib, model, "Pattern_0"),
                                   cache_config=lib.DBPruneConfig(**CONFIGS["dynamic_M8"], **extra),
                                   calibrator_config=lib.TaylorSeerCalibratorConfig(taylorseer_order=order))
        out = sample(model, "Pattern_0", STEPS)
        if lib is cache_dit:
            stats = (list(model.blocks._pruned_steps), list(model.blocks._pruned_blocks))
        else:
            s = cachedit.summary(model, logging=False)[0]
            stats = (s.pruned_steps, s.pruned_blocks)
        lib.disable_cache(adapter)
        return stats, out

    (theirs, theirs_out), (ours, ours_out) = run(cache_dit), run(cachedit)
    assert ours == theirs and any(0 < n < 5 for n in ours[1])
    assert (ours_out - theirs_out).abs().max() < 1e-2 * theirs_out.abs().max()


def test_yaml_with_cache_type_dbprune_gives_a_dbprune_config(tmp_path):
    path = tmp_path / "prune.yaml"
    path.write_text("cache_config:\n  cache_type: DBPrune\n  Fn_compute_blocks: 2\n  non_prune_block_ids: [4, 5]\n"
                    "  enable_dynamic_prune_threshold: true\n")
    ours = cachedit.load_configs(str(path))["cache_config"]
    theirs = cache_dit.load_configs(str(path))["cache_config"]
    assert type(ours).__name__ == type(theirs).__name__ == "DBPruneConfig"
    assert ours.strify() == theirs.strify() and ours.non_prune_block_ids == theirs.non_prune_block_ids == [4, 5]
    assert ours.enable_dynamic_prune_threshold is True
