"""Rank code for tests/test_distributed.py: spawned processes, gloo on the CPU, short timeouts.

Every scenario returns plain data (lists, floats, tensors) that the parent compares; nothing here
asserts, so a failure shows the data of every rank. A CPU build reports 0 accelerators and
diffusers divides by that count when it picks a rank's device: `shim_device_count` (test only).
"""

from __future__ import annotations

import datetime
import os
import queue as queue_module
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.multiprocessing as mp

HERE = os.path.dirname(os.path.abspath(__file__))


def shim_device_count() -> None:
    """diffusers computes `rank % torch.accelerator.device_count()`; a CPU build says 0."""
    torch.accelerator.device_count = lambda: 1


def run_rank(rank: int, world: int, init_file: str, scenario: str, args: Dict[str, Any], queue: Any) -> None:
    """Process entry: join the group, run `scenario`, put (rank, result or error text) on `queue`."""
    sys.path.insert(0, os.path.dirname(HERE))
    sys.path.insert(0, HERE)
    torch.set_num_threads(1)
    import torch.distributed as dist

    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=args.get("timeout", 45)))
        shim_device_count()
        result = SCENARIOS[scenario](rank, world, **args.get("kwargs", {}))
        queue.put((rank, "ok", _plain(result)))
    except BaseException:  # report, never hang the parent
        queue.put((rank, "error", traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn(scenario: str, tmp_path, kwargs=None, world: int = 2, deadline: float = 240.0, timeout: int = 45):
    """Run `scenario` on `world` ranks; returns [result of rank 0, rank 1, ...] or fails with every
    rank's error. Ranks still alive at the deadline are killed (a hang is a failure, not a wait)."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    init = os.path.join(str(tmp_path), f"{scenario}.init")
    procs = [ctx.Process(target=run_rank, args=(r, world, init, scenario, {"kwargs": kwargs or {}, "timeout": timeout},
                                                results)) for r in range(world)]
    for p in procs:
        p.start()
    got, end = {}, time.monotonic() + deadline
    try:
        while len(got) < world and time.monotonic() < end:
            try:
                rank, status, value = results.get(timeout=1.0)
                got[rank] = (status, value)
            except queue_module.Empty:
                if not any(p.is_alive() for p in procs) and results.empty():
                    break
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    errors = {r: v for r, (s, v) in got.items() if s != "ok"}
    assert len(got) == world and not errors, f"{scenario}: ranks {sorted(got)} of {world} reported; errors: {errors}"
    return [got[r][1] for r in range(world)]


# -- helpers ------------------------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    """Tensors as numpy arrays: they pickle by value (torch's shared-memory handles die with the rank)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def _bundled(arch: str = "flux"):
    from cachedit.bundled import digits as D

    return D, D.load_model(arch)


def _run(D, model, labels, steps: int = 14, seed: int = 0, cfg_mode: str = "batched", **cache) -> Dict[str, Any]:
    """One cached generation; (images, the summary's cached steps and diffs)."""
    import cachedit

    cachedit.enable_cache(model.transformer, **cache)
    images = D.generate(model, labels, num_steps=steps, seed=seed, cfg_mode=cfg_mode)
    s = cachedit.summary(model.transformer, logging=False)[0]
    out = {"images": images, "cached": list(s.cached_steps), "cfg_cached": list(s.cfg_cached_steps),
           "diffs": dict(s.residual_diffs)}
    cachedit.disable_cache(model.transformer)
    return out


def _fixed_threshold(threshold: float) -> Dict[str, Any]:
    import cachedit

    return dict(cache_config=cachedit.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0,
                                                    residual_diff_threshold=threshold, max_warmup_steps=2,
                                                    max_continuous_cached_steps=3),
                calibrator_config=cachedit.TaylorSeerCalibratorConfig(taylorseer_order=1))


def _ulysses(model) -> None:
    from diffusers import ContextParallelConfig

    model.transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=2))


# -- scenarios ----------------------------------------------------------------------------------------

def context_parallel(rank: int, world: int, order: str, thresholds: list, steps: int = 14,
                     single: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The bundled Flux with Ulysses 2, CacheDit enabled before or after the parallelism: per
    threshold (and the default), the cached steps and images, next to the same model in a single
    process (`distributed='off'`, before parallelism: no collective runs). `single`: those
    single-process runs from an earlier call (they do not depend on `order`)."""
    D, model = _bundled()
    labels = [0, 1, 2, 3]
    if single is None:
        single = {str(t): _run(D, model, labels, steps, distributed="off", **_fixed_threshold(t)) for t in thresholds}
        single["default"] = _run(D, model, labels, steps, distributed="off")
    import cachedit

    results: Dict[str, Any] = {}
    if order == "parallel_first":
        _ulysses(model)
    else:  # cache first, then the parallelism wraps the hooked model
        cachedit.enable_cache(model.transformer, **_fixed_threshold(thresholds[0]))
        _ulysses(model)
        images = D.generate(model, labels, num_steps=steps, seed=0)
        s = cachedit.summary(model.transformer, logging=False)[0]
        results[str(thresholds[0])] = {"images": images, "cached": list(s.cached_steps), "diffs": dict(s.residual_diffs)}
        cachedit.disable_cache(model.transformer)
    for t in thresholds:
        if str(t) not in results:
            results[str(t)] = _run(D, model, labels, steps, **_fixed_threshold(t))
    results["default"] = _run(D, model, labels, steps)
    return {"single": single, "parallel": results}


def local_probe_diffs(rank: int, world: int, steps: int = 14) -> Dict[str, Any]:
    """Each rank's own probe diffs under Ulysses 2 with decisions NOT reduced (distributed='off') and
    a threshold that never reuses (so no collective is skipped): what the ranks would disagree on."""
    D, model = _bundled()
    _ulysses(model)
    return _run(D, model, [0, 1, 2, 3], steps, distributed="off", **_fixed_threshold(1e-6))["diffs"]


def different_inputs(rank: int, world: int, steps: int = 14) -> Dict[str, Any]:
    """No parallelism inside the model: each rank samples its own digits (data parallel). With the
    default policy the decisions are still the world's: every rank reuses the same steps."""
    D, model = _bundled()
    labels = [rank, rank + 2, rank + 4]
    reduced = _run(D, model, labels, steps, seed=rank, **_fixed_threshold(0.2))
    alone = _run(D, model, labels, steps, seed=rank, distributed="off", **_fixed_threshold(0.2))
    fixed = _run(D, model, labels, steps, seed=rank, strategy="fixed", skip_interval=2, warmup_steps=2)
    default = _run(D, model, labels, steps, seed=rank)
    return {"reduced": reduced["cached"], "alone": alone["cached"], "fixed": fixed["cached"],
            "default": default["cached"], "reduced_diffs": reduced["diffs"], "alone_diffs": alone["diffs"]}


def cfg_parallel(rank: int, world: int, steps: int = 14) -> Dict[str, Any]:
    """CFG parallelism: rank 0 evaluates the conditional branch, rank 1 the unconditional one (no
    collective inside the model); their decisions are reduced over the CFG group (the world here)."""
    D, model = _bundled()
    import cachedit

    labels = torch.tensor([1, 2, 3])
    branch_labels = labels if rank == 0 else torch.full_like(labels, D.NULL_LABEL)
    cachedit.enable_cache(model.transformer, **_fixed_threshold(0.2))
    transformer = model.transformer
    from cachedit.bundled import archs as A

    x = A.initial_latents("flux", len(labels), seed=0)
    sigmas = D.sigmas_schedule(steps)
    with torch.no_grad():
        cond = model.condition(branch_labels)
        for i in range(steps):
            v = transformer(**A.transformer_kwargs("flux", x, float(sigmas[i]), cond))[0]
            x = x + (float(sigmas[i + 1]) - float(sigmas[i])) * v  # each rank its own branch only
    s = cachedit.summary(transformer, logging=False)[0]
    cachedit.disable_cache(transformer)
    return {"cached": list(s.cached_steps)}


def noisy_sampler(rank: int, world: int, steps: int = 14) -> Dict[str, Any]:
    """The default (error feedback), each rank its own digits; the sampler adds fresh noise after
    every step on both ranks ("both") or on rank 1 only ("rank 1"). The input-path cosines are the
    world's: every rank stops reusing at the same step, or none does."""
    D, model = _bundled()
    import cachedit
    from cachedit.bundled import archs as A

    transformer = model.transformer
    out: Dict[str, Any] = {}
    for case in ("both", "rank 1"):
        cachedit.enable_cache(transformer)
        x = A.initial_latents("flux", 3, seed=rank)
        g = torch.Generator().manual_seed(100 + rank)
        sigmas = D.sigmas_schedule(steps)
        with torch.no_grad():
            cond = model.condition(torch.tensor([rank, rank + 2, rank + 4]))
            for i in range(steps):
                s, s_next = float(sigmas[i]), float(sigmas[i + 1])
                v = transformer(**A.transformer_kwargs("flux", x, s, cond))[0]
                x = x + (s_next - s) * v
                if s_next > 0 and (case == "both" or rank == 1):
                    x = x + 0.5 * s_next * torch.randn(x.shape, generator=g)
        engine = cachedit.get_manager().entry(transformer).engine
        engine.finish_run()
        s = cachedit.summary(transformer, logging=False)[0]
        out[case] = {"cached": list(s.cached_steps), "noisy_from": s.sampler_noise_step}
        cachedit.disable_cache(transformer)
    return out


def failing_rank(rank: int, world: int, init_file: str, steps: int = 12) -> Dict[str, Any]:
    """Rank 1 raises inside a block at step 4; rank 0 then fails in the next decision's reduction
    (its peer left the group). Both runs end as failed, so nothing half-written is kept; after a new
    group (as a restarted job would make) the next run equals a fresh cached run."""
    import cachedit
    import torch.distributed as dist

    # a group of its own with a short timeout: rank 0 learns of rank 1's failure only when its reduction
    # times out (rank 1 leaves the group but gloo does not cancel rank 0's wait); 8 s instead of 20
    dist.destroy_process_group()
    dist.init_process_group("gloo", init_method=f"file://{init_file}.short", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=8))
    D, model = _bundled()
    labels = [0, 1]
    fresh = _run(D, model, labels, steps, **_fixed_threshold(0.2))
    cachedit.enable_cache(model.transformer, **_fixed_threshold(0.2))
    block = model.transformer.single_transformer_blocks[3]
    hooked = block.forward
    calls = {"n": 0}

    def boom(*args, **kwargs):
        calls["n"] += 1
        if rank == 1 and calls["n"] == 5:
            raise RuntimeError("rank 1 failed mid-step")
        return hooked(*args, **kwargs)

    block.forward = boom
    error = ""
    try:
        D.generate(model, labels, num_steps=steps, seed=0)
    except Exception as exc:  # rank 1: its own error; rank 0: the reduction's
        error = type(exc).__name__
    block.forward = hooked
    dist.destroy_process_group()
    dist.init_process_group("gloo", init_method=f"file://{init_file}.again", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=30))
    again = D.generate(model, labels, num_steps=steps, seed=0)
    s = cachedit.summary(model.transformer, logging=False)[0]
    return {"error": error, "fresh": fresh["cached"], "again": list(s.cached_steps),
            "equal": bool(torch.equal(again, fresh["images"]))}


def parallelism_config(rank: int, world: int, steps: int = 12) -> Dict[str, Any]:
    """`enable_cache(..., parallelism_config=)` in one call: Ulysses 2 (Flux) and tensor parallelism 2
    (Flux, Wan), each next to the same cached run in a single process (before the model is
    sharded); then what cannot run is refused by name (ring on the CPU, hybrid, wrong sizes, a
    model without a plan)."""
    import cachedit

    out: Dict[str, Any] = {}
    labels = [0, 1, 2, 3]
    for key, arch, config in (("ulysses_flux", "flux", dict(ulysses_size=2)), ("tp_flux", "flux", dict(tp_size="auto")),
                              ("tp_wan", "wan", dict(tp_size=2))):
        D, model = _bundled(arch)
        single = _run(D, model, labels, steps, distributed="off", **_fixed_threshold(0.2))
        sharded = _run(D, model, labels, steps, parallelism_config=cachedit.ParallelismConfig(**config),
                       **_fixed_threshold(0.2))
        default = _run(D, model, labels, steps)  # the default (error feedback) on the sharded model
        out[key] = {"single": single, "sharded": sharded, "default": default["cached"]}
    errors = {}
    for key, config in (("ring", dict(ring_size=2)), ("hybrid", dict(ulysses_size=2, tp_size=2)),
                        ("product", dict(ulysses_size=4)), ("tp_plan", dict(tp_size=2))):
        D, model = _bundled("qwen" if key == "tp_plan" else "flux")
        try:
            cachedit.enable_cache(model.transformer, parallelism_config=cachedit.ParallelismConfig(**config))
            errors[key] = "accepted"
        except Exception as exc:  # the message is what the test checks
            errors[key] = f"{type(exc).__name__}: {exc}"
        cachedit.disable_cache(model.transformer)
    out["errors"] = errors
    return out


def comfyui_different_inputs(rank: int, world: int, steps: int = 12) -> Dict[str, Any]:
    """ComfyUI's own Flux class (the bundled weights) sampled by ComfyUI's sampler on each rank, one
    rank per GPU as the multi-GPU packs run it, each rank its own digits and seed: the adapter
    reduces its decisions over the world (`auto`), so both ranks reuse the same steps; with
    `distributed="off"` each follows its own probe."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("comfyui_harness", os.path.join(HERE, "comfyui", "harness.py"))
    harness = sys.modules["comfyui_harness"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    harness.ensure_comfy()
    import cachedit
    from cachedit.bundled import comfyui as BC

    patcher, bundled = BC.load_patcher("flux")
    labels = torch.tensor([rank, rank + 2, rank + 4])
    out: Dict[str, Any] = {}
    for key, kwargs in (("reduced", _fixed_threshold(0.2)), ("alone", dict(distributed="off", **_fixed_threshold(0.2))),
                        ("default", {})):
        model = cachedit.enable_cache(patcher, **kwargs)
        BC.generate(model, bundled, labels, steps=steps, seed=rank)
        s = cachedit.summary(model, logging=False)[0]
        out[key], out[f"{key}_diffs"] = list(s.cached_steps), dict(s.residual_diffs)
    return out


def straddling_thresholds(rank: int, world: int, steps: int = 14) -> list:
    """Thresholds right between the ranks' own probe diffs at the two steps where they differ most
    (each rank computes the same list from the gathered diffs)."""
    import torch.distributed as dist

    local = local_probe_diffs(rank, world, steps)
    gathered = [None] * world
    dist.all_gather_object(gathered, local)
    candidates = []
    for step, a in gathered[0].items():
        b = gathered[1].get(step)
        if b is not None and a > 0 and b > 0 and int(step) >= 2:
            candidates.append((abs(a - b), round((a + b) / 2, 6)))
    candidates.sort(reverse=True)
    return [mid for gap, mid in candidates[:2] if gap > 0]


def everything(rank: int, world: int, init_file: str) -> Dict[str, Any]:
    """Every scenario in one spawn (starting a rank costs more than most scenarios); the failing
    rank last: it ends the group."""
    thresholds = straddling_thresholds(rank, world)
    out: Dict[str, Any] = {"thresholds": thresholds}
    out["parallel_first"] = context_parallel(rank, world, "parallel_first", thresholds)
    # the single-process runs are the same for both orders: run once
    out["cache_first"] = context_parallel(rank, world, "cache_first", thresholds, single=out["parallel_first"]["single"])
    out["different_inputs"] = different_inputs(rank, world)
    out["cfg_parallel"] = cfg_parallel(rank, world)
    out["noisy_sampler"] = noisy_sampler(rank, world)
    out["parallelism_config"] = parallelism_config(rank, world)
    out["failing_rank"] = failing_rank(rank, world, init_file)
    return out


SCENARIOS: Dict[str, Callable[..., Dict[str, Any]]] = {
    "everything": everything,
    "context_parallel": context_parallel,
    "local_probe_diffs": local_probe_diffs,
    "different_inputs": different_inputs,
    "cfg_parallel": cfg_parallel,
    "noisy_sampler": noisy_sampler,
    "failing_rank": failing_rank,
    "parallelism_config": parallelism_config,
    "comfyui_different_inputs": comfyui_different_inputs,
}


def dbprune_different_inputs(rank: int, world: int, steps: int = 28) -> Dict[str, Any]:
    """DBPrune on a tiny DiT, each rank its own latents: with the default policy every rank prunes
    the same blocks (each block's input change reduced over the ranks); with "off" each its own."""
    import cachedit
    from tiny_dits import TinyDiT, sample

    config = dict(Fn_compute_blocks=1, residual_diff_threshold=0.05, max_warmup_steps=3,
                  enable_dynamic_prune_threshold=True)
    out = {}
    for policy in ("auto", "off"):
        model = TinyDiT("Pattern_0")
        cachedit.enable_cache(model, cache_config=cachedit.DBPruneConfig(**config), distributed=policy)
        sample(model, "Pattern_0", steps, seed=rank)
        stats = cachedit.summary(model, logging=False)[0]
        cachedit.disable_cache(model)
        out[policy] = {"blocks": stats.pruned_blocks, "diffs": stats.residual_diffs}
    return out


SCENARIOS["dbprune_different_inputs"] = dbprune_different_inputs
