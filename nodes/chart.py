"""The Detailed Stats chart: one run's decisions and measured diffs, drawn with PIL only."""

from __future__ import annotations

from typing import List, Optional, Sequence

from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 768, 432
BG = (24, 24, 28)
GRID = (60, 60, 68)
TEXT = (220, 220, 225)
COMPUTED = (70, 130, 220)
REUSED = (80, 200, 120)
THRESHOLD = (235, 90, 80)
BRANCH_COLORS = [(240, 200, 80), (200, 120, 240), (120, 220, 230), (240, 150, 100)]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def render_chart(steps: Sequence, title: str = "", total_steps: Optional[int] = None) -> Image.Image:
    """`steps`: StepRecord-like objects (step, branch, reused, diff, threshold). Top: one row per
    branch, one cell per step (blue computed, green reused). Bottom: measured diff per step and
    branch, with the threshold as a red line."""
    img = Image.new("RGB", (WIDTH, HEIGHT), BG)
    draw = ImageDraw.Draw(img)
    font, small = _font(15), _font(12)
    draw.text((12, 8), title or "CacheDit: last run", fill=TEXT, font=font)
    if not steps:
        draw.text((12, HEIGHT // 2), "No finished run yet: sample with this model first.", fill=TEXT, font=font)
        return img

    n_steps = max(max(s.step for s in steps) + 1, total_steps or 0)
    branches = sorted({s.branch for s in steps})
    left, right = 70, WIDTH - 16
    cell_w = (right - left) / max(1, n_steps)

    # -- decisions grid -------------------------------------------------------------------------
    top = 36
    row_h = min(22, max(10, 120 // max(1, len(branches))))
    for r, b in enumerate(branches):
        y = top + r * (row_h + 3)
        draw.ellipse([6, y + row_h / 2 - 4, 14, y + row_h / 2 + 4], fill=BRANCH_COLORS[r % len(BRANCH_COLORS)])
        draw.text((18, y + row_h / 2 - 7), f"branch {b}", fill=TEXT, font=small)
        for s in steps:
            if s.branch != b:
                continue
            x0 = left + s.step * cell_w
            draw.rectangle([x0 + 1, y, x0 + max(2.0, cell_w - 1), y + row_h], fill=REUSED if s.reused else COMPUTED)
    grid_bottom = top + len(branches) * (row_h + 3)
    legend_y = grid_bottom + 4
    draw.rectangle([left, legend_y + 3, left + 10, legend_y + 13], fill=COMPUTED)
    draw.text((left + 14, legend_y), "computed", fill=TEXT, font=small)
    draw.rectangle([left + 90, legend_y + 3, left + 100, legend_y + 13], fill=REUSED)
    draw.text((left + 104, legend_y), "reused", fill=TEXT, font=small)
    reused = sum(1 for s in steps if s.reused)
    draw.text((left + 170, legend_y), f"{reused}/{len(steps)} decisions reused", fill=TEXT, font=small)

    # -- diff plot -------------------------------------------------------------------------------
    p_top, p_bottom = legend_y + 40, HEIGHT - 30
    diffs = [s.diff for s in steps if s.diff is not None and s.diff >= 0]
    thresholds = [s.threshold for s in steps if s.threshold is not None]
    draw.rectangle([left, p_top, right, p_bottom], outline=GRID)
    draw.text((left, p_top - 18), "measured residual diff (relative L1, dot colour = branch) vs threshold",
              fill=TEXT, font=small)
    if not diffs:
        draw.text((left + 10, (p_top + p_bottom) / 2 - 7), "no diffs measured (fixed/dynamic strategies decide "
                  "from the step alone)", fill=TEXT, font=small)
    else:
        y_max = max(max(diffs), max(thresholds) if thresholds else 0.0) * 1.15 or 1.0

        def y_of(v: float) -> float:
            return p_bottom - (p_bottom - p_top) * min(v, y_max) / y_max

        for frac in (0.0, 0.5, 1.0):
            v = y_max * frac
            draw.line([left, y_of(v), right, y_of(v)], fill=GRID)
            draw.text((8, y_of(v) - 7), f"{v:.3g}", fill=TEXT, font=small)
        if thresholds:
            ty = y_of(thresholds[-1])
            for x in range(left, right, 10):
                draw.line([x, ty, min(x + 5, right), ty], fill=THRESHOLD, width=2)
            draw.text((right - 110, ty + 3), f"threshold {thresholds[-1]:.3g}", fill=THRESHOLD, font=small)
        for r, b in enumerate(branches):
            color = BRANCH_COLORS[r % len(BRANCH_COLORS)]
            pts: List[tuple] = [(left + (s.step + 0.5) * cell_w, y_of(s.diff)) for s in steps
                                if s.branch == b and s.diff is not None and s.diff >= 0]
            if len(pts) > 1:
                draw.line(pts, fill=color, width=2)
            for x, y in pts:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
    for s in range(0, n_steps, max(1, n_steps // 10)):
        draw.text((left + (s + 0.5) * cell_w - 4, p_bottom + 4), str(s), fill=TEXT, font=small)
    draw.text((36, p_bottom + 6), "step", fill=TEXT, font=small)
    return img


def to_image_tensor(img: Image.Image):
    """PIL image -> ComfyUI IMAGE ([1, H, W, 3] float in 0..1)."""
    import numpy as np
    import torch

    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0)[None]
