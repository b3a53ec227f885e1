"""Events: the blinker bus (`bus`), and its subscribers: stats aggregation and structlog logging."""

from . import bus
from .bus import branch_reset, cache_hit, error_measured, model_registered, model_released, run_finished, run_started, step_computed

__all__ = ["branch_reset", "bus", "cache_hit", "error_measured", "model_registered", "model_released", "run_finished", "run_started", "step_computed"]
