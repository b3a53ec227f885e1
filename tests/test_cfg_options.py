"""cache-dit's CFG and refresh options against the real cache-dit: `enable_separate_cfg`,
`cfg_compute_first`, `cfg_diff_compute_separate`, `force_refresh_step_hint` / `_policy`.

Same model, same inputs, same config: the same steps reused (per branch) and bit-identical outputs.
Where CacheDit differs on purpose (`enable_separate_cfg=False` with separate cond/uncond calls;
DBPrune with `cfg_diff_compute_separate=False`, where cache-dit 1.5.3 fails), it warns once.
"""

from __future__ import annotations

import logging

import pytest
import torch

import cachedit
from cachedit.config import cfg_compat
from tiny_dits import TinyDiT, sample, sample_cfg

cache_dit = pytest.importorskip("cache_dit", reason="cache-dit is a test dependency (pip install -e .[test])")
logging.getLogger("CACHE_DIT").setLevel(logging.ERROR)

STEPS = 28
PATTERN = "Pattern_0"
BASE = dict(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.05, max_warmup_steps=3)


def _adapter(lib, model):
    return lib.BlockAdapter(transformer=model, blocks=model.blocks, check_forward_pattern=True,
                            forward_pattern=lib.ForwardPattern.Pattern_0)


def _run(lib, config: dict, sampler, cls: str = "DBCacheConfig"):
    """(cached steps, CFG cached steps, accumulated cached steps), output."""
    model = TinyDiT(PATTERN)
    extra = dict(num_inference_steps=STEPS) if lib is cache_dit else {}
    adapter = lib.enable_cache(_adapter(lib, model), cache_config=getattr(lib, cls)(**extra, **config))
    out = sampler(model, PATTERN, STEPS)
    if lib is cachedit:
        s = cachedit.summary(model, logging=False)[0]
        steps = (s.cached_steps, s.cfg_cached_steps, s.accumulated_cached_steps)
    else:
        # after a forced refresh cache-dit leaves its stats off the module: read its (only) context
        context = next(iter(adapter.pipe._context_manager._cached_context_manager.values()))
        steps = (context.get_cached_steps(), context.get_cfg_cached_steps(), context.get_accumulated_cached_steps())
    lib.disable_cache(adapter)
    return steps, out


def _both(config: dict, sampler, cls: str = "DBCacheConfig"):
    theirs, theirs_out = _run(cache_dit, config, sampler, cls)
    ours, ours_out = _run(cachedit, config, sampler, cls)
    assert ours == theirs
    assert torch.equal(ours_out, theirs_out)
    return ours


def test_enable_separate_cfg_keeps_each_branch_as_cache_dit():
    cached, cfg_cached, _ = _both(dict(BASE, enable_separate_cfg=True), sample_cfg)
    assert cached and cfg_cached and cached != cfg_cached  # each branch decided on its own


def test_cfg_diff_compute_separate_false_shares_the_diff_as_cache_dit():
    cached, cfg_cached, _ = _both(dict(BASE, enable_separate_cfg=True, cfg_diff_compute_separate=False), sample_cfg)
    separate, separate_cfg, _ = _run(cachedit, dict(BASE, enable_separate_cfg=True), sample_cfg)[0]
    assert cfg_cached == cached != separate_cfg  # the CFG branch followed the non-CFG branch's diff


def test_cfg_compute_first_reports_the_first_call_as_cfg_as_cache_dit():
    config = dict(BASE, enable_separate_cfg=True, cfg_diff_compute_separate=False, cfg_compute_first=True)
    cached, cfg_cached, _ = _both(config, sample_cfg)
    first, second, _ = _run(cachedit, dict(BASE, enable_separate_cfg=True), sample_cfg)[0]
    assert (cfg_cached, cached) == (first, second)  # the same decisions, the lists swapped


def test_cfg_compute_first_with_separate_diffs_is_refused_as_in_cache_dit():
    config = cachedit.DBCacheConfig(**BASE, enable_separate_cfg=True, cfg_compute_first=True)
    with pytest.raises(ValueError, match="cfg_compute_first"):
        config.validate()


@pytest.mark.parametrize("policy", ["once", "repeat"])
@pytest.mark.parametrize("cls", ["DBCacheConfig", "DBPruneConfig"])
def test_force_refresh_step_hint_restarts_the_run_as_cache_dit(policy, cls):
    config = dict(BASE, force_refresh_step_hint=10, force_refresh_step_policy=policy)
    cached, _, accumulated = _both(config, sample, cls)
    # the last refresh's run, its steps counted from 0: 18 steps after step 10 (once), 8 after step 20 (repeat)
    assert max(cached) < (18 if policy == "once" else 8) and accumulated > len(cached)
    plain, _ = _run(cachedit, BASE, sample, cls)
    assert plain[0] != cached


def test_force_refresh_once_is_once_per_generation():
    model = TinyDiT(PATTERN)
    cachedit.enable_cache(_adapter(cachedit, model), cache_config=cachedit.DBCacheConfig(**BASE, force_refresh_step_hint=10))
    first = sample(model, PATTERN, STEPS)
    runs_first = cachedit.summary(model, logging=False)[0].runs
    second = sample(model, PATTERN, STEPS)
    stats = cachedit.summary(model, logging=False)[0]
    cachedit.disable_cache(model)
    assert runs_first == 2 and stats.runs == 4 and torch.equal(first, second)


@pytest.fixture()
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(cfg_compat, "_warned", set())


def _warnings(caplog) -> list:
    return [r.getMessage() for r in caplog.records if r.name == "cachedit" and r.levelno == logging.WARNING]


def test_enable_separate_cfg_false_warns_once_when_calls_are_separate(caplog, fresh_warnings):
    with caplog.at_level(logging.WARNING, logger="cachedit"):
        for sampler in (sample, sample_cfg, sample_cfg):
            model = TinyDiT(PATTERN)
            cachedit.enable_cache(_adapter(cachedit, model), cache_config=cachedit.DBCacheConfig(
                **BASE, enable_separate_cfg=False))
            sampler(model, PATTERN, STEPS)
            cachedit.disable_cache(model)  # ends the run
            if sampler is sample:
                assert not _warnings(caplog)  # one call per step: cache-dit does the same
    assert len([m for m in _warnings(caplog) if "enable_separate_cfg=False" in m]) == 1


def test_dbprune_with_shared_cfg_diffs_measures_each_branch_and_warns_once(caplog, fresh_warnings):
    config = dict(BASE, enable_separate_cfg=True, cfg_diff_compute_separate=False)
    with caplog.at_level(logging.WARNING, logger="cachedit"):
        ours = _run(cachedit, config, sample_cfg, "DBPruneConfig")[0]
        _run(cachedit, config, sample_cfg, "DBPruneConfig")
    separate = _run(cachedit, dict(BASE, enable_separate_cfg=True), sample_cfg, "DBPruneConfig")[0]
    assert ours == separate
    assert len([m for m in _warnings(caplog) if "cfg_diff_compute_separate=False with DBPrune" in m]) == 1
