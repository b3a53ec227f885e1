"""The Detailed Stats chart: one run's decisions and measured changes, drawn with PIL only.

Sized to be read on the node as it is drawn: ComfyUI scales a preview down to the node's width
(at least 440 px wide for a new node, set by web/cachedit.js), so the chart is 640 x 360 with text of at
least MIN_FONT_PX (about 14 px on screen) and few words: a title, a legend, "threshold", "step"
(with error feedback also "change", "error" and "budget": the measured reuse error gets a panel).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

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


def _dashed(draw: ImageDraw.ImageDraw, x0: float, x1: float, y: float) -> None:
    """A dashed red horizontal line from x0 to x1 at y (a threshold or budget)."""
    for x in range(int(x0), int(x1), 14):
        draw.line([x, y, min(x + 8, x1), y], fill=THRESHOLD, width=3)


def _label(draw: ImageDraw.ImageDraw, xy: Tuple[float, float], text: str, color: tuple, font) -> None:
    """Text on the background colour, readable over the plotted lines."""
    x, y = xy
    draw.rectangle([x - 3, y + 2, x + draw.textlength(text, font=font) + 3, y + MIN_FONT_PX + 3], fill=BG)
    draw.text((x, y), text, fill=color, font=font)


def _panel(draw: ImageDraw.ImageDraw, box: Tuple[float, float, float, float], cell_w: float, series: Sequence[tuple],
           limits: Dict[int, float], limit_name: str, name: str, zero: bool = True) -> None:
    """One plot: `series` = (colour, [(step, value)]) drawn as dots and lines, `limits` (step ->
    value) as a dashed red line per step (a straight one when constant), named in the top right
    corner with its last value; `name` in the top left corner; the y axis from 0 (labelled when
    `zero`) to a little above the largest value."""
    left, top, right, bottom = box
    small = _font(MIN_FONT_PX)
    draw.rectangle([left, top, right, bottom], outline=GRID)
    values = [v for _, pts in series for _, v in pts] + list(limits.values())
    y_max = max(values) * 1.35 or 1.0  # headroom for the labels in the top corners

    def y_of(v: float) -> float:
        return bottom - (bottom - top) * min(v, y_max) / y_max

    draw.text((10, top - 2), f"{y_max:.2g}", fill=TEXT, font=small)
    if zero:
        draw.text((10, bottom - MIN_FONT_PX - 2), "0", fill=TEXT, font=small)
    if limits:
        if len(set(limits.values())) == 1:
            _dashed(draw, left, right, y_of(next(iter(limits.values()))))
        else:
            for step, v in limits.items():
                _dashed(draw, left + step * cell_w, left + (step + 1) * cell_w, y_of(v))
    for color, pts in series:
        xy: List[tuple] = [(left + (step + 0.5) * cell_w, y_of(v)) for step, v in pts]
        if len(xy) > 1:
            draw.line(xy, fill=color, width=3)
        for px, py in xy:
            draw.ellipse([px - 5, py - 5, px + 5, py + 5], fill=color)
    if limits:
        label = f"{limit_name} {limits[max(limits)]:.2g}"
        _label(draw, (right - draw.textlength(label, font=small) - 6, top), label, THRESHOLD, small)
    if name:
        _label(draw, (left + 6, top), name, TEXT, small)


def render_chart(steps: Sequence, title: str = "", total_steps: Optional[int] = None,
                 budget: Optional[float] = None) -> Image.Image:
    """`steps`: StepRecord-like objects (step, branch, reused, diff, threshold, error). Top: one row
    per CFG branch, one cell per step (blue computed, green reused). Below: the measured change per
    step (dot colour = branch) against the threshold it was compared with (dashed red; it moves
    step by step under error feedback). With error feedback (`budget`), a last panel: the reuse
    error measured at computed steps against the budget, i.e. why the threshold moved."""
    img = Image.new("RGB", (WIDTH, HEIGHT), BG)
    draw = ImageDraw.Draw(img)
    title_font, font, small = _font(TITLE_PX), _font(LABEL_PX), _font(MIN_FONT_PX)
    draw.text((14, 8), _fit(draw, title or "CacheDit: last run", title_font, WIDTH - 28), fill=TEXT, font=title_font)
    if not steps:
        draw.text((14, HEIGHT // 2 - LABEL_PX), "No run yet: sample first.", fill=TEXT, font=font)
        return img

    n_steps = max(max(s.step for s in steps) + 1, total_steps or 0)
    branches = sorted({s.branch for s in steps})
    colors = {b: BRANCH_COLORS[r % len(BRANCH_COLORS)] for r, b in enumerate(branches)}
    errors = {b: [(s.step, s.error) for s in steps if s.branch == b and getattr(s, "error", None) is not None]
              for b in branches}
    with_errors = budget is not None and any(errors.values())
    left, right = 72, WIDTH - 14
    cell_w = (right - left) / max(1, n_steps)

    # -- decisions: one row per branch ----------------------------------------------------------
    top = 52
    row_h = max(12, min(22 if with_errors else 30, (48 if with_errors else 72) // len(branches)))
    for r, b in enumerate(branches):
        y = top + r * (row_h + 4)
        if len(branches) > 1:
            draw.ellipse([14, y + row_h / 2 - 7, 28, y + row_h / 2 + 7], fill=colors[b])
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

    # -- measured change against the threshold; measured error against the budget ----------------
    p_top, p_bottom = legend_y + LABEL_PX + 16, HEIGHT - MIN_FONT_PX - 14
    split = (p_top + p_bottom) / 2 if with_errors else p_bottom
    diffs = {b: [(s.step, s.diff) for s in steps if s.branch == b and s.diff is not None and s.diff >= 0]
             for b in branches}
    limits: Dict[int, float] = {}
    for s in steps:
        if s.threshold is not None and s.step not in limits:
            limits[s.step] = s.threshold
    if not any(diffs.values()):
        draw.rectangle([left, p_top, right, split], outline=GRID)
        draw.text((left + 12, (p_top + split) / 2 - MIN_FONT_PX / 2), "no change measured (fixed / dynamic)",
                  fill=TEXT, font=small)
    else:
        _panel(draw, (left, p_top, right, split - (4 if with_errors else 0)), cell_w,
               [(colors[b], diffs[b]) for b in branches], limits, "threshold", "change" if with_errors else "",
               zero=not with_errors)
    if with_errors:
        _panel(draw, (left, split + 4, right, p_bottom), cell_w, [(colors[b], errors[b]) for b in branches],
               {0: budget}, "budget", "error")
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
