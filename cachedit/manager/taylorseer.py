"""TaylorSeer: forecast a reused residual from the residuals of the last computed steps.

On each computed step the series keeps the value and finite differences up to `order`
(divided by the step gap, so uneven gaps extrapolate correctly); on a reused step it returns
sum_i d_i * k**i / i!, where k is the number of steps since the last computed one. The update
is done in place with `torch.sub`/`div_` so no tensor is copied beyond the terms themselves.

A difference term is never extrapolated further than the span it was measured over: term i
is used only while k <= the shortest gap among the updates it was built from (beyond that the
series falls back to the lower terms, down to the last value). Right after warmup the slope comes
from two adjacent early steps (gap 1), where features change fastest; stretching it over a 3-step
reuse window cost ~1 dB on the bundled model, and a second difference built on it cost up to 10 dB.
Later windows are measured over gap = window + 1 and extrapolate in full.

The first value of a series (a run's first computed step: in text-to-image, the pure-noise input)
never enters a difference; the second becomes the base the differences start from, as in
ParaAttention's and cache-dit's TaylorSeer (no derivative before their third step). The features
move far more from the first step to the second than at any later step: on the bundled FLUX layout
the slope of steps 0 -> 1 forecast step 2's output 20% off where reusing step 1 is 2% off, and that
one reuse turned one image of eight into another digit (11.9 dB) on two of twelve seeds; without the
first value the twelve-seed PSNR of the default went 28.4 -> 40.6 dB on that layout and 38.3 -> 41.3
on the Z-Image layout, the three others within 0.4 dB at the same or fewer computed steps
(benchmarks/results/runs/2026-12-02_taylorseer_first_step.md).
"""

from __future__ import annotations

import math
from typing import List, Optional

import torch

from .buffers import sample_l1, sub_into


class TaylorSeries:
    """Finite-difference Taylor terms of one tensor stream."""

    __slots__ = ("order", "terms", "last_step", "spans", "d1_scale", "values")

    def __init__(self, order: int) -> None:
        self.order = order
        self.values = 0  # values recorded: differences start at the third (see the module docstring)
        self.terms: List[torch.Tensor] = []
        self.last_step: Optional[int] = None
        self.spans: List[int] = []  # spans[i - 1]: how far terms[i] may be extrapolated (its shortest gap)
        self.d1_scale = 1.0  # terms[1] * d1_scale is the first derivative (the in-place path stores it undivided)

    def update(self, value: torch.Tensor, step: int) -> None:
        """Record the exact value computed at `step`."""
        new_terms = [value]
        spans: List[int] = []
        self.values += 1
        if (self.values > 2 and self.terms and self.last_step is not None and step > self.last_step
                and self.terms[0].shape == value.shape):
            gap = step - self.last_step
            for i in range(min(self.order, len(self.terms))):
                diff = torch.sub(new_terms[i], self.terms[i])
                new_terms.append(diff.div_(float(gap)) if gap != 1 else diff)
                # term i + 1 rests on this gap and on every gap term i rested on
                spans.append(gap if i == 0 else min(gap, self.spans[i - 1]))
        self.terms = new_terms
        self.spans = spans
        self.d1_scale = 1.0
        self.last_step = step

    def update_residual(self, out: torch.Tensor, base: torch.Tensor, step: int) -> torch.Tensor:
        """Record `out - base` computed at `step`; returns the value term.

        First order runs two fused passes over the two buffers it already holds (no allocation, no
        extra copy): the new value goes into the old difference's buffer, and the old value's
        buffer becomes the new difference in place. The division by the gap is folded into the
        prediction's scale. Other orders fall back to `update`."""
        t = self.terms
        if (self.order == 1 and len(t) == 2 and self.last_step is not None and step > self.last_step
                and t[0].shape == out.shape and t[0].dtype == out.dtype):
            old_value, spare = t
            new_value = torch.sub(out, base, out=spare)
            diff = torch.sub(new_value, old_value, out=old_value)  # new - old, undivided
            self.terms = [new_value, diff]
            self.spans = [step - self.last_step]
            self.d1_scale = 1.0 / self.spans[0]
            self.last_step = step
            self.values += 1
            return new_value
        self.update(out - base, step)
        return self.terms[0]

    def prediction_error(self, out: torch.Tensor, base: torch.Tensor, step: int,
                         scratch: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Per batch element, the sum of |(out - base) - predict(step)|: how far the reuse at `step`
        would have been from the residual computed there (float32, no host sync). Call before `update`."""
        diff = sub_into(scratch, out, base)
        diff.sub_(self.terms[0])
        for term, alpha in self._alphas(step):
            diff.sub_(term, alpha=alpha)
        return sample_l1(diff)

    def add_prediction(self, base: torch.Tensor, step: int) -> torch.Tensor:
        """`base + predict(step)` in one fresh tensor (no intermediate copy of the prediction)."""
        out = torch.add(base, self.terms[0])
        for term, alpha in self._alphas(step):
            out.add_(term, alpha=alpha)
        return out

    def predict(self, step: int) -> torch.Tensor:
        """Extrapolate to `step` (returns the last value itself when there is nothing to extrapolate)."""
        alphas = list(self._alphas(step))
        if not alphas:
            return self.terms[0]
        out = self.terms[0].clone()
        for term, alpha in alphas:
            out.add_(term, alpha=alpha)
        return out

    def _alphas(self, step: int):
        """(term, coefficient) of every usable difference term at `step`: k**i / i! (times d1_scale for i = 1)."""
        n = self.usable_terms(step)
        k = float(step - (self.last_step or 0))
        for i in range(1, n + 1):
            yield self.terms[i], (k ** i) / math.factorial(i) * (self.d1_scale if i == 1 else 1.0)

    @property
    def span(self) -> int:
        """How far the first difference may be extrapolated (0: not at all)."""
        return self.spans[0] if self.spans else 0

    def usable_terms(self, step: int) -> int:
        """How many difference terms may extrapolate to `step`: those whose span covers it."""
        if self.last_step is None or step <= self.last_step:
            return 0
        k = step - self.last_step
        n = 0
        while n < len(self.terms) - 1 and n < len(self.spans) and k <= self.spans[n]:
            n += 1
        return n
