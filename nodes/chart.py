"""The Detailed Stats chart: one run's decisions and measured changes, drawn with PIL only.

Sized to be read on the node as it is drawn: ComfyUI scales a preview down to the node's width
(at least 440 px wide for a new node, set by web/cachedit.js), so the chart is 640 x 360 with text of at
least MIN_FONT_PX (about 14 px on screen) and few words: a title, a legend, "threshold", "step".
"""

from __future__ import annotations

from typing import List, Optional, Sequence

from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 640, 360
TITLE_PX, LABEL_PX, MIN_FONT_PX = 30, 24, 22  # MIN_FONT_PX: the smallest text on the chart
BG = (24, 24, 28)
GRID = (70, 70, 80)
TEXT = (225, 225, 230)
COMPUTED = (70, 130, 220)
REUSED = (80, 200, 120)
THRESHOLD = (235, 90, 80)
BRANCH_COLORS = [(240, 200, 80), (200, 120, 240), (120, 220, 230), (240, 150, 100)]


def _font(size: int) -> ImageFont.ImageFont:
    """A scalable font of `size` px: Pillow's bundled one (>= 10.1), else DejaVu, else the bitmap default."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: no sized default font
        try:
            return ImageFont.truetype("DejaVuSans.ttf", size)
        except OSError:
            return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> str:
    """`text`, cut with an ellipsis to fit `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def render_chart(steps: Sequence, title: str = "", total_steps: Optional[int] = None) -> Image.Image:
    """`steps`: StepRecord-like objects (step, branch, reused, diff, threshold). Top: one row per
    CFG branch, one cell per step (blue computed, green reused). Bottom: the measured change per
    step (dot colour = branch) and the threshold as a dashed red line."""
    img = Image.new("RGB", (WIDTH, HEIGHT), BG)
    draw = ImageDraw.Draw(img)
    title_font, font, small = _font(TITLE_PX), _font(LABEL_PX), _font(MIN_FONT_PX)
    draw.text((14, 8), _fit(draw, title or "CacheDit: last run", title_font, WIDTH - 28), fill=TEXT, font=title_font)
    if not steps:
        draw.text((14, HEIGHT // 2 - LABEL_PX), "No run yet: sample first.", fill=TEXT, font=font)
        return img

    n_steps = max(max(s.step for s in steps) + 1, total_steps or 0)
    branches = sorted({s.branch for s in steps})
    left, right = 72, WIDTH - 14
    cell_w = (right - left) / max(1, n_steps)

    # -- decisions: one row per branch ----------------------------------------------------------
    top = 52
    row_h = max(12, min(30, 72 // len(branches)))
    for r, b in enumerate(branches):
        y = top + r * (row_h + 4)
        if len(branches) > 1:
            draw.ellipse([14, y + row_h / 2 - 7, 28, y + row_h / 2 + 7], fill=BRANCH_COLORS[r % len(BRANCH_COLORS)])
        for s in steps:
            if s.branch == b:
                x0 = left + s.step * cell_w
                draw.rectangle([x0 + 1, y, x0 + max(2.0, cell_w - 1), y + row_h], fill=REUSED if s.reused else COMPUTED)
    legend_y = top + len(branches) * (row_h + 4) + 6
    x = left
    for color, label in ((COMPUTED, "computed"), (REUSED, "reused")):
        draw.rectangle([x, legend_y + 5, x + 16, legend_y + 21], fill=color)
        draw.text((x + 22, legend_y), label, fill=TEXT, font=font)
        x += 22 + draw.textlength(label, font=font) + 28

    # -- measured change against the threshold ---------------------------------------------------
    p_top, p_bottom = legend_y + LABEL_PX + 22, HEIGHT - MIN_FONT_PX - 14
    draw.rectangle([left, p_top, right, p_bottom], outline=GRID)
    diffs = [s.diff for s in steps if s.diff is not None and s.diff >= 0]
    thresholds = [s.threshold for s in steps if s.threshold is not None]
    if not diffs:
        draw.text((left + 12, (p_top + p_bottom) / 2 - MIN_FONT_PX / 2), "no change measured (fixed / dynamic)",
                  fill=TEXT, font=small)
    else:
        y_max = max(max(diffs), max(thresholds) if thresholds else 0.0) * 1.15 or 1.0

        def y_of(v: float) -> float:
            return p_bottom - (p_bottom - p_top) * min(v, y_max) / y_max

        for v in (0.0, y_max):
            draw.text((10, y_of(v) - MIN_FONT_PX / 2 - 2), f"{v:.2g}", fill=TEXT, font=small)
        if thresholds:
            ty = y_of(thresholds[-1])
            for x0 in range(left, right, 14):
                draw.line([x0, ty, min(x0 + 8, right), ty], fill=THRESHOLD, width=3)
            label = f"threshold {thresholds[-1]:.2g}"
            draw.text((right - draw.textlength(label, font=small) - 6, max(p_top, ty - MIN_FONT_PX - 6)), label,
                      fill=THRESHOLD, font=small)
        for r, b in enumerate(branches):
            color = BRANCH_COLORS[r % len(BRANCH_COLORS)]
            pts: List[tuple] = [(left + (s.step + 0.5) * cell_w, y_of(s.diff)) for s in steps
                                if s.branch == b and s.diff is not None and s.diff >= 0]
            if len(pts) > 1:
                draw.line(pts, fill=color, width=3)
            for px, py in pts:
                draw.ellipse([px - 5, py - 5, px + 5, py + 5], fill=color)
    for s in sorted({0, (n_steps - 1) // 2, n_steps - 1}):
        label = str(s)
        cx = left + (s + 0.5) * cell_w - draw.textlength(label, font=small) / 2
        draw.text((min(max(cx, left), right - draw.textlength(label, font=small)), p_bottom + 4), label, fill=TEXT,
                  font=small)
    draw.text((10, p_bottom + 4), "step", fill=TEXT, font=small)
    return img


def to_image_tensor(img: Image.Image):
    """PIL image -> ComfyUI IMAGE ([1, H, W, 3] float in 0..1)."""
    import numpy as np
    import torch

    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0)[None]
