"""torchvision.transforms.functional stand-in: resize and normalize, for tensors only.

Semantics follow torchvision's tensor backend (torchvision/transforms/_functional_tensor.py):
``resize`` calls ``torch.nn.functional.interpolate`` on a [..., C, H, W] tensor (leading dims folded
into the batch), with antialias only for bilinear/bicubic, integer tensors rounded back."""

from __future__ import annotations

import enum

import torch


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


_TENSOR_MODES = {InterpolationMode.NEAREST, InterpolationMode.NEAREST_EXACT, InterpolationMode.BILINEAR,
                 InterpolationMode.BICUBIC}


def _output_size(h, w, size, max_size):
    if isinstance(size, int):
        size = [size]
    size = list(size)
    if len(size) == 2:
        if max_size is not None:
            raise ValueError("max_size is only allowed when size is a single int")
        return size
    if len(size) != 1:
        raise ValueError(f"size must be an int or a sequence of 1 or 2 ints, got {size!r}")
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size[0], int(size[0] * long / short)
    if max_size is not None:
        if max_size <= new_short:
            raise ValueError(f"max_size={max_size} must be larger than the requested size {new_short}")
        if new_long > max_size:
            new_short, new_long = int(max_size * new_short / new_long), max_size
    return [new_long, new_short] if w <= h else [new_short, new_long]


def resize(img, size, interpolation=InterpolationMode.BILINEAR, max_size=None, antialias=True):
    if not isinstance(img, torch.Tensor):
        raise TypeError("cachedit's torchvision test stub resizes tensors only")
    if isinstance(interpolation, str):
        interpolation = InterpolationMode(interpolation)
    if interpolation not in _TENSOR_MODES:
        raise ValueError(f"interpolation {interpolation} is not supported for tensors")
    if img.ndim < 2:
        raise ValueError(f"expected a tensor of at least 2 dims [..., H, W], got shape {tuple(img.shape)}")
    h, w = img.shape[-2:]
    out_h, out_w = _output_size(h, w, size, max_size)
    if (out_h, out_w) == (h, w):
        return img
    lead = img.shape[:-2]
    x = img.reshape(-1, 1 if img.ndim == 2 else img.shape[-3], h, w)
    dtype = x.dtype
    if not x.is_floating_point():
        x = x.to(torch.float32)
    mode = interpolation.value
    smooth = interpolation in (InterpolationMode.BILINEAR, InterpolationMode.BICUBIC)
    out = torch.nn.functional.interpolate(x, size=[out_h, out_w], mode=mode,
                                          align_corners=False if smooth else None,
                                          antialias=bool(antialias) and smooth)
    if interpolation == InterpolationMode.BICUBIC and dtype == torch.uint8:
        out = out.clamp(0, 255)
    if not dtype.is_floating_point:
        out = out.round() if smooth else out
        out = out.to(dtype)
    return out.reshape(*lead, out_h, out_w)


def normalize(tensor, mean, std, inplace=False):
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        raise TypeError("normalize expects a floating point tensor")
    if tensor.ndim < 3:
        raise ValueError(f"expected a tensor of at least 3 dims [..., C, H, W], got shape {tuple(tensor.shape)}")
    mean = torch.as_tensor(mean, dtype=tensor.dtype, device=tensor.device)
    std = torch.as_tensor(std, dtype=tensor.dtype, device=tensor.device)
    if (std == 0).any():
        raise ValueError("std evaluated to zero, leading to division by zero")
    if mean.ndim == 1:
        mean = mean.view(-1, 1, 1)
    if std.ndim == 1:
        std = std.view(-1, 1, 1)
    out = tensor if inplace else tensor.clone()
    return out.sub_(mean).div_(std)
