"""The test suite runs from a checkout folder of any name (CI clones into names like `ci-check`).

The repository root has an `__init__.py` (ComfyUI imports the folder as the node pack), so pytest
used to collect the root as a package named after the folder: in a folder whose name is not a
Python identifier every test errored ("attempted relative import with no known parent package").
The root `conftest.py` makes pytest collect the root as a plain folder. Checked here on a copy of
the root files in such a folder, with and without that conftest."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _checkout(dest: str, with_root_conftest: bool) -> None:
    """The repository root as a clone has it (the pack's __init__, nodes/, the pytest config) and a
    tests/ folder like ours: a conftest.py the tests import by name (`from conftest import ...`, as
    ours do; the root conftest is a module named `conftest` there too) and one test."""
    os.makedirs(os.path.join(dest, "tests"))
    for name in ("__init__.py", "pyproject.toml") + (("conftest.py",) if with_root_conftest else ()):
        shutil.copy(os.path.join(REPO, name), dest)
    shutil.copytree(os.path.join(REPO, "nodes"), os.path.join(dest, "nodes"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    with open(os.path.join(dest, "tests", "conftest.py"), "w", encoding="utf-8") as f:
        f.write("def sample():\n    return 'tests/conftest.py'\n")
    with open(os.path.join(dest, "tests", "test_here.py"), "w", encoding="utf-8") as f:
        f.write("from conftest import sample\n\n\ndef test_imports():\n    assert sample() == 'tests/conftest.py'\n")


def _pytest(cwd: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COMFYUI_PATH", "PYTEST_ADDOPTS")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("folder", ["ci-check"])
def test_suite_runs_in_a_folder_whose_name_is_not_an_identifier(tmp_path, folder):
    assert not folder.isidentifier()
    fixed, broken = str(tmp_path / "a" / folder), str(tmp_path / "b" / folder)
    _checkout(fixed, with_root_conftest=True)
    _checkout(broken, with_root_conftest=False)
    result = _pytest(fixed)
    assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout[-3000:] + result.stderr[-2000:]
    # the failure the root conftest prevents (so this test can tell)
    result = _pytest(broken)
    assert result.returncode != 0 and "attempted relative import" in result.stdout, result.stdout[-3000:]
