"""Tables, the per-model summary, and reading a results table back (chart redraw, README)."""

from __future__ import annotations

import math
import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .bundled_bench import BundledResult, Row
from .common import fmt_bytes, machine_block
from .rows import QUALITY_DB, ok_quality, peer_family

TABLE_COLUMNS = ["method", "family", "wall speedup", "(min-max)", "best-of", "s/run", "block compute", "attn runs",
                 "cached steps/seed", "PSNR dB", "min seed PSNR", "SSIM", "digit acc", "cache mem", "det/restored"]
TUNING_COLUMNS = ["setting", "family", "block compute", "PSNR dB", "min seed PSNR", "digit acc", "timed"]


def _f(x: Optional[float], fmt: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return format(x, fmt)


def _steps(r: Row) -> str:
    return "n/a" if r.cached_steps is None else "/".join(str(c) for c in r.cached_steps)


def row_cells(r: Row) -> List[str]:
    if r.error:
        return [r.name, r.family, "failed"] + [""] * (len(TABLE_COLUMNS) - 4) + [r.error.replace("|", "/")]
    flags = ("ok" if r.deterministic else ("n/a" if r.deterministic is None else "varies")) + "/" + \
        ("ok" if r.restored else "NO")
    if r.notes:
        flags += " (" + "; ".join(r.notes) + ")"
    return [r.name, r.family, _f(r.speedup, ".2f") + "x", f"{_f(r.speedup_lo, '.2f')}-{_f(r.speedup_hi, '.2f')}",
            _f(r.best_of, ".2f") + "x", _f(r.time_s, ".2f"), _f(100 * r.compute, ".1f") + "%", _f(100 * r.attn, ".1f") + "%",
            _steps(r), _f(r.psnr, ".2f"), _f(r.psnr_min, ".2f"), _f(r.ssim, ".4f"), _f(r.acc, ".2f"),
            fmt_bytes(r.cache_bytes), flags]


def markdown_table(rows: Iterable[Row]) -> str:
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "|".join("---" for _ in TABLE_COLUMNS) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(row_cells(r)) + " |")
    return "\n".join(lines)


def tuning_table(res: BundledResult, picked: Sequence[str]) -> str:
    lines = ["| " + " | ".join(TUNING_COLUMNS) + " |", "|" + "|".join("---" for _ in TUNING_COLUMNS) + "|"]
    rows = [r for r in res.rows if r.family != "uncached"]
    rows.sort(key=lambda r: (r.series, r.error is not None, r.compute if not r.error else 9.0))
    for r in rows:
        if r.error:
            lines.append(f"| {r.name} | {r.series} | failed | | | | {r.error.replace('|', '/')} |")
            continue
        lines.append(f"| {r.name} | {r.series} | {100 * r.compute:.1f}% | {_f(r.psnr, '.2f')} | {_f(r.psnr_min, '.2f')} | "
                     f"{r.acc:.2f} | {'yes' if r.name in picked else ''} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Summary: default, our best, each peer family's best, the ratios
# ----------------------------------------------------------------------------------------------
def _rank(r: Row) -> Tuple[float, float, str]:
    """Fastest first, as printed (2 decimals); ties go to the higher PSNR, then to the name, never to row order."""
    return (round(r.speedup, 2), round(r.psnr, 2), r.name)


def best_at_quality(rows: Sequence[Row], family: str, acc_ref: float, db: float = QUALITY_DB) -> Optional[Row]:
    cands = [r for r in rows if r.family == family and ok_quality(r, acc_ref, db) and not math.isnan(r.speedup)]
    return max(cands, key=_rank) if cands else None


def peer_bests(res: BundledResult, db: float = QUALITY_DB) -> Dict[str, Row]:
    """Fastest timed row of each peer family (cache-dit; each diffusers cache) at >= db and unchanged accuracy."""
    out: Dict[str, Row] = {}
    for r in res.rows:
        if r.family in ("ours", "uncached") or not ok_quality(r, res.acc_ref, db) or math.isnan(r.speedup):
            continue
        fam = peer_family(r)
        if fam not in out or _rank(r) > _rank(out[fam]):
            out[fam] = r
    return out


def default_row(rows: Sequence[Row]) -> Optional[Row]:
    return next((r for r in rows if r.name.startswith("ours default")), None)


def summary(res: BundledResult) -> Dict[str, object]:
    """The summary numbers of one table: default, our best, best peer, the ratios (median and best-of)."""
    peers = peer_bests(res)
    best_peer = max(peers.values(), key=_rank) if peers else None
    d = default_row(res.rows)
    ours = best_at_quality(res.rows, "ours", res.acc_ref)
    out: Dict[str, object] = {"default": d, "ours_best": ours, "peers": peers, "best_peer": best_peer}
    if best_peer is not None:
        for key, r in (("default_vs_peer", d), ("ours_vs_peer", ours)):
            if r is not None and not math.isnan(r.speedup):
                out[key] = r.speedup / best_peer.speedup
                out[key + "_bestof"] = r.best_of / best_peer.best_of
    return out


def _desc(r: Optional[Row]) -> str:
    if r is None:
        return "none"
    return (f"{r.name}: {r.speedup:.2f}x (best-of {_f(r.best_of, '.2f')}x), {_f(r.psnr, '.1f')} dB pooled "
            f"(min seed {_f(r.psnr_min, '.1f')}), compute {100 * r.compute:.0f}%, acc {r.acc:.2f}")


def summary_section(res: BundledResult) -> str:
    s = summary(res)
    lines = [f"### Summary: {res.arch} model, {res.steps} steps (quality = PSNR pooled over {len(res.seeds)} seeds x "
             f"{res.batch} images, >= {QUALITY_DB:g} dB with unchanged digit accuracy)",
             f"- our default: {_desc(s['default']).replace('ours default: ', '', 1)}" + ("" if s["default"] is None or ok_quality(s["default"], res.acc_ref)
                                                         else f" (below {QUALITY_DB:g} dB or accuracy)"),
             f"- our best at >= {QUALITY_DB:g} dB: {_desc(s['ours_best'])}"]
    for fam, r in sorted(s["peers"].items(), key=lambda kv: -kv[1].speedup):
        lines.append(f"- best {fam} at >= {QUALITY_DB:g} dB: {_desc(r)}")
    missing = sorted({peer_family(r) for r in res.rows if r.family not in ("ours", "uncached")} - set(s["peers"]))
    if missing:
        lines.append(f"- no setting at >= {QUALITY_DB:g} dB: " + ", ".join(missing))
    if "default_vs_peer" in s:
        lines.append(f"- default / best peer: {s['default_vs_peer']:.2f}x (best-of {s['default_vs_peer_bestof']:.2f}x)")
    if "ours_vs_peer" in s:
        lines.append(f"- our best / best peer: {s['ours_vs_peer']:.2f}x (best-of {s['ours_vs_peer_bestof']:.2f}x; "
                     "target >= 1.2x)")
    return "\n".join(lines)


def domination(rows: Sequence[Row], ours: str = "ours", other: str = "cache-dit",
               key: str = "speedup") -> List[Tuple[Row, Optional[Row]]]:
    """For each `other` row: the highest-PSNR `ours` row at least as fast (by `key`) with at least the same PSNR."""
    out = []
    mine = [r for r in rows if r.family == ours and not r.error]
    for c in rows:
        if c.family != other or c.error:
            continue
        dom = [o for o in mine if getattr(o, key) >= getattr(c, key) and o.psnr >= c.psnr]
        out.append((c, max(dom, key=lambda o: o.psnr) if dom else None))
    return out


def domination_line(rows: Sequence[Row]) -> str:
    dom = domination(rows)
    und = [c for c, o in dom if o is None]
    return (f"- cache-dit rows dominated by one of ours (>= wall speedup and >= pooled PSNR): {len(dom) - len(und)}/{len(dom)}"
            + ("" if not und else "; not dominated: " + ", ".join(f"{c.name} ({c.speedup:.2f}x, {_f(c.psnr, '.1f')} dB)"
                                                               for c in und)))


def results_markdown(res: BundledResult, info: Dict[str, str], tuning: Optional[BundledResult] = None,
                     picked: Sequence[str] = (), extra: str = "") -> str:
    base = res.baseline_times
    spread = f"{min(base):.2f}-{max(base):.2f}" if base else "n/a"
    head = [f"# Bundled {res.arch} model, {res.steps} Euler steps, batch {res.batch} (CFG 3 batched: {2 * res.batch} rows "
            f"per call), seeds {', '.join(str(s) for s in res.seeds)}",
            "", "Machine:", machine_block(info), "",
            f"Uncached baseline (first seed): median {_f(res.rows[0].time_s, '.2f')} s/run over {len(base)} interleaved "
            f"runs (range {spread} s); digit accuracy {res.acc_ref:.2f} over all seeds.",
            "",
            "Columns: PSNR dB = pooled over every image of every seed (mean MSE against the uncached images of the "
            "same seed, then PSNR); min seed PSNR = the worst seed's; digit acc over all images; cached steps/seed = what "
            "the cache reports per generation (ours: summary, cache-dit: its summary), seeds in order, each row enabled "
            "once (ours: error feedback's calibration carries over from one generation to the next, as for a user); "
            "wall speedup = median over rounds of (mean of the uncached runs just before and after) / (this run), on the "
            "first seed; best-of = fastest uncached run of the row's timing group / fastest run of the row (robust to "
            "interference from other jobs); block compute = block MACs (linears + attention core) executed vs uncached "
            "over all seeds, counted with forward pre-hooks (the same counter for every cache); attn runs = attention "
            "executions vs uncached; cache mem = peak bytes the cache holds (ours: get_global_stats cache_bytes; others: "
            "tensors reachable from their state objects, after every step); det = every timed run bit-identical to the "
            "quality run of that seed (varies: with calibration carried over, later generations decide differently), "
            "restored = after disable a run is bit-identical to the pristine model.", ""]
    if res.info.get("load_end"):
        head += [f"Load average at the end of this table: {res.info['load_end']}; this table took "
                 f"{res.info.get('elapsed_s', 0):.0f} s (tuning stage included).", ""]
    if res.info.get("sampler_matches_generate") is not None:
        head += [f"Benchmark sampler bit-identical to `digits.generate`: {res.info['sampler_matches_generate']}.", ""]
    body = [markdown_table(res.rows), "", summary_section(res), domination_line(res.rows)]
    if res.info.get("magcache_ratios"):
        body += ["", "MagCache ratios (diffusers calibration mode, this model/schedule): "
                 + ", ".join(f"{x:.4f}" for x in res.info["magcache_ratios"])]
    if tuning is not None:
        body += ["", f"### Tuning stage (quality only, same seeds): {len(tuning.rows) - 1} settings",
                 "Per family, the settings with the least block compute at >= 40 dB pooled and unchanged accuracy were "
                 "timed above (timed = yes).", "", tuning_table(tuning, picked)]
    if extra:
        body += ["", extra]
    return "\n".join(head + body) + "\n"


def result_from_markdown(path: str, series_of: Optional[Dict[str, str]] = None) -> BundledResult:
    """Rebuild a BundledResult (enough for the chart, the summary and the README) from a results table."""
    with open(path) as f:
        text = f.read()
    m = re.search(r"Bundled (?:(\w+) )?model, (\d+) Euler steps, batch (\d+)", text)  # old tables: "Bundled model, "
    arch, steps, batch = m.group(1) or "flux", int(m.group(2)), int(m.group(3))
    seeds_m = re.search(r"seeds ([0-9, ]+)$", text.splitlines()[0])
    seeds = [int(x) for x in seeds_m.group(1).split(",")] if seeds_m else [0]
    acc = re.search(r"digit accuracy ([0-9]+(?:\.[0-9]+)?)", text)
    all_lines = text.splitlines()
    start = next(i for i, line in enumerate(all_lines) if line.startswith("| method | family |"))
    cols = [c.strip() for c in all_lines[start].strip("|").split("|")]
    rows: List[Row] = []
    for line in all_lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = dict(zip(cols, (c.strip() for c in line.strip("|").split("|"))))
        name, family = cells["method"], cells["family"]
        series = "ours default" if name.startswith("ours default") else (series_of or {}).get(name, family)
        r = Row(name, family, series)
        if cells["wall speedup"] == "failed":
            r.error = line.rsplit("|", 2)[-2].strip()
        else:
            num = lambda key: math.inf if cells.get(key) == "inf" else float(cells[key].rstrip("x%"))  # noqa: E731
            r.speedup = num("wall speedup")
            if cells.get("best-of", "n/ax") != "n/ax":
                r.best_of = num("best-of")
            r.psnr = num("PSNR dB")
            if cells.get("min seed PSNR", "n/a") != "n/a":
                r.psnr_min = num("min seed PSNR")
            r.compute = num("block compute") / 100
            if cells.get("digit acc", "n/a") != "n/a":
                r.acc = num("digit acc")
        rows.append(r)
    return BundledResult(steps=steps, batch=batch, rows=rows, baseline_times=[], info={}, arch=arch, seeds=seeds,
                         acc_ref=float(acc.group(1)) if acc else 1.0)
