"""The CacheManager singleton: every accelerated model, tracked through weak references.

Per-model state (the engine, its hooks) lives here, keyed by `id(model)` and dropped by a
`weakref.finalize` when the model is garbage-collected, so a deleted model leaves nothing
behind. All registry operations take one re-entrant lock: ComfyUI samples on a worker thread
while its server thread reads stats.
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from typing import Any, Callable, Dict, List, Optional, Sequence

from torch import nn

from ..config import CacheOptions, GlobalConfig
from ..events import bus
from ..events.logging import LogSubscriber
from ..events.stats import CacheStats, StatsAggregator
from .blocks import NoBlocksFoundError, find_block_lists
from .engine import CacheEngine
from .torch_hooks import TorchHooks


@dataclasses.dataclass
class ModelEntry:
    """What the manager keeps for one accelerated model."""

    key: int
    name: str
    ref: Callable[[], Any]  # weakref to the model
    engine: CacheEngine
    detach: Callable[[], None]  # undo every hook
    block_lists: List[str]
    rehook: Callable[[], None] = lambda: None  # re-install hooks after a reconfigure
    finalizer: Any = None


class CacheManager:
    """Registry of accelerated models, their engines, and the process-wide defaults."""

    _instance: Optional["CacheManager"] = None
    _instance_lock = threading.Lock()

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._entries: Dict[int, ModelEntry] = {}
        self.global_config = GlobalConfig()
        self.stats = StatsAggregator()
        self.logs = LogSubscriber()

    @classmethod
    def instance(cls) -> "CacheManager":
        """The process-wide manager (created on first use)."""
        if cls._instance is None:
            with cls._instance_lock:
                if cls._instance is None:
                    cls._instance = cls()
        return cls._instance

    # -- registration ---------------------------------------------------------------------------
    def register(self, model: Any, engine: CacheEngine, detach: Callable[[], None], block_lists: List[str],
                 rehook: Optional[Callable[[], None]] = None) -> ModelEntry:
        """Track `model` with its engine; replaces any previous registration of the same object."""
        key = id(model)
        with self._lock:
            if key in self._entries:
                self.release(model)
            entry = ModelEntry(key=key, name=engine.name, ref=weakref.ref(model), engine=engine, detach=detach,
                               block_lists=block_lists, rehook=rehook or (lambda: None))
            entry.finalizer = weakref.finalize(model, self._collected, key)
            self._entries[key] = entry
        self.logs.set_model(key, debug=engine.options.debug, log_runs=engine.options.log_runs)
        if bus.model_registered.receivers:
            bus.model_registered.send(key, name=engine.name, strategy=engine.options.strategy, options=engine.options,
                                      num_blocks=engine.num_blocks, level=engine.level)
        return entry

    def accelerate_module(self, module: nn.Module, options: CacheOptions, name: Optional[str] = None) -> ModelEntry:
        """Hook a torch module (diffusers transformer, any DiT, or a block-less model at step level)."""
        lists = find_block_lists(module, options.blocks)
        self.release(module)  # a second enable_cache replaces the first, hooks included
        engine = CacheEngine(id(module), name or type(module).__name__, options, [len(bl) for _, bl in lists])
        hooks = TorchHooks(engine, module, [bl for _, bl in lists])
        hooks.install()

        def detach() -> None:
            engine.enabled = False
            hooks.remove()

        return self.register(module, engine, detach, [n for n, _ in lists], rehook=hooks.install)

    def release(self, model: Any) -> bool:
        """Undo the hooks of `model` and forget it. False when it was not tracked."""
        key = id(model)
        with self._lock:
            entry = self._entries.pop(key, None)
        if entry is None:
            return False
        entry.engine.finish_run()
        entry.detach()
        if entry.finalizer is not None:
            entry.finalizer.detach()
        self._forget(key, entry.name)
        return True

    def _collected(self, key: int) -> None:
        with self._lock:
            entry = self._entries.pop(key, None)
        if entry is not None:
            self._forget(key, entry.name)

    def _forget(self, key: int, name: str) -> None:
        self.logs.forget(key)
        if bus.model_released.receivers:
            bus.model_released.send(key, name=name)

    # -- lookup ---------------------------------------------------------------------------------
    def entry(self, model: Any) -> Optional[ModelEntry]:
        """The entry of a tracked model (None if not tracked)."""
        with self._lock:
            entry = self._entries.get(id(model))
        if entry is not None and entry.ref() is not model:
            return None  # a stale id reused by another object
        return entry

    def entries(self) -> List[ModelEntry]:
        """Every live tracked model."""
        with self._lock:
            return [e for e in self._entries.values() if e.ref() is not None]

    def snapshot(self, entry: ModelEntry) -> CacheStats:
        """CacheStats of one model (zeros before its first step)."""
        stats = self.stats.snapshot(entry.key) or CacheStats(name=entry.name)
        stats.cache_options = {"cache_config": entry.engine.options.cache_config,
                               "calibrator_config": entry.engine.options.calibrator_config,
                               "strategy": entry.engine.options.strategy}
        stats.strategy = entry.engine.options.strategy
        stats.level = entry.engine.level
        stats.cache_bytes = max(stats.cache_bytes, entry.engine.buffer_bytes())
        return stats

    def global_stats(self) -> dict:
        """Totals over every tracked model plus one entry per model."""
        per_model = {}
        hits = misses = 0
        for entry in self.entries():
            s = self.snapshot(entry)
            hits += s.cache_hits
            misses += s.cache_misses
            per_model[f"{entry.name}#{entry.key:x}"] = {
                "name": entry.name, "strategy": s.strategy, "level": s.level, "cache_hits": s.cache_hits,
                "cache_misses": s.cache_misses, "hit_rate": s.hit_rate, "blocks_computed": s.blocks_computed,
                "blocks_skipped": s.blocks_skipped, "estimated_compute_saved": s.estimated_compute_saved,
                "runs": s.runs, "cache_bytes": s.cache_bytes, "block_lists": list(entry.block_lists),
            }
        total = hits + misses
        return {"total_cache_hits": hits, "total_cache_misses": misses, "hit_rate": (hits / total) if total else 0.0,
                "models_tracked": len(per_model), "models": per_model}


def get_manager() -> CacheManager:
    """The process-wide CacheManager."""
    return CacheManager.instance()


__all__ = ["CacheManager", "ModelEntry", "NoBlocksFoundError", "get_manager"]
