"""CacheDit: a block-level inference cache for diffusion transformers (DiTs).

Drop-in for cache-dit's caching API: `import cachedit as cache_dit`.
"""

from .api import (
    NoBlocksFoundError,
    disable_cache,
    enable_cache,
    get_global_stats,
    refresh_context,
    reset_cache_stats,
    set_global_config,
    strify,
    summary,
)
from .config import (
    BasicCacheConfig,
    CacheOptions,
    CacheType,
    CalibratorConfig,
    DBCacheConfig,
    GlobalConfig,
    TaylorSeerCalibratorConfig,
    cache_type,
)
from .events.stats import CacheStats
from .manager import CacheManager, get_manager
from .steps_mask import steps_mask

__version__ = "0.1.0"

__all__ = [
    "BasicCacheConfig", "CacheManager", "CacheOptions", "CacheStats", "CacheType", "CalibratorConfig", "DBCacheConfig",
    "GlobalConfig", "NoBlocksFoundError", "TaylorSeerCalibratorConfig", "__version__", "cache_type", "disable_cache",
    "enable_cache", "get_global_stats", "get_manager", "refresh_context", "reset_cache_stats", "set_global_config",
    "steps_mask", "strify", "summary",
]
