"""torchvision.transforms stand-in: InterpolationMode, Compose, Normalize (tensor inputs only)."""

from __future__ import annotations

from . import functional
from .functional import InterpolationMode

__all__ = ["Compose", "InterpolationMode", "Normalize", "functional"]


class Compose:
    """Applies the transforms in order, like torchvision.transforms.Compose."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, img):
        for t in self.transforms:
            img = t(img)
        return img


class Normalize:
    """(x - mean) / std per channel (dim -3), like torchvision.transforms.Normalize on tensors."""

    def __init__(self, mean, std, inplace=False):
        self.mean, self.std, self.inplace = mean, std, inplace

    def __call__(self, tensor):
        return functional.normalize(tensor, self.mean, self.std, self.inplace)

    forward = __call__
