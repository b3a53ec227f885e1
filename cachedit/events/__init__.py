"""Events: the blinker bus (`bus`), and its subscribers: stats aggregation and structlog logging."""

from . import bus
from .bus import cache_hit, model_registered, model_released, run_finished, run_started, step_computed

__all__ = ["bus", "cache_hit", "model_registered", "model_released", "run_finished", "run_started", "step_computed"]
