"""`steps_mask`: cache-dit's step computation masks (1 = compute, 0 = may reuse).

The predefined policies reproduce cache-dit 1.5's output exactly (a test compares them), so a
mask built for cache-dit means the same thing here.
"""

from __future__ import annotations

import copy
from typing import Optional

# 28-step policies: (compute bins, cache bins), alternating compute/cache runs.
_POLICIES_28 = {
    "slow": ([8, 3, 3, 2, 1, 1], [1, 2, 2, 2, 3]),
    "medium": ([6, 2, 2, 2, 2, 1], [1, 3, 3, 3, 3]),
    "fast": ([6, 1, 1, 1, 1, 1], [1, 3, 4, 5, 4]),
    "ultra": ([4, 1, 1, 1, 1], [2, 5, 6, 7]),
}
_POLICIES_9_TO_15 = {
    "slow": ([4, 2, 2, 2, 1], [1, 1, 1, 1]),
    "medium": ([4, 2, 1, 1, 1], [1, 1, 2, 2]),
    "fast": ([3, 1, 1, 1, 1], [1, 2, 2, 3]),
    "ultra": ([2, 1, 1, 1, 1], [1, 2, 3, 3]),
}
_POLICIES_9 = {
    "slow": ([5, 2, 1], [1]),
    "medium": ([5, 1, 1], [1, 1]),
    "fast": ([4, 1, 1], [1, 2]),
    "ultra": ([3, 1, 1], [2, 2]),
}
_POLICIES_8 = {
    "slow": ([5, 1, 1], [1]),
    "medium": ([4, 1, 1], [1, 1]),
    "fast": ([3, 1, 1], [1, 2]),
    "ultra": ([2, 1, 1], [2, 2]),
}
_POLICIES_SHORT = {4: ([2, 1], [1]), 6: ([3, 1], [2])}


def _bins_to_mask(compute_bins: list, cache_bins: list, total_steps: Optional[int]) -> list:
    if total_steps is None:
        total_steps = sum(compute_bins) + sum(cache_bins)
    elif sum(compute_bins) + sum(cache_bins) < total_steps:
        raise ValueError(
            f"total_steps={total_steps} is larger than compute_bins + cache_bins "
            f"({sum(compute_bins) + sum(cache_bins)}); allowed: bins that cover total_steps"
        )
    mask: list = []
    computes, caches = list(compute_bins), list(cache_bins)
    while len(mask) < total_steps and (computes or caches):
        if computes:
            mask.extend([1] * computes.pop(0))
        if caches:
            mask.extend([0] * caches.pop(0))
    return mask[:total_steps]


def _total(policy: tuple) -> int:
    return sum(policy[0]) + sum(policy[1])


def _truncate(policy: tuple, target: int) -> tuple:
    compute_bins, cache_bins = policy
    while _total(policy) > target:
        if cache_bins:
            cache_bins[-1] -= 1
            if cache_bins[-1] == 0:
                cache_bins.pop()
        if _total(policy) <= target:
            break
        if compute_bins:
            compute_bins[-1] -= 1
            if compute_bins[-1] == 0:
                compute_bins.pop()
    return policy


def _expand(policy: tuple, target: int) -> tuple:
    """Grow a 28-step policy to `target` steps keeping its compute/cache ratio (as cache-dit does)."""
    base_compute, base_cache = copy.deepcopy(policy[0]), copy.deepcopy(policy[1])
    n = min(len(policy[0]), len(policy[1]))
    while _total(policy) < target:
        for i in range(n):
            policy[0][i] += max(int(base_compute[i] * ((target / 28) * 0.5)), 1)
            if _total(policy) >= target:
                break
            policy[1][i] += max(int(base_cache[i] * ((target / 28) * 0.5)), 1)
            if _total(policy) >= target:
                break
        if _total(policy) >= target:
            break
        policy[0][-1] += 1
    return _truncate(policy, target)


def steps_mask(
    compute_bins: Optional[list] = None,
    cache_bins: Optional[list] = None,
    total_steps: Optional[int] = None,
    mask_policy: Optional[str] = "medium",
) -> list:
    """Build a per-step mask: 1 = always compute, 0 = may reuse (cache-dit's `steps_mask`).

    Either give explicit alternating `compute_bins`/`cache_bins` (e.g. `[4, 2]`, `[1, 3]`), or
    `total_steps` and a predefined `mask_policy` ("slow", "medium", "fast", "ultra"; for 28
    steps they compute 18/15/11/8 steps). The last step of a predefined mask always computes.
    Pass the result as `DBCacheConfig(steps_computation_mask=...)`.
    """
    if (compute_bins is None) != (cache_bins is None):
        given, missing = ("compute_bins", "cache_bins") if cache_bins is None else ("cache_bins", "compute_bins")
        raise ValueError(f"{missing}=None with {given} given is invalid; allowed: both compute_bins and cache_bins, "
                         f"or neither (total_steps and mask_policy)")
    if total_steps is not None and (isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1):
        raise ValueError(f"total_steps={total_steps!r} is invalid; allowed: a positive integer or None")
    if compute_bins is not None and cache_bins is not None:
        for name, bins in (("compute_bins", compute_bins), ("cache_bins", cache_bins)):
            if not isinstance(bins, (list, tuple)) or any(isinstance(b, bool) or not isinstance(b, int) or b < 0 for b in bins):
                raise ValueError(f"{name}={bins!r} is invalid; allowed: a list of non-negative integers")
        return _bins_to_mask(list(compute_bins), list(cache_bins), total_steps)
    if total_steps is None:
        raise ValueError("total_steps=None is invalid; allowed: an integer >= 4 when using a predefined mask_policy")
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 4:
        raise ValueError(f"total_steps={total_steps!r} is invalid; allowed: an integer >= 4 (4 or 6 below 8)")
    if mask_policy not in _POLICIES_28:
        raise ValueError(f"mask_policy={mask_policy!r} is invalid; allowed: {list(_POLICIES_28)}")

    if total_steps > 28:
        policies = {k: _expand(copy.deepcopy(v), total_steps) for k, v in _POLICIES_28.items()}
    elif total_steps >= 16:
        policies = {k: _truncate(copy.deepcopy(v), total_steps) for k, v in _POLICIES_28.items()}
    elif total_steps >= 8:
        table = _POLICIES_9_TO_15 if total_steps > 9 else (_POLICIES_9 if total_steps == 9 else _POLICIES_8)
        policies = {k: _truncate(copy.deepcopy(v), total_steps) for k, v in table.items()}
    else:
        if total_steps not in _POLICIES_SHORT:
            raise ValueError(f"total_steps={total_steps} is invalid below 8; allowed: 4 or 6")
        policies = {k: copy.deepcopy(_POLICIES_SHORT[total_steps]) for k in _POLICIES_28}
    compute_bins_, cache_bins_ = policies[mask_policy]
    mask = _bins_to_mask(compute_bins_, cache_bins_, total_steps)
    mask[-1] = 1
    return mask
