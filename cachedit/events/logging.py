"""structlog subscriber: key=value lines for debug (per step) and one line per finished run.

It goes through the stdlib logger "cachedit" so ComfyUI's console and users' logging setup
receive it. The per-step handlers are connected only while some model has debug on, so with
debug off the step signals have no receiver for logging at all.
"""

from __future__ import annotations

import logging as std_logging
import threading
from typing import Any, Optional, Set

import structlog

from . import bus, report

_std = std_logging.getLogger("cachedit")
log = structlog.wrap_logger(
    _std,
    processors=[structlog.processors.KeyValueRenderer(key_order=["event", "model", "run", "step", "branch"], drop_missing=True)],
    wrapper_class=structlog.stdlib.BoundLogger,
)


class LogSubscriber:
    """Writes the debug log of models with debug on, and run lines of models that ask for them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._debug: Set[int] = set()
        self._runs: Set[int] = set()
        bus.run_finished.connect(self._on_run_finished)

    def set_model(self, key: int, *, debug: bool, log_runs: bool) -> None:
        """Turn the debug log / run lines of one model on or off."""
        with self._lock:
            if debug:
                self._debug.add(key)
            else:
                self._debug.discard(key)
            if log_runs or debug:
                self._runs.add(key)
            else:
                self._runs.discard(key)
            wanted = bool(self._debug)
        handlers = ((bus.step_computed, self._on_computed), (bus.cache_hit, self._on_hit),
                    (bus.run_started, self._on_run_started), (bus.branch_reset, self._on_branch_reset),
                    (bus.error_measured, self._on_error))
        if wanted:
            _ensure_visible()
        for signal, handler in handlers:
            if wanted:
                signal.connect(handler)
            else:
                signal.disconnect(handler)

    def forget(self, key: int) -> None:
        """Drop a released model."""
        self.set_model(key, debug=False, log_runs=False)

    def _on_computed(self, key: int, **p: Any) -> None:
        self._step(key, "compute", p)

    def _on_hit(self, key: int, **p: Any) -> None:
        self._step(key, "reuse", p)

    def _step(self, key: int, decision: str, p: dict) -> None:
        if key not in self._debug:
            return
        diff: Optional[float] = p.get("diff")
        threshold: Optional[float] = p.get("threshold")
        log.debug("cachedit.step", model=p.get("name"), run=p.get("run"), step=p.get("step"), branch=p.get("branch"),
                  decision=decision, diff=None if diff is None else round(diff, 5),
                  threshold=None if threshold is None else round(threshold, 5),
                  blocks=f"{p.get('blocks')}/{p.get('total_blocks')}")

    def _on_error(self, key: int, **p: Any) -> None:
        if key in self._debug:
            diff, threshold = p.get("diff"), p.get("threshold")
            log.debug("cachedit.error", model=p.get("name"), step=p.get("step"), branch=p.get("branch"),
                      error=round(p.get("error"), 5), budget=p.get("budget"), gap=p.get("gap"),
                      diff=None if diff is None else round(diff, 5),
                      next_threshold=None if threshold is None else round(threshold, 5))

    def _on_run_started(self, key: int, **p: Any) -> None:
        if key in self._debug:
            log.debug("cachedit.run_started", model=p.get("name"), run=p.get("run"), reason=p.get("reason"))

    def _on_branch_reset(self, key: int, **p: Any) -> None:
        if key in self._debug:
            log.debug("cachedit.branch_reset", model=p.get("name"), run=p.get("run"), branch=p.get("branch"),
                      reason=p.get("reason"))

    def _on_run_finished(self, key: int, **p: Any) -> None:
        if key not in self._runs:
            return
        record = p.get("record")
        steps = record.steps if record is not None else []
        decided_steps = {s.step for s in steps}
        reused_steps = {s.step for s in steps if s.reused}
        diffs = [s.diff for s in steps if s.diff is not None and s.diff >= 0]
        total = len(steps)
        reused = sum(1 for s in steps if s.reused)
        options = p.get("options")
        speedup = round(report.estimated_speedup(reused, total, p.get("middle_share", 1.0)), 2) if total else None
        preset = {k: p[k] for k in ("family", "setting", "guidance", "uneven_branches", "sampler") if p.get(k) is not None}
        # presets.py; a CFG scale, CFG branches of different form or a higher-order sampler that lowered the budget
        if getattr(record, "noisy_from", None) is not None:  # sampler_noise.py
            preset["sampler_noise"] = f"every step computed from step {record.noisy_from}"
        log.info("cachedit.run", model=p.get("name"), run=p.get("run"), **preset,
                 reused=f"{len(reused_steps)}/{len(decided_steps)} steps", decisions=f"{reused}/{total}",
                 est_speedup=speedup, strategy=getattr(options, "strategy", None), **report.diff_percentiles(diffs),
                 **report.error_percentiles([s.error for s in steps if s.error is not None],
                                            p.get("error_budget")))


def _ensure_visible() -> None:
    """Make debug lines show up when the user has not configured logging for "cachedit"."""
    if _std.level == std_logging.NOTSET or _std.level > std_logging.DEBUG:
        _std.setLevel(std_logging.DEBUG)
    logger: Optional[std_logging.Logger] = _std
    while logger is not None:
        if logger.handlers:
            return
        logger = logger.parent if logger.propagate else None
    handler = std_logging.StreamHandler()
    handler.setFormatter(std_logging.Formatter("%(message)s"))
    _std.addHandler(handler)
