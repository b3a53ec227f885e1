"""Where CacheDit spends time inside a cached generation (cProfile), and what it costs per step.

    python -m benchmarks.profile_overhead [--steps 28] [--batch 10] [--threads 1]

Runs the bundled model with the library defaults under cProfile and attributes time to CacheDit:
the self time of every function in `cachedit/` plus the torch calls those functions make
directly (subtractions, the decision's reduction and `.item()`, TaylorSeer updates, clones) —
the original block forwards they wrap are excluded. Also counts host syncs (`.item()` calls and
who makes them), tensor copies (`clone`), and compares wall time with an uncached run and a
never-reuse run. Writes benchmarks/results/profile.md.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import os
import pstats
import sys
from collections import defaultdict
from typing import Dict, Optional, Sequence, Tuple

import torch

from .common import bundled_inputs, euler, machine_block, machine_info, median, timed

CACHEDIT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cachedit")


def _is_ours(key: Tuple[str, int, str]) -> bool:
    return os.path.abspath(key[0]).startswith(CACHEDIT_DIR)


def _is_builtin(key: Tuple[str, int, str]) -> bool:
    return key[0] == "~" or key[0].startswith("<built-in")


def attribute(stats: pstats.Stats) -> Dict[str, object]:
    """Self time of cachedit functions + time of builtins (torch C calls) called from them."""
    raw = stats.stats  # type: ignore[attr-defined]
    self_time: Dict[str, float] = defaultdict(float)
    calls: Dict[str, int] = defaultdict(int)
    builtin_from_ours: Dict[str, float] = defaultdict(float)
    builtin_calls: Dict[str, int] = defaultdict(int)
    item_callers: Dict[str, int] = defaultdict(int)
    clone_callers: Dict[str, int] = defaultdict(int)
    for key, (cc, nc, tt, ct, callers) in raw.items():
        name = f"{os.path.relpath(key[0], os.path.dirname(CACHEDIT_DIR))}:{key[2]}" if _is_ours(key) else key[2]
        if _is_ours(key):
            self_time[name] += tt
            calls[name] += nc
        if _is_builtin(key):
            for ckey, (ccc, cnc, ctt, cct) in callers.items():
                if _is_ours(ckey):
                    builtin_from_ours[f"{key[2]} <- {ckey[2]}"] += cct
                    builtin_calls[f"{key[2]} <- {ckey[2]}"] += cnc
                if key[2] == "<method 'item' of 'torch._C.TensorBase' objects>":
                    item_callers[f"{os.path.basename(ckey[0])}:{ckey[2]}"] += cnc
                if key[2] == "<method 'clone' of 'torch._C.TensorBase' objects>":
                    clone_callers[f"{os.path.basename(ckey[0])}:{ckey[2]}"] += cnc
    return {"self": dict(self_time), "calls": dict(calls), "builtins": dict(builtin_from_ours),
            "builtin_calls": dict(builtin_calls), "items": dict(item_callers), "clones": dict(clone_callers)}


ENGINE_METHODS = ("begin_call", "end_call", "probe_input", "probe_output", "segment_input", "segment_output")


def instrumented_run(transformer, inp) -> Dict[str, object]:
    """One run with perf_counter timers around the engine's entry points (instance attributes, so
    the hooks pick them up) and counters on Tensor.item / Tensor.clone by calling module."""
    import time

    import cachedit

    engine = cachedit.get_manager().entry(transformer).engine
    spent: Dict[str, float] = defaultdict(float)
    ncalls: Dict[str, int] = defaultdict(int)
    for name in ENGINE_METHODS:
        fn = getattr(engine, name)

        def wrap(fn=fn, name=name):
            def timed_fn(*a, **k):
                t0 = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    spent[name] += time.perf_counter() - t0
                    ncalls[name] += 1
            return timed_fn

        setattr(engine, name, wrap())
    counts: Dict[str, int] = defaultdict(int)
    originals = {m: getattr(torch.Tensor, m) for m in ("item", "clone")}

    def counting(method):
        orig = originals[method]

        def f(self, *a, **k):
            frame = sys._getframe(1)
            where = frame.f_code.co_filename
            mod = "cachedit/" + os.path.basename(where) if os.path.abspath(where).startswith(CACHEDIT_DIR) else "other"
            counts[f"{method} from {mod}:{frame.f_code.co_name}" if mod != "other" else f"{method} from others"] += 1
            return orig(self, *a, **k)
        return f

    for m in originals:
        setattr(torch.Tensor, m, counting(m))
    try:
        t0 = time.perf_counter()
        euler(transformer, inp)
        total = time.perf_counter() - t0
    finally:
        for m, orig in originals.items():
            setattr(torch.Tensor, m, orig)
        for name in ENGINE_METHODS:
            engine.__dict__.pop(name, None)
    return {"total": total, "spent": dict(spent), "ncalls": dict(ncalls), "counts": dict(counts)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "profile.md"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    import cachedit

    from .run import load_bundled

    model, note = load_bundled()
    inp = bundled_inputs(model, [i % 10 for i in range(args.batch)], args.steps)
    base = copy.deepcopy(model.transformer)
    ours = copy.deepcopy(model.transformer)
    never = copy.deepcopy(model.transformer)
    cachedit.enable_cache(ours)
    cachedit.enable_cache(never, cache_config=cachedit.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0,
                                                                     residual_diff_threshold=1e-9, max_warmup_steps=0))
    for m in (base, ours, never):
        euler(m, inp)

    # wall: interleaved
    t_base, t_ours, t_never = [], [], []
    for _ in range(args.repeats):
        t_base.append(timed(lambda: euler(base, inp))[0])
        t_ours.append(timed(lambda: euler(ours, inp))[0])
        t_base.append(timed(lambda: euler(base, inp))[0])
        t_never.append(timed(lambda: euler(never, inp))[0])
    tb = median(t_base)

    cachedit.reset_cache_stats(ours)
    euler(ours, inp)
    summary = cachedit.summary(ours, logging=False)[0]
    lines = [f"# Profile of a cached generation (bundled model, {args.steps} steps, batch {args.batch}, CFG batched, "
             f"{args.threads} thread(s))", "", "Machine:", machine_block(machine_info(args.threads)), f"- model: {note}", "",
             f"Wall (median of {args.repeats} interleaved): uncached {tb:.3f} s, default {median(t_ours):.3f} s "
             f"({tb / median(t_ours):.2f}x, {summary.accumulated_cached_steps} of {args.steps} steps reused), "
             f"never-reuse {median(t_never):.3f} s ({100 * (median(t_never) / tb - 1):+.1f}% vs uncached).", "",
             "## Time inside the engine's entry points (perf_counter around each call; includes the torch ops they run: "
             "probe subtraction, the decision's reduction + .item(), residual subtraction, TaylorSeer update/predict)", ""]
    for label, model_ in (("default (adaptive + TaylorSeer)", ours), ("never-reuse", never)):
        r = instrumented_run(model_, inp)
        eng = sum(r["spent"].values())
        lines += [f"### {label}: run {r['total']:.3f} s, engine {1000 * eng:.1f} ms = {1000 * eng / args.steps:.2f} ms/step "
                  f"({100 * eng / r['total']:.2f}% of the run)", "", "| entry point | calls | total ms | us/call |", "|---|---|---|---|"]
        for name in ENGINE_METHODS:
            if r["ncalls"].get(name):
                lines.append(f"| {name} | {r['ncalls'][name]} | {1000 * r['spent'][name]:.2f} | "
                             f"{1e6 * r['spent'][name] / r['ncalls'][name]:.0f} |")
        lines += ["", "Tensor.item / Tensor.clone calls in the run: "
                  + ", ".join(f"{k}: {v}" for k, v in sorted(r["counts"].items())), ""]
    prof = cProfile.Profile()
    prof.enable()
    euler(ours, inp)
    prof.disable()
    stats = pstats.Stats(prof)
    a = attribute(stats)
    lines += ["## cProfile of the default run: CacheDit functions by self time", "",
              "(functions behind `torch.compiler.disable` run inside dynamo's wrapper and may be hidden from cProfile; "
              "the table above is authoritative for totals)", "", "| function | calls | self ms |", "|---|---|---|"]
    for name, tt in sorted(a["self"].items(), key=lambda kv: -kv[1])[:12]:
        lines.append(f"| {name} | {a['calls'][name]} | {1000 * tt:.2f} |")
    dyn = [(k, v) for k, v in stats.stats.items() if k[2] == "_fn" and "eval_frame" in k[0]]  # type: ignore[attr-defined]
    for k, v in dyn:
        lines += ["", f"dynamo `torch.compiler.disable` wrapper (`_fn`): {v[1]} calls, {1000 * v[3]:.1f} ms cumulative "
                  f"({1e6 * v[3] / max(1, v[1]):.0f} us/call including the wrapped engine function)"]
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)
    cachedit.disable_cache(ours)
    cachedit.disable_cache(never)
    return 0


if __name__ == "__main__":
    sys.exit(main())
