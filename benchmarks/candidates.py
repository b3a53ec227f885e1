"""Screen candidate defaults before a full robustness run: each candidate on every bundled model x
the scenarios where defaults fail first (or all twelve), quality and counted compute only.

    python -m benchmarks.candidates "F1 W3 MC3 TS1 E0.15" "F0 W2 MCx0.15 TS2 E0.2" --jobs 3
    python -m benchmarks.candidates "F0 W2 MC6 TS2 E0.25" --arch flux --all --out /tmp/c

A candidate is a string of tokens: `F<n>` Fn_compute_blocks, `W<n>` max_warmup_steps, `MC<n>` max
continuous cached steps or `MCx<f>` that share of the scenario's steps (at least 1: what a
step-relative cap would give), `TS<n>` TaylorSeer order (0: off), and either `E<f>` (error feedback
with that budget) or `R<f>` (cache-dit's fixed threshold). Bn is 0. Each (model, scenario) runs
through `benchmarks.defaults.run_scenario` (the same seeds, references and counters as the
robustness table), so a candidate that passes here is then checked there. Writes
`<out>/candidates.md` (default: benchmarks/results/) and prints it. About 5 min per model for three
candidates on the hard scenarios (2 cores, one process per model).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from . import defaults as DF
from .common import machine_block, machine_info

# The scenarios where the defaults tried so far fell below 40 dB first (results/defaults.md and
# this script's own runs): batch 1 with separate CFG, guidance 6, few and uneven steps.
HARD = ("28 steps, batch 1, CFG separate", "28 steps, batch 8, CFG batched", "CFG 6 (28 steps, batch 8)",
        "heun 14 steps (27 calls, batch 8)", "12 Euler steps (batch 8)", "sigma_shift 3, 20 steps (batch 8)")
_TOKEN = re.compile(r"^(F|W|MCx|MC|TS|E|R)([0-9.]+)$")


@dataclass(frozen=True)
class Candidate:
    """One setting to screen, parsed from its tokens (see the module docstring)."""

    spec: str
    fn: int = 1
    warmup: int = 3
    cap: Optional[int] = 3  # max continuous cached steps (None: `cap_share` of the steps)
    cap_share: Optional[float] = None
    taylorseer: int = 1
    budget: Optional[float] = 0.15  # error feedback's budget (None: fixed `threshold`)
    threshold: float = 0.24

    @classmethod
    def parse(cls, spec: str) -> "Candidate":
        fields: Dict[str, Any] = {}
        for token in spec.split():
            m = _TOKEN.match(token)
            if m is None:
                raise ValueError(f"candidate={spec!r}: token {token!r} is not one of F<n>, W<n>, MC<n>, MCx<f>, "
                                 f"TS<n>, E<f>, R<f>")
            key, value = m.group(1), m.group(2)
            if key == "MCx":
                fields.update(cap=None, cap_share=float(value))
            elif key == "E":
                fields["budget"] = float(value)
            elif key == "R":
                fields.update(budget=None, threshold=float(value))
            else:
                fields[{"F": "fn", "W": "warmup", "MC": "cap", "TS": "taylorseer"}[key]] = int(value)
        return cls(spec=" ".join(spec.split()), **fields)

    def cap_for(self, steps: int) -> int:
        return self.cap if self.cap is not None else max(1, round(self.cap_share * steps))

    def enable_kwargs(self, steps: int) -> Callable[[], Dict[str, Any]]:
        """The enable_cache kwargs of this candidate in a run of `steps` steps."""
        import cachedit

        def make() -> Dict[str, Any]:
            out: Dict[str, Any] = dict(
                cache_config=cachedit.DBCacheConfig(Fn_compute_blocks=self.fn, Bn_compute_blocks=0,
                                                    residual_diff_threshold=self.threshold,
                                                    max_warmup_steps=self.warmup,
                                                    max_continuous_cached_steps=self.cap_for(steps)),
                calibrator_config=cachedit.TaylorSeerCalibratorConfig(taylorseer_order=self.taylorseer)
                if self.taylorseer > 0 else None)
            if self.budget is not None:
                out["error_budget"] = self.budget
            return out
        return make


def scenarios(all_scenarios: bool = False, quick: bool = False) -> List[DF.Scenario]:
    if quick:
        return DF.scenarios(quick=True)
    return [sc for sc in DF.scenarios() if all_scenarios or sc.name in HARD]


def _run_arch(arch: str, specs: Sequence[str], all_scenarios: bool, quick: bool,
              model: Any = None) -> List[Dict[str, Any]]:
    from cachedit.bundled import digits as D

    torch.set_num_threads(1)
    model = model or D.load_model(arch)
    cands = [Candidate.parse(s) for s in specs]
    out = []
    for sc in scenarios(all_scenarios, quick):
        settings = [(c.spec, c.enable_kwargs(sc.steps), False) for c in cands]
        res = DF.run_scenario(model, sc, sc.seeds(*((2, 2) if quick else (3, 6))), settings=settings)
        out.append(res)
    return out


def run(archs: Sequence[str], specs: Sequence[str], all_scenarios: bool = False, quick: bool = False,
        jobs: int = 1, models: Optional[Dict[str, Any]] = None) -> Dict[str, List[Dict[str, Any]]]:
    """Every candidate on every model x scenario; one process per model when jobs > 1."""
    for spec in specs:
        Candidate.parse(spec)  # a typo fails here, not an hour later
    if jobs <= 1 or models:
        return {a: _run_arch(a, specs, all_scenarios, quick, (models or {}).get(a)) for a in archs}
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {a: pool.submit(_run_arch, a, specs, all_scenarios, quick) for a in archs}
        return {a: f.result() for a, f in futures.items()}


def markdown(results: Dict[str, List[Dict[str, Any]]], specs: Sequence[str], info: Dict[str, str],
             elapsed: float) -> str:
    names = [Candidate.parse(s).spec for s in specs]
    lines = ["# Candidate defaults: quality and block compute per model x scenario", "",
             "Screening before the robustness table (`benchmarks/defaults.py`): PSNR pooled over every image of every "
             "seed against the uncached images, the worst seed, counted block compute vs uncached, digit accuracy. "
             "Not timed. Tokens: F Fn blocks, W warmup, MC max reused in a row (MCx: share of the steps), TS TaylorSeer "
             "order, E error budget (feedback) or R fixed threshold.", "",
             "| candidate | cells below 40 dB or accuracy | worst pooled PSNR | worst seed PSNR | mean blocks computed |",
             "|---|---|---|---|---|"]
    for name in names:
        cells = [(res, r) for rs in results.values() for res in rs for r in res["rows"] if r["setting"] == name]
        bad = [f"{a} {res['scenario'].name}" for a, rs in results.items() for res in rs for r in res["rows"]
               if r["setting"] == name and not DF.ok_quality(r, res["acc_ref"])]
        worst = min(r["psnr"] for _, r in cells)
        worst_seed = min(r["psnr_min"] for _, r in cells)
        mean = sum(r["compute"] for _, r in cells) / len(cells)
        lines.append(f"| {name} | {len(bad)}/{len(cells)}" + (f" ({'; '.join(bad)})" if bad else "") +
                     f" | {DF.fmt_db(worst)} | {DF.fmt_db(worst_seed)} | {100 * mean:.1f}% |")
    lines += ["", "Machine:", machine_block(info), f"- elapsed: {elapsed / 60:.0f} min", ""]
    for arch, rs in results.items():
        lines += [f"### {arch}", "", "PSNR dB pooled (worst seed), blocks computed; `!` below 40 dB or accuracy.", "",
                  "| scenario | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for res in rs:
            by = {r["setting"]: r for r in res["rows"]}
            cells = [f"{DF.fmt_db(by[n]['psnr'])} ({DF.fmt_db(by[n]['psnr_min'])}), {100 * by[n]['compute']:.0f}%"
                     + ("" if DF.ok_quality(by[n], res["acc_ref"]) else " !") for n in names]
            lines.append(f"| {res['scenario'].name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description="screen candidate defaults -> candidates.md")
    p.add_argument("candidates", nargs="+", help='e.g. "F1 W3 MC3 TS1 E0.15"')
    p.add_argument("--arch", nargs="+", default=["flux", "wan", "qwen"])
    p.add_argument("--all", action="store_true", help="all twelve scenarios (default: the six hard ones)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--jobs", type=int, default=3)
    p.add_argument("--out", default=DF.RESULTS_DIR)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    info = machine_info(1)
    info["code"] = os.environ.get("BENCH_CODE", "working tree")
    results = run(args.arch, args.candidates, args.all, args.quick, args.jobs)
    text = markdown(results, args.candidates, info, time.perf_counter() - t0)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "candidates.md")
    with open(path, "w") as f:
        f.write(text)
    print(text)
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
