"""Bundled-model benchmark: every cache on the same inputs, in one process, interleaved timing.

Per method, on a fresh copy of the pristine transformer (so nothing one cache leaves behind can
touch the next — cache-dit's `disable_cache` keeps its patched Flux forward, for instance):
1. enable once; *quality runs*: one generation per seed, in order (batch `batch`, labels cycling
   through the digits), with compute counters and a cache-memory probe after every step. PSNR is
   pooled over every image of every seed (the mean MSE, then PSNR); the minimum per-seed PSNR and
   the digit accuracy over all images come with it. What a cache carries from one generation to
   the next stays (ours: error feedback's calibration), as it does for a user;
2. `repeats` timing rounds on the first seed: methods of a group run in a rotating order, with an
   uncached baseline run (on a separate, never-cached copy) before every `per_baseline` of them;
   a method's speedup in a round is the mean of the two baseline runs around it divided by its
   time; the row shows the median over rounds. Each timed output is compared with the quality
   run's output of that seed (bit-identical unless the cache carries calibration over);
3. disable, then a 3-step uncached run must be bit-identical to the pristine model's.
`timing=False` does step 1 only (the tuning grids).
"""

from __future__ import annotations

import copy
import gc
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence  # noqa: F401

import torch
from torch import nn

from .common import Inputs, SampleHooks, bundled_images, bundled_inputs, euler, median, timed
from .counters import ComputeCounter, param_ptrs, reachable_tensor_bytes
from .methods import Method, calibrate_magcache


@dataclass
class Row:
    name: str
    family: str
    series: str
    params: Dict[str, Any] = field(default_factory=dict)
    speedup: float = float("nan")
    speedup_lo: float = float("nan")
    speedup_hi: float = float("nan")
    time_s: float = float("nan")
    best_of: float = float("nan")  # fastest baseline run of the group / fastest run of this method
    compute: float = float("nan")  # fraction of block MACs computed vs uncached (all quality runs)
    attn: float = float("nan")  # fraction of block attention executions vs uncached
    cached_steps: Optional[List[int]] = None  # per seed, as the cache reports it
    psnr: float = float("nan")  # pooled over every image of every seed
    psnr_min: float = float("nan")  # worst seed
    ssim: float = float("nan")
    acc: float = float("nan")
    cache_bytes: Optional[int] = None
    deterministic: Optional[bool] = None
    restored: Optional[bool] = None
    notes: List[str] = field(default_factory=list)
    error: Optional[str] = None
    images: Any = None  # not written to tables


@dataclass
class BundledResult:
    steps: int
    batch: int
    rows: List[Row]
    baseline_times: List[float]
    acc_ref: float
    info: Dict[str, Any]
    arch: str = "flux"
    seeds: Sequence[int] = (0,)


def seed_labels(batch: int, index: int) -> List[int]:
    """Labels of the `index`-th seed's batch: the digits in order, continuing from the previous seed."""
    return [(index * batch + i) % 10 for i in range(batch)]


def _run_counted(method: Method, t: nn.Module, inp: Inputs, hooks: SampleHooks, peak: List[int]) -> Dict[str, Any]:
    counter = ComputeCounter(t)
    exclude = param_ptrs(t)
    if method.memory_roots is not None:
        def after(i: int) -> None:
            peak[0] = max(peak[0], reachable_tensor_bytes(method.memory_roots(t), exclude))
        hooks.after_step = after
    try:
        method.reset_stats(t)
        method.before_run(t)
        latents = euler(t, inp, hooks)
    finally:
        hooks.after_step = None
        counter.close()
    report = method.report(t) or {}
    return {"latents": latents, "macs": counter.macs, "attn": sum(counter.attn), "report": report}


@dataclass
class _Reference:
    images: List[torch.Tensor]  # per seed
    macs: float  # per generation
    attn: int
    acc: float
    labels: List[List[int]]


def _reference(model: Any, pristine: nn.Module, inps: Sequence[Inputs]) -> _Reference:
    from cachedit.bundled import digits as D

    plain = Method("uncached", "uncached", "uncached", enable=lambda *a: None)
    images, macs, attn = [], 0.0, 0
    for inp in inps:
        q = _run_counted(plain, copy.deepcopy(pristine), inp, SampleHooks(), [0])
        images.append(bundled_images(q["latents"], model.arch))
        macs, attn = q["macs"], q["attn"]
    labels = [seed_labels(inps[0].latents.shape[0], k) for k in range(len(inps))]
    acc = D.digit_accuracy(torch.cat(images), sum(labels, []))
    return _Reference(images, macs, attn, acc, labels)


def _fill_quality(row: Row, runs: List[Dict[str, Any]], ref: _Reference, arch: str, peak: int) -> None:
    from cachedit.bundled import digits as D

    images = [bundled_images(q["latents"], arch) for q in runs]
    row.images = images[0]
    n = len(runs)
    row.compute = sum(q["macs"] for q in runs) / (n * ref.macs)
    row.attn = sum(q["attn"] for q in runs) / max(1, n * ref.attn)
    row.psnr = D.psnr(torch.cat(ref.images), torch.cat(images))
    row.psnr_min = min(D.psnr(r, i) for r, i in zip(ref.images, images))
    row.ssim = D.ssim(torch.cat(ref.images), torch.cat(images))
    row.acc = D.digit_accuracy(torch.cat(images), sum(ref.labels, []))
    reports = [q["report"] for q in runs]
    if all(r.get("cached_steps") is not None for r in reports):
        row.cached_steps = [int(r["cached_steps"]) for r in reports]
    row.cache_bytes = reports[-1].get("cache_bytes")
    if row.cache_bytes is None and peak:
        row.cache_bytes = peak
    if "cached_steps_list" in reports[0]:
        row.params["_cached_steps_list"] = reports[0]["cached_steps_list"]


def run_bundled(model: Any, methods: Sequence[Method], steps: int, *, batch: int = 8, seeds: Sequence[int] = (0, 1, 2),
                guidance: float = 3.0, repeats: int = 2, per_baseline: int = 3, group_size: int = 8,
                log: Callable[[str], None] = print, check_generate: bool = True, timing: bool = True) -> BundledResult:
    """Benchmark `methods` on `model` (a bundled DigitsModel: .transformer, .condition, .arch) at
    `steps` Euler steps with batched CFG, quality over `seeds`, timing on the first seed. The
    model itself is never modified."""
    from cachedit.bundled import digits as D

    arch = model.arch
    pristine = model.transformer
    inps = [bundled_inputs(model, seed_labels(batch, k), steps, guidance, s) for k, s in enumerate(seeds)]
    inp = inps[0]
    inp3 = bundled_inputs(model, seed_labels(batch, 0), 3, guidance, seeds[0])
    base = copy.deepcopy(pristine)

    if timing:
        euler(base, inp)  # warmup
    ref = _reference(model, pristine, inps)
    ref3 = euler(copy.deepcopy(pristine), inp3)
    info: Dict[str, Any] = {"seeds": list(seeds), "labels": ref.labels[0]}
    if check_generate:
        gen = D.generate(model, ref.labels[0], num_steps=steps, guidance_scale=guidance, seed=seeds[0], cfg_mode="batched")
        info["sampler_matches_generate"] = bool(torch.equal(gen, ref.images[0]))
    log(f"[{arch} {steps} steps] reference: digit accuracy {ref.acc:.3f} over {len(seeds)} seeds x {batch}, "
        f"block MACs/run {ref.macs:.3g}")

    rows: List[Row] = []
    baseline_times: List[float] = []
    magcache_ratios: Dict[int, List[float]] = {}
    position = {id(m): i for i, m in enumerate(methods)}
    # Time the families side by side: groups take methods round-robin from each family, so a load
    # change on the machine never lands on one family only. The table keeps the given order.
    by_family: Dict[str, List[Method]] = {}
    for m in methods:
        by_family.setdefault(m.family, []).append(m)
    order: List[Method] = []
    while any(by_family.values()):
        for fam in list(by_family):
            if by_family[fam]:
                order.append(by_family[fam].pop(0))

    for g0 in range(0, len(order), group_size):
        live: List[tuple] = []  # (method, row, transformer, hooks, quality latents of the first seed)
        for method in order[g0:g0 + group_size]:
            row = Row(method.name, method.family, method.series, params=dict(method.params))
            row.params["_position"] = position[id(method)]
            rows.append(row)
            t = copy.deepcopy(pristine)
            hooks = SampleHooks(diffusers_context=method.diffusers_context)
            peak = [0]
            try:
                if method.params.get("_needs_magcache_ratios") and steps not in magcache_ratios:
                    cal = copy.deepcopy(pristine)
                    magcache_ratios[steps] = calibrate_magcache(cal, lambda h: euler(cal, inp, h), steps)
                    info["magcache_ratios"] = magcache_ratios[steps]
                    del cal
                if method.params.get("_needs_magcache_ratios"):
                    method.params["_ratios_store"].update(magcache_ratios)
                method.enable(t, steps, hooks)
                runs = [_run_counted(method, t, x, hooks, peak) for x in inps]
            except Exception as exc:  # noqa: BLE001 - a failing cache is a result, not a crash
                row.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
                log(f"  {method.name}: FAILED {row.error}")
                try:
                    method.disable(t)
                except Exception:  # noqa: BLE001
                    pass
                continue
            _fill_quality(row, runs, ref, arch, peak[0])
            live.append((method, row, t, hooks, runs[0]["latents"]))
        if timing:
            baseline_times += _time_group(live, base, inp, repeats, per_baseline, ref.images[0], arch)
        for method, row, t, hooks, qlat in live:
            try:
                method.disable(t)
                row.restored = bool(torch.equal(euler(t, inp3), ref3))
                fwd = t.__dict__.get("forward")
                if fwd is not None and getattr(fwd, "__func__", None) is not type(t).forward:
                    row.notes.append("forward still patched after disable")
            except Exception as exc:  # noqa: BLE001
                row.restored = False
                row.notes.append(f"disable failed: {type(exc).__name__}")
            log(f"  {row.name:<52} {row.speedup:5.2f}x  psnr {row.psnr:6.2f} (min {row.psnr_min:6.2f})  "
                f"compute {100 * row.compute:5.1f}%  acc {row.acc:.2f}  det {row.deterministic} restored {row.restored}")
        del live
        gc.collect()

    rows.sort(key=lambda r: r.params.get("_position", 0))
    uncached = Row("uncached", "uncached", "uncached", speedup=1.0, speedup_lo=1.0, speedup_hi=1.0, best_of=1.0,
                   time_s=median(baseline_times), compute=1.0, attn=1.0, cached_steps=[0] * len(seeds), psnr=math.inf,
                   psnr_min=math.inf, ssim=1.0, acc=ref.acc, cache_bytes=0, deterministic=True, restored=True)
    uncached.images = ref.images[0]
    return BundledResult(steps=steps, batch=batch, rows=[uncached] + rows, baseline_times=baseline_times,
                         acc_ref=ref.acc, info=info, arch=arch, seeds=list(seeds))


def _time_group(live: List[tuple], base: nn.Module, inp: Inputs, repeats: int, per_baseline: int,
                ref_images: torch.Tensor, arch: str) -> List[float]:
    """Interleaved timing rounds of one group; fills speedup/best-of/time/deterministic; returns the baseline times."""
    from cachedit.bundled import digits as D

    group_base: List[float] = []
    times: Dict[str, List[float]] = {m.name: [] for m, *_ in live}
    ratios: Dict[str, List[float]] = {m.name: [] for m, *_ in live}
    differing: Dict[str, List[float]] = {m.name: [] for m, *_ in live}  # PSNR of timed runs that differ
    for r in range(repeats):
        rotated = live[r % max(1, len(live)):] + live[:r % max(1, len(live))] if live else []
        pending: List[tuple] = []  # (name, time, previous baseline) waiting for the next baseline
        last_base = None
        for i, (method, row, t, hooks, qlat) in enumerate(rotated):
            if i % per_baseline == 0:
                tb, _ = timed(lambda: euler(base, inp))
                group_base.append(tb)
                for name, tm, prev in pending:
                    ratios[name].append(((prev + tb) / 2.0) / tm)
                pending = []
                last_base = tb
            method.reset_stats(t)
            method.before_run(t)
            tm, lat = timed(lambda: euler(t, inp, hooks))
            times[method.name].append(tm)
            if not torch.equal(lat, qlat):
                differing[method.name].append(D.psnr(ref_images, bundled_images(lat, arch)))
            pending.append((method.name, tm, last_base))
        if pending:
            tb, _ = timed(lambda: euler(base, inp))
            group_base.append(tb)
            for name, tm, prev in pending:
                ratios[name].append(((prev + tb) / 2.0) / tm)
    for method, row, *_ in live:
        if ratios[method.name]:
            row.speedup = median(ratios[method.name])
            row.speedup_lo, row.speedup_hi = min(ratios[method.name]), max(ratios[method.name])
            row.time_s = median(times[method.name])
            row.best_of = min(group_base) / min(times[method.name])
            row.deterministic = not differing[method.name]
            if differing[method.name]:
                d = differing[method.name]
                why = "calibration carried over" if method.params.get("_feedback") else "state leaks"
                row.notes.append(f"timed runs differ from the first generation ({why}): their PSNR "
                                 f"{min(d):.1f}-{max(d):.1f} dB")
    return group_base


def pick_threads(model: Any, candidates: Sequence[int] = (1, 2), steps: int = 4, batch: int = 8, rounds: int = 3,
                 log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Time a short uncached run with each thread count, interleaved; the fastest wins for every row."""
    inp = bundled_inputs(model, seed_labels(batch, 0), steps)
    t = copy.deepcopy(model.transformer)
    results: Dict[int, List[float]] = {c: [] for c in candidates}
    for c in candidates:  # warmup
        torch.set_num_threads(c)
        euler(t, inp)
    for _ in range(rounds):
        for c in candidates:
            torch.set_num_threads(c)
            dt, _ = timed(lambda: euler(t, inp))
            results[c].append(dt)
    med = {c: median(v) for c, v in results.items()}
    best = min(med, key=med.get)
    torch.set_num_threads(best)
    log("threads probe (median s per %d-step run): %s -> using %d" % (steps, ", ".join(f"{c}: {v:.3f}" for c, v in med.items()), best))
    return {"chosen": best, "medians": med}

