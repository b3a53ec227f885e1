"""cache-dit's configuration classes, with the same fields, defaults and meaning (so that
`import cachedit as cache_dit` keeps working), validated with errors that name the field."""

from __future__ import annotations

import copy
import dataclasses
import enum
from typing import Any, Optional

from .validate import check_bool, check_dict, check_float, check_int, check_str, fail


class CacheType(enum.Enum):
    """Cache algorithm selector, as in cache-dit: `DBCache` (dual block cache) or `DBPrune`
    (dynamic block prune, run with a `DBPruneConfig`)."""

    NONE = "NONE"
    DBCache = "DBCache"
    DBPrune = "DBPrune"

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
    if name in ("DYNAMIC_BLOCK_PRUNE", "DB_PRUNE", "DBPRUNE", "DBP"):
        return CacheType.DBPrune
    if name in ("NONE", "NO_CACHE", "NOCACHE", "NC"):
        return CacheType.NONE
    raise ValueError(f"cache_type={type_hint!r} is not supported; allowed: 'DBCache', 'DBPrune' or None")


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

    def __post_init__(self) -> None:
        # Every value given is checked now, not when sampling starts. None is "not set": cache-dit's
        # partial configs (`DBCacheConfig().empty(...)` / `.reset(...)`, ParamsModifier) hold Nones,
        # and `validate()` (run by enable_cache / refresh_context) requires the fields a run needs.
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None:
                _check_cache_field(field.name, value)

    def update(self, **kwargs: Any) -> "BasicCacheConfig":
        """Set every known, non-None field given (each checked first); unknown keys are ignored (as in cache-dit)."""
        for key, value in kwargs.items():
            if hasattr(self, key) and value is not None:
                if key in _CACHE_FIELD_CHECKS:
                    _check_cache_field(key, value)
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
        """Raise ValueError naming the first invalid field (a field a run needs may not be None);
        return self when all are valid."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None and field.name in _OPTIONAL_CACHE_FIELDS:
                continue
            _check_cache_field(field.name, value)
        self.cache_type = cache_type(self.cache_type)
        if self.cache_type is CacheType.DBPrune and not isinstance(self, DBPruneConfig):
            fail("cache_type", self.cache_type, f"CacheType.DBCache in a {type(self).__name__} (DBPrune runs "
                                                f"with a DBPruneConfig, as in cache-dit)")
        if self.enable_separate_cfg and self.cfg_diff_compute_separate and self.cfg_compute_first:
            fail("cfg_compute_first", True, "False when enable_separate_cfg and cfg_diff_compute_separate are True "
                                            "(as cache-dit requires)")
        if self.steps_computation_mask is not None:
            self.steps_computation_mask = list(self.steps_computation_mask)
        return self


def _check_mask(name: str, mask: Any) -> None:
    if isinstance(mask, (str, bytes)) or not isinstance(mask, (list, tuple)) or not mask or \
            any(isinstance(m, bool) or m not in (0, 1) for m in mask):
        fail(name, mask, "a non-empty list of 0 (may reuse) and 1 (compute), e.g. cachedit.steps_mask(...)")


def _check_cache_type(name: str, value: Any) -> None:
    if not isinstance(value, (CacheType, str)):
        fail(name, value, "CacheType.DBCache / 'DBCache' or CacheType.DBPrune / 'DBPrune'")
    if cache_type(value) not in (CacheType.DBCache, CacheType.DBPrune):
        fail(name, value, "CacheType.DBCache / 'DBCache' or CacheType.DBPrune / 'DBPrune' (with a DBPruneConfig)")


_CACHE_FIELD_CHECKS = {
    "cache_type": _check_cache_type,
    "Fn_compute_blocks": lambda n, v: check_int(n, v, 0),
    "Bn_compute_blocks": lambda n, v: check_int(n, v, 0),
    "residual_diff_threshold": lambda n, v: check_float(n, v, 0.0, 1e9),
    "max_accumulated_residual_diff_threshold": lambda n, v: check_float(n, v, 0.0, 1e9),
    "max_warmup_steps": lambda n, v: check_int(n, v, 0),
    "warmup_interval": lambda n, v: check_int(n, v, 1),
    "max_cached_steps": lambda n, v: check_int(n, v, -1),
    "max_continuous_cached_steps": lambda n, v: check_int(n, v, -1),
    "enable_separate_cfg": check_bool,
    "cfg_compute_first": check_bool,
    "cfg_diff_compute_separate": check_bool,
    "num_inference_steps": lambda n, v: check_int(n, v, 1),
    "steps_computation_mask": _check_mask,
    "steps_computation_policy": lambda n, v: check_str(n, v, ("dynamic", "static")),
    "force_refresh_step_hint": lambda n, v: check_int(n, v, 1),
    "force_refresh_step_policy": lambda n, v: check_str(n, v, ("once", "repeat")),
}
# Fields a complete config may leave at None (cache-dit's Optional fields).
_OPTIONAL_CACHE_FIELDS = frozenset({"max_accumulated_residual_diff_threshold", "enable_separate_cfg",
                                    "num_inference_steps", "steps_computation_mask", "force_refresh_step_hint"})


def _check_cache_field(name: str, value: Any) -> None:
    _CACHE_FIELD_CHECKS[name](name, value)


@dataclasses.dataclass
class DBCacheConfig(BasicCacheConfig):
    """Named alias of `BasicCacheConfig` for DBCache (as in cache-dit)."""


@dataclasses.dataclass
class DBPruneConfig(BasicCacheConfig):
    """Dynamic Block Prune (cache-dit's fields and defaults): every block outside the first Fn,
    the last Bn and `non_prune_block_ids` (indices within its block list) is skipped on its own
    when its input's relative L1 change since the last step that ran it is below the threshold;
    it then returns its input plus the residual it produced then. Warmup, the steps mask and the
    reuse caps apply per step as in DBCache (a step counts as pruned when any block was pruned).

    `enable_dynamic_prune_threshold`: the threshold rises to `dynamic_prune_threshold_relax_ratio`
    times the mean of the step's first five positive diffs, unless that reaches
    `max_dynamic_prune_threshold` (default: twice `residual_diff_threshold`).
    `force_reduce_calibrator_vram` is accepted for compatibility and has no effect (CacheDit keeps
    no downsampled copy)."""

    cache_type: CacheType = CacheType.DBPrune
    enable_dynamic_prune_threshold: bool = False
    max_dynamic_prune_threshold: Optional[float] = None
    dynamic_prune_threshold_relax_ratio: float = 1.25
    non_prune_block_ids: list = dataclasses.field(default_factory=list)
    force_reduce_calibrator_vram: bool = False

    def strify(self) -> str:
        """Compact tag, identical to cache-dit's, e.g. `DBPrune_F1B0_W8I1M0MC0_R0.08`."""
        return (f"{self.cache_type}_F{self.Fn_compute_blocks}B{self.Bn_compute_blocks}_"
                f"W{self.max_warmup_steps}I{self.warmup_interval}"
                f"M{max(0, self.max_cached_steps)}MC{max(0, self.max_continuous_cached_steps)}_"
                f"R{self.residual_diff_threshold}")


def _check_block_ids(name: str, ids: Any) -> None:
    if isinstance(ids, (str, bytes)) or not isinstance(ids, (list, tuple)) or \
            any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids):
        fail(name, ids, "a list of block indices (ints >= 0, within each block list)")


_CACHE_FIELD_CHECKS.update({
    "enable_dynamic_prune_threshold": check_bool,
    "max_dynamic_prune_threshold": lambda n, v: check_float(n, v, 0.0, 1e9),
    "dynamic_prune_threshold_relax_ratio": lambda n, v: check_float(n, v, 0.0, 1e9),
    "non_prune_block_ids": _check_block_ids,
    "force_reduce_calibrator_vram": check_bool,
})
_OPTIONAL_CACHE_FIELDS = _OPTIONAL_CACHE_FIELDS | {"max_dynamic_prune_threshold"}


def copy_cache_config(config: BasicCacheConfig) -> BasicCacheConfig:
    """A deep copy as a DBPruneConfig (a DBPruneConfig given) or a DBCacheConfig (any other config)."""
    cls = DBPruneConfig if isinstance(config, DBPruneConfig) else DBCacheConfig
    return cls(**{f.name: copy.deepcopy(getattr(config, f.name)) for f in dataclasses.fields(cls)})


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

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            self._check(field.name, getattr(self, field.name))

    def _check(self, name: str, value: Any) -> None:
        """Raise ValueError when `value` is not allowed for field `name`."""
        if name in ("enable_calibrator", "enable_encoder_calibrator"):
            check_bool(name, value)
        elif name in ("calibrator_type", "calibrator_cache_type"):
            check_str(name, value)
        elif name == "calibrator_kwargs":
            check_dict(name, value)

    def update(self, **kwargs: Any) -> "CalibratorConfig":
        """Set every known, non-None field given (each checked first)."""
        for key, value in kwargs.items():
            if hasattr(self, key) and value is not None:
                self._check(key, value)
                setattr(self, key, value)
        return self

    def validate(self) -> "CalibratorConfig":
        """Raise ValueError naming the first invalid field."""
        for field in dataclasses.fields(self):
            self._check(field.name, getattr(self, field.name))
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

    def _check(self, name: str, value: Any) -> None:
        if name == "taylorseer_order":
            check_int(name, value, 0, 4)
        elif name == "calibrator_type":
            check_str(name, value, ("taylorseer",))
        elif name == "calibrator_cache_type":
            check_str(name, value, ("residual",))  # cache-dit's "hidden_states" is not run here
        else:
            super()._check(name, value)
