"""What a patched ComfyUI ModelPatcher carries: its engine, its hook layout, the sigma schedule
of the sampling run in progress (which turns each call's sigma into a step index) and the sigma ->
progress map (progress.py) that gives start/end_percent ComfyUI's meaning."""

from __future__ import annotations

import bisect
from typing import Any, Dict, List, Optional, Tuple

import torch

from ...manager.engine import CacheEngine
from .progress import SigmaProgress

KEY = "cachedit"  # wrapper key and attachment name on the ModelPatcher


class _Handle:
    """Attachment `cachedit` of a patched ModelPatcher. Clones share it (ComfyUI copies
    attachments by reference), and it keeps the registered patcher alive while any clone uses
    the engine."""

    def __init__(self, engine: CacheEngine, layout: Any, owner: Any) -> None:
        self.engine = engine
        self.layout = layout
        self.owner = owner  # the ModelPatcher registered with the manager
        self.schedule: Optional[List[float]] = None
        self.from_outer_sample = False  # schedule set by our OUTER_SAMPLE wrapper (else from sample_sigmas)
        self._source: Any = None
        self._exact: Dict[float, List[int]] = {}
        self._neg: List[float] = []
        self._last = 0
        self.progress = SigmaProgress()  # progress(model_sampling, sigma) -> ComfyUI's percent
        # memory.py: the cache's bytes per latent element on the last run (None before one), the share
        # of them that stays on the model's device with an offloaded cache, and this run's plan
        self.bytes_per_element: Optional[float] = None
        self.probe_share = 0.5
        self.planned: Optional[dict] = None

    def set_schedule(self, sigmas: Any, from_outer_sample: bool = True) -> None:
        """Record a run's sigmas (one device->host copy per run)."""
        self.from_outer_sample = from_outer_sample
        if not isinstance(sigmas, torch.Tensor) or sigmas.numel() < 2:
            self.clear_schedule()
            return
        values = [float(v) for v in sigmas.detach().reshape(-1).float().cpu().tolist()]
        self.schedule = values
        self._source = sigmas
        self._exact = {}
        for i, v in enumerate(values):
            self._exact.setdefault(v, []).append(i)
        self._neg = [-v for v in values]
        self._last = 0

    def first_sigma(self) -> Optional[float]:
        """The run's first sigma (None: no schedule known)."""
        return self.schedule[0] if self.schedule else None

    def clear_schedule(self) -> None:
        """Forget the run's schedule (end of sampling)."""
        self.from_outer_sample = False
        self.schedule = None
        self._source = None
        self._exact = {}
        self._neg = []
        self._last = 0

    def step_of(self, sigma: Optional[float], transformer_options: dict) -> Tuple[Optional[int], Optional[int]]:
        """(step index, total steps) of a call at `sigma`: the schedule index of that sigma, or of
        the step in progress for a sigma between two schedule entries (dpm_2, dpmpp_2s...)."""
        if sigma is None:
            return None, None
        if not self.from_outer_sample:
            # sampled without our OUTER_SAMPLE wrapper running (a custom sampling loop): use the
            # schedule ComfyUI puts in transformer_options, re-read whenever it is another tensor
            sample_sigmas = transformer_options.get("sample_sigmas")
            if sample_sigmas is not self._source:
                self.set_schedule(sample_sigmas, from_outer_sample=False)
            if self.schedule is None:
                return None, None
        n = len(self.schedule)
        exact = self._exact.get(sigma)
        if exact is not None:
            # a sigma listed twice: the occurrence at or after the step in progress
            index = next((i for i in exact if i >= self._last), exact[0])
        else:
            index = bisect.bisect_right(self._neg, -sigma) - 1
        index = max(0, min(index, n - 2))
        self._last = index
        return index, n - 1


def handle_of(patcher: Any) -> Optional[_Handle]:
    """The handle a patched ModelPatcher (or a clone of it) carries, or None."""
    attachments = getattr(patcher, "attachments", None)
    if not isinstance(attachments, dict):
        return None
    handle = attachments.get(KEY)
    return handle if isinstance(handle, _Handle) else None
