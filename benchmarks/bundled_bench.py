"""Bundled-model benchmark: every cache on the same inputs, in one process, interleaved timing.

Per method, on a fresh copy of the pristine transformer (so nothing one cache leaves behind can
touch the next — cache-dit's `disable_cache` keeps its patched Flux forward, for instance):
1. enable; one *quality run* with compute counters and a cache-memory probe after every step;
2. `repeats` timing rounds: methods of a group run in a rotating order, with an uncached
   baseline run (on a separate, never-cached copy) before every `per_baseline` of them; a
   method's speedup in a round is the mean of the two baseline runs around it divided by its
   time; the row shows the median over rounds. Each timed output must equal the quality run's
   output bit for bit (so state never leaks between generations);
3. disable, then a 3-step uncached run must be bit-identical to the pristine model's.
"""

from __future__ import annotations

import copy
import gc
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from .common import (
    ComputeCounter,
    Inputs,
    SampleHooks,
    bundled_images,
    bundled_inputs,
    euler,
    median,
    param_ptrs,
    reachable_tensor_bytes,
    timed,
)
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
    compute: float = float("nan")  # fraction of block MACs computed vs uncached
    attn: float = float("nan")  # fraction of block attention executions vs uncached
    cached_steps: Optional[int] = None
    psnr: float = float("nan")
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


def _quality_run(method: Method, t: nn.Module, inp: Inputs, hooks: SampleHooks, seq_len: int) -> Dict[str, Any]:
    counter = ComputeCounter(t, seq_len)
    exclude = param_ptrs(t)
    peak = [0]
    if method.memory_roots is not None:
        def after(i: int) -> None:
            peak[0] = max(peak[0], reachable_tensor_bytes(method.memory_roots(t), exclude))
        hooks.after_step = after
    try:
        method.before_run(t)
        latents = euler(t, inp, hooks)
    finally:
        hooks.after_step = None
        counter.close()
    report = method.report(t) or {}
    if method.memory_roots is not None and report.get("cache_bytes") is None:
        report["cache_bytes"] = peak[0]
    return {"latents": latents, "macs": counter.macs, "attn": sum(counter.attn), "report": report}


def run_bundled(model: Any, methods: Sequence[Method], steps: int, *, batch: int = 10, guidance: float = 3.0,
                seed: int = 0, repeats: int = 3, per_baseline: int = 2, group_size: int = 8,
                log: Callable[[str], None] = print, check_generate: bool = True) -> BundledResult:
    """Benchmark `methods` on `model` (a DigitsModel-like object: .transformer, .label_embedder,
    .condition) at `steps` Euler steps with batched CFG. The model itself is never modified."""
    from cachedit.bundled import digits as D

    labels = [i % 10 for i in range(batch)]
    pristine = model.transformer
    inp = bundled_inputs(model, labels, steps, guidance, seed)
    inp3 = bundled_inputs(model, labels, 3, guidance, seed)
    seq_len = inp.img_ids.shape[0] + inp.txt_ids.shape[0]
    base = copy.deepcopy(pristine)

    # Reference (uncached) images, compute and timing warmup.
    euler(base, inp)
    ref = _quality_run(Method("uncached", "uncached", "uncached", enable=lambda *a: None), copy.deepcopy(pristine), inp,
                       SampleHooks(), seq_len)
    ref_images = bundled_images(ref["latents"])
    ref3 = euler(copy.deepcopy(pristine), inp3)
    acc_ref = D.digit_accuracy(ref_images, labels)
    info: Dict[str, Any] = {"labels": labels, "seq_len": seq_len}
    if check_generate:
        gen = D.generate(model, labels, num_steps=steps, guidance_scale=guidance, seed=seed, cfg_mode="batched")
        info["sampler_matches_generate"] = bool(torch.equal(gen, ref_images))
    log(f"[{steps} steps] reference: digit accuracy {acc_ref:.3f}, block MACs/run {ref['macs']:.3g}")

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
        group = list(order[g0:g0 + group_size])
        live: List[tuple] = []  # (method, row, transformer, hooks, quality latents)
        for method in group:
            row = Row(method.name, method.family, method.series, params=dict(method.params))
            row.params["_position"] = position[id(method)]
            rows.append(row)
            t = copy.deepcopy(pristine)
            hooks = SampleHooks(diffusers_context=method.diffusers_context)
            try:
                if method.params.get("_needs_magcache_ratios") and steps not in magcache_ratios:
                    cal = copy.deepcopy(pristine)
                    magcache_ratios[steps] = calibrate_magcache(cal, lambda h: euler(cal, inp, h), steps)
                    info["magcache_ratios"] = magcache_ratios[steps]
                    del cal
                if method.params.get("_needs_magcache_ratios"):
                    method.params["_ratios_store"].update(magcache_ratios)
                method.enable(t, steps, hooks)
                q = _quality_run(method, t, inp, hooks, seq_len)
            except Exception as exc:  # noqa: BLE001 - a failing cache is a result, not a crash
                row.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
                log(f"  {method.name}: FAILED {row.error}")
                try:
                    method.disable(t)
                except Exception:  # noqa: BLE001
                    pass
                continue
            images = bundled_images(q["latents"])
            row.images = images
            row.compute = q["macs"] / ref["macs"]
            row.attn = q["attn"] / max(1, ref["attn"])
            row.psnr = D.psnr(ref_images, images)
            row.ssim = D.ssim(ref_images, images)
            row.acc = D.digit_accuracy(images, labels)
            rep = q["report"]
            row.cached_steps = rep.get("cached_steps")
            row.cache_bytes = rep.get("cache_bytes")
            if "compute_saved" in rep:
                row.params["_library_compute_saved"] = rep["compute_saved"]
            if "cached_steps_list" in rep:
                row.params["_cached_steps_list"] = rep["cached_steps_list"]
            live.append((method, row, t, hooks, q["latents"]))

        # Interleaved timing rounds.
        group_base: List[float] = []
        times: Dict[str, List[float]] = {m.name: [] for m, *_ in live}
        ratios: Dict[str, List[float]] = {m.name: [] for m, *_ in live}
        same: Dict[str, bool] = {m.name: True for m, *_ in live}
        for r in range(repeats):
            rotated = live[r % max(1, len(live)):] + live[:r % max(1, len(live))] if live else []
            pending: List[tuple] = []  # (name, time) waiting for the next baseline
            last_base = None
            for i, (method, row, t, hooks, qlat) in enumerate(rotated):
                if i % per_baseline == 0:
                    tb, _ = timed(lambda: euler(base, inp))
                    baseline_times.append(tb)
                    group_base.append(tb)
                    for name, tm, prev in pending:
                        ratios[name].append(((prev + tb) / 2.0) / tm)
                    pending = []
                    last_base = tb
                method.before_run(t)
                tm, lat = timed(lambda: euler(t, inp, hooks))
                times[method.name].append(tm)
                same[method.name] &= bool(torch.equal(lat, qlat))
                pending.append((method.name, tm, last_base))
            if pending:
                tb, _ = timed(lambda: euler(base, inp))
                baseline_times.append(tb)
                group_base.append(tb)
                for name, tm, prev in pending:
                    ratios[name].append(((prev + tb) / 2.0) / tm)

        for method, row, t, hooks, qlat in live:
            if ratios[method.name]:
                row.speedup = median(ratios[method.name])
                row.speedup_lo, row.speedup_hi = min(ratios[method.name]), max(ratios[method.name])
                row.time_s = median(times[method.name])
                row.best_of = min(group_base) / min(times[method.name])
                row.deterministic = same[method.name]
            try:
                method.disable(t)
                row.restored = bool(torch.equal(euler(t, inp3), ref3))
                fwd = t.__dict__.get("forward")
                if fwd is not None and getattr(fwd, "__func__", None) is not type(t).forward:
                    row.notes.append("forward still patched after disable")
            except Exception as exc:  # noqa: BLE001
                row.restored = False
                row.notes.append(f"disable failed: {type(exc).__name__}")
            log(f"  {row.name:<44} {row.speedup:5.2f}x  psnr {row.psnr:6.2f}  compute {100 * row.compute:5.1f}%  "
                f"acc {row.acc:.2f}  det {row.deterministic} restored {row.restored}")
        del live
        gc.collect()

    rows.sort(key=lambda r: r.params.get("_position", 0))
    uncached = Row("uncached", "uncached", "uncached", speedup=1.0, speedup_lo=1.0, speedup_hi=1.0, best_of=1.0,
                   time_s=median(baseline_times), compute=1.0, attn=1.0, cached_steps=0, psnr=math.inf, ssim=1.0,
                   acc=acc_ref, cache_bytes=0, deterministic=True, restored=True)
    uncached.images = ref_images
    return BundledResult(steps=steps, batch=batch, rows=[uncached] + rows, baseline_times=baseline_times,
                         acc_ref=acc_ref, info=info)


def pick_threads(model: Any, candidates: Sequence[int] = (1, 2), steps: int = 4, batch: int = 10, rounds: int = 3,
                 log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Time a short uncached run with each thread count, interleaved; the fastest wins for every row."""
    inp = bundled_inputs(model, [i % 10 for i in range(batch)], steps)
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


_ = time
