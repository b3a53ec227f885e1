"""The CacheManager singleton: every accelerated model, tracked through weak references.

Per-model state (the engine, its hooks) lives here, keyed by `id(model)` and dropped by a
`weakref.finalize` when the model is garbage-collected, so a deleted model leaves nothing
behind. A model has one engine, or one per block list when a BlockAdapter describes several
(cache-dit's one cache context per list). Pipelines named by a BlockAdapter are linked to their
transformers (`pipe_modules`), and each of their calls is one run (`pipe_hooks.py`). All
registry operations take one re-entrant lock: ComfyUI samples on a worker thread while its server
thread reads stats.
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
from . import guidance, pipe_hooks
from .blocks import NoBlocksFoundError, find_block_lists
from .distributed import DecisionGroup
from .engine import CacheEngine
from .torch_hooks import CodecFactory, EngineBlocks, TorchHooks


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
    engines: List[CacheEngine] = dataclasses.field(default_factory=list)  # all of them; `engine` is the first


@dataclasses.dataclass
class ListSpec:
    """One block list a BlockAdapter describes: cached by its own engine with its own options."""

    name: str
    blocks: nn.ModuleList
    options: CacheOptions
    codec: Optional[CodecFactory] = None  # None: BlockIO (layout learned from the first call)


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
        self._pipes: Dict[int, tuple] = {}  # id(pipe) -> (weakref to pipe, [weakref to module])

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
                 rehook: Optional[Callable[[], None]] = None,
                 engines: Optional[Sequence[CacheEngine]] = None) -> ModelEntry:
        """Track `model` with its engine(s); replaces any previous registration of the same object."""
        key = id(model)
        engines = list(engines) if engines else [engine]
        with self._lock:
            if key in self._entries:
                self.release(model)
            entry = ModelEntry(key=key, name=engine.name, ref=weakref.ref(model), engine=engine, detach=detach,
                               block_lists=block_lists, rehook=rehook or (lambda: None), engines=engines)
            entry.finalizer = weakref.finalize(model, self._collected, key)
            self._entries[key] = entry
        for e in engines:
            self.logs.set_model(e.key, debug=e.options.debug, log_runs=e.options.log_runs)
            if bus.model_registered.receivers:
                bus.model_registered.send(e.key, name=e.name, strategy=e.options.strategy, options=e.options,
                                          num_blocks=e.num_blocks, level=e.level)
        return entry

    def accelerate_module(self, module: nn.Module, options: CacheOptions, name: Optional[str] = None,
                          process_group: Any = None) -> ModelEntry:
        """Hook a torch module (diffusers transformer, any DiT, or a block-less model at step level)."""
        lists = find_block_lists(module, options.blocks)
        self.release(module)  # a second enable_cache replaces the first, hooks included
        engine = CacheEngine(id(module), name or type(module).__name__, options, [len(bl) for _, bl in lists],
                             group=DecisionGroup(module, process_group, options.distributed))
        return self._install(module, [EngineBlocks(engine, [b for _, bl in lists for b in bl])],
                             [n for n, _ in lists])

    def accelerate_lists(self, module: nn.Module, specs: Sequence[ListSpec], name: Optional[str] = None,
                         process_group: Any = None) -> ModelEntry:
        """Hook the block lists a BlockAdapter names, one engine (cache context) per list."""
        if not specs:
            raise NoBlocksFoundError(f"{type(module).__name__}: no block list to cache")
        self.release(module)
        label = name or type(module).__name__
        parts = []
        for spec in specs:
            # keyed by its first block: the blocks live as long as the model, a list object may not
            engine = CacheEngine(id(spec.blocks[0]), f"{label}.{spec.name}", spec.options, [len(spec.blocks)],
                                 group=DecisionGroup(module, process_group, spec.options.distributed))
            parts.append(EngineBlocks(engine, list(spec.blocks)) if spec.codec is None
                         else EngineBlocks(engine, list(spec.blocks), spec.codec))
        return self._install(module, parts, [s.name for s in specs])

    def _install(self, module: nn.Module, parts: List[EngineBlocks], names: List[str]) -> ModelEntry:
        hooks = TorchHooks(module, parts)
        hooks.install()
        engines = [p.engine for p in parts]

        def detach() -> None:
            for engine in engines:
                engine.enabled = False
            hooks.remove()

        return self.register(module, engines[0], detach, names, rehook=hooks.install, engines=engines)

    def release(self, model: Any) -> bool:
        """Undo the hooks of `model` and forget it. False when it was not tracked."""
        key = id(model)
        with self._lock:
            entry = self._entries.pop(key, None)
        if entry is None:
            return False
        for engine in entry.engines:
            engine.finish_run()
        entry.detach()
        if entry.finalizer is not None:
            entry.finalizer.detach()
        self._forget(entry)
        return True

    def _collected(self, key: int) -> None:
        with self._lock:
            entry = self._entries.pop(key, None)
        if entry is not None:
            self._forget(entry)

    def _forget(self, entry: ModelEntry) -> None:
        for engine in entry.engines:
            self.logs.forget(engine.key)
            if bus.model_released.receivers:
                bus.model_released.send(engine.key, name=engine.name)

    # -- pipelines named by a BlockAdapter --------------------------------------------------------
    def link_pipe(self, pipe: Any, modules: Sequence[nn.Module]) -> None:
        """Remember which accelerated modules `pipe` runs, and make each of its calls one run."""
        try:
            ref = weakref.ref(pipe)
        except TypeError:
            return  # an object without weak references: found through its attributes instead
        with self._lock:
            self._pipes[id(pipe)] = (ref, [weakref.ref(m) for m in modules])
        pipe_hooks.hook_calls(pipe, self._pipe_boundary)

    def watch_guidance(self, pipe: Any, modules: Sequence[nn.Module]) -> None:
        """Let the engines of `modules` read `pipe`'s CFG scale and steps at each run start (guidance.py)."""
        probe = guidance.probe_for(pipe)
        for module in modules:
            entry = self.entry(module)
            for engine in entry.engines if entry is not None else ():
                engine.pipeline_probe = probe

    def unlink_pipe(self, pipe: Any) -> None:
        """Forget `pipe`'s link and restore its call."""
        with self._lock:
            self._pipes.pop(id(pipe), None)
        pipe_hooks.unhook_calls(pipe)

    def pipe_modules(self, pipe: Any) -> List[nn.Module]:
        """The modules linked to `pipe` by `link_pipe` that are still alive (empty when none)."""
        with self._lock:
            linked = self._pipes.get(id(pipe))
        if linked is None or linked[0]() is not pipe:
            return []
        return [m for m in (r() for r in linked[1]) if m is not None]

    def _pipe_boundary(self, pipe: Any) -> bool:
        """A call of `pipe` starts or ends: every engine of its modules ends its run. False when
        none of them is accelerated any more (the pipeline's hook can go)."""
        entries = [e for e in (self.entry(m) for m in self.pipe_modules(pipe)) if e is not None]
        for entry in entries:
            for engine in entry.engines:
                engine.finish_run()
        return bool(entries)

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

    def snapshot(self, entry: ModelEntry, engine: Optional[CacheEngine] = None) -> CacheStats:
        """CacheStats of one model's engine (its first by default; zeros before its first step)."""
        engine = engine or entry.engine
        cfg = engine.options.cache_config
        main = 1 if cfg.enable_separate_cfg and cfg.cfg_compute_first else 0  # cache-dit: the CFG call came first
        stats = self.stats.snapshot(engine.key, main) or CacheStats(name=engine.name)
        stats.cache_options = {"cache_config": engine.options.cache_config,
                               "calibrator_config": engine.options.calibrator_config,
                               "strategy": engine.options.strategy}
        stats.strategy = engine.options.strategy
        stats.level = engine.level
        stats.cache_bytes = max(stats.cache_bytes, engine.buffer_bytes())
        for device, n in engine.buffer_bytes_by_device().items():
            stats.cache_bytes_by_device[device] = max(stats.cache_bytes_by_device.get(device, 0), n)
        return stats

    def global_stats(self) -> dict:
        """Totals over every tracked model plus one entry per model (per block list with a BlockAdapter)."""
        per_model = {}
        hits = misses = 0
        for entry in self.entries():
            for i, engine in enumerate(entry.engines):
                s = self.snapshot(entry, engine)
                hits += s.cache_hits
                misses += s.cache_misses
                lists = list(entry.block_lists) if len(entry.engines) == 1 else [entry.block_lists[i]]
                per_model[f"{engine.name}#{engine.key:x}"] = {
                    "name": engine.name, "strategy": s.strategy, "level": s.level, "cache_hits": s.cache_hits,
                    "cache_misses": s.cache_misses, "hit_rate": s.hit_rate, "blocks_computed": s.blocks_computed,
                    "blocks_skipped": s.blocks_skipped, "estimated_compute_saved": s.estimated_compute_saved,
                    "runs": s.runs, "cache_bytes": s.cache_bytes,
                    "cache_bytes_by_device": s.cache_bytes_by_device, "block_lists": lists,
                }
        total = hits + misses
        return {"total_cache_hits": hits, "total_cache_misses": misses, "hit_rate": (hits / total) if total else 0.0,
                "models_tracked": len(per_model), "models": per_model}


def get_manager() -> CacheManager:
    """The process-wide CacheManager."""
    return CacheManager.instance()


__all__ = ["CacheManager", "ListSpec", "ModelEntry", "NoBlocksFoundError", "get_manager"]
