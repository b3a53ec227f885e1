"""What an accelerated model runs with: `CacheOptions` (resolved from cache-dit configs, legacy
keyword arguments, CacheDit's own arguments and the process-wide `GlobalConfig`), and the tuned
defaults used when the user passes no cache config."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Optional, Sequence, Tuple

from .cache_dit import BasicCacheConfig, CalibratorConfig, DBCacheConfig, TaylorSeerCalibratorConfig, copy_cache_config
from .validate import check_bool, check_float, check_int, check_str, fail


def strategy_names() -> Tuple[str, ...]:
    """The strategy names CacheDit runs (the one registry is `cachedit.manager.strategies.STRATEGIES`)."""
    from ..manager.strategies import STRATEGIES  # noqa: PLC0415 (the manager imports this module)

    return tuple(STRATEGIES)


@dataclasses.dataclass
class GlobalConfig:
    """Process-wide defaults used when `enable_cache` is called without the matching argument."""

    default_strategy: str = "adaptive"
    default_skip_interval: int = 2
    default_warmup_steps: Optional[int] = None  # None: the strategy's own default
    default_noise_scale: float = 0.0
    global_debug: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "GlobalConfig":
        """Raise ValueError naming the invalid field."""
        if self.default_strategy not in strategy_names():
            fail("default_strategy", self.default_strategy, " | ".join(strategy_names()))
        check_int("default_skip_interval", self.default_skip_interval, 1, 10)
        if self.default_warmup_steps is not None:
            check_int("default_warmup_steps", self.default_warmup_steps, 0, 1000)
        check_float("default_noise_scale", self.default_noise_scale, 0.0, 1.0)
        check_bool("global_debug", self.global_debug)
        return self


# Defaults of the `adaptive` strategy when the user passes no cache config: the probe is the block
# stack's input (Fn 0: a reused step runs no block at all), a short warmup and a cap on consecutive
# reuse; the threshold is only the starting point, error feedback moves it to where the measured
# reuse error meets the quality preset's budget. Screened on the bundled models' hard scenarios
# (benchmarks/results/candidates.md): the input probe, calibrated by feedback, kept every cell at
# >= 40 dB where the first block's residual (Fn 1) with the same warmup and cap lost three, and
# reuses more at 28 steps (42-43% of the block compute instead of 46-48%).
ADAPTIVE_DEFAULTS = dict(
    Fn_compute_blocks=0,
    Bn_compute_blocks=0,
    residual_diff_threshold=0.24,
    max_warmup_steps=2,
    warmup_interval=1,
    max_cached_steps=-1,
    max_continuous_cached_steps=4,
)
ADAPTIVE_DEFAULT_TAYLORSEER_ORDER = 1
# A run of LONG_RUN_STEPS or more steps (when the run tells its steps) predicts reused steps with
# TaylorSeer order 2 at its own budget (config/presets.py: LONG_RUN_BUDGETS); shorter runs and runs
# whose steps are unknown keep order 1, as second-order extrapolation over long spans (12 Euler
# steps, Heun's half steps) fell to 32 dB on the bundled models.
LONG_RUN_STEPS = 20
LONG_RUN_TAYLORSEER_ORDER = 2
# A preset's run with the default's 4 in a row reuses at most FIRST_STREAK_MAX steps in its first
# streak (its first reuses in a row, normally right after the warmup): there the features still
# change fastest, and the streak cost the image more than its measured per-step errors said
# (config/presets.py).
FIRST_STREAK_MAX = 3
# The step-schedule strategies (fixed, dynamic) keep the knobs they were measured with: a 1-block
# probe (their reused steps refresh block 0), 3 warmup steps, at most 3 reused in a row.
SCHEDULE_DEFAULTS = dict(ADAPTIVE_DEFAULTS, Fn_compute_blocks=1, max_warmup_steps=3, max_continuous_cached_steps=3)

# Quality presets: the error budget of each (the relative error a reused step may make, measured
# on the model itself; see cachedit/manager/feedback.py). Chosen on the bundled models across
# layouts, step counts, seeds and CFG modes (benchmarks/results/defaults.md).
QUALITY_PRESETS = {"quality": 0.08, "balanced": 0.15, "fast": 0.2}
QUALITY_ALIASES = {"high": "quality"}
DEFAULT_QUALITY = "balanced"
CACHE_DEVICES = ("auto", "model", "cpu")  # cache_device values

# Legacy keyword arguments accepted by cache-dit's enable_cache, mapped to config fields.
LEGACY_CACHE_KWARGS = (
    "Fn_compute_blocks", "Bn_compute_blocks", "max_warmup_steps", "warmup_interval", "max_cached_steps",
    "max_continuous_cached_steps", "residual_diff_threshold", "max_accumulated_residual_diff_threshold",
    "enable_separate_cfg", "cfg_compute_first", "cfg_diff_compute_separate", "num_inference_steps",
    "steps_computation_mask", "steps_computation_policy", "force_refresh_step_hint", "force_refresh_step_policy",
)
LEGACY_CALIBRATOR_KWARGS = ("enable_taylorseer", "enable_encoder_taylorseer", "taylorseer_cache_type", "taylorseer_order")


@dataclasses.dataclass
class CacheOptions:
    """Everything one accelerated model runs with (resolved and validated by `resolve_options`)."""

    strategy: str = "adaptive"
    cache_config: DBCacheConfig = dataclasses.field(default_factory=lambda: DBCacheConfig(**ADAPTIVE_DEFAULTS))
    calibrator_config: Optional[TaylorSeerCalibratorConfig] = None
    skip_interval: int = 2
    noise_scale: float = 0.0
    debug: bool = False
    blocks: Optional[Sequence[Any]] = None  # names of (or the) block lists to use; None: found automatically
    start_percent: float = 0.0  # reuse only inside this window of sampling progress
    end_percent: float = 1.0
    log_runs: bool = False  # one info line per finished run (the ComfyUI nodes turn it on)
    # adaptive: keep the measured reuse error near this budget by moving the threshold (None: the
    # threshold stays where the config put it, as in cache-dit)
    error_budget: Optional[float] = None
    # torch.distributed: "auto" reduces adaptive decisions over the model's ranks, "off" never does
    distributed: str = "auto"
    # where cached residuals live: "auto" (the model's device unless the framework is low on its
    # memory, then its offload device), "model", "cpu" (see cachedit/manager/placement.py)
    cache_device: str = "auto"
    # the quality preset whose per-family run rules apply (config/presets.py); None: the user set
    # the config, warmup or window, which the rules then leave alone
    preset: Optional[str] = None
    # the calibrator is the default's own (the user chose no TaylorSeer setting): a preset's run
    # rules may change its order
    default_taylorseer: bool = False
    # a preset's run rule: at most this many reused steps in the run's first streak (None: only
    # max_continuous_cached_steps applies)
    first_streak_max: Optional[int] = None

    def __post_init__(self) -> None:
        self.validate()

    @property
    def taylorseer_order(self) -> int:
        """0 when no calibrator is active."""
        cal = self.calibrator_config
        if cal is None or not cal.enable_calibrator:
            return 0
        return int(cal.taylorseer_order)

    @property
    def max_taylorseer_order(self) -> int:
        """The highest order any run may use (a preset's long-run rule may raise the default's)."""
        if self.default_taylorseer and self.preset is not None and self.taylorseer_order:
            return max(self.taylorseer_order, LONG_RUN_TAYLORSEER_ORDER)
        return self.taylorseer_order

    def validate(self) -> "CacheOptions":
        """Raise ValueError naming the first invalid option."""
        if self.strategy not in strategy_names():
            fail("strategy", self.strategy, " | ".join(repr(s) for s in strategy_names()))
        check_int("skip_interval", self.skip_interval, 1, 10)
        check_float("noise_scale", self.noise_scale, 0.0, 1.0)
        check_bool("debug", self.debug)
        check_float("start_percent", self.start_percent, 0.0, 1.0)
        check_float("end_percent", self.end_percent, 0.0, 1.0)
        if self.start_percent > self.end_percent:
            fail("start_percent", self.start_percent, f"a value <= end_percent ({self.end_percent})")
        if self.error_budget is not None:
            check_float("error_budget", self.error_budget, 1e-6, 1.0)
        if self.distributed not in ("auto", "off"):
            fail("distributed", self.distributed, "'auto' | 'off'")
        if self.cache_device not in CACHE_DEVICES:
            fail("cache_device", self.cache_device, " | ".join(repr(d) for d in CACHE_DEVICES))
        if self.preset is not None and self.preset not in QUALITY_PRESETS:
            fail("preset", self.preset, " | ".join(repr(q) for q in QUALITY_PRESETS))
        check_bool("log_runs", self.log_runs)
        if self.first_streak_max is not None:
            check_int("first_streak_max", self.first_streak_max, 0, 1000)
        if self.blocks is not None:
            check_blocks(self.blocks)
        if not isinstance(self.cache_config, BasicCacheConfig):
            fail("cache_config", self.cache_config, "a DBCacheConfig")
        self.cache_config.validate()
        if self.calibrator_config is not None:
            if not isinstance(self.calibrator_config, TaylorSeerCalibratorConfig):
                fail("calibrator_config", self.calibrator_config, "a TaylorSeerCalibratorConfig or None")
            self.calibrator_config.validate()
        return self

    def strify(self) -> str:
        """cache-dit style tag of the config plus calibrator, e.g. `DBCache_F1B0_..._T1O1`."""
        cal = self.calibrator_config.strify() if self.taylorseer_order else "T0O0"
        return f"{self.cache_config.strify()}_{cal}"


def check_blocks(blocks: Any) -> None:
    """`blocks=`: a list of block-list names (attribute paths) and/or torch ModuleLists."""
    from torch import nn  # noqa: PLC0415 (configs import without torch elsewhere)

    if isinstance(blocks, (str, bytes)) or not isinstance(blocks, (list, tuple)) or not blocks or \
            not all(isinstance(b, (str, nn.ModuleList)) for b in blocks):
        fail("blocks", blocks, "a non-empty list of block-list names (e.g. ['transformer_blocks']) or "
                               "torch.nn.ModuleList objects")


def _error_budget(error_budget: Optional[float], quality: Optional[str], strategy: str, user_tuned: bool) -> Optional[float]:
    """The error budget to run with: explicit, from a preset, the default preset, or None (fixed threshold)."""
    if quality is not None:
        if not isinstance(quality, str) or QUALITY_ALIASES.get(quality, quality) not in QUALITY_PRESETS:
            fail("quality", quality, " | ".join(repr(q) for q in QUALITY_PRESETS))
        if error_budget is not None:
            fail("error_budget", error_budget, "None when quality is given (quality sets the budget)")
    explicit = error_budget is not None or quality is not None
    if explicit and strategy != "adaptive":
        fail("quality" if quality is not None else "error_budget", quality if quality is not None else error_budget,
             "only with strategy='adaptive' (fixed and dynamic do not measure)")
    if error_budget is not None:
        return error_budget
    if quality is not None:
        return QUALITY_PRESETS[QUALITY_ALIASES.get(quality, quality)]
    if strategy == "adaptive" and not user_tuned:
        return QUALITY_PRESETS[DEFAULT_QUALITY]
    return None


def resolve_options(
    cache_config: Optional[BasicCacheConfig],
    calibrator_config: Optional[CalibratorConfig],
    *,
    strategy: Optional[str],
    skip_interval: Optional[int],
    warmup_steps: Optional[int],
    noise_scale: Optional[float],
    debug: Optional[bool],
    global_config: GlobalConfig,
    legacy: dict,
    blocks: Optional[Sequence[Any]] = None,
    start_percent: Optional[float] = None,
    end_percent: Optional[float] = None,
    error_budget: Optional[float] = None,
    quality: Optional[str] = None,
    distributed: Optional[str] = None,
    cache_device: Optional[str] = None,
) -> CacheOptions:
    """Merge explicit arguments, cache-dit configs, legacy kwargs and global defaults.

    Precedence: explicit CacheDit arguments > `cache_config` / legacy kwargs > global defaults.
    With neither a `cache_config` nor legacy kwargs, `adaptive` runs with `ADAPTIVE_DEFAULTS`
    and error feedback at the `quality` preset's budget (balanced unless said otherwise); with
    either, it starts from cache-dit's own `DBCacheConfig()` defaults and keeps its threshold fixed,
    so that drop-in code behaves as it did under cache-dit, unless `quality` or `error_budget` is
    passed too.
    """
    if cache_config is not None and not isinstance(cache_config, BasicCacheConfig):
        fail("cache_config", cache_config, "a DBCacheConfig / BasicCacheConfig or None")
    if calibrator_config is not None and not isinstance(calibrator_config, CalibratorConfig):
        fail("calibrator_config", calibrator_config, "a TaylorSeerCalibratorConfig or None")
    if calibrator_config is not None and not isinstance(calibrator_config, TaylorSeerCalibratorConfig):
        fail("calibrator_config", type(calibrator_config).__name__, "TaylorSeerCalibratorConfig (the only calibrator CacheDit runs)")

    cache_legacy = {k: v for k, v in legacy.items() if k in LEGACY_CACHE_KWARGS}
    cal_legacy = {k: v for k, v in legacy.items() if k in LEGACY_CALIBRATOR_KWARGS}
    user_tuned = cache_config is not None or bool(cache_legacy)
    chosen_strategy = strategy or global_config.default_strategy  # what the defaults below go by

    if cache_config is not None:
        config = copy_cache_config(cache_config)  # a DBPruneConfig stays one
    elif cache_legacy:
        config = DBCacheConfig()
    elif chosen_strategy in ("fixed", "dynamic"):
        config = DBCacheConfig(**SCHEDULE_DEFAULTS)
    else:
        config = DBCacheConfig(**ADAPTIVE_DEFAULTS)
    config.update(**cache_legacy)
    if warmup_steps is None:
        warmup_steps = global_config.default_warmup_steps
    if warmup_steps is not None:
        config.max_warmup_steps = warmup_steps

    for key in ("enable_taylorseer", "enable_encoder_taylorseer"):
        if cal_legacy.get(key) is not None:
            check_bool(key, cal_legacy[key])
    if cal_legacy.get("taylorseer_cache_type") is not None:
        check_str("taylorseer_cache_type", cal_legacy["taylorseer_cache_type"], ("residual",))
    calibrator = copy.deepcopy(calibrator_config)
    if calibrator is None and cal_legacy.get("enable_taylorseer"):
        calibrator = TaylorSeerCalibratorConfig(
            enable_calibrator=True,
            enable_encoder_calibrator=cal_legacy.get("enable_encoder_taylorseer", True),
            calibrator_cache_type=cal_legacy.get("taylorseer_cache_type", "residual"),
            taylorseer_order=cal_legacy.get("taylorseer_order", 1),
        )
    elif cal_legacy.get("taylorseer_order") is not None:
        check_int("taylorseer_order", cal_legacy["taylorseer_order"], 0, 4)  # given without enable_taylorseer
    if calibrator is None and not user_tuned and chosen_strategy == "adaptive" \
            and cal_legacy.get("enable_taylorseer") is None and cal_legacy.get("taylorseer_order") != 0:
        # The default's TaylorSeer, unless the user turned it off (enable_taylorseer=False or
        # taylorseer_order=0); a taylorseer_order alone sets the default's order.
        order = cal_legacy.get("taylorseer_order")
        calibrator = TaylorSeerCalibratorConfig(taylorseer_order=ADAPTIVE_DEFAULT_TAYLORSEER_ORDER if order is None else order)
        default_taylorseer = order is None
    else:
        default_taylorseer = False

    options = CacheOptions(
        strategy=strategy if strategy is not None else global_config.default_strategy,
        cache_config=config,
        calibrator_config=calibrator,
        skip_interval=skip_interval if skip_interval is not None else global_config.default_skip_interval,
        noise_scale=noise_scale if noise_scale is not None else global_config.default_noise_scale,
        debug=debug if debug is not None else global_config.global_debug,
        blocks=blocks,
        start_percent=0.0 if start_percent is None else start_percent,
        end_percent=1.0 if end_percent is None else end_percent,
        error_budget=_error_budget(error_budget, quality, chosen_strategy, user_tuned),
        distributed="auto" if distributed is None else distributed,
        cache_device="auto" if cache_device is None else cache_device,
    )
    if options.error_budget is not None and error_budget is None and not user_tuned and warmup_steps is None \
            and start_percent is None and end_percent is None:
        # the budget came from a preset and nothing it would change was set: family rules apply
        options.preset = QUALITY_ALIASES.get(quality, quality) if quality is not None else DEFAULT_QUALITY
        options.default_taylorseer = default_taylorseer
    return options.validate()
