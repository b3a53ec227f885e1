"""CacheDit's ComfyUI nodes (V3 schema). Thin clients of the `cachedit` library: every caching
decision lives in `cachedit.adapters.comfyui`. Imported by the pack's root `__init__.py`, and only
relatively (ComfyUI has a top-level module of its own called `nodes`)."""

from comfy_api.latest import ComfyExtension, io

from .accelerate import CacheDitAccelerate, CacheDitAdvancedConfig, CacheDitCacheControl
from .stats import CacheDitDetailedStats

NODES = [CacheDitAccelerate, CacheDitAdvancedConfig, CacheDitCacheControl, CacheDitDetailedStats]

NODE_CLASS_MAPPINGS = {node.GET_SCHEMA().node_id: node for node in NODES}
NODE_DISPLAY_NAME_MAPPINGS = {node.GET_SCHEMA().node_id: node.GET_SCHEMA().display_name for node in NODES}


class CacheDitExtension(ComfyExtension):
    """The V3 way to hand ComfyUI the nodes."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> CacheDitExtension:
    """ComfyUI's V3 entry point (used by loaders that look for it instead of NODE_CLASS_MAPPINGS)."""
    return CacheDitExtension()


__all__ = ["NODES", "NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "CacheDitExtension", "comfy_entrypoint"]
