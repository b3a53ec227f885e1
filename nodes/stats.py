"""CacheDit Detailed Stats: what the cache did on the model's last sampling run (text + chart)."""

from __future__ import annotations

from typing import Any, Optional

import cachedit
from cachedit.adapters import comfyui as adapter
from cachedit.events.report import estimated_speedup, percentile
from comfy_api.latest import io, ui

from .chart import render_chart, to_image_tensor

CATEGORY = "CacheDit"


def describe(model: Any) -> tuple:
    """(summary text, RunRecord or None, title) for a MODEL."""
    entries = adapter.entries(model)
    if not entries:
        return ("CacheDit is not enabled on this model: connect the MODEL output of CacheDit Accelerate or "
                "CacheDit Advanced Config (the one the sampler used).", None, "CacheDit: not enabled")
    entry = entries[0]
    engine = entry.engine
    manager = cachedit.get_manager()
    stats = manager.snapshot(entry)
    record = manager.stats.last_record(entry.key)
    head = f"CacheDit · {entry.name} · {engine.options.strategy}, {engine.level} level"
    if not engine.step_level:
        head += f", {engine.num_blocks} blocks (Fn {engine.fn} / Bn {engine.bn}, {engine.num_middle} reusable)"
    lines = [head]
    if record is None or not record.steps:
        lines.append("No finished run yet: this node shows the last run of the model the sampler used.")
    else:
        steps = record.steps
        decided = {s.step for s in steps}
        reused_steps = {s.step for s in steps if s.reused}
        reused = sum(1 for s in steps if s.reused)
        branches = len({s.branch for s in steps})
        speedup = estimated_speedup(reused, len(steps), engine.layout.middle_share)
        lines.append(f"Last run: {len(reused_steps)}/{len(decided)} steps reused, {reused}/{len(steps)} model calls "
                     f"over {branches} branch{'es' if branches != 1 else ''}")
        lines.append(f"Estimated speedup of the transformer: {speedup:.2f}x")
        diffs = [s.diff for s in steps if s.diff is not None and s.diff >= 0]
        thresholds = [s.threshold for s in steps if s.threshold is not None]
        if diffs:
            text = (f"Residual diff: p25 {percentile(diffs, 0.25):.4f}, p50 {percentile(diffs, 0.5):.4f}, "
                    f"max {max(diffs):.4f}")
            if thresholds and engine.strategy.needs_probe:
                text += f" (threshold {thresholds[-1]:.4f})"
            lines.append(text)
        if reused_steps:
            lines.append(f"Reused steps: {sorted(reused_steps)}")
    lines.append(f"All runs: {stats.runs} run{'s' if stats.runs != 1 else ''}, hit rate {100 * stats.hit_rate:.1f}%, "
                 f"estimated block compute saved {100 * stats.estimated_compute_saved:.1f}%")
    lines.append(f"Settings: {engine.options.strify()}")
    title = f"CacheDit · {entry.name} · last run"
    return "\n".join(lines), record, title


class CacheDitDetailedStats(io.ComfyNode):
    """Runs after sampling (give it the sampler's LATENT or the decoded IMAGE) and reports."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CacheDitDetailedStats",
            display_name="CacheDit Detailed Stats | CacheDit 详细统计",
            category=CATEGORY,
            description="Shows what CacheDit did on the model's last sampling run: steps computed vs reused per "
                        "branch, measured residual diffs against the threshold, estimated speedup. Pass the "
                        "sampler's LATENT (or the decoded IMAGE) through it so it runs after sampling.",
            is_output_node=True,
            inputs=[
                io.Model.Input("model", tooltip="The accelerated MODEL the sampler used."),
                io.Latent.Input("latent", optional=True,
                                tooltip="The sampler's output latent; passed through unchanged (orders this node "
                                        "after sampling)."),
                io.Image.Input("image", optional=True,
                               tooltip="A decoded image; passed through unchanged (orders this node after sampling)."),
            ],
            outputs=[
                io.Latent.Output("latent_out", display_name="latent", tooltip="The latent input, unchanged."),
                io.Image.Output("image_out", display_name="image", tooltip="The image input, unchanged."),
                io.String.Output("summary", tooltip="The summary shown on the node, as text."),
                io.Image.Output("chart", tooltip="Chart of the last run: per step computed vs reused (per branch) and "
                                                 "the measured diff against the threshold."),
            ],
        )

    @classmethod
    def execute(cls, model, latent: Optional[dict] = None, image=None) -> io.NodeOutput:
        text, record, title = describe(model)
        steps = record.steps if record is not None else []
        chart = to_image_tensor(render_chart(steps, title=title, total_steps=getattr(record, "total_steps", None)))
        ui_out: dict = {"text": (text,)}
        try:
            ui_out.update(ui.PreviewImage(chart, cls=cls).as_dict())
        except Exception:  # no temp folder (library use): the chart is still an output
            pass
        return io.NodeOutput(latent, image, text, chart, ui=ui_out)
