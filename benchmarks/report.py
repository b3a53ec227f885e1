"""Tables, Pareto analysis and the chart (drawn with PIL: matplotlib is not a dependency)."""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .bundled_bench import BundledResult, Row
from .common import fmt_bytes, machine_block

TABLE_COLUMNS = ["method", "family", "wall speedup", "(min-max)", "best-of", "s/run", "block compute", "attn runs",
                 "cached steps", "PSNR dB", "SSIM", "digit acc", "cache mem", "det/restored"]
QUALITY_DB = 40.0


def _f(x: Optional[float], fmt: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return format(x, fmt)


def row_cells(r: Row) -> List[str]:
    if r.error:
        return [r.name, r.family, "failed", "", "", "", "", "", "", "", "", "", "", r.error.replace("|", "/")]
    flags = ("ok" if r.deterministic else "NO") + "/" + ("ok" if r.restored else "NO")
    if r.notes:
        flags += " (" + "; ".join(r.notes) + ")"
    return [r.name, r.family, _f(r.speedup, ".2f") + "x", f"{_f(r.speedup_lo, '.2f')}-{_f(r.speedup_hi, '.2f')}",
            _f(r.best_of, ".2f") + "x", _f(r.time_s, ".2f"), _f(100 * r.compute, ".1f") + "%", _f(100 * r.attn, ".1f") + "%",
            "n/a" if r.cached_steps is None else str(r.cached_steps), _f(r.psnr, ".2f"), _f(r.ssim, ".4f"),
            _f(r.acc, ".2f"), fmt_bytes(r.cache_bytes), flags]


def markdown_table(rows: Iterable[Row]) -> str:
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "|".join("---" for _ in TABLE_COLUMNS) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(row_cells(r)) + " |")
    return "\n".join(lines)


def ok_quality(r: Row, acc_ref: float, db: float = QUALITY_DB) -> bool:
    return not r.error and r.psnr >= db and r.acc >= acc_ref - 1e-9


def best_at_quality(rows: Sequence[Row], family: str, acc_ref: float, db: float = QUALITY_DB) -> Optional[Row]:
    cands = [r for r in rows if r.family == family and ok_quality(r, acc_ref, db) and not math.isnan(r.speedup)]
    return max(cands, key=lambda r: r.speedup) if cands else None


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


def pareto_front(rows: Sequence[Row]) -> List[Row]:
    pts = sorted([r for r in rows if not r.error and not math.isnan(r.speedup)], key=lambda r: (-r.speedup, -r.psnr))
    front, best_psnr = [], -math.inf
    for r in pts:
        if r.psnr > best_psnr:
            front.append(r)
            best_psnr = r.psnr
    return front


def targets_section(res: BundledResult) -> str:
    rows = res.rows
    lines = [f"### Targets at {res.steps} steps"]
    dom = domination(rows)
    undominated = [c for c, o in dom if o is None]
    lines.append(f"- cache-dit rows dominated by one of ours (>= wall speedup and >= PSNR): "
                 f"{len(dom) - len(undominated)}/{len(dom)}" + ("" if not undominated else
                 "; not dominated: " + ", ".join(f"{c.name} ({c.speedup:.2f}x, {c.psnr:.1f} dB)" for c in undominated)))
    dom_best = domination(rows, key="best_of")
    und_best = [c for c, o in dom_best if o is None]
    lines.append(f"- the same with best-of speedups: {len(dom_best) - len(und_best)}/{len(dom_best)}"
                 + ("" if not und_best else "; not dominated: " + ", ".join(c.name for c in und_best)))
    for c, o in dom:
        lines.append(f"  - {c.name} ({c.speedup:.2f}x, {_f(c.psnr, '.1f')} dB) <- "
                     + (f"{o.name} ({o.speedup:.2f}x, {_f(o.psnr, '.1f')} dB)" if o else "none"))
    bo = best_at_quality(rows, "ours", res.acc_ref)
    bc = best_at_quality(rows, "cache-dit", res.acc_ref)
    own = [r for r in rows if not (r.family == "cache-dit" and "our W/MC" in r.series)]
    bco = best_at_quality(own, "cache-dit", res.acc_ref)
    bd = best_at_quality(rows, "diffusers", res.acc_ref)
    for label, b in (("ours", bo), ("cache-dit (all rows)", bc), ("cache-dit (its own knob choices, without the rows "
                                                                   "given our W/MC knobs)", bco), ("diffusers", bd)):
        lines.append(f"- best {label} at >= {QUALITY_DB:g} dB and unchanged digit accuracy: "
                     + (f"{b.name}: {b.speedup:.2f}x ({_f(b.psnr, '.1f')} dB, compute {100 * b.compute:.0f}%)" if b else "none"))
    if bo and bc:
        lines.append(f"- ours / cache-dit best wall speedup at that quality: {bo.speedup / bc.speedup:.2f}x (target >= 1.2x)")
    if bo and bco and bco is not bc:
        lines.append(f"- ours / cache-dit (its own knob choices) best wall speedup at that quality: "
                     f"{bo.speedup / bco.speedup:.2f}x")
    if bo and bd:
        lines.append(f"- ours / diffusers best wall speedup at that quality: {bo.speedup / bd.speedup:.2f}x")
    return "\n".join(lines)


def results_markdown(res: BundledResult, info: Dict[str, str], extra: str = "") -> str:
    base = res.baseline_times
    spread = f"{min(base):.2f}-{max(base):.2f}" if base else "n/a"
    head = [f"# Bundled model, {res.steps} Euler steps, batch {res.batch} (CFG 3 batched: {2 * res.batch} rows per call)",
            "", "Machine:", machine_block(info), "",
            f"Uncached baseline: median {_f(res.rows[0].time_s, '.2f')} s/run over {len(base)} interleaved runs "
            f"(range {spread} s); digit accuracy {res.acc_ref:.2f}.",
            "",
            "Columns: wall speedup = median over rounds of (mean of the uncached runs just before and after) / "
            "(this run); best-of = fastest uncached run of the row's timing group / fastest run of the row (a "
            "check that is robust to interference from other jobs); block compute = block MACs (linears + attention core) actually executed vs uncached, "
            "counted with forward pre-hooks (the same counter for every cache); attn runs = attention executions "
            "vs uncached; cached steps = what the cache itself reports (ours: summary, cache-dit: its summary); "
            "cache mem = peak bytes the cache holds (ours: get_global_stats cache_bytes; others: tensors reachable "
            "from their state objects, measured after every step); det = every timed run bit-identical to the "
            "first (no state leaks between generations), restored = after disable a run is bit-identical to the "
            "pristine model.", ""]
    if res.info.get("load_end"):
        head.append(f"Load average at the end of this table: {res.info['load_end']}; this table took "
                    f"{res.info.get('elapsed_s', 0):.0f} s.")
        head.append("")
    if res.info.get("sampler_matches_generate") is not None:
        head.append(f"Benchmark sampler bit-identical to `digits.generate`: {res.info['sampler_matches_generate']}.")
        head.append("")
    body = [markdown_table(res.rows), "", targets_section(res)]
    if res.info.get("magcache_ratios"):
        body += ["", "MagCache ratios (diffusers calibration mode, this model/schedule): "
                 + ", ".join(f"{x:.4f}" for x in res.info["magcache_ratios"])]
    if extra:
        body += ["", extra]
    return "\n".join(head + body) + "\n"


# ----------------------------------------------------------------------------------------------
# Chart (PIL)
# ----------------------------------------------------------------------------------------------
PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (0, 0, 128), (128, 0, 0),
           (0, 128, 128), (255, 0, 255), (90, 90, 0), (0, 200, 120)]


def _series_style(series: str, idx: int) -> Tuple[Tuple[int, int, int], str]:
    shape = "circle" if series.startswith("ours") else ("square" if series.startswith("cache-dit") else "triangle")
    return PALETTE[idx % len(PALETTE)], shape


def pareto_chart(results: Sequence[BundledResult], path: str, psnr_cap: float = 70.0) -> None:
    """Wall speedup (x) vs PSNR (y), one panel per step count, one series per method family."""
    from PIL import Image, ImageDraw, ImageFont

    panel_w, panel_h, legend_w, pad = 620, 460, 300, 60
    width = len(results) * panel_w + legend_w
    height = panel_h + 40
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    series_all: List[str] = []
    for res in results:
        for r in res.rows:
            if r.series not in series_all and r.family != "uncached":
                series_all.append(r.series)
    styles = {s: _series_style(s, i) for i, s in enumerate(series_all)}

    for p, res in enumerate(results):
        ox = p * panel_w
        rows = [r for r in res.rows if not r.error and not math.isnan(r.speedup) and r.family != "uncached"]
        xs = [r.speedup for r in rows] + [1.0]
        x_lo, x_hi = 0.9, max(xs) * 1.05
        y_lo, y_hi = 10.0, psnr_cap
        x0, y0, x1, y1 = ox + pad, 30, ox + panel_w - 20, panel_h - 30

        def X(v: float) -> float:
            return x0 + (v - x_lo) / (x_hi - x_lo) * (x1 - x0)

        def Y(v: float) -> float:
            v = min(max(v, y_lo), y_hi)
            return y1 - (v - y_lo) / (y_hi - y_lo) * (y1 - y0)

        d.rectangle([x0, y0, x1, y1], outline="black")
        d.text((x0 + 90, 6), f"{res.steps} steps: wall speedup vs PSNR (higher-right is better)", fill="black", font=font)
        tick = 0.25 if x_hi - x_lo < 3 else 0.5
        v = math.ceil(x_lo / tick) * tick
        while v <= x_hi:
            d.line([X(v), y1, X(v), y1 + 4], fill="black")
            d.line([X(v), y0, X(v), y1], fill=(235, 235, 235))
            d.text((X(v) - 10, y1 + 6), f"{v:.2f}", fill="black", font=font)
            v += tick
        for v in range(int(y_lo), int(y_hi) + 1, 10):
            d.line([x0 - 4, Y(v), x0, Y(v)], fill="black")
            d.line([x0, Y(v), x1, Y(v)], fill=(235, 235, 235))
            d.text((x0 - 28, Y(v) - 5), f"{v}", fill="black", font=font)
        d.line([x0, Y(QUALITY_DB), x1, Y(QUALITY_DB)], fill=(255, 160, 160))
        d.text((x1 - 60, Y(QUALITY_DB) - 12), f"{QUALITY_DB:g} dB", fill=(200, 80, 80), font=font)
        d.text((x0 + (x1 - x0) // 2 - 40, y1 + 18), "wall speedup (x)", fill="black", font=font)
        d.text((ox + 4, y0 - 14), "PSNR dB (capped)", fill="black", font=font)
        for s in series_all:
            pts = sorted([(r.speedup, r.psnr) for r in rows if r.series == s])
            if not pts:
                continue
            color, shape = styles[s]
            # connect the series' own Pareto front
            front, best = [], -math.inf
            for x, y in sorted(pts, key=lambda t: -t[0]):
                if y > best:
                    front.append((x, y))
                    best = y
            front.sort()
            if len(front) > 1:
                d.line([(X(x), Y(y)) for x, y in front], fill=color, width=2)
            for x, y in pts:
                cx, cy, rr = X(x), Y(y), 4
                if shape == "circle":
                    d.ellipse([cx - rr, cy - rr, cx + rr, cy + rr], fill=color)
                elif shape == "square":
                    d.rectangle([cx - rr, cy - rr, cx + rr, cy + rr], outline=color, width=2)
                else:
                    d.polygon([(cx, cy - rr - 1), (cx - rr, cy + rr), (cx + rr, cy + rr)], outline=color)
    lx = len(results) * panel_w + 10
    d.text((lx, 10), "series (own Pareto front joined)", fill="black", font=font)
    for i, s in enumerate(series_all):
        color, shape = styles[s]
        y = 30 + i * 16
        if shape == "circle":
            d.ellipse([lx, y, lx + 8, y + 8], fill=color)
        elif shape == "square":
            d.rectangle([lx, y, lx + 8, y + 8], outline=color, width=2)
        else:
            d.polygon([(lx + 4, y), (lx, y + 8), (lx + 8, y + 8)], outline=color)
        d.text((lx + 14, y - 2), s, fill="black", font=font)
    img.save(path, format="PNG")


def result_from_markdown(path: str, series_of: Optional[Dict[str, str]] = None) -> BundledResult:
    """Rebuild a BundledResult (enough for the chart) from a results_<N>.md table, so the chart can
    be redrawn without re-running (`python -m benchmarks.run --chart-only`)."""
    import re

    with open(path) as f:
        text = f.read()
    steps = int(re.search(r"Bundled model, (\d+) Euler steps, batch (\d+)", text).group(1))
    batch = int(re.search(r"Bundled model, (\d+) Euler steps, batch (\d+)", text).group(2))
    acc = re.search(r"digit accuracy ([0-9.]+)\.", text)
    all_lines = text.splitlines()
    start = next(i for i, line in enumerate(all_lines) if line.startswith("| method | family |"))
    cols = [c.strip() for c in all_lines[start].strip("|").split("|")]
    rows: List[Row] = []
    for line in all_lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = dict(zip(cols, (c.strip() for c in line.strip("|").split("|"))))
        name, family = cells["method"], cells["family"]
        r = Row(name, family, (series_of or {}).get(name, family))
        if cells["wall speedup"] == "failed":
            r.error = line.rsplit("|", 2)[-2].strip()
        else:
            r.speedup = float(cells["wall speedup"].rstrip("x"))
            if cells.get("best-of", "n/ax") != "n/ax":
                r.best_of = float(cells["best-of"].rstrip("x"))
            r.psnr = math.inf if cells["PSNR dB"] == "inf" else float(cells["PSNR dB"])
            r.compute = float(cells["block compute"].rstrip("%")) / 100
            if cells.get("digit acc", "n/a") != "n/a":
                r.acc = float(cells["digit acc"])
        rows.append(r)
    return BundledResult(steps=steps, batch=batch, rows=rows, baseline_times=[], acc_ref=float(acc.group(1)) if acc else 1.0,
                         info={})
