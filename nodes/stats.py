"""CacheDit Detailed Stats: what the cache did on the model's last sampling run (text + chart).

The summary text (summary.py) goes to the node's `ui` in English (`text`) and Chinese (`text_zh`);
the frontend extension in web/ shows it on the node in the UI's language. The chart goes to the
node's image preview and to the `chart` output."""

from __future__ import annotations

from typing import Optional

from comfy_api.latest import io, ui

from .chart import render_chart, to_image_tensor
from .schema import make_schema
from .summary import summarize


class CacheDitDetailedStats(io.ComfyNode):
    """Runs after sampling (give it the sampler's LATENT or the decoded IMAGE) and reports."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return make_schema(
            node_id="CacheDitDetailedStats",
            display_name="CacheDit Detailed Stats",
            search_aliases=("cache stats", "cache statistics", "hit rate", "详细统计", "统计"),
            description="Shows what CacheDit did on the model's last sampling run: steps computed vs reused per "
                        "branch, measured residual diffs against the threshold, the measured reuse error against "
                        "the error budget, estimated speedup. Pass the "
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
                io.String.Output("summary", display_name="summary",
                                 tooltip="The summary shown on the node, as text (English)."),
                io.Image.Output("chart", display_name="chart",
                                tooltip="Chart of the last run: per step computed vs reused (per branch), the "
                                        "measured change against the threshold and, with error feedback, the "
                                        "measured reuse error against the budget."),
            ],
        )

    @classmethod
    def execute(cls, model, latent: Optional[dict] = None, image=None) -> io.NodeOutput:
        summary = summarize(model)
        steps = summary.record.steps if summary.record is not None else []
        chart = to_image_tensor(render_chart(steps, title=summary.title,
                                             total_steps=getattr(summary.record, "total_steps", None),
                                             budget=summary.budget))
        ui_out: dict = {"text": (summary.en,), "text_zh": (summary.zh,)}
        try:
            ui_out.update(ui.PreviewImage(chart, cls=cls).as_dict())
        except Exception:  # no temp folder (library use): the chart is still an output
            pass
        return io.NodeOutput(latent, image, summary.en, chart, ui=ui_out)
