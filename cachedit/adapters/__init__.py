"""Adapters: how CacheDit hooks into frameworks other than plain PyTorch modules.

`comfyui` holds every piece of caching logic for ComfyUI ModelPatcher objects (the node pack
in the repository root is a thin client of it). It imports ComfyUI lazily, so importing this
package never requires ComfyUI.
"""

__all__ = ["comfyui"]
