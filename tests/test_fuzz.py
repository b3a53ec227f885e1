"""Seeded fuzz of the library API (tests/fuzzing.py: seeds, configs, stats invariants).

Each seed runs a random sequence of enable_cache / disable_cache / reset_cache_stats /
set_global_config / summary / get_global_stats and generations at random step counts, batch
sizes, token grids, CFG batched / separate / none, Euler or Heun. After every generation: the
output is finite; a disabled model, and any generation that reused nothing, is bit-identical to
an uncached copy of the model; reported steps lie inside the run; counters never go backwards
between resets. A model the caller drops (enabled, sampled, deleted) is released.
`CACHEDIT_FUZZ_SEEDS=<n | a,b>` runs more or other seeds.
"""

from __future__ import annotations

import copy
import gc
import random
import weakref

import pytest
import torch

import cachedit
from conftest import make_tiny_flux, sample
from fuzzing import check_stats, never_reuses, random_config, seeds

OPS = 14  # operations per seed
NUM_BLOCKS = 6


def _generation(rng: random.Random) -> dict:
    return dict(steps=rng.randint(1, 9), batch=rng.randint(1, 3), tokens=rng.choice([4, 9, 16]),
                cfg=rng.choice(["none", "batched", "separate"]), seed=rng.randint(0, 3), heun=rng.random() < 0.2)


def _released(rng: random.Random, kw: dict) -> None:
    """Enable, sample and drop a second model: the manager must let it go."""
    other = make_tiny_flux(seed=1)
    cachedit.enable_cache(other, **kw)
    sample(other, steps=2)
    ref = weakref.ref(other)
    del other
    gc.collect()
    assert ref() is None, "a dropped accelerated model is still alive"
    live = [e for e in cachedit.get_manager().entries() if e.ref() is not None]
    assert cachedit.get_global_stats()["models_tracked"] == len(live)


def run_seed(seed: int) -> None:
    rng = random.Random(seed)
    model = make_tiny_flux()
    plain = copy.deepcopy(model)  # never accelerated: the reference
    enabled, kw, before, log = False, {}, None, []
    for i in range(OPS):
        op = rng.choices(["enable", "disable", "reset", "global", "summary", "release", "sample"],
                         weights=[3, 1, 1, 1, 1, 0.5, 6])[0]
        log.append(op)
        where = f"seed {seed} op {i} ({' '.join(log[-6:])}; config {kw})"
        if op == "enable":
            kw = random_config(rng, NUM_BLOCKS, 9)
            cachedit.enable_cache(model, **kw)
            enabled, before = True, None
        elif op == "disable":
            cachedit.disable_cache(model)
            enabled, before = False, None
        elif op == "reset":
            cachedit.reset_cache_stats(model if enabled and rng.random() < 0.5 else None)
            before = None
        elif op == "global":
            cachedit.set_global_config(default_strategy=rng.choice(["adaptive", "fixed", "dynamic"]),
                                       default_skip_interval=rng.randint(1, 4),
                                       default_warmup_steps=rng.randint(0, 4))
        elif op == "summary":
            stats = cachedit.get_global_stats()
            assert stats["total_cache_hits"] >= 0 and stats["total_cache_misses"] >= 0, where
            if enabled:
                cachedit.summary(model, details=rng.random() < 0.5, logging=False)
        elif op == "release":
            _released(rng, random_config(rng, NUM_BLOCKS, 9))
        else:
            gen = _generation(rng)
            where += f" generation {gen}"
            hits = cachedit.summary(model, logging=False)[0].cache_hits if enabled else 0
            out = sample(model, **gen)
            ref = sample(plain, **gen)
            assert torch.isfinite(out).all(), f"{where}: non-finite output"
            if not enabled:
                assert torch.equal(out, ref), f"{where}: disabled model differs from the uncached model"
                continue
            stats = cachedit.summary(model, logging=False)[0]
            reused = stats.cache_hits - hits
            if never_reuses(kw):
                assert reused == 0, f"{where}: a never-reuse config reused {reused} calls"
            if reused == 0:
                assert torch.equal(out, ref), f"{where}: nothing reused, yet the output differs from the uncached model"
            before = check_stats(stats, gen["steps"], before, where)
    cachedit.disable_cache(model)
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("seed", seeds([0, 1, 2, 3]))
def test_fuzz_library(seed):
    try:
        run_seed(seed)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nreplay: CACHEDIT_FUZZ_SEEDS={seed} pytest tests/test_fuzz.py") from None
