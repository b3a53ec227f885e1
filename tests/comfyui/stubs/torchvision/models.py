"""torchvision.models stand-in: no model is provided.

ComfyUI calls ``torchvision.models.efficientnet_v2_s()`` only for Stable Cascade's image encoder
(comfy/ldm/cascade/stage_c_coder.py) and controlnet backbone (comfy/ldm/cascade/controlnet.py),
built when such a checkpoint is loaded. The tests build neither: fail loudly if one ever does."""


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)

    def unavailable(*args, **kwargs):
        raise NotImplementedError(
            f"torchvision.models.{name}: this is cachedit's test stub of torchvision "
            "(tests/comfyui/stubs), which has no models; install a torchvision that matches torch to build "
            "Stable Cascade encoders")

    unavailable.__name__ = name
    return unavailable
