"""The Detailed Stats node's summary: what the cache did on a model's last run, in plain words,
in English and in Chinese (the frontend extension in web/ shows the one matching the UI language).

No setting codes (`DBCache_F1B0_W3I1M0MC3_R0.24_T1O1`): each line says what happened or what a
setting does, with the numbers a user compares (steps reused, speedup, measured change against
the threshold).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, List, Optional

import cachedit
from cachedit.adapters import comfyui as adapter
from cachedit.events.report import error_percentiles, estimated_speedup, percentile

STRATEGY_ZH = {"adaptive": "自适应", "fixed": "固定间隔", "dynamic": "动态"}


@dataclasses.dataclass(frozen=True)
class Summary:
    """One model's summary: the text in both languages, the last run's record (None before any
    run), a short title for the chart and the error budget (None: no error feedback)."""

    en: str
    zh: str
    record: Any
    title: str
    budget: Optional[float] = None


def step_ranges(steps: Iterable[int]) -> str:
    """Sorted step numbers as ranges: [4, 5, 6, 9, 11, 12] -> "4-6, 9, 11-12"."""
    out: List[str] = []
    ordered = sorted(set(steps))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ", ".join(out)


def _budget_reasons(feedback: Any) -> tuple:
    """(English, Chinese) words for what lowered this run's budget (feedback.py): a CFG scale
    above 3, CFG branches whose inputs differ in form, a multistep / higher-order sampler."""
    en: List[str] = []
    zh: List[str] = []
    if feedback.guidance_scale() < 1.0:
        en.append(f"at CFG {feedback.guidance:g}")
        zh.append(f"CFG {feedback.guidance:g} ")
    if feedback.uneven_branches:
        en.append("with CFG branches of different inputs")
        zh.append("正负条件输入不同")
    if feedback.sampler_scale() < 1.0:
        end = feedback.reuse_end()
        en.append(f"with the {feedback.sampler} sampler (multistep / higher-order"
                  + (f"; no reuse after {end:.0%} of the noise at this CFG)" if end is not None else ")"))
        zh.append(f"采样器 {feedback.sampler} 为多步/高阶" + (f"（此 CFG 下噪声降低 {end:.0%} 后不再复用）" if end is not None else ""))
    return " and ".join(en), "且".join(zh)


def _settings(engine: Any) -> tuple:
    """(English, Chinese) one-line description of the settings the engine runs with."""
    options = engine.options
    cfg = options.cache_config
    en: List[str] = [options.strategy]
    zh: List[str] = [STRATEGY_ZH.get(options.strategy, options.strategy)]
    budget = getattr(options, "error_budget", None)
    if options.strategy == "adaptive" and budget is None:
        en.append(f"reuse while the change is below {cfg.residual_diff_threshold:g}")
        zh.append(f"变化低于 {cfg.residual_diff_threshold:g} 时复用")
    elif options.strategy == "adaptive":
        run_budget = engine.run_budget()
        if run_budget is not None and run_budget < budget:  # a high CFG scale, uneven branches or the sampler lowered it
            why_en, why_zh = _budget_reasons(engine.feedback)
            en.append(f"error budget {budget:g}, {run_budget:.3g} {why_en} (the threshold follows the measured error)")
            zh.append(f"误差预算 {budget:g}，{why_zh}时为 {run_budget:.3g}（阈值随实测误差调整）")
        else:
            en.append(f"error budget {budget:g} (the threshold follows the measured error)")
            zh.append(f"误差预算 {budget:g}（阈值随实测误差调整）")
    elif options.strategy != "adaptive":
        en.append(f"interval {options.skip_interval}")
        zh.append(f"间隔 {options.skip_interval}")
    if not engine.step_level:
        en.append(f"first {engine.fn} and last {engine.bn} of {engine.num_blocks} blocks always run")
        zh.append(f"{engine.num_blocks} 个块中前 {engine.fn} 个和后 {engine.bn} 个始终计算")
    en.append(f"{cfg.max_warmup_steps} warmup steps")
    zh.append(f"预热 {cfg.max_warmup_steps} 步")
    if cfg.max_continuous_cached_steps >= 0:
        en.append(f"at most {cfg.max_continuous_cached_steps} reused steps in a row")
        zh.append(f"最多连续复用 {cfg.max_continuous_cached_steps} 步")
    if options.taylorseer_order:
        en.append(f"TaylorSeer order {options.taylorseer_order}")
        zh.append(f"TaylorSeer {options.taylorseer_order} 阶")
    if (options.start_percent, options.end_percent) != (0.0, 1.0):
        en.append(f"window {options.start_percent:g}-{options.end_percent:g} of the denoising")
        zh.append(f"生效区间 {options.start_percent:g}-{options.end_percent:g}")
    return "Settings: " + ", ".join(en), "设置：" + "，".join(zh)


def _mib(n: int) -> str:
    """Bytes as MiB (GiB from 1 GiB on)."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def summarize(model: Any) -> Summary:
    """The summary of a MODEL (a ModelPatcher; any model without CacheDit says so)."""
    entries = adapter.entries(model)
    if not entries:
        return Summary(
            en="CacheDit is not enabled on this model. Connect the MODEL that comes out of CacheDit Accelerate "
               "(or Advanced Config), the one the sampler used.",
            zh="此模型未启用 CacheDit。请连接 CacheDit 模型加速（或高级配置）输出的、采样器所用的模型。",
            record=None, title="CacheDit: not enabled")
    entry = entries[0]
    engine = entry.engine
    manager = cachedit.get_manager()
    record: Optional[Any] = manager.stats.last_record(entry.key)
    if engine.step_level:
        how_en = "whole steps are reused (no transformer blocks known for this model)"
        how_zh = "复用整步（此模型没有可识别的 Transformer 块）"
    else:
        how_en = f"the middle {engine.num_middle} of {engine.num_blocks} blocks are reused"
        how_zh = f"复用 {engine.num_blocks} 个块中间的 {engine.num_middle} 个"
    en = [f"CacheDit on {entry.name}: {how_en}."]
    zh = [f"CacheDit · {entry.name}：{how_zh}。"]
    title = f"{entry.name}: no run yet"
    if record is None or not record.steps:
        en.append("No finished run yet: run the workflow, this node then shows the sampler's last run.")
        zh.append("尚无完成的运行：运行工作流后，这里显示采样器最近一次运行的情况。")
    else:
        steps = record.steps
        decided = {s.step for s in steps}
        reused_steps = {s.step for s in steps if s.reused}
        reused_calls = sum(1 for s in steps if s.reused)
        branches = len({s.branch for s in steps})
        speedup = estimated_speedup(reused_calls, len(steps), engine.layout.middle_share)
        en.append(f"Last run: {len(reused_steps)} of {len(decided)} steps reused.")
        zh.append(f"最近一次运行：{len(decided)} 步中复用了 {len(reused_steps)} 步。")
        if branches > 1:
            en.append(f"{reused_calls} of {len(steps)} model calls reused ({branches} CFG branches decide apart).")
            zh.append(f"{len(steps)} 次模型调用中复用了 {reused_calls} 次（{branches} 个 CFG 分支分别判断）。")
        en.append(f"Estimated transformer speedup: {speedup:.2f}x.")
        zh.append(f"Transformer 估计加速：{speedup:.2f} 倍。")
        if reused_steps:
            en.append(f"Reused steps: {step_ranges(reused_steps)}.")
            zh.append(f"复用的步：{step_ranges(reused_steps)}。")
        diffs = [s.diff for s in steps if s.diff is not None and s.diff >= 0]
        if diffs:
            thresholds = [s.threshold for s in steps if s.threshold is not None]
            limit_en = limit_zh = ""
            if thresholds and engine.strategy.needs_probe and len(set(thresholds)) > 1:
                limit_en = f" (reuse below a threshold of {min(thresholds):.3g}-{max(thresholds):.3g})"
                limit_zh = f"（低于阈值 {min(thresholds):.3g}-{max(thresholds):.3g} 时复用）"
            elif thresholds and engine.strategy.needs_probe:
                limit_en = f" (reuse below {thresholds[-1]:.3g})"
                limit_zh = f"（低于 {thresholds[-1]:.3g} 时复用）"
            en.append(f"Change between steps: typical {percentile(diffs, 0.5):.3g}, largest {max(diffs):.3g}{limit_en}.")
            zh.append(f"步间变化：中位 {percentile(diffs, 0.5):.3g}，最大 {max(diffs):.3g}{limit_zh}。")
        errors = error_percentiles([s.error for s in steps if s.error is not None], engine.run_budget())
        if errors and "error_budget" in errors:
            en.append(f"Measured reuse error (checked at {errors['errors_measured']} computed steps): median "
                      f"{errors['error_p50']:.3g}, largest {errors['error_max']:.3g}, budget {errors['error_budget']:g}; "
                      f"{errors['errors_over_budget']} over budget (the threshold came down after those).")
            zh.append(f"实测复用误差（在 {errors['errors_measured']} 个计算步上检查）：中位 {errors['error_p50']:.3g}，"
                      f"最大 {errors['error_max']:.3g}，预算 {errors['error_budget']:g}；"
                      f"{errors['errors_over_budget']} 步超出预算（之后阈值随之降低）。")
        noisy_from = getattr(record, "noisy_from", None)
        if noisy_from is not None:
            en.append(f"The sampler adds new noise at every step (ancestral / SDE), where a reused step changes the "
                      f"image: every step from step {noisy_from} on was computed. For speed use euler, dpmpp_2m, "
                      f"uni_pc, deis or res_multistep.")
            zh.append(f"该采样器每一步都加入新噪声（ancestral / SDE 类），复用会改变图像：从第 {noisy_from} 步起每一步都完整"
                      f"计算。需要加速请改用 euler、dpmpp_2m、uni_pc、deis 或 res_multistep。")
        title = f"{entry.name}: {len(reused_steps)}/{len(decided)} steps reused"
    settings_en, settings_zh = _settings(engine)
    en.append(settings_en + ".")
    zh.append(settings_zh + "。")
    stats = manager.snapshot(entry)
    if stats.runs:
        en.append(f"Since loading: {stats.runs} run{'s' if stats.runs != 1 else ''}, "
                  f"{100 * stats.estimated_compute_saved:.0f}% of the block work skipped.")
        zh.append(f"加载以来：{stats.runs} 次运行，省去 {100 * stats.estimated_compute_saved:.0f}% 的块计算。")
    settings = getattr(engine, "run_settings", None)
    if settings is not None:
        en.append(f"Preset: {settings.label()} ({settings.family} model).")
        zh.append(f"预设：{settings.label()}（{settings.family} 模型）。")
    if stats.cache_bytes_by_device:
        where = ", ".join(f"{_mib(n)} on {d}" for d, n in sorted(stats.cache_bytes_by_device.items()))
        where_zh = "，".join(f"{d} 上 {_mib(n)}" for d, n in sorted(stats.cache_bytes_by_device.items()))
        en.append(f"Cache memory: {where} (cache_device={engine.placement.mode}).")
        zh.append(f"缓存占用：{where_zh}（缓存位置 {engine.placement.mode}）。")
    return Summary(en="\n".join(en), zh="\n".join(zh), record=record, title=title,
                   budget=engine.run_budget())
