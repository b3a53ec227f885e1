"""The Pareto chart (drawn with PIL: matplotlib is not a dependency)."""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

from .bundled_bench import BundledResult
from .rows import QUALITY_DB


PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (0, 0, 128), (128, 0, 0),
           (0, 128, 128), (255, 0, 255), (90, 90, 0), (0, 200, 120)]


def _series_style(series: str, idx: int) -> Tuple[Tuple[int, int, int], str]:
    shape = "circle" if series.startswith("ours") else ("square" if series.startswith("cache-dit") else "triangle")
    return PALETTE[idx % len(PALETTE)], shape


def pareto_chart(results: Sequence[BundledResult], path: str, psnr_cap: float = 70.0) -> None:
    """Wall speedup (x) vs pooled PSNR (y), one panel per step count, one series per method family;
    the model's default is drawn larger and labelled."""
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
        x_lo, x_hi = min(0.9, min(xs) * 0.95), max(xs) * 1.05
        y_lo, y_hi = 10.0, psnr_cap
        x0, y0, x1, y1 = ox + pad, 30, ox + panel_w - 20, panel_h - 30

        def X(v: float) -> float:
            return x0 + (v - x_lo) / (x_hi - x_lo) * (x1 - x0)

        def Y(v: float) -> float:
            v = min(max(v, y_lo), y_hi)
            return y1 - (v - y_lo) / (y_hi - y_lo) * (y1 - y0)

        d.rectangle([x0, y0, x1, y1], outline="black")
        d.text((x0 + 40, 6), f"{res.arch} model, {res.steps} steps: wall speedup vs PSNR pooled over {len(res.seeds)} seeds "
               "(higher-right is better)", fill="black", font=font)
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
        for r in rows:
            if r.series == "ours default":
                cx, cy = X(r.speedup), Y(r.psnr)
                d.ellipse([cx - 7, cy - 7, cx + 7, cy + 7], outline="black", width=2)
                d.text((cx + 9, cy - 14), "default", fill="black", font=font)
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
