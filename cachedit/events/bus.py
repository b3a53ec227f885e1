"""The event bus: blinker signals that strategies and the manager emit.

Every signal is sent with `sender=<model key>` (an int, stable for the life of the model) and
keyword payloads. Emitters check `signal.receivers` first, so a signal nobody listens to costs
one attribute read: no payload is built, no call is made.

Signals and their payloads:
- `model_registered`: name, strategy, options (CacheOptions), num_blocks, level ("block"|"step")
- `model_released`:   name
- `run_started`:      name, run (index), reason ("first call"|"timestep went up"|...)
- `run_finished`:     name, run, record (RunRecord: per-step decisions and diffs)
- `step_computed`:    name, run, step, branch, diff (float or None), blocks (computed), total_blocks
- `cache_hit`:        name, run, step, branch, diff (float or None), blocks (computed), total_blocks
"""

from __future__ import annotations

import blinker

_bus = blinker.Namespace()

model_registered = _bus.signal("model_registered")
model_released = _bus.signal("model_released")
run_started = _bus.signal("run_started")
run_finished = _bus.signal("run_finished")
step_computed = _bus.signal("step_computed")
cache_hit = _bus.signal("cache_hit")

ALL_SIGNALS = (model_registered, model_released, run_started, run_finished, step_computed, cache_hit)
