"""Error feedback: the adaptive threshold calibrated from the errors the cache actually makes.

A probe threshold means different things on different models: the same relative change of the
probe (the blocks' input, or the first blocks' residual) comes with a small reuse error on one
model and a visible one on another.
Every computed step shows the truth: the residual the cache would have reused there (the last
one, or TaylorSeer's prediction) against the one just computed. Its relative error (to the
segment's output, what the rest of the model sees; the worst batch element counts) is paired with
the probe change measured at the same step over the same span (`gap` steps since the previous
computed step): their ratio is what one unit of probe change costs in error on this model.

Per gap and per quarter of the sampling progress (the ratio drifts over a run), the ratio is
smoothed in log space; a reuse at gap k is allowed while ratio x probe change stays within the
budget, so the probe threshold at gap k is budget / ratio. A gap not measured yet borrows the
nearest shorter gap's ratio, scaled up by sqrt(k / j) (errors grow faster than the probe over a
longer span). The ratios are kept across runs of the same model, so a second generation starts
calibrated; before the first measurement the configured threshold is used. They are kept per
TaylorSeer order (a preset's long runs predict with order 2, shorter ones with order 1: the same
probe change costs a different error with each).

With TaylorSeer, the run's second computed step measures a forecast from one point: the last
residual itself, which no reuse one step after a computed one is (the series has a slope by then;
the third computed step measures one too, as the first value never enters a slope: taylorseer.py).
That error is provisional: it calibrates the thresholds only until the first real measurement of
the order, and never mixes with real ones. Counted as real, the run's second step (where features
change fastest) made the gap-1 ratio about 3x a later one and forced computes right after computed
steps; left out entirely, a first generation reused its first window at the configured threshold
(bundled FLUX layout: 39.2 dB). Provisional, the robustness table's worst cell went from 40.2 to
41.3 dB at 37% of the block compute instead of 38% (benchmarks/results/defaults.md).

The budget depends on the step size: a reused step's error moves the image in proportion to the
step it is used for (Euler: x += v * d_sigma; progress follows the noise level), and the errors of
a run's reuses add up partly at random, so a run's image error grows like error x span x
sqrt(reuses), with reuses ~ 1 / span: the same budget costs about sqrt(2) more image error in a
14-step run than in a 28-step one. The budget holds as given for steps of REF_SPAN (a 28-step run)
and scales with sqrt(REF_SPAN / span), the span being the progress between the last two steps (a
proxy for the step the reused output is used for): fewer or coarser steps reuse less, many fine
steps more, and a schedule that crowds its steps somewhere (a sigma shift) gets more budget where
its steps are short. That progress is the noise level's (CallState.noise_progress: 1 - t / t0 from
the timesteps, ComfyUI: 1 - sigma / sigma_max on flow models), not the step count's nor ComfyUI's
percent, which differ from it on a schedule that is not the model's own (karras, beta...).

The budget also depends on classifier-free guidance: the image moves with
v_uncond + g * (v_cond - v_uncond), so the part of the two branches' reuse errors that differs is
multiplied by g, which the per-branch measurement does not see (bundled FLUX-layout model, same
budget: 45.8 dB at CFG 3, 38.9 dB at CFG 6). The budget holds as given up to REF_GUIDANCE (the
guidance the presets were chosen at) and scales with REF_GUIDANCE / g above it, when the run's
guidance is known (ComfyUI's guider, a diffusers pipeline's `guidance_scale` while it does CFG).

And it depends on the sampler: it holds as given for Euler, which uses each output once, and takes
sampler_kind.HIGHER_ORDER_BUDGET_SCALE of it on a multistep or higher-order sampler, which carries
a reused output's error into the next steps, HIGH_ORDER_BUDGET_SCALE on one of order 3+, which
above CFG 3 also reuses only early in the noise level (reuse_end; sampler_kind.py).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, Hashable, Optional, Tuple

from . import sampler_kind

BUCKETS = 4  # sampling progress is split in this many parts
REF_SPAN = 1.0 / 28  # the step span the budget is stated for (a uniform 28-step run)
SPAN_SCALE = (0.5, 2.0)  # bounds of sqrt(REF_SPAN / span)
REF_GUIDANCE = 3.0  # the CFG scale the budget is stated for (and every lower one)
UNEVEN_BRANCHES_SCALE = 0.25  # the budget's share when a step's CFG branches run different inputs


def bucket_of(progress: float) -> int:
    """The progress bucket of a decision (0: first quarter of sampling ... 3: last quarter)."""
    return min(BUCKETS - 1, max(0, int(progress * BUCKETS)))


@dataclasses.dataclass
class ErrorFeedback:
    """Per-model calibration of probe change -> reuse error, and the thresholds it implies."""

    budget: float  # relative error a reuse may make
    initial_threshold: float  # used until a first ratio is measured
    smoothing: float = 0.5  # weight of a new measurement in a log-ratio average
    log_ratios: Dict[Tuple[int, int], float] = dataclasses.field(default_factory=dict)  # (gap, bucket) -> log(error / change)
    observations: int = 0
    span: Optional[float] = None  # progress between the last two steps decided (None: not known yet)
    guidance: Optional[float] = None  # this run's CFG scale (None: not known, or no CFG)
    uneven_branches: bool = False  # this run's CFG branches differ in form (see run_budget)
    sampler: Optional[str] = None  # this run's sampler / scheduler name (None: not known)
    _progress: Optional[float] = None  # progress of the last step decided
    _tables: Dict[int, Dict[Tuple[int, int], float]] = dataclasses.field(default_factory=dict)  # order -> log_ratios
    _predictor: Optional[int] = None  # the TaylorSeer order `log_ratios` belongs to (None: not said yet)
    provisional: Dict[Tuple[int, int], float] = dataclasses.field(default_factory=dict)  # one-point forecasts' log ratios
    _last_pair: Optional[tuple] = None  # (step, key, provisional, table value before it, log ratio): see observe

    def use_predictor(self, order: int) -> None:
        """Calibrate for reuses predicted with TaylorSeer `order` (0: the last residual) from now
        on: each order keeps its own ratios across runs."""
        if self._predictor is not None and self._predictor != order:
            self._tables[self._predictor] = self.log_ratios
            self.log_ratios = self._tables.pop(order, {})
            self._last_pair = None
        self._predictor = order

    def observe(self, gap: int, progress: float, error: float, diff: Optional[float], provisional: bool = False,
                step: Optional[Hashable] = None) -> None:
        """Take one measured (error, probe change) pair over `gap` steps at sampling `progress`
        (`provisional`: a one-point forecast's, used only while no real pair is known). Pairs of one
        `step` (its CFG branches as separate calls, observed one after the other) count once, as the
        largest ratio: a batched call's pair is already its worst image's, cond or uncond, and
        averaging the branches let the one that reuses worse (an uncond branch without the
        positive's reference image or ControlNet) run over the budget."""
        if gap < 1 or diff is None or not diff > 0.0 or not error > 0.0 or not math.isfinite(error):
            return
        sample = math.log(error / diff)
        key = (gap, bucket_of(progress))
        table = self.provisional if provisional else self.log_ratios
        last = self._last_pair
        if step is not None and last is not None and last[:3] == (step, key, provisional):
            if sample <= last[4]:
                return  # this step's worst is already in
            old = last[3]  # the table before this step's first pair: replace that pair with this one
        else:
            self.observations += 1
            old = table.get(key)
        table[key] = sample if old is None else old + self.smoothing * (sample - old)
        self._last_pair = (step, key, provisional, old, sample) if step is not None else None

    def ratio(self, gap: int, progress: float) -> Optional[float]:
        """Expected error per unit of probe change over `gap` steps at `progress` (None: nothing
        measured yet). The nearest progress bucket with measurements is used (the later one on a
        tie), then the longest measured gap not above `gap`, scaled by sqrt(gap / g); when only
        longer gaps were measured, the shortest of them. Provisional pairs count only while no real
        one is known."""
        table = self.log_ratios or self.provisional
        if not table:
            return None
        here = bucket_of(progress)
        bucket = min({b for _, b in table}, key=lambda b: (abs(b - here), -b))
        gaps = [g for g, b in table if b == bucket]
        shorter = [g for g in gaps if g <= gap]
        if not shorter:
            return math.exp(table[(min(gaps), bucket)])
        g = max(shorter)
        return math.exp(table[(g, bucket)]) * math.sqrt(gap / g)

    def note_progress(self, progress: float) -> None:
        """Take the progress of a decision: a larger one is a new step (the span is the difference),
        an equal one the same step (another branch), a smaller one a new run (span unknown)."""
        last = self._progress
        if last is None or progress < last - 1e-9:
            self.span = None
        elif progress > last + 1e-9:
            self.span = progress - last
        self._progress = progress

    def span_scale(self, span: Optional[float]) -> float:
        """sqrt(REF_SPAN / span) within SPAN_SCALE (1 when the span is not known)."""
        if span is None or not span > 0.0:
            return 1.0
        return min(SPAN_SCALE[1], max(SPAN_SCALE[0], math.sqrt(REF_SPAN / span)))

    def guidance_scale(self) -> float:
        """REF_GUIDANCE / guidance above REF_GUIDANCE, else 1 (also when the guidance is not known)."""
        g = self.guidance
        return REF_GUIDANCE / g if g is not None and math.isfinite(g) and g > REF_GUIDANCE else 1.0

    def run_budget(self) -> float:
        """The budget of this run's reuses at the reference step span (guidance and sampler applied).

        A quarter of it (UNEVEN_BRANCHES_SCALE) when the run's CFG branches run inputs of different form (separate calls whose
        hidden streams differ in length or in additions between blocks: a reference image or a
        ControlNet on the positive only): their reuse errors then no longer cancel in
        v_uncond + g * (v_cond - v_uncond), and per-branch errors within the budget moved the
        image 2-3x more than where the branches are alike."""
        return self.budget * self.budget_scale()

    def reuse_end(self) -> Optional[float]:
        """The noise progress after which this run reuses nothing (a high-order multistep sampler under
        strong guidance: sampler_kind.reuse_end), None for no end."""
        return sampler_kind.reuse_end(self.sampler, self.guidance)

    def past_reuse_end(self, noise_progress: Optional[float]) -> bool:
        """Whether a step at `noise_progress` is past this run's reuse end (see reuse_end)."""
        end = self.reuse_end()
        return end is not None and noise_progress is not None and noise_progress > end

    def sampler_scale(self) -> float:
        """What this run's sampler makes of the budget: 1 for Euler or an unknown one (sampler_kind.py)."""
        return sampler_kind.budget_scale(self.sampler)

    def budget_scale(self) -> float:
        """What this run's guidance, branches and sampler make of the budget (see run_budget)."""
        return (self.guidance_scale() * (UNEVEN_BRANCHES_SCALE if self.uneven_branches else 1.0)
                * self.sampler_scale())

    def threshold_at(self, gap: int, progress: float, span: Optional[float] = None) -> float:
        """The probe change below which a reuse at `gap` steps, used for a step of `span`, keeps
        within the budget (no state changes). Before any measurement: the configured threshold,
        scaled down by the guidance and uneven branches as the budget is."""
        r = self.ratio(gap, progress)
        if r is None:
            return self.initial_threshold * self.budget_scale()
        return self.run_budget() * self.span_scale(span) / r

    def threshold(self, gap: int, progress: float) -> float:
        """The threshold of a decision at `progress` (called once per decision: notes its step span)."""
        self.note_progress(progress)
        return self.threshold_at(gap, progress, self.span)
