"""pytest at the repository root: the root is the node pack (its `__init__.py` is what ComfyUI
imports), never a package of the tests.

Without this, pytest sees `__init__.py` here and collects the root as a Python package named after
the checkout folder; in a folder whose name is not an identifier (`ci-check`, `CacheDit-main`) it
then imports `__init__.py` as a top-level module, its relative imports fail, and every test errors.
Collected as a plain directory, the folder's name never matters (tests/test_checkout_folder.py).
This file is not shipped to ComfyUI users (.comfyignore)."""

from __future__ import annotations

from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parent


class _RootIsAFolder:
    """Registered as a plugin (not a conftest hook): a conftest's hooks apply inside its folder, and
    the root folder itself is collected with its parent's hooks."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_collect_directory(self, path: Path, parent: pytest.Collector):
        if path.resolve() == _ROOT:
            return pytest.Dir.from_parent(parent, path=path)
        return None


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(_RootIsAFolder(), "cachedit-root-is-a-folder")
