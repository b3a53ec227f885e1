"""Configuration dataclasses: cache-dit compatible configs plus CacheDit's own options.

`DBCacheConfig` and `TaylorSeerCalibratorConfig` carry the same fields, defaults and meaning as
cache-dit's (so `import cachedit as cache_dit` keeps working). `CacheOptions` is what the manager
actually runs with: a strategy, the DBCache knobs it uses, and CacheDit's own additions.
Every value is validated here, once, with an error that names the parameter, the value and
what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
from typing import Any, Optional, Sequence, Union

STRATEGIES = ("fixed", "dynamic", "adaptive")


class CacheType(enum.Enum):
    """Cache algorithm selector, as in cache-dit (`DBCache` is the only one CacheDit runs)."""

    NONE = "NONE"
    DBCache = "DBCache"

    def __str__(self) -> str:
        return self.value

    @staticmethod
    def type(type_hint: "CacheType | str | None") -> "CacheType":
        """Parse a cache type name (`"DBCache"`, `"dual_block_cache"`, `None`...)."""
        return cache_type(type_hint)


def cache_type(type_hint: "CacheType | str | None") -> CacheType:
    """Parse a cache type name the way cache-dit does."""
    if type_hint is None:
        return CacheType.NONE
    if isinstance(type_hint, CacheType):
        return type_hint
    name = str(type_hint).upper()
    if name in ("DUAL_BLOCK_CACHE", "DB_CACHE", "DBCACHE", "DB"):
        return CacheType.DBCache
    if name in ("NONE", "NO_CACHE"):
        return CacheType.NONE
    raise ValueError(f"cache_type={type_hint!r} is not supported; allowed: 'DBCache' or None")


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{name}={value!r} is invalid; allowed: {allowed}")


def _check_int(name: str, value: Any, low: int, high: Optional[int] = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        _fail(name, value, f"an integer in [{low}, {high if high is not None else 'inf'}]")


def _check_float(name: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (low <= float(value) <= high):
        _fail(name, value, f"a number in [{low}, {high}]")


@dataclasses.dataclass
class BasicCacheConfig:
    """DBCache configuration (cache-dit's fields and defaults).

    Blocks are split into Fn (always computed, their residual is the probe), Mn (reused on a hit)
    and Bn (always computed, they refine the reused result). A step reuses when, outside warmup
    and the caps, the probe's relative L1 change since the last computed step is below
    `residual_diff_threshold`.
    """

    cache_type: CacheType = CacheType.DBCache
    Fn_compute_blocks: int = 8
    Bn_compute_blocks: int = 0
    residual_diff_threshold: float = 0.08
    max_accumulated_residual_diff_threshold: Optional[float] = None
    max_warmup_steps: int = 8
    warmup_interval: int = 1
    max_cached_steps: int = -1
    max_continuous_cached_steps: int = -1
    enable_separate_cfg: Optional[bool] = None
    cfg_compute_first: bool = False
    cfg_diff_compute_separate: bool = True
    num_inference_steps: Optional[int] = None
    steps_computation_mask: Optional[list] = None
    steps_computation_policy: str = "dynamic"
    force_refresh_step_hint: Optional[int] = None
    force_refresh_step_policy: str = "once"

    def update(self, **kwargs: Any) -> "BasicCacheConfig":
        """Set every known, non-None field given; unknown keys are ignored (as in cache-dit)."""
        for key, value in kwargs.items():
            if hasattr(self, key) and value is not None:
                setattr(self, key, value)
        return self

    def empty(self, **kwargs: Any) -> "BasicCacheConfig":
        """Set every field to None, then apply `kwargs` (cache-dit's partial-config idiom)."""
        for field in dataclasses.fields(self):
            setattr(self, field.name, None)
        return self.update(**kwargs)

    def reset(self, **kwargs: Any) -> "BasicCacheConfig":
        """Alias of `empty`, kept for cache-dit compatibility."""
        return self.empty(**kwargs)

    def as_dict(self) -> dict:
        """The config as a plain dict."""
        return dataclasses.asdict(self)

    def strify(self) -> str:
        """Compact tag, identical to cache-dit's, e.g. `DBCache_F1B0_W8I1M0MC0_R0.12`."""
        text = (
            f"{self.cache_type}_F{self.Fn_compute_blocks}B{self.Bn_compute_blocks}_"
            f"W{self.max_warmup_steps}I{self.warmup_interval}"
            f"M{max(0, self.max_cached_steps)}MC{max(0, self.max_continuous_cached_steps)}_"
            f"R{self.residual_diff_threshold}"
        )
        if self.steps_computation_mask is not None:
            text += f"_SCM{''.join(map(str, self.steps_computation_mask))}_{self.steps_computation_policy}"
        if self.num_inference_steps is not None:
            text += f"_N{self.num_inference_steps}"
        if self.force_refresh_step_hint is not None:
            text += f"_FR{self.force_refresh_step_hint}_{self.force_refresh_step_policy}"
        if self.enable_separate_cfg is not None:
            text += f"_CFG{int(self.enable_separate_cfg)}"
        return text

    def validate(self) -> "BasicCacheConfig":
        """Raise ValueError naming the first invalid field; return self when all are valid."""
        self.cache_type = cache_type(self.cache_type)
        _check_int("Fn_compute_blocks", self.Fn_compute_blocks, 0)
        _check_int("Bn_compute_blocks", self.Bn_compute_blocks, 0)
        _check_float("residual_diff_threshold", self.residual_diff_threshold, 0.0, 1e9)
        if self.max_accumulated_residual_diff_threshold is not None:
            _check_float("max_accumulated_residual_diff_threshold", self.max_accumulated_residual_diff_threshold, 0.0, 1e9)
        _check_int("max_warmup_steps", self.max_warmup_steps, 0)
        _check_int("warmup_interval", self.warmup_interval, 1)
        _check_int("max_cached_steps", self.max_cached_steps, -1)
        _check_int("max_continuous_cached_steps", self.max_continuous_cached_steps, -1)
        if self.num_inference_steps is not None:
            _check_int("num_inference_steps", self.num_inference_steps, 1)
        if self.steps_computation_mask is not None:
            mask = self.steps_computation_mask
            if not isinstance(mask, (list, tuple)) or not mask or any(m not in (0, 1) for m in mask):
                _fail("steps_computation_mask", mask, "a non-empty list of 0 (may reuse) and 1 (compute)")
            self.steps_computation_mask = list(mask)
        if self.steps_computation_policy not in ("dynamic", "static"):
            _fail("steps_computation_policy", self.steps_computation_policy, "'dynamic' or 'static'")
        if self.force_refresh_step_hint is not None:
            _check_int("force_refresh_step_hint", self.force_refresh_step_hint, 1)
        if self.force_refresh_step_policy not in ("once", "repeat"):
            _fail("force_refresh_step_policy", self.force_refresh_step_policy, "'once' or 'repeat'")
        return self


@dataclasses.dataclass
class DBCacheConfig(BasicCacheConfig):
    """Named alias of `BasicCacheConfig` for DBCache (as in cache-dit)."""


@dataclasses.dataclass
class CalibratorConfig:
    """Base calibrator config (cache-dit compatible)."""

    enable_calibrator: bool = False
    enable_encoder_calibrator: bool = False
    calibrator_type: str = "taylorseer"
    calibrator_cache_type: str = "residual"
    calibrator_kwargs: dict = dataclasses.field(default_factory=dict)

    def strify(self, **kwargs: Any) -> str:
        """Compact tag for logs."""
        return "CalibratorBase"

    def as_dict(self) -> dict:
        """The config as a plain dict."""
        return dataclasses.asdict(self)

    def update(self, **kwargs: Any) -> "CalibratorConfig":
        """Set every known, non-None field given."""
        for key, value in kwargs.items():
            if hasattr(self, key) and value is not None:
                setattr(self, key, value)
        return self


@dataclasses.dataclass
class TaylorSeerCalibratorConfig(CalibratorConfig):
    """TaylorSeer: on reused steps, extrapolate the cached residual with a Taylor series built
    from finite differences of the residuals of the last computed steps (cache-dit's fields)."""

    enable_calibrator: bool = True
    enable_encoder_calibrator: bool = True
    calibrator_type: str = "taylorseer"
    taylorseer_order: int = 1

    def strify(self, **kwargs: Any) -> str:
        """`T1O<order>` as in cache-dit (or `TaylorSeer_O(<order>)` with details=True)."""
        if not self.taylorseer_order:
            return "NONE"
        if kwargs.get("details", False):
            return f"TaylorSeer_O({self.taylorseer_order})"
        return f"T1O{self.taylorseer_order}"

    def validate(self) -> "TaylorSeerCalibratorConfig":
        """Raise ValueError on an invalid order or cache type."""
        _check_int("taylorseer_order", self.taylorseer_order, 0, 4)
        if self.calibrator_cache_type != "residual":
            _fail("calibrator_cache_type", self.calibrator_cache_type, "'residual'")
        return self


@dataclasses.dataclass
class GlobalConfig:
    """Process-wide defaults used when `enable_cache` is called without the matching argument."""

    default_strategy: str = "adaptive"
    default_skip_interval: int = 2
    default_warmup_steps: Optional[int] = None  # None: the strategy's own default
    default_noise_scale: float = 0.0
    global_debug: bool = False

    def validate(self) -> "GlobalConfig":
        """Raise ValueError naming the invalid field."""
        if self.default_strategy not in STRATEGIES:
            _fail("default_strategy", self.default_strategy, " | ".join(STRATEGIES))
        _check_int("default_skip_interval", self.default_skip_interval, 1, 10)
        if self.default_warmup_steps is not None:
            _check_int("default_warmup_steps", self.default_warmup_steps, 0, 1000)
        _check_float("default_noise_scale", self.default_noise_scale, 0.0, 1.0)
        if not isinstance(self.global_debug, bool):
            _fail("global_debug", self.global_debug, "True or False")
        return self


# Defaults of the `adaptive` strategy when the user passes no cache config. Chosen by the sweep in
# benchmarks/ on the bundled model (see README "Performance"): a 1-block probe, a short warmup
# and a cap on consecutive reuse hold quality while reusing most late steps.
ADAPTIVE_DEFAULTS = dict(
    Fn_compute_blocks=1,
    Bn_compute_blocks=0,
    residual_diff_threshold=0.24,
    max_warmup_steps=3,
    warmup_interval=1,
    max_cached_steps=-1,
    max_continuous_cached_steps=3,
)
ADAPTIVE_DEFAULT_TAYLORSEER_ORDER = 1

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

    @property
    def taylorseer_order(self) -> int:
        """0 when no calibrator is active."""
        cal = self.calibrator_config
        if cal is None or not cal.enable_calibrator:
            return 0
        return int(cal.taylorseer_order)

    def validate(self) -> "CacheOptions":
        """Raise ValueError naming the first invalid option."""
        if self.strategy not in STRATEGIES:
            _fail("strategy", self.strategy, " | ".join(repr(s) for s in STRATEGIES))
        _check_int("skip_interval", self.skip_interval, 1, 10)
        _check_float("noise_scale", self.noise_scale, 0.0, 1.0)
        if not isinstance(self.debug, bool):
            _fail("debug", self.debug, "True or False")
        _check_float("start_percent", self.start_percent, 0.0, 1.0)
        _check_float("end_percent", self.end_percent, 0.0, 1.0)
        if self.start_percent > self.end_percent:
            _fail("start_percent", self.start_percent, f"a value <= end_percent ({self.end_percent})")
        self.cache_config.validate()
        if self.calibrator_config is not None:
            self.calibrator_config.validate()
        return self

    def strify(self) -> str:
        """cache-dit style tag of the config plus calibrator, e.g. `DBCache_F1B0_..._T1O1`."""
        cal = self.calibrator_config.strify() if self.taylorseer_order else "T0O0"
        return f"{self.cache_config.strify()}_{cal}"


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
) -> CacheOptions:
    """Merge explicit arguments, cache-dit configs, legacy kwargs and global defaults.

    Precedence: explicit CacheDit arguments > `cache_config` / legacy kwargs > global defaults.
    With neither a `cache_config` nor legacy kwargs, `adaptive` runs with `ADAPTIVE_DEFAULTS`
    (tuned here); with either, it starts from cache-dit's own `DBCacheConfig()` defaults so that
    drop-in code behaves as it did under cache-dit.
    """
    if cache_config is not None and not isinstance(cache_config, BasicCacheConfig):
        _fail("cache_config", cache_config, "a DBCacheConfig / BasicCacheConfig or None")
    if calibrator_config is not None and not isinstance(calibrator_config, CalibratorConfig):
        _fail("calibrator_config", calibrator_config, "a TaylorSeerCalibratorConfig or None")
    if calibrator_config is not None and not isinstance(calibrator_config, TaylorSeerCalibratorConfig):
        _fail("calibrator_config", type(calibrator_config).__name__, "TaylorSeerCalibratorConfig (the only calibrator CacheDit runs)")

    cache_legacy = {k: v for k, v in legacy.items() if k in LEGACY_CACHE_KWARGS}
    cal_legacy = {k: v for k, v in legacy.items() if k in LEGACY_CALIBRATOR_KWARGS}
    user_tuned = cache_config is not None or bool(cache_legacy)

    if cache_config is not None:
        config = DBCacheConfig(**{f.name: copy.deepcopy(getattr(cache_config, f.name)) for f in dataclasses.fields(BasicCacheConfig)})
    elif cache_legacy:
        config = DBCacheConfig()
    else:
        config = DBCacheConfig(**ADAPTIVE_DEFAULTS)
    config.update(**cache_legacy)
    if warmup_steps is None:
        warmup_steps = global_config.default_warmup_steps
    if warmup_steps is not None:
        config.max_warmup_steps = warmup_steps

    calibrator = copy.deepcopy(calibrator_config)
    if calibrator is None and cal_legacy.get("enable_taylorseer"):
        calibrator = TaylorSeerCalibratorConfig(
            enable_calibrator=True,
            enable_encoder_calibrator=bool(cal_legacy.get("enable_encoder_taylorseer", True)),
            taylorseer_order=cal_legacy.get("taylorseer_order", 1),
        )
    if calibrator is None and not user_tuned and (strategy or global_config.default_strategy) == "adaptive":
        calibrator = TaylorSeerCalibratorConfig(taylorseer_order=ADAPTIVE_DEFAULT_TAYLORSEER_ORDER) if ADAPTIVE_DEFAULT_TAYLORSEER_ORDER else None

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
    )
    if options.strategy in ("fixed", "dynamic") and not user_tuned and warmup_steps is None:
        # Step-schedule strategies keep a short warmup too; the DBCache threshold is unused.
        config.max_warmup_steps = ADAPTIVE_DEFAULTS["max_warmup_steps"]
    return options.validate()


ConfigLike = Union[BasicCacheConfig, None]
