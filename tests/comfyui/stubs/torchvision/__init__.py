"""Test-only stand-in for torchvision (see ../README.md): just what ComfyUI touches.

Put on sys.path by tests/comfyui/harness.py only when no real torchvision is importable."""

from . import models, transforms  # noqa: F401

__version__ = "0.0.0+cachedit.test.stub"
IS_CACHEDIT_TEST_STUB = True
