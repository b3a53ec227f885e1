"""The torchvision stand-in (stubs/torchvision, see stubs/README.md): ComfyUI's modules that import
torchvision load with it, what they call behaves like torchvision's tensor code, and nothing else in
the process takes it for a real torchvision. Where a real torchvision is installed the harness leaves
it alone, and these tests check ComfyUI got that one."""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil

import pytest


def _stub_in_use(module) -> bool:
    return os.path.realpath(module.__file__).startswith(os.path.realpath(_stubs_dir()) + os.sep)


def _stubs_dir():
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "stubs")


def _load_stub():
    """The stand-in as its own package (name ``cachedit_tv_stub``), whatever is installed."""
    import sys

    root = os.path.join(_stubs_dir(), "torchvision")
    spec = importlib.util.spec_from_file_location("cachedit_tv_stub", os.path.join(root, "__init__.py"),
                                                  submodule_search_locations=[root])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        for name in [n for n in sys.modules if n == spec.name or n.startswith(spec.name + ".")]:
            del sys.modules[name]
    return module


def test_comfyui_modules_that_import_torchvision_load(comfy_harness):
    import comfy.ldm.cosmos

    cosmos = [m.name for m in pkgutil.walk_packages(comfy.ldm.cosmos.__path__, "comfy.ldm.cosmos.")]
    assert {"comfy.ldm.cosmos.model", "comfy.ldm.cosmos.predict2"} <= set(cosmos)
    for name in cosmos + ["comfy.ldm.cascade.stage_c_coder", "comfy.ldm.cascade.controlnet",
                          "comfy.ldm.ace.vae.music_dcae_pipeline"]:
        importlib.import_module(name)


def test_only_comfyui_sees_the_stand_in(comfy_harness):
    from comfy.ldm.cosmos import model as cosmos

    if _stub_in_use(cosmos.transforms):
        assert importlib.util.find_spec("torchvision") is None  # diffusers/transformers probe like this
        from transformers.utils import import_utils

        assert import_utils.is_torchvision_available() is False
    else:
        import torchvision

        assert not getattr(torchvision, "IS_CACHEDIT_TEST_STUB", False)
        assert cosmos.transforms is torchvision.transforms


def test_cosmos_padding_mask_resize(comfy_harness):
    """comfy/ldm/cosmos/model.py resizes a padding mask [B, 1, H, W] to the latent's H, W (NEAREST)."""
    import torch
    from comfy.ldm.cosmos import model as cosmos

    tf = cosmos.transforms
    mask = torch.arange(16.0).reshape(1, 1, 4, 4)
    down = tf.functional.resize(mask, [2, 2], interpolation=tf.InterpolationMode.NEAREST)
    assert torch.equal(down, torch.tensor([[[[0.0, 2.0], [8.0, 10.0]]]]))
    up = tf.functional.resize(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]), [4, 2],
                              interpolation=tf.InterpolationMode.NEAREST)
    assert torch.equal(up, torch.tensor([[[[1.0, 2.0], [1.0, 2.0], [3.0, 4.0], [3.0, 4.0]]]]))


def test_ace_vae_transform(comfy_harness):
    """comfy/ldm/ace/vae/music_dcae_pipeline.py normalises mel spectrograms with Compose([Normalize(0.5, 0.5)])."""
    import torch
    from comfy.ldm.ace.vae import music_dcae_pipeline as ace

    t = ace.transforms.Compose([ace.transforms.Normalize(0.5, 0.5)])
    x = torch.tensor([0.0, 0.25, 1.0]).reshape(1, 1, 1, 3)
    out = t(x)
    assert torch.equal(out, torch.tensor([-1.0, -0.5, 1.0]).reshape(1, 1, 1, 3))
    assert torch.equal(x, torch.tensor([0.0, 0.25, 1.0]).reshape(1, 1, 1, 3))  # not in place


def test_cascade_backbone_is_refused_by_the_stand_in(comfy_harness):
    from comfy.ldm.cascade import stage_c_coder

    if _stub_in_use(stage_c_coder.torchvision):
        with pytest.raises(NotImplementedError, match="efficientnet_v2_s: this is cachedit's test stub"):
            stage_c_coder.EfficientNetEncoder()
    else:
        assert len(stage_c_coder.EfficientNetEncoder().backbone) > 0


def test_stub_resize_follows_torchvision_tensor_rules(comfy_harness):
    import torch

    tv = _load_stub()
    F, Mode = tv.transforms.functional, tv.transforms.InterpolationMode
    img = torch.arange(32.0).reshape(1, 4, 8)
    short = F.resize(img, 2, interpolation=Mode.NEAREST)  # an int is the shorter side, aspect kept
    assert short.shape == (1, 2, 4) and torch.equal(short, img[:, ::2, ::2])
    assert F.resize(img, [3, 5]).shape == (1, 3, 5)  # bilinear (antialiased) by default
    assert F.resize(img, 2, max_size=3).shape == (1, 1, 3)  # the longer side capped, aspect kept
    assert F.resize(img, [4, 8]) is img
    gray = torch.tensor([[0, 255], [255, 0]], dtype=torch.uint8)
    big = F.resize(gray, [4, 4], interpolation="nearest")  # 2-D [H, W] and integer dtypes come back as given
    assert big.dtype == torch.uint8 and big.shape == (4, 4) and torch.equal(big[::2, ::2], gray)
    smooth = F.resize(gray.unsqueeze(0), [4, 4], interpolation=Mode.BILINEAR)
    assert smooth.dtype == torch.uint8 and 0 < int(smooth[0, 1, 1]) < 255
    with pytest.raises(ValueError, match="not supported for tensors"):
        F.resize(img, [2, 2], interpolation=Mode.LANCZOS)


def test_stub_normalize_is_per_channel(comfy_harness):
    import torch

    tv = _load_stub()
    x = torch.ones(2, 3, 2, 2)
    out = tv.transforms.Normalize([0.0, 0.5, 1.0], [1.0, 0.5, 2.0])(x)
    assert torch.equal(out[:, 0], torch.full((2, 2, 2), 1.0))
    assert torch.equal(out[:, 1], torch.full((2, 2, 2), 1.0))
    assert torch.equal(out[:, 2], torch.zeros(2, 2, 2))
    with pytest.raises(ValueError, match="division by zero"):
        tv.transforms.functional.normalize(x, 0.0, 0.0)
    with pytest.raises(NotImplementedError, match="resnet50"):
        tv.models.resnet50()
