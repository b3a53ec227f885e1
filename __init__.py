"""CacheDit as a ComfyUI custom node pack: drop this folder (any name) into ComfyUI/custom_nodes/.

ComfyUI imports this file as a package. It makes the bundled `cachedit` library importable (the
folder is appended to sys.path only when `cachedit` is not importable already, so the process
keeps one `cachedit` and one cache manager) and exports the nodes of `./nodes/`, imported
relatively because ComfyUI has a top-level module of its own called `nodes`.

Outside ComfyUI (no `comfy_api`) nothing is registered: NODE_CLASS_MAPPINGS is empty and
LOAD_ERROR says why.
"""

import importlib.util
import logging
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))

if importlib.util.find_spec("cachedit") is None:
    sys.path.append(_HERE)  # appended, never first: ComfyUI's own `nodes` must keep winning

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
LOAD_ERROR = None

try:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: F811
except ModuleNotFoundError as exc:
    if not (exc.name or "").startswith("comfy"):
        raise
    LOAD_ERROR = f"CacheDit nodes need ComfyUI ({exc.name} is not importable); the cachedit library works without it"
    logging.getLogger("cachedit").debug(LOAD_ERROR)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
