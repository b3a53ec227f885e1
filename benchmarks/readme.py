"""Regenerate the README's performance section from the tables in benchmarks/results/.

    python -m benchmarks.readme            # rewrites README.md between <!-- bench:start --> and <!-- bench:end -->

`python -m benchmarks.run` calls this after writing its tables, so the README always shows the
numbers of the last full run (and the machine they ran on); nothing in the section is typed by hand.
"""

from __future__ import annotations

import glob
import math
import os
import re
import sys
from typing import List, Optional, Sequence

from .bundled_bench import BundledResult, Row
from .report import QUALITY_DB, result_from_markdown, summary
from .rows import series_names

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(ROOT, "benchmarks", "results")
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
ARCH_NAMES = {"flux": "Flux layout (12 blocks)", "wan": "Wan layout (8 blocks)", "qwen": "Qwen-Image layout (6 blocks)"}


def _machine_line(text: str) -> str:
    """'AMD EPYC, 2 cores, torch 2.13.0+cpu, 1 thread(s), 2026-11-26' from a results file's Machine block."""
    get = lambda key: (re.search(rf"^- {key}: (.*)$", text, re.M) or [None, "?"])[1]  # noqa: E731
    return f"{get('cpu')}, {get('cores')} cores, torch {get('torch')}, {get('torch threads')} thread(s), {get('date')}"


def _short(name: str) -> str:
    name = re.sub(r"^(ours|cache-dit) ", "", name)
    return name.replace("default: ", "").replace(" (its default)", "")


def _cell(r: Optional[Row], with_name: bool = True) -> str:
    if r is None:
        return "none"
    best = "" if math.isnan(r.best_of) else f" ({r.best_of:.2f}x)"
    head = f"`{_short(r.name)}` " if with_name else ""
    return f"{head}{r.speedup:.2f}x{best}, {r.psnr:.1f} dB, {100 * r.compute:.0f}%"


def _ratio(s: dict, key: str) -> str:
    if key not in s:
        return "n/a"
    return f"{s[key]:.2f}x ({s[key + '_bestof']:.2f}x)"


def summary_table(results: Sequence[BundledResult]) -> List[str]:
    lines = ["| model, steps | CacheDit default | CacheDit best at >= 40 dB | best peer at >= 40 dB (tuned) | "
             "default / peer | best / peer |", "|---|---|---|---|---|---|"]
    for res in results:
        s = summary(res)
        lines.append(f"| {res.arch} {res.steps} | {_cell(s['default'], False)} | {_cell(s['ours_best'])} | "
                     f"{_cell(s['best_peer'])} | {_ratio(s, 'default_vs_peer')} | {_ratio(s, 'ours_vs_peer')} |")
    return lines


def _defaults_headline(path: str) -> List[str]:
    """The verdict line and the worst-case table of defaults.md."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = f.read().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("New default")), None)
    if start is None:
        return []
    end = next((i for i in range(start + 2, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


def _table_from(path: str) -> List[str]:
    """The first Markdown table in a file, plus its title line."""
    with open(path) as f:
        lines = f.read().splitlines()
    title = lines[0].lstrip("# ").strip()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return [f"*{title}*", ""] + lines[start:end]


def _head_to_head_summaries(results_dir: str) -> List[str]:
    """The summary lines of each results/head_to_head_<arch>_<steps>.md, under a bold model name."""
    out: List[str] = []
    for arch in ARCH_NAMES:
        for path in sorted(glob.glob(os.path.join(results_dir, f"head_to_head_{arch}_*.md"))):
            with open(path) as f:
                lines = f.read().splitlines()
            start = next((i for i, line in enumerate(lines) if line.startswith("### Summary")), None)
            if start is None:
                continue
            steps = re.search(r"_(\d+)\.md$", path).group(1)
            rounds = re.search(r"one group: (\d+) rounds", "\n".join(lines))
            out += ["", f"**{ARCH_NAMES[arch]}, {steps} steps{f', {rounds.group(1)} rounds' if rounds else ''}** "
                    f"([`{os.path.basename(path)}`](benchmarks/results/{os.path.basename(path)})):", ""]
            out += _section_items(lines, start)
            checked = next((i for i, line in enumerate(lines) if line.startswith("### Validated")), None)
            if checked is not None:  # the same summary among the rows that hold on held-out seeds too
                out += ["- " + lines[checked][4:].replace("the rows", "among the rows", 1) + ":"]
                out += ["  " + line for line in _section_items(lines, checked)]
    return out


def _section_items(lines: List[str], start: int) -> List[str]:
    """The '- ' lines of the section whose header is lines[start], up to the next header."""
    items = []
    for line in lines[start + 1:]:
        if line.startswith("### "):
            break
        if line.startswith("- "):
            items.append(line)
    return items


def _result_paths(results_dir: str) -> List[str]:
    def key(p: str):
        m = re.match(r"results_(?:(\w+?)_)?(\d+)\.md$", os.path.basename(p))
        arch = m.group(1) or "flux"
        return (list(ARCH_NAMES).index(arch) if arch in ARCH_NAMES else 9, int(m.group(2)))

    return sorted((p for p in glob.glob(os.path.join(results_dir, "results_*.md"))
                   if re.match(r"results_(\w+_)?\d+\.md$", os.path.basename(p))), key=key)


def section(results_dir: str = RESULTS_DIR) -> str:
    paths = _result_paths(results_dir)
    links = ", ".join(f"[`{os.path.basename(p)}`](benchmarks/results/{os.path.basename(p)})" for p in paths)
    out = ["`make bench` (`python -m benchmarks.run`) runs, per bundled model (the same digits DiT trained in three "
           "diffusers layouts), in one process on the same inputs (CFG 3 batched, Euler, 28 and 50 steps; the tables "
           "below are the newest of each model, 28 steps): uncached; "
           "CacheDit's default (error feedback, balanced), its quality presets, the old fixed-threshold default and a "
           "tuned sweep (Fn=0, error budgets); the real cache-dit 1.5.3 (its default, F8B0/F1B0 threshold sweeps, its "
           "TaylorSeer, steps masks, F1B0 tuned over threshold/warmup/cap/order); diffusers 0.42's caches (First Block "
           "Cache, TaylorSeer, MagCache, FasterCache, PAB, SeaCache, each tuned over its knobs). Tuned = a quality-only grid per "
           "family, the settings with the least block compute at >= 40 dB then timed. Quality: PSNR pooled over 3 seeds "
           "x 8 images against the uncached images of the same seed, with unchanged digit accuracy. This section is "
           f"written by `python -m benchmarks.readme` from the tables: {links}."]
    if paths:
        with open(paths[0]) as f:
            out += ["", f"Machine: {_machine_line(f.read())}. Cells: wall speedup = median of interleaved (uncached, "
                    "cached) pairs on one seed (best-of = fastest uncached / fastest cached run, robust to other jobs), "
                    "pooled PSNR, blocks computed. Ratios: median (best-of) wall speedup over the fastest peer setting "
                    f"at >= {QUALITY_DB:g} dB (target for our best: >= 1.2x)."]
        results = [result_from_markdown(p, series_names()) for p in paths]
        out += [""] + summary_table(results)
    duels = _head_to_head_summaries(results_dir)
    if duels:
        out += ["", "Head to head (`python -m benchmarks.head_to_head --arch <model>`): each family's contenders of the "
                "table above (its least-compute rows at >= 40 dB and its fastest) timed again alone, in more interleaved "
                "rounds than the table's 2, so the ratios are not one lucky row's:"]
        out += duels
    defaults = _defaults_headline(os.path.join(results_dir, "defaults.md"))
    if defaults:
        out += ["", "Default robustness ([`defaults.md`](benchmarks/results/defaults.md): every model x 28/50 steps x "
                "batch 1/8 x batched/separate CFG, plus CFG 6, Heun, 12 steps, shifted schedule; quality only):", ""]
        out += defaults
    scaling = [os.path.join(results_dir, "scaling_cpu.md")] + sorted(glob.glob(os.path.join(results_dir, "gpu_*.md")))
    scaling = [p for p in scaling if os.path.exists(p) and "gpu_check" not in p]
    if scaling:
        out += ["", "Overhead and scaling (compute-heavy FLUX-architecture configuration, random weights): never-reuse "
                "overhead, and a forced fixed schedule's measured speedup against the ideal implied by the blocks it "
                "computed."]
        for p in scaling:
            out += [""] + _table_from(p)
        out += ["", "The never-reuse cost is per step, not per block: the decision's one host sync plus the probe and "
                "residual bookkeeping. Its share falls as tokens grow and as the model gets deeper (these models have "
                "6-12 blocks; FLUX.1 has 57). Host syncs per run: a fixed schedule adds none to the sampler's own, "
                "adaptive adds one per step (the decision scalar)."]
    charts = [(a, "pareto.png" if a == "flux" else f"pareto_{a}.png") for a in ARCH_NAMES]
    for arch, name in charts:
        if os.path.exists(os.path.join(results_dir, name)):
            out += ["", f"![{ARCH_NAMES[arch]}: wall speedup vs pooled PSNR](benchmarks/results/{name})"]
    return "\n".join(out)


def update_readme(readme: str = os.path.join(ROOT, "README.md"), results_dir: str = RESULTS_DIR) -> bool:
    """Replace the text between the bench markers; returns whether the file changed."""
    with open(readme) as f:
        text = f.read()
    if START not in text or END not in text:
        raise ValueError(f"{readme} has no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{section(results_dir)}\n{END}{tail}"
    if new != text:
        with open(readme, "w") as f:
            f.write(new)
    return new != text


def main(argv: Optional[Sequence[str]] = None) -> int:
    changed = update_readme()
    print("README.md performance section " + ("updated" if changed else "unchanged"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
