"""CacheDit: a block-level inference cache for diffusion transformers (DiTs).

Drop-in for cache-dit's caching API: `import cachedit as cache_dit`. cache-dit's names outside
caching (quantization, attention backends, offload, compile, profiler) are
left out; reaching for one raises an AttributeError that says so (see `cachedit/scope.py`).
"""

from .adapters.block_adapter import BlockAdapter
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
    DBPruneConfig,
    GlobalConfig,
    TaylorSeerCalibratorConfig,
    cache_type,
)
from .config.forward_pattern import ForwardPattern
from .config.params_modifier import ParamsModifier
from .config.yaml import load_cache_config, load_configs, load_options, load_parallelism_config
from .events.stats import CacheStats
from .manager import CacheManager, get_manager
from .parallel.config import ParallelismBackend, ParallelismConfig
from .recognised import block_range, get_adapter, supported_pipelines
from .scope import out_of_scope_error
from .steps_mask import steps_mask

__version__ = "0.1.0"

# cache-dit's top-level aliases
NONE = CacheType.NONE
DBCache = CacheType.DBCache
DBPrune = CacheType.DBPrune
Pattern_0 = ForwardPattern.Pattern_0
Pattern_1 = ForwardPattern.Pattern_1
Pattern_2 = ForwardPattern.Pattern_2
Pattern_3 = ForwardPattern.Pattern_3
Pattern_4 = ForwardPattern.Pattern_4
Pattern_5 = ForwardPattern.Pattern_5


def __getattr__(name: str):
    """cache-dit names CacheDit leaves out raise an AttributeError saying so."""
    raise out_of_scope_error(__name__, name)


__all__ = [
    "BasicCacheConfig", "BlockAdapter", "CacheManager", "CacheOptions", "CacheStats", "CacheType", "CalibratorConfig",
    "DBCache", "DBCacheConfig", "DBPrune", "DBPruneConfig", "ForwardPattern", "GlobalConfig", "NONE", "NoBlocksFoundError", "ParamsModifier",
    "Pattern_0", "Pattern_1", "Pattern_2", "Pattern_3", "Pattern_4", "Pattern_5", "TaylorSeerCalibratorConfig",
    "__version__", "block_range", "cache_type", "disable_cache", "enable_cache", "get_adapter", "get_global_stats",
    "get_manager", "ParallelismBackend", "ParallelismConfig", "load_cache_config", "load_configs", "load_options", "load_parallelism_config", "refresh_context",
    "reset_cache_stats", "set_global_config", "steps_mask", "strify", "summary", "supported_pipelines",
]
