"""CacheDit's ComfyUI nodes (V3 schema). Thin clients of the `cachedit` library: every caching
decision lives in `cachedit.adapters.comfyui`. Imported by the pack's root `__init__.py`, and only
relatively (ComfyUI has a top-level module of its own called `nodes`)."""

from .accelerate import CacheDitAccelerate, CacheDitAdvancedConfig, CacheDitCacheControl
from .stats import CacheDitDetailedStats

NODES = [CacheDitAccelerate, CacheDitAdvancedConfig, CacheDitCacheControl, CacheDitDetailedStats]

NODE_CLASS_MAPPINGS = {node.GET_SCHEMA().node_id: node for node in NODES}
NODE_DISPLAY_NAME_MAPPINGS = {node.GET_SCHEMA().node_id: node.GET_SCHEMA().display_name for node in NODES}

__all__ = ["NODES", "NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
