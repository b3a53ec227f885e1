#!/usr/bin/env bash
# Run cache-dit's own top-level API tests (its tests/api/) against cachedit.
#
#   scripts/cache_dit_api_tests.sh <cache-dit checkout or bare git dir> [pytest args...]
#
# The tests are copied to a temporary directory outside this repository, their top-level imports
# rewritten (`import cache_dit` -> `import cachedit as cache_dit`, `from cache_dit import` ->
# `from cachedit import`), and run with this repository's .venv. Files that import cache-dit's
# internals (its calibrators, attention backends, example registry) test parts CacheDit does not
# have; they are run too unless you pass test files, and fail at collection.
set -euo pipefail
src="${1:?usage: $0 <cache-dit checkout or bare git dir> [pytest args...]}"
shift
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if [ -d "$src/tests/api" ]; then
  cp -r "$src/tests/api" "$work/api"
else
  git --git-dir="$src" archive HEAD tests/api | tar -x -C "$work" && mv "$work/tests/api" "$work/api"
fi
sed -i -E 's/^import cache_dit$/import cachedit as cache_dit/; s/^from cache_dit import /from cachedit import /' "$work"/api/*.py
cd "$work"
args=("$@")
if [ ${#args[@]} -eq 0 ]; then
  args=(api/test_forward_pattern.py api/test_refresh_context.py api/test_load_configs.py)
fi
PYTHONPATH="$repo" "$repo/.venv/bin/python" -m pytest -q -p no:cacheprovider "${args[@]}"
