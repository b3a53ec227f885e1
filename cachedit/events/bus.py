"""The event bus: blinker signals that strategies and the manager emit.

Every signal is sent with `sender=<model key>` (an int, stable for the life of the model) and
keyword payloads. Emitters check `signal.receivers` first, so a signal nobody listens to costs
one attribute read: no payload is built, no call is made.

Signals and their payloads:
- `model_registered`: name, strategy, options (CacheOptions), num_blocks, level ("block"|"step")
- `model_released`:   name
- `run_started`:      name, run (index), reason ("first call"|"timestep went back up"|...)
- `branch_reset`:     name, run, branch, reason (a branch's input changed shape/dtype/device: fresh buffers)
- `run_finished`:     name, run, record (RunRecord: per-step decisions and diffs), cache_bytes, options,
                      middle_share (share of the block compute a reused step skips), error_budget, guidance,
                      uneven_branches and sampler (what lowered this run's budget, or None)
- `step_computed`:    name, run, step, branch, diff (float or None), threshold (float or None),
                      blocks (computed), total_blocks
- `cache_hit`:        the same as `step_computed`, for a reused step
- `error_measured`:   name, step, branch, error (relative error a reuse would have made at that computed
                      step), diff (the probe change there), gap (steps since the computed step before), budget,
                      threshold (the probe threshold a reuse over `gap` steps at this point of sampling has now,
                      this error included)
"""

from __future__ import annotations

import blinker

_bus = blinker.Namespace()

model_registered = _bus.signal("model_registered")
model_released = _bus.signal("model_released")
run_started = _bus.signal("run_started")
run_finished = _bus.signal("run_finished")
branch_reset = _bus.signal("branch_reset")
step_computed = _bus.signal("step_computed")
cache_hit = _bus.signal("cache_hit")
error_measured = _bus.signal("error_measured")

ALL_SIGNALS = (model_registered, model_released, run_started, run_finished, branch_reset, step_computed, cache_hit,
               error_measured)
