"""cache-dit's configuration classes, with the same fields, defaults and meaning (so that
`import cachedit as cache_dit` keeps working), validated with errors that name the field."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Optional

from .validate import check_float, check_int, fail


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
        check_int("Fn_compute_blocks", self.Fn_compute_blocks, 0)
        check_int("Bn_compute_blocks", self.Bn_compute_blocks, 0)
        check_float("residual_diff_threshold", self.residual_diff_threshold, 0.0, 1e9)
        if self.max_accumulated_residual_diff_threshold is not None:
            check_float("max_accumulated_residual_diff_threshold", self.max_accumulated_residual_diff_threshold, 0.0, 1e9)
        check_int("max_warmup_steps", self.max_warmup_steps, 0)
        check_int("warmup_interval", self.warmup_interval, 1)
        check_int("max_cached_steps", self.max_cached_steps, -1)
        check_int("max_continuous_cached_steps", self.max_continuous_cached_steps, -1)
        if self.num_inference_steps is not None:
            check_int("num_inference_steps", self.num_inference_steps, 1)
        if self.steps_computation_mask is not None:
            mask = self.steps_computation_mask
            if not isinstance(mask, (list, tuple)) or not mask or any(m not in (0, 1) for m in mask):
                fail("steps_computation_mask", mask, "a non-empty list of 0 (may reuse) and 1 (compute)")
            self.steps_computation_mask = list(mask)
        if self.steps_computation_policy not in ("dynamic", "static"):
            fail("steps_computation_policy", self.steps_computation_policy, "'dynamic' or 'static'")
        if self.force_refresh_step_hint is not None:
            check_int("force_refresh_step_hint", self.force_refresh_step_hint, 1)
        if self.force_refresh_step_policy not in ("once", "repeat"):
            fail("force_refresh_step_policy", self.force_refresh_step_policy, "'once' or 'repeat'")
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
        check_int("taylorseer_order", self.taylorseer_order, 0, 4)
        if self.calibrator_cache_type != "residual":
            fail("calibrator_cache_type", self.calibrator_cache_type, "'residual'")
        return self
