"""Shared pieces of the seeded fuzz tests (library and ComfyUI): which seeds run, random configs,
and the per-generation invariants on a model's stats.

Seeds: `CACHEDIT_FUZZ_SEEDS` unset runs the suite's fixed seeds; a number N runs seeds 0..N-1; a
comma list ("17,23") runs exactly those. A failure names its seed, so `CACHEDIT_FUZZ_SEEDS=<seed>`
replays it (every random choice comes from one `random.Random(seed)`).
"""

from __future__ import annotations

import os
import random
from typing import Any, Dict, List, Optional, Sequence

COUNTERS = ("cache_hits", "cache_misses", "blocks_computed", "blocks_skipped", "accumulated_executed_steps",
            "accumulated_transformer_executed_steps", "accumulated_cached_steps", "runs")


def seeds(default: Sequence[int]) -> List[int]:
    """The seeds to run (see the module docstring)."""
    raw = os.environ.get("CACHEDIT_FUZZ_SEEDS", "").strip()
    if not raw:
        return list(default)
    if "," in raw:
        return [int(s) for s in raw.split(",") if s.strip()]
    return list(range(int(raw)))


def random_config(rng: random.Random, num_blocks: int, max_steps: int) -> Dict[str, Any]:
    """enable_cache keyword arguments: every strategy, Fn/Bn up to beyond the block count,
    TaylorSeer orders, steps masks, caps, noise, windows."""
    kw: Dict[str, Any] = {}
    pick = rng.random
    if pick() < 0.2:
        return kw  # the defaults
    kw["strategy"] = rng.choice(["adaptive", "fixed", "dynamic"])
    if pick() < 0.6:
        kw["Fn_compute_blocks"] = rng.randint(0, num_blocks + 2)
        kw["Bn_compute_blocks"] = rng.randint(0, num_blocks + 2) if pick() < 0.5 else 0
    if pick() < 0.7:
        kw["residual_diff_threshold"] = rng.choice([0.0, 0.02, 0.12, 0.3, 0.8, 1.5])
    if pick() < 0.6:
        kw["max_warmup_steps"] = rng.randint(0, 5)
    if pick() < 0.4:
        kw["max_cached_steps"] = rng.choice([-1, 0, 1, 3])
    if pick() < 0.4:
        kw["max_continuous_cached_steps"] = rng.choice([-1, 1, 2, 4])
    if pick() < 0.4:
        kw["enable_taylorseer"] = True
        kw["taylorseer_order"] = rng.randint(1, 3)
    if pick() < 0.2:
        kw["steps_computation_mask"] = [rng.choice([0, 1]) for _ in range(max_steps)]
        kw["steps_computation_policy"] = rng.choice(["dynamic", "static"])
    if pick() < 0.3:
        kw["skip_interval"] = rng.randint(1, 4)
    if pick() < 0.15:
        kw["noise_scale"] = rng.choice([0.01, 0.1])
    if pick() < 0.2:
        kw["start_percent"] = rng.choice([0.0, 0.2])
        kw["end_percent"] = rng.choice([0.6, 1.0])
    return kw


def never_reuses(kw: Dict[str, Any]) -> bool:
    """Configs that can never reuse: adaptive at threshold 0 without a static mask (which reuses
    every step it does not mark), or no reuse allowed at all."""
    static = kw.get("steps_computation_policy") == "static" and "steps_computation_mask" in kw
    if kw.get("max_cached_steps") == 0 and not static:
        return True
    return kw.get("strategy") == "adaptive" and kw.get("residual_diff_threshold") == 0.0 and not static


def counters(stats: Any) -> Dict[str, int]:
    """The counters that only grow between resets."""
    return {name: int(getattr(stats, name)) for name in COUNTERS}


def check_stats(stats: Any, steps: int, before: Optional[Dict[str, int]], where: str) -> Dict[str, int]:
    """Reported steps inside the run; counters never below `before`. Returns the counters now."""
    for field in ("cached_steps", "cfg_cached_steps"):
        bad = [s for s in getattr(stats, field) if not 0 <= int(s) < steps]
        assert not bad, f"{where}: {field} {bad} outside a run of {steps} steps"
    for field in ("residual_diffs", "cfg_residual_diffs"):
        bad = [k for k in getattr(stats, field) if not 0 <= int(k) < steps]
        assert not bad, f"{where}: {field} keys {bad} outside a run of {steps} steps"
    now = counters(stats)
    if before is not None:
        down = {k: (before[k], now[k]) for k in now if now[k] < before[k]}
        assert not down, f"{where}: counters went backwards without a reset: {down}"
    return now


__all__ = ["COUNTERS", "check_stats", "counters", "never_reuses", "random_config", "seeds"]


class RaiseAt:
    """Raises `make()` from `module` at its `at`-th call, once (a forward pre-hook): the fault
    injected by the fault tests, library and ComfyUI alike."""

    def __init__(self, module: Any, at: int, make: Any) -> None:
        self.calls, self.at, self.make = 0, at, make
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module: Any, args: Any) -> None:
        self.calls += 1
        if self.calls == self.at:
            raise self.make()

    def close(self) -> None:
        """Remove the hook."""
        self.handle.remove()
