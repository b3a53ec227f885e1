"""Fault injection in the library: an exception inside a block, or `torch.OutOfMemoryError` raised
by one, mid-run. The failed generation leaves nothing behind: the next one is bit-identical to a
fresh model's with the same config and the same earlier generations (no stale residual, probe or
run state is reused), and a never-reuse model stays bit-identical to the uncached one."""

from __future__ import annotations

import pytest
import torch

import cachedit
from conftest import make_tiny_flux, sample
from fuzzing import RaiseAt

CONFIGS = {
    "fixed": dict(strategy="fixed", skip_interval=2, warmup_steps=1, Fn_compute_blocks=1, Bn_compute_blocks=0),
    "adaptive_taylorseer": dict(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=0.6,
                                max_warmup_steps=1, enable_taylorseer=True, taylorseer_order=1),
    "never": dict(Fn_compute_blocks=1, residual_diff_threshold=0.0),
}
# fault -> (exception, block, call): a middle block early in the run; the probe block at a later step
FAULTS = {"exception": (lambda: RuntimeError("injected fault"), 3, 3),
          "oom": (lambda: torch.OutOfMemoryError("injected OOM"), 0, 5)}


def Fault(model, index: int, at: int, make) -> RaiseAt:  # noqa: N802 (reads as the class it returns)
    """Raises from block `index`'s attention at its `at`-th call (once)."""
    blocks = list(model.transformer_blocks) + list(model.single_transformer_blocks)
    return RaiseAt(blocks[index].attn, at, make)


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_failed_generation_leaves_no_stale_state(config, fault):
    kw = CONFIGS[config]
    model = make_tiny_flux()
    cachedit.enable_cache(model, **kw)
    sample(model, steps=8, cfg="separate")  # a full run first: residuals and probes exist
    make, block, call = FAULTS[fault]
    injected = Fault(model, block, call, make)
    with pytest.raises((RuntimeError, torch.OutOfMemoryError), match="injected"):
        sample(model, steps=8, cfg="separate", seed=1)
    injected.close()
    after = sample(model, steps=8, cfg="separate", seed=2)

    fresh = make_tiny_flux()
    cachedit.enable_cache(fresh, **kw)
    sample(fresh, steps=8, cfg="separate")
    expected = sample(fresh, steps=8, cfg="separate", seed=2)
    assert torch.equal(after, expected)
    stats, fresh_stats = cachedit.summary(model, logging=False)[0], cachedit.summary(fresh, logging=False)[0]
    assert stats.cached_steps == fresh_stats.cached_steps and stats.cfg_cached_steps == fresh_stats.cfg_cached_steps
    if config == "never":
        assert torch.equal(after, sample(make_tiny_flux(), steps=8, cfg="separate", seed=2))
    else:
        assert stats.cached_steps  # the run after the fault reused again
    cachedit.disable_cache(model)
    cachedit.disable_cache(fresh)
