"""CacheDit in ComfyUI under faults and random use (tiny models, KSampler's own code path).

Faults: ComfyUI's `InterruptProcessingException` (the user pressed Cancel) or a
`torch.OutOfMemoryError` raised by a block mid-run; the next run is bit-identical to a fresh
CacheDit clone's with the same earlier runs. Fuzz (tests/fuzzing.py): per seed, random
enable / disable / reset / summary / cancel and KSampler runs of two models with random samplers
(heun, dpmpp_2m_sde, lcm, uni_pc, ...), schedulers, denoise < 1, batch sizes and CFG; invariants
after each run as in tests/test_fuzz.py. `CACHEDIT_FUZZ_SEEDS=<n | a,b>` runs more seeds.
"""

from __future__ import annotations

import gc
import os
import random
import sys
import weakref

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fuzzing import RaiseAt, check_stats, never_reuses, random_config, seeds  # noqa: E402

FIXED = dict(strategy="fixed", skip_interval=2, warmup_steps=1, Fn_compute_blocks=1, Bn_compute_blocks=0)
SAMPLERS = ["euler", "heun", "dpmpp_2m_sde", "lcm", "uni_pc", "dpmpp_2m", "euler_ancestral", "dpm_2"]
SCHEDULERS = ["simple", "normal", "karras", "sgm_uniform", "beta"]
MODELS = ("flux", "wan21_t2v")


def Fault(patcher, at: int, make) -> RaiseAt:  # noqa: N802 (reads as the class it returns)
    """Raises `make()` from the first block of `patcher`'s diffusion model at its `at`-th call (once)."""
    dm = patcher.model.diffusion_model
    return RaiseAt(dm.double_blocks[0] if hasattr(dm, "double_blocks") else dm.blocks[0], at, make)


def _faults():
    import torch
    import comfy.model_management

    return {"interrupt": comfy.model_management.InterruptProcessingException,
            "oom": lambda: torch.OutOfMemoryError("injected OOM")}


@pytest.mark.parametrize("fault", ["interrupt", "oom"])
def test_run_after_a_fault_is_clean(comfy_harness, fault):
    import torch

    import cachedit

    base = comfy_harness.build_model("flux")
    latent = comfy_harness.empty_latent("flux", batch=2)
    pos, neg = comfy_harness.make_conditioning("flux")
    run = dict(steps=8, cfg=2.0, latent=latent, positive=pos, negative=neg)
    cached = cachedit.enable_cache(base, **FIXED)
    comfy_harness.sample(cached, **run)
    injected = Fault(base, 6, _faults()[fault])
    with pytest.raises(BaseException) as caught:
        comfy_harness.sample(cached, sampler_name="heun", seed=1, **run)
    injected.close()
    assert injected.calls == 6 and ("OOM" in str(caught.value) or fault == "interrupt"), caught.value
    after = comfy_harness.sample(cached, seed=2, **run)

    fresh = cachedit.enable_cache(base, **FIXED)
    comfy_harness.sample(fresh, **run)
    assert torch.equal(after, comfy_harness.sample(fresh, seed=2, **run))
    assert cachedit.summary(cached, logging=False)[0].cached_steps == [2, 4, 6]
    never = cachedit.enable_cache(base, Fn_compute_blocks=1, residual_diff_threshold=0.0)
    injected = Fault(base, 3, _faults()[fault])
    with pytest.raises(BaseException):
        comfy_harness.sample(never, **run)
    injected.close()
    assert torch.equal(comfy_harness.sample(never, seed=2, **run), comfy_harness.sample(base, seed=2, **run))


def _run_seed(harness, seed: int) -> None:
    import torch

    import cachedit

    rng = random.Random(seed)
    bases = {name: harness.build_model(name) for name in MODELS}
    conds = {name: harness.make_conditioning(name, batch=1) for name in MODELS}
    current = {name: None for name in MODELS}  # name -> (patched clone, config) or None (uncached)
    before = {name: None for name in MODELS}
    log = []
    for i in range(14):
        name = rng.choice(MODELS)
        op = rng.choices(["enable", "disable", "reset", "summary", "cancel", "release", "sample"],
                         weights=[3, 1, 1, 1, 1, 0.5, 6])[0]
        log.append(f"{op}:{name}")
        state = current[name]
        where = f"seed {seed} op {i} ({' '.join(log[-6:])}; config {state[1] if state else None})"
        if op == "enable":
            kw = random_config(rng, 4, 6)
            current[name], before[name] = (cachedit.enable_cache(bases[name], **kw), kw), None
            continue
        if op == "disable" and state is not None:
            cachedit.disable_cache(state[0])
            current[name], before[name] = None, None
            continue
        if op == "reset" and state is not None:
            cachedit.reset_cache_stats(state[0])
            before[name] = None
            continue
        if op == "summary":
            assert cachedit.get_global_stats()["total_cache_hits"] >= 0, where
            continue
        if op == "release":
            other = cachedit.enable_cache(harness.build_model(name, seed=1), **random_config(rng, 4, 6))
            harness.sample(other, steps=2, cfg=1.0, latent=harness.empty_latent(name), positive=conds[name][0],
                           negative=conds[name][1])
            ref = weakref.ref(other)
            del other
            gc.collect()
            assert ref() is None, f"{where}: a dropped patched model is still alive"
            continue
        patcher = state[0] if state is not None else bases[name]
        batch = rng.randint(1, 2)
        gen = dict(steps=rng.randint(1, 6), cfg=rng.choice([1.0, 2.5]), sampler_name=rng.choice(SAMPLERS),
                   scheduler=rng.choice(SCHEDULERS), seed=rng.randint(0, 3), denoise=rng.choice([1.0, 1.0, 0.6]))
        run = dict(latent=harness.empty_latent(name, batch=batch), positive=conds[name][0], negative=conds[name][1])
        where += f" {name} batch {batch} {gen}"
        if op == "cancel":
            import comfy.model_management

            injected = Fault(bases[name], rng.randint(1, 4), comfy.model_management.InterruptProcessingException)
            try:
                harness.sample(patcher, **gen, **run)
            except comfy.model_management.InterruptProcessingException:
                pass
            finally:
                injected.close()
            continue
        hits = cachedit.summary(patcher, logging=False)[0].cache_hits if state is not None else 0
        out = harness.sample(patcher, **gen, **run)
        assert torch.isfinite(out).all(), f"{where}: non-finite output"
        if state is None:
            continue  # the uncached reference itself
        ref = harness.sample(bases[name], **gen, **run)
        stats = cachedit.summary(patcher, logging=False)[0]
        reused = stats.cache_hits - hits
        if never_reuses(state[1]):
            assert reused == 0, f"{where}: a never-reuse config reused {reused} calls"
        if reused == 0:
            assert torch.equal(out, ref), f"{where}: nothing reused, yet the output differs from the uncached model"
        before[name] = check_stats(stats, gen["steps"], before[name], where)


@pytest.mark.parametrize("seed", seeds([0, 1, 2, 3, 4, 5]))
def test_fuzz_comfyui(comfy_harness, seed):
    try:
        _run_seed(comfy_harness, seed)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nreplay: CACHEDIT_FUZZ_SEEDS={seed} pytest tests/comfyui/test_fuzz_faults.py "
                             f"-k fuzz") from None
