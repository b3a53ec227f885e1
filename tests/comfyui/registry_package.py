"""The node pack as the ComfyUI registry ships it: the repository's files (tracked, or new and
not git-ignored) less what `.comfyignore` leaves out, matched with git's own ignore rules (the
registry's packer reads `.comfyignore` in gitignore syntax). Tests load this copy in ComfyUI to
show that nothing the nodes need was left out."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import List

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _git(*args: str, stdin: str | None = None) -> List[str]:
    result = subprocess.run(["git", "-C", REPO, *args], input=stdin, capture_output=True, text=True)
    if result.returncode not in (0, 1):  # check-ignore answers 1 when nothing matched
        raise RuntimeError(f"git {' '.join(args)} failed: {result.stderr}")
    return [line for line in result.stdout.splitlines() if line]


def files() -> List[str]:
    """Repository-relative paths of every file in the registry package."""
    candidates = _git("ls-files", "--cached", "--others", "--exclude-standard")
    left_out = set(_git("-c", "core.excludesFile=.comfyignore", "check-ignore", "--no-index", "--stdin",
                        stdin="\n".join(candidates)))
    return [p for p in candidates if p not in left_out and os.path.isfile(os.path.join(REPO, p))]


def copy_to(dest: str) -> str:
    """Copy the registry package into the folder `dest` (created); returns `dest`."""
    for path in files():
        target = os.path.join(dest, path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(os.path.join(REPO, path), target)
    return dest
