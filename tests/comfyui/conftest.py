"""ComfyUI integration tests: skipped (with the reason shown by ``pytest -rs``) unless
``COMFYUI_PATH`` names a ComfyUI checkout that imports in this interpreter.

Only items collected from this directory are touched; nothing here is shared with other
test directories. Test modules here must not import torch/ComfyUI at module level (use the
``comfy_harness`` fixture or import inside the test) so that collection works everywhere.
"""

from __future__ import annotations

import os

import pytest

from . import harness

_HERE = os.path.dirname(os.path.abspath(__file__))
_REASON: str | None = None
_CHECKED = False


def _reason() -> str | None:
    global _REASON, _CHECKED
    if not _CHECKED:
        _REASON = harness.comfy_unavailable_reason()
        _CHECKED = True
    return _REASON


def pytest_collection_modifyitems(config, items):
    mine = [it for it in items if os.path.abspath(str(it.fspath)).startswith(_HERE + os.sep)]
    if not mine:
        return
    reason = _reason()
    if reason is None:
        return
    marker = pytest.mark.skip(reason=reason)
    for it in mine:
        it.add_marker(marker)


@pytest.fixture(scope="session")
def comfy_harness():
    """The harness module with ComfyUI imported (--cpu)."""
    reason = _reason()
    if reason is not None:
        pytest.skip(reason)
    return harness
