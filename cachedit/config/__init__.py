"""Configuration: cache-dit compatible configs (`cache_dit.py`) and what CacheDit runs with
(`options.py`). Every value is validated once, with an error that names the parameter, the value
and what is allowed (`validate.py`)."""

from .cache_dit import (BasicCacheConfig, CacheType, CalibratorConfig, DBCacheConfig, DBPruneConfig,
                        TaylorSeerCalibratorConfig, cache_type)
from .options import (
    ADAPTIVE_DEFAULT_TAYLORSEER_ORDER,
    ADAPTIVE_DEFAULTS,
    CACHE_DEVICES,
    DEFAULT_QUALITY,
    LEGACY_CACHE_KWARGS,
    LEGACY_CALIBRATOR_KWARGS,
    QUALITY_PRESETS,
    CacheOptions,
    GlobalConfig,
    resolve_options,
    strategy_names,
)

__all__ = [
    "ADAPTIVE_DEFAULTS", "ADAPTIVE_DEFAULT_TAYLORSEER_ORDER", "BasicCacheConfig", "CACHE_DEVICES", "DEFAULT_QUALITY", "QUALITY_PRESETS", "CacheOptions", "CacheType",
    "CalibratorConfig", "DBCacheConfig", "DBPruneConfig", "GlobalConfig", "LEGACY_CACHE_KWARGS", "LEGACY_CALIBRATOR_KWARGS",
    "TaylorSeerCalibratorConfig", "cache_type", "resolve_options", "strategy_names",
]
