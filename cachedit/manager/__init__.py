"""The manager: the CacheManager singleton, per-model engines, strategies and model hooks."""

from .blocks import NoBlocksFoundError, find_block_lists
from .engine import CacheEngine
from .manager import CacheManager, ModelEntry, get_manager

__all__ = ["CacheEngine", "CacheManager", "ModelEntry", "NoBlocksFoundError", "find_block_lists", "get_manager"]
