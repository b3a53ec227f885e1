"""cache-dit's CFG options, and the one-time warnings where CacheDit runs them differently on purpose.

How each option behaves (README, "cache-dit compatibility", has the same table):

- `enable_separate_cfg=True`: as cache-dit: the calls of one step (cond, uncond) keep separate state.
- `enable_separate_cfg=False`: cache-dit then shares one state between all calls and counts each call
  as a step. CacheDit always keeps one state per call position in a step (per CFG branch), so with
  batched CFG (one call per step) both agree; with separate cond/uncond calls they differ, and a
  run that shows it warns once.
- `cfg_compute_first`: which call of a step cache-dit calls the CFG branch (its stats list it under
  `cfg_*`); the same here. cache-dit refuses it together with `cfg_diff_compute_separate=True`, and
  so does CacheDit (ValueError).
- `cfg_diff_compute_separate=False`: the CFG branch decides with the diff its partner measured at the
  same step, when there is one (DBCache); as cache-dit. With DBPrune cache-dit 1.5.3 fails with a
  TypeError there; CacheDit measures each branch's own diffs and warns once.
- DBPrune's dynamic threshold: cache-dit's CFG branch reads the other branch's diffs of the step,
  CacheDit's reads its own (warned once when both are on).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Set

logger = logging.getLogger("cachedit")
_warned: Set[str] = set()
_lock = threading.Lock()


def warn_once(topic: str, message: str) -> bool:
    """Log `message` as a warning on the "cachedit" logger the first time `topic` comes up in this
    process; True when it was logged now."""
    with _lock:
        if topic in _warned:
            return False
        _warned.add(topic)
    logger.warning("cachedit: %s", message)
    return True


def warn_differences(options: Any) -> None:
    """At enable / refresh time: warn once for each option set to a value CacheDit runs differently."""
    cfg = options.cache_config
    if str(cfg.cache_type) != "DBPrune" or not cfg.enable_separate_cfg:
        return
    if cfg.cfg_diff_compute_separate is False:
        warn_once("prune_cfg_diff", "cfg_diff_compute_separate=False with DBPrune: each CFG branch measures its own "
                                    "block diffs here (cache-dit 1.5.3 fails with a TypeError at this combination)")
    if cfg.enable_dynamic_prune_threshold:
        warn_once("prune_cfg_dynamic", "enable_dynamic_prune_threshold with enable_separate_cfg=True: each CFG "
                                       "branch's dynamic threshold follows its own diffs here (cache-dit's CFG branch "
                                       "reads the other branch's diffs of the step)")


def notice_run(options: Any, branches: int) -> None:
    """At the end of a run that had `branches` calls per step: warn once when
    `enable_separate_cfg=False` met separate CFG calls (cache-dit would share one state between them)."""
    if branches > 1 and options.cache_config.enable_separate_cfg is False:
        warn_once("enable_separate_cfg", "enable_separate_cfg=False, but this model is called more than once per "
                                         "step (separate cond/uncond calls): CacheDit keeps a separate cache state "
                                         "per call of a step, as cache-dit's enable_separate_cfg=True does (cache-dit "
                                         "with False would share one state and count every call as a step)")
