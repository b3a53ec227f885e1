"""Overhead and scaling on a compute-heavy FLUX-architecture transformer (random weights).

For each image-token count, on one diffusers FluxTransformer2DModel (no CFG, batch 1-2), timed
in interleaved rounds (each cached run next to an uncached one):

* `uncached`: the plain model;
* `non-block`: every block replaced by an identity (what no block cache can remove: embeddings,
  RoPE, norm_out/proj_out and the sampler's own arithmetic);
* `never-reuse`: ours, adaptive with a threshold nothing passes and no warmup — every step pays
  the probe, the decision (one host sync) and the residual bookkeeping, and reuses nothing.
  Overhead = its time / uncached - 1 (target <= 2%);
* `fixed`: ours with `strategy="fixed"` (an exactly known schedule). Its block compute fraction
  f is counted (block MACs executed / uncached), so the ideal speedup is
  T_uncached / (f * T_blocks + T_non-block) with T_blocks = T_uncached - T_non-block;
  efficiency = measured / ideal (target >= 90%);
* `adaptive`: ours with the library defaults (on random weights the probe rarely passes, so it
  mostly shows the cost of deciding).

The same code runs on a GPU (`benchmarks.gpu_scaling`) with CUDA-event timing.
"""

from __future__ import annotations

import contextlib
import copy
import math
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import torch
from torch import nn

from .common import ComputeCounter, Inputs, block_lists, euler, median, random_flux, random_inputs


@contextlib.contextmanager
def identity_blocks(transformer: nn.Module) -> Iterator[None]:
    """Replace every block's forward by one returning its inputs (Flux blocks return (enc, hidden))."""

    def ident(hidden_states=None, encoder_hidden_states=None, *args: Any, **kwargs: Any):
        return encoder_hidden_states, hidden_states

    blocks = block_lists(transformer)
    for b in blocks:
        b.forward = ident
    try:
        yield
    finally:
        for b in blocks:
            b.__dict__.pop("forward", None)


class CpuTimer:
    """Wall time of a callable (perf_counter)."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device

    def __call__(self, fn: Callable[[], Any]) -> tuple:
        import time

        start = time.perf_counter()
        out = fn()
        return time.perf_counter() - start, out


class CudaTimer:
    """Device time of a callable between two CUDA events (synchronised once at the end)."""

    def __call__(self, fn: Callable[[], Any]) -> tuple:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        out = fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000.0, out


def _never_reuse_kwargs() -> Dict[str, Any]:
    import cachedit

    return {"cache_config": cachedit.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=1e-9,
                                                   max_warmup_steps=0, max_continuous_cached_steps=-1)}


def _fixed_kwargs(skip_interval: int, warmup: int) -> Dict[str, Any]:
    return {"strategy": "fixed", "skip_interval": skip_interval, "warmup_steps": warmup}


def count_fraction(transformer: nn.Module, inp: Inputs, ref_macs: float, kwargs: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """Block-MAC fraction (and cached steps) of one counted run of `transformer` with ours enabled."""
    import cachedit

    t = copy.deepcopy(transformer)
    if kwargs is not None:
        cachedit.enable_cache(t, **kwargs)
    counter = ComputeCounter(t)
    euler(t, inp)
    counter.close()
    out: Dict[str, Any] = {"macs": counter.macs, "fraction": counter.macs / ref_macs if ref_macs else 1.0}
    if kwargs is not None:
        s = cachedit.summary(t, logging=False)[0]
        out["cached_steps"] = s.accumulated_cached_steps
        out["compute_saved"] = s.estimated_compute_saved
        cachedit.disable_cache(t)
    return out


def measure_tokens(model: nn.Module, tokens: int, *, txt_tokens: int, steps: int, batch: int, repeats: int,
                   timer: Callable, skip_interval: int = 2, warmup: int = 2, log: Callable[[str], None] = print,
                   sync_counter: Optional[Callable[[Callable[[], Any]], int]] = None) -> Dict[str, Any]:
    import cachedit

    inp = random_inputs(model, batch, tokens, txt_tokens, steps)
    configs: Dict[str, Optional[Dict[str, Any]]] = {
        "never-reuse": _never_reuse_kwargs(),
        "fixed": _fixed_kwargs(skip_interval, warmup),
        "adaptive (default)": {},
    }
    models: Dict[str, nn.Module] = {"uncached": model}
    for name, kw in configs.items():
        m = copy.deepcopy(model)
        cachedit.enable_cache(m, **kw)
        models[name] = m
    ref = count_fraction(model, inp, 0.0, None)
    fractions = {name: count_fraction(model, inp, ref["macs"], kw) for name, kw in configs.items()}

    def run(name: str) -> Any:
        if name == "non-block":
            with identity_blocks(model):
                return euler(model, inp)
        return euler(models[name], inp)

    names = ["non-block"] + list(configs)
    for n in ["uncached"] + names:  # warmup
        run(n)
    times: Dict[str, List[float]] = {n: [] for n in ["uncached"] + names}
    ratios: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        prev, _ = timer(lambda: run("uncached"))
        times["uncached"].append(prev)
        for n in order:
            tn, _ = timer(lambda: run(n))
            tb, _ = timer(lambda: run("uncached"))
            times[n].append(tn)
            times["uncached"].append(tb)
            ratios[n].append(((prev + tb) / 2.0) / tn)
            prev = tb
    t_u = median(times["uncached"])
    t_nb = t_u / median(ratios["non-block"])
    t_b = t_u - t_nb
    row: Dict[str, Any] = {"tokens": tokens, "txt_tokens": txt_tokens, "batch": batch, "steps": steps,
                           "uncached_s": t_u, "step_ms": 1000 * t_u / steps, "non_block_s": t_nb,
                           "non_block_share": t_nb / t_u}
    never = 1.0 / median(ratios["never-reuse"])
    row["never_reuse_overhead"] = never - 1.0
    row["never_reuse_overhead_range"] = (1.0 / max(ratios["never-reuse"]) - 1.0, 1.0 / min(ratios["never-reuse"]) - 1.0)
    f = fractions["fixed"]["fraction"]
    ideal = t_u / (f * t_b + t_nb)
    measured = median(ratios["fixed"])
    row.update(fixed_fraction=f, fixed_cached_steps=fractions["fixed"].get("cached_steps"), fixed_ideal=ideal,
               fixed_measured=measured, fixed_efficiency=measured / ideal,
               fixed_library_saved=fractions["fixed"].get("compute_saved"))
    row.update(adaptive_speedup=median(ratios["adaptive (default)"]),
               adaptive_fraction=fractions["adaptive (default)"]["fraction"],
               adaptive_cached_steps=fractions["adaptive (default)"].get("cached_steps"))
    if sync_counter is not None:
        for key, name in (("syncs_uncached", "uncached"), ("syncs_never_reuse", "never-reuse"), ("syncs_fixed", "fixed"),
                          ("syncs_adaptive", "adaptive (default)")):
            try:
                row[key] = sync_counter(lambda: run(name))
            except Exception as exc:  # noqa: BLE001 - a counting failure must not lose the timings
                row[key] = f"n/a ({type(exc).__name__})"
    for name in configs:
        cachedit.disable_cache(models[name])
    log(f"  tokens {tokens}: uncached {t_u:.3f}s ({row['step_ms']:.1f} ms/step), non-block {100 * row['non_block_share']:.1f}%, "
        f"never-reuse overhead {100 * row['never_reuse_overhead']:+.2f}%, fixed {measured:.3f}x vs ideal {ideal:.3f}x "
        f"({100 * row['fixed_efficiency']:.1f}%), adaptive {row['adaptive_speedup']:.3f}x")
    return row


def run_scaling(*, hidden: int, heads: int, double: int, single: int, tokens: Sequence[int], txt_tokens: int,
                steps: int, batch: int, repeats: int, device: str = "cpu", dtype: torch.dtype = torch.float32,
                in_channels: int = 64, timer: Optional[Callable] = None, log: Callable[[str], None] = print,
                sync_counter: Optional[Callable] = None, skip_interval: int = 2, warmup: int = 2) -> List[Dict[str, Any]]:
    model = random_flux(hidden, heads, double, single, in_channels=in_channels, device=device, dtype=dtype)
    timer = timer or CpuTimer()
    rows = []
    for n in tokens:
        rows.append(measure_tokens(model, n, txt_tokens=txt_tokens, steps=steps, batch=batch, repeats=repeats,
                                   timer=timer, skip_interval=skip_interval, warmup=warmup, log=log,
                                   sync_counter=sync_counter))
    return rows


def scaling_table(rows: Sequence[Dict[str, Any]]) -> str:
    cols = ["image tokens", "s/run uncached", "ms/step", "non-block share", "never-reuse overhead (range)",
            "fixed: blocks computed", "fixed: ideal", "fixed: measured", "fixed: % of ideal", "adaptive default",
            "adaptive cached steps"]
    if rows and "syncs_adaptive" in rows[0]:
        cols += ["host syncs/run (uncached, never, fixed, adaptive)"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lo, hi = r["never_reuse_overhead_range"]
        cells = [str(r["tokens"]), f"{r['uncached_s']:.3f}", f"{r['step_ms']:.1f}", f"{100 * r['non_block_share']:.1f}%",
                 f"{100 * r['never_reuse_overhead']:+.2f}% ({100 * lo:+.1f}..{100 * hi:+.1f})",
                 f"{100 * r['fixed_fraction']:.1f}%", f"{r['fixed_ideal']:.3f}x", f"{r['fixed_measured']:.3f}x",
                 f"{100 * r['fixed_efficiency']:.1f}%", f"{r['adaptive_speedup']:.3f}x",
                 str(r.get("adaptive_cached_steps"))]
        if "syncs_adaptive" in r:
            cells.append(f"{r['syncs_uncached']}, {r['syncs_never_reuse']}, {r['syncs_fixed']}, {r['syncs_adaptive']}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_and_write(info: Dict[str, str], out_dir: Optional[str], quick: bool, tokens: Optional[Sequence[int]] = None,
                  log: Callable[[str], None] = print) -> List[Dict[str, Any]]:
    """The CPU scaling study of `python -m benchmarks.run`; writes scaling_cpu.md to `out_dir` (None: no file)."""
    import os

    from .common import machine_block

    if quick:
        kw = dict(hidden=128, heads=2, double=1, single=2, tokens=tuple(tokens or (64, 256)), txt_tokens=16, steps=4,
                  batch=1, repeats=1, warmup=0)
    else:
        kw = dict(hidden=512, heads=8, double=2, single=6, tokens=tuple(tokens or (256, 1024)), txt_tokens=64, steps=4,
                  batch=1, repeats=3, warmup=0)
    log(f"== scaling (CPU): hidden {kw['hidden']}, {kw['double']}+{kw['single']} blocks, tokens {kw['tokens']} ==")
    rows = run_scaling(log=log, **kw)
    if out_dir is not None:
        text = (f"# Overhead and scaling on CPU: FluxTransformer2DModel hidden {kw['hidden']} ({kw['heads']} heads), "
                f"{kw['double']} double + {kw['single']} single blocks, random weights, batch {kw['batch']}, no CFG, "
                f"{kw['steps']} Euler steps, {kw['txt_tokens']} text tokens, median of {kw['repeats']} interleaved rounds\n\n"
                f"Machine:\n{machine_block({**info, 'model': 'random weights (see the title)'})}\n\n{scaling_table(rows)}\n\n"
                "never-reuse = ours adaptive with threshold 1e-9 and no warmup (probe + decision + residual "
                f"bookkeeping every step, no reuse); fixed = ours strategy='fixed' skip_interval=2 warmup={kw['warmup']}, "
                "ideal = T_uncached / (f * T_blocks + T_non-block) with f the counted block-MAC fraction and T_non-block "
                "timed with every block replaced by an identity.\n")
        path = os.path.join(out_dir, "scaling_cpu.md")
        with open(path, "w") as f:
            f.write(text)
        log(f"wrote {path}")
    return rows


_ = math
