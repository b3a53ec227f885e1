"""CacheDit as a ComfyUI custom node pack: drop this folder (any name) into ComfyUI/custom_nodes/.

ComfyUI imports this file as a package. It makes the bundled `cachedit` library importable (the
folder is appended to sys.path only when `cachedit` is not importable already, so the process
keeps one `cachedit` and one cache manager) and exports the nodes of `./nodes/`, imported
relatively because ComfyUI has a top-level module of its own called `nodes`:

* `comfy_entrypoint()`: the V3 export (a ComfyExtension listing the nodes);
* NODE_CLASS_MAPPINGS / NODE_DISPLAY_NAME_MAPPINGS: the same nodes for loaders that read those
  (ComfyUI v0.3.x reads them first when both are there);
* WEB_DIRECTORY: the frontend extension (web/: the stats text on the node, whole node titles).

The nodes need ComfyUI's V3 node API, `comfy_api.latest` (ComfyUI 0.3.48 or newer). Inside an
older ComfyUI nothing is registered and a WARNING says what to update; without its requirements
(blinker, structlog) a WARNING gives the pip command; outside ComfyUI (the library on its own)
nothing is registered either, quietly. LOAD_ERROR says why in both cases.
"""

import importlib.util
import logging
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
MIN_COMFYUI = "0.3.48"  # the first ComfyUI with comfy_api.latest (io, ui, ComfyExtension)
REQUIREMENTS = ("blinker", "structlog")  # requirements.txt: what `pip install -r` brings

if importlib.util.find_spec("cachedit") is None:
    sys.path.append(_HERE)  # appended, never first: ComfyUI's own `nodes` must keep winning

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
WEB_DIRECTORY = "./web"
LOAD_ERROR = None

try:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, comfy_entrypoint  # noqa: F811, F401
except ImportError as exc:
    missing = (exc.name or "").split(".")[0]
    if missing in REQUIREMENTS:  # installed without its requirements (a plain copy into custom_nodes)
        LOAD_ERROR = (f"CacheDit nodes need the Python package {missing!r}: install the pack's requirements with the "
                      f"Python that runs ComfyUI, `python -m pip install -r {os.path.join(_HERE, 'requirements.txt')}` "
                      f"(ComfyUI portable: `python_embeded\\python.exe -m pip install -r "
                      f"ComfyUI\\custom_nodes\\{os.path.basename(_HERE)}\\requirements.txt`), then restart ComfyUI.")
        logging.getLogger("cachedit").warning(LOAD_ERROR)
    elif not missing.startswith("comfy"):
        raise
    elif importlib.util.find_spec("comfy") is not None:  # inside ComfyUI, one without the V3 node API
        LOAD_ERROR = (f"CacheDit nodes need ComfyUI {MIN_COMFYUI} or newer ({exc.name} is missing: {exc}). "
                      f"Update ComfyUI (git pull, or the update script of the portable build) and restart.")
        logging.getLogger("cachedit").warning(LOAD_ERROR)
    else:
        LOAD_ERROR = (f"CacheDit nodes need ComfyUI ({exc.name} is not importable); "
                      f"the cachedit library works without it")
        logging.getLogger("cachedit").debug(LOAD_ERROR)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
if LOAD_ERROR is None:
    __all__.append("comfy_entrypoint")
