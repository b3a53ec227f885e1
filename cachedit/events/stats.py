"""Stats aggregation: a bus subscriber that keeps per-model counters for `summary` and
`get_global_stats`. Thread-safe: sampling threads write, any thread reads."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Dict, List, Optional

from . import bus


@dataclasses.dataclass
class CacheStats:
    """What `summary()` returns per accelerated module: cache-dit's fields plus CacheDit's own."""

    cache_options: dict = dataclasses.field(default_factory=dict)
    cached_steps: List[int] = dataclasses.field(default_factory=list)
    residual_diffs: Dict[str, Any] = dataclasses.field(default_factory=dict)  # DBPrune: a list of diffs per step
    cfg_cached_steps: List[int] = dataclasses.field(default_factory=list)
    cfg_residual_diffs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    accumulated_cached_steps: int = 0
    cfg_accumulated_cached_steps: int = 0
    accumulated_executed_steps: int = 0
    accumulated_transformer_executed_steps: int = 0
    pruned_steps: List[int] = dataclasses.field(default_factory=list)
    pruned_blocks: List[int] = dataclasses.field(default_factory=list)
    actual_blocks: List[int] = dataclasses.field(default_factory=list)
    pruned_ratio: Optional[float] = None
    cfg_pruned_steps: List[int] = dataclasses.field(default_factory=list)
    cfg_pruned_blocks: List[int] = dataclasses.field(default_factory=list)
    cfg_actual_blocks: List[int] = dataclasses.field(default_factory=list)
    cfg_pruned_ratio: Optional[float] = None
    parallelism_config: Any = None
    quantize_config: Any = None
    # CacheDit's own
    name: str = ""
    strategy: str = ""
    level: str = ""  # "block" or "step"
    cache_hits: int = 0
    cache_misses: int = 0
    hit_rate: float = 0.0
    blocks_computed: int = 0
    blocks_skipped: int = 0
    estimated_compute_saved: float = 0.0  # fraction of block compute skipped
    runs: int = 0
    cache_bytes: int = 0
    cache_bytes_by_device: Dict[str, int] = dataclasses.field(default_factory=dict)  # peak per device ("cuda:0", "cpu")
    # error feedback (last run, branch 0; cfg_* for other branches): at each computed step, the
    # relative error a reuse would have made there; at each decision, the threshold it compared with
    reuse_errors: Dict[str, float] = dataclasses.field(default_factory=dict)
    thresholds: Dict[str, float] = dataclasses.field(default_factory=dict)
    cfg_reuse_errors: Dict[str, float] = dataclasses.field(default_factory=dict)
    error_budget: Optional[float] = None
    # the last run's sampler added fresh noise at every step (ancestral / SDE): from this step on it
    # computed every step, as a reuse would have changed the image (manager/sampler_noise.py)
    sampler_noise_step: Optional[int] = None


@dataclasses.dataclass
class _ModelCounters:
    name: str
    strategy: str = ""
    level: str = ""
    hits: int = 0
    misses: int = 0
    blocks_computed: int = 0
    blocks_total: int = 0
    executed_steps: int = 0
    calls: int = 0
    cached_by_branch: Dict[int, int] = dataclasses.field(default_factory=dict)
    runs: int = 0
    run_index: int = -1
    last_cached: Dict[int, List[int]] = dataclasses.field(default_factory=dict)
    last_diffs: Dict[int, Dict[str, float]] = dataclasses.field(default_factory=dict)
    last_errors: Dict[int, Dict[str, float]] = dataclasses.field(default_factory=dict)
    last_thresholds: Dict[int, Dict[str, float]] = dataclasses.field(default_factory=dict)
    # DBPrune (last run, per branch): blocks pruned and blocks in the list, per call
    last_pruned: Dict[int, List[int]] = dataclasses.field(default_factory=dict)
    last_actual: Dict[int, List[int]] = dataclasses.field(default_factory=dict)
    error_budget: Optional[float] = None
    last_record: Any = None
    cache_bytes: int = 0
    bytes_by_device: Dict[str, int] = dataclasses.field(default_factory=dict)


def _prune_fields(c: _ModelCounters, main: int) -> dict:
    """cache-dit's DBPrune stats of the last run: the main branch, and the other branches as cfg_*."""
    if not c.last_pruned:
        return {}
    pruned, actual = c.last_pruned.get(main, []), c.last_actual.get(main, [])
    cfg_pruned = [n for b, ns in sorted(c.last_pruned.items()) if b != main for n in ns]
    cfg_actual = [n for b, ns in sorted(c.last_actual.items()) if b != main for n in ns]
    return dict(pruned_steps=list(c.last_cached.get(main, [])), pruned_blocks=list(pruned), actual_blocks=list(actual),
                pruned_ratio=sum(pruned) / sum(actual) if pruned and sum(actual) else None,
                cfg_pruned_steps=sorted({s for b, steps in c.last_cached.items() if b != main for s in steps}),
                cfg_pruned_blocks=cfg_pruned, cfg_actual_blocks=cfg_actual,
                cfg_pruned_ratio=sum(cfg_pruned) / sum(cfg_actual) if cfg_pruned and sum(cfg_actual) else None)


class StatsAggregator:
    """Subscribes to the bus and counts; `snapshot(key)` gives a consistent copy."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: Dict[int, _ModelCounters] = {}
        bus.model_registered.connect(self._on_registered)
        bus.model_released.connect(self._on_released)
        bus.run_started.connect(self._on_run_started)
        bus.run_finished.connect(self._on_run_finished)
        bus.step_computed.connect(self._on_computed)
        bus.cache_hit.connect(self._on_hit)
        bus.error_measured.connect(self._on_error)

    def _counters(self, key: int, name: str = "") -> _ModelCounters:
        c = self._models.get(key)
        if c is None:
            c = self._models[key] = _ModelCounters(name=name)
        return c

    def _on_registered(self, key: int, *, name: str, strategy: str = "", level: str = "", **_: Any) -> None:
        with self._lock:
            c = self._counters(key, name)
            c.name, c.strategy, c.level = name, strategy, level

    def _on_released(self, key: int, **_: Any) -> None:
        with self._lock:
            self._models.pop(key, None)

    def _on_run_started(self, key: int, *, name: str, run: int, **_: Any) -> None:
        with self._lock:
            c = self._counters(key, name)
            c.run_index = run
            c.runs += 1
            c.last_cached = {}
            c.last_diffs = {}
            c.last_errors = {}
            c.last_thresholds = {}
            c.last_pruned = {}
            c.last_actual = {}

    def _on_run_finished(self, key: int, *, record: Any = None, cache_bytes: int = 0,
                         cache_bytes_by_device: Optional[Dict[str, int]] = None, **_: Any) -> None:
        with self._lock:
            c = self._counters(key)
            c.last_record = record
            c.cache_bytes = max(c.cache_bytes, cache_bytes)
            for device, n in (cache_bytes_by_device or {}).items():
                c.bytes_by_device[device] = max(c.bytes_by_device.get(device, 0), n)

    def _on_error(self, key: int, *, step: int, branch: int, error: float, budget: float, **_: Any) -> None:
        with self._lock:
            c = self._counters(key)
            c.last_errors.setdefault(branch, {})[str(step)] = error
            c.error_budget = budget

    def _on_computed(self, key: int, **payload: Any) -> None:
        self._on_step(key, reused=False, **payload)

    def _on_hit(self, key: int, **payload: Any) -> None:
        self._on_step(key, reused=True, **payload)

    def _on_step(self, key: int, *, reused: bool, step: int, branch: int, diff: Optional[float], blocks: int,
                 total_blocks: int, **payload: Any) -> None:
        with self._lock:
            c = self._counters(key, payload.get("name", ""))
            c.calls += 1
            if branch == 0:
                c.executed_steps += 1
            c.blocks_computed += blocks
            c.blocks_total += total_blocks
            if "pruned_blocks" in payload:  # DBPrune: every diff of the step, as cache-dit lists them
                c.last_pruned.setdefault(branch, []).append(payload["pruned_blocks"])
                c.last_actual.setdefault(branch, []).append(total_blocks)
                if payload.get("diffs"):
                    c.last_diffs.setdefault(branch, {})[str(step)] = list(payload["diffs"])
            elif diff is not None:
                c.last_diffs.setdefault(branch, {})[str(step)] = diff
            threshold = payload.get("threshold")
            if threshold is not None:
                c.last_thresholds.setdefault(branch, {})[str(step)] = threshold
            if reused:
                c.hits += 1
                c.cached_by_branch[branch] = c.cached_by_branch.get(branch, 0) + 1
                c.last_cached.setdefault(branch, []).append(step)
            else:
                c.misses += 1

    def reset(self, key: Optional[int] = None) -> None:
        """Zero the counters of one model (or all)."""
        with self._lock:
            keys = [key] if key is not None else list(self._models)
            for k in keys:
                old = self._models.get(k)
                if old is not None:
                    self._models[k] = _ModelCounters(name=old.name, strategy=old.strategy, level=old.level,
                                                     run_index=old.run_index)

    def snapshot(self, key: int, main_branch: int = 0) -> Optional[CacheStats]:
        """A CacheStats copy for one model, or None if it is not tracked. `main_branch`: the branch
        reported as the non-CFG one (1 with cache-dit's cfg_compute_first); the others are cfg_*."""
        with self._lock:
            c = self._models.get(key)
            if c is None:
                return None
            decisions = c.hits + c.misses
            skipped = c.blocks_total - c.blocks_computed
            return CacheStats(
                cached_steps=list(c.last_cached.get(main_branch, [])),
                residual_diffs=dict(c.last_diffs.get(main_branch, {})),
                cfg_cached_steps=sorted({s for b, steps in c.last_cached.items() if b != main_branch for s in steps}),
                cfg_residual_diffs={k: v for b, d in c.last_diffs.items() if b != main_branch for k, v in d.items()},
                accumulated_cached_steps=c.cached_by_branch.get(main_branch, 0),
                cfg_accumulated_cached_steps=sum(v for b, v in c.cached_by_branch.items() if b != main_branch),
                accumulated_executed_steps=c.executed_steps,
                accumulated_transformer_executed_steps=c.calls,
                name=c.name,
                strategy=c.strategy,
                level=c.level,
                cache_hits=c.hits,
                cache_misses=c.misses,
                hit_rate=(c.hits / decisions) if decisions else 0.0,
                blocks_computed=c.blocks_computed,
                blocks_skipped=skipped,
                estimated_compute_saved=(skipped / c.blocks_total) if c.blocks_total else 0.0,
                runs=c.runs,
                cache_bytes=c.cache_bytes,
                cache_bytes_by_device=dict(c.bytes_by_device),
                reuse_errors=dict(c.last_errors.get(main_branch, {})),
                thresholds=dict(c.last_thresholds.get(main_branch, {})),
                cfg_reuse_errors={k: v for b, d in c.last_errors.items() if b != main_branch for k, v in d.items()},
                **_prune_fields(c, main_branch),
                error_budget=c.error_budget,
                sampler_noise_step=getattr(c.last_record, "noisy_from", None),
            )

    def last_record(self, key: int) -> Any:
        """The RunRecord of the last finished run of one model (None before any)."""
        with self._lock:
            c = self._models.get(key)
            return c.last_record if c is not None else None

    def keys(self) -> List[int]:
        """Models with counters."""
        with self._lock:
            return list(self._models)
