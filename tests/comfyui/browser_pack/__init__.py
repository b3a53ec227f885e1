"""Test-only ComfyUI nodes for the browser test (tests/comfyui/test_browser.py): a tiny seeded
Flux model and random conditioning from harness.py, so a workflow built on the canvas samples in
seconds with no model files and no text encoder. Loaded only from the test's own custom_nodes."""

import importlib.util
import os
import sys

_HARNESS = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "harness.py")  # through the symlink


def _harness():
    module = sys.modules.get("cachedit_test_harness")
    if module is None:
        spec = importlib.util.spec_from_file_location("cachedit_test_harness", _HARNESS)
        module = sys.modules["cachedit_test_harness"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


class CacheDitTestTinyFlux:
    """A tiny randomly initialised (seeded) Flux model; latents as EmptySD3LatentImage makes them."""

    CATEGORY = "CacheDit tests"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"variant": ("INT", {"default": 0, "min": 0, "max": 1000})}}

    def load(self, variant):
        return (_harness().build_model("flux", seed=variant),)


class CacheDitTestConditioning:
    """Random positive / negative text conditioning for the tiny Flux model."""

    CATEGORY = "CacheDit tests"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"variant": ("INT", {"default": 1234, "min": 0, "max": 100000})}}

    def make(self, variant):
        return _harness().make_conditioning("flux", seed=variant)


class UpscaleModelLoaderStandIn:
    """Registered as "UpscaleModelLoader" only when ComfyUI's own did not load (comfy_extras/
    nodes_upscale_model.py needs spandrel, which the test setup leaves out). The frontend (1.27)
    maps model folders to loader nodes and throws while creating any model loader node (VAELoader,
    CheckpointLoaderSimple...) when one of the loaders it expects is missing, which a real install
    never lacks."""

    CATEGORY = "loaders"
    RETURN_TYPES = ("UPSCALE_MODEL",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model_name": ([],)}}

    def load(self, model_name):
        raise RuntimeError("test stand-in: no upscale models here")


NODE_CLASS_MAPPINGS = {"CacheDitTestTinyFlux": CacheDitTestTinyFlux, "CacheDitTestConditioning": CacheDitTestConditioning}

import nodes as _comfy_nodes  # noqa: E402  (ComfyUI's nodes.py: this pack loads inside ComfyUI only)

if "UpscaleModelLoader" not in _comfy_nodes.NODE_CLASS_MAPPINGS:
    NODE_CLASS_MAPPINGS["UpscaleModelLoader"] = UpscaleModelLoaderStandIn
