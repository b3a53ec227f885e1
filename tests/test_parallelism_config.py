"""cachedit.ParallelismConfig in one process: cache-dit's fields, values checked by name, and what
CacheDit does not run refused before anything is sharded (the sharding itself: test_distributed.py)."""

from __future__ import annotations

import pytest

import cachedit
from cachedit.parallel.tensor import _interleave_packed_columns
from tiny_dits import TinyDiT


def test_fields_and_backends_as_cache_dit_names_them():
    import cache_dit

    theirs = {f for f in cache_dit.ParallelismConfig.__dataclass_fields__ if not f.startswith("_")}
    ours = set(cachedit.ParallelismConfig.__dataclass_fields__)
    assert theirs <= ours, theirs - ours
    assert cachedit.ParallelismConfig(backend="native_diffuser").backend is cachedit.ParallelismBackend.NATIVE_DIFFUSER
    assert cachedit.ParallelismConfig(backend="Native_PyTorch").backend is cachedit.ParallelismBackend.NATIVE_PYTORCH
    assert cachedit.ParallelismConfig(ulysses_size="auto", tp_size=1).sizes(4) == {"ulysses": 4, "ring": 1, "tp": 1}
    assert cachedit.ParallelismConfig(parallel_kwargs={"attention_backend": "flash"}).attention_backend == "flash"


@pytest.mark.parametrize("kwargs, message", [
    (dict(ulysses_size=0), "parallelism_config.ulysses_size=0 is invalid; allowed: a positive integer, 'auto' or None"),
    (dict(tp_size=2.0), "parallelism_config.tp_size=2.0 is invalid"),
    (dict(ring_size=True), "parallelism_config.ring_size=True is invalid"),
    (dict(ulysses_size="auto", tp_size="auto"), "parallelism_config sets more than one size to 'auto'"),
    (dict(backend="mpi"), "backend='mpi' is invalid; allowed: 'Auto'"),
    (dict(ring_rotate_method="ring"), "parallelism_config.ring_rotate_method='ring' is invalid"),
    (dict(parallel_kwargs={"ulysses": 2}), "parallelism_config.parallel_kwargs key 'ulysses' is unknown"),
])
def test_bad_values_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=f"^{message[:40].replace('(', '.').replace(')', '.').replace('[', '.')}"):
        cachedit.ParallelismConfig(**kwargs)


@pytest.mark.parametrize("kwargs, field", [
    (dict(ulysses_size=2, use_ray=True), "use_ray"), (dict(ulysses_size=2, ulysses_float8=True), "ulysses_float8"),
    (dict(ulysses_size=2, ulysses_async=True), "ulysses_async"), (dict(tp_size=2, ray_num_workers=2), "ray_num_workers"),
    (dict(ulysses_size=2, extra_parallel_modules=["vae"]), "extra_parallel_modules"),
    (dict(ulysses_size=2, backend="Native_Hybrid"), "backend"),
])
def test_what_cachedit_does_not_run_is_refused_before_sharding(kwargs, field):
    model = TinyDiT("Pattern_0", num_blocks=2)
    with pytest.raises(ValueError, match=f"^parallelism_config.{field}="):
        cachedit.enable_cache(model, parallelism_config=kwargs)  # a dict of the fields works too
    assert cachedit.get_manager().entry(model) is None  # nothing cached either


def test_one_process_is_never_a_silent_single_gpu_run():
    model = TinyDiT("Pattern_0", num_blocks=2)
    with pytest.raises(ValueError, match="^parallelism_config needs torch.distributed"):
        cachedit.enable_cache(model, parallelism_config=cachedit.ParallelismConfig(ulysses_size=2))
    with pytest.raises(ValueError, match="^parallelism_config=3 is invalid; allowed: a cachedit.ParallelismConfig"):
        cachedit.enable_cache(model, parallelism_config=3)
    with pytest.raises(ValueError, match="^parallelism_config key 'ulysses' is unknown"):
        cachedit.enable_cache(model, parallelism_config={"ulysses": 2})


def test_packed_columns_follow_the_shards():
    """FLUX single blocks project cat([attention, mlp]); after sharding rank r holds [attention_r,
    mlp_r], so row-wise chunk r of proj_out must hold exactly those columns."""
    import torch

    linear = torch.nn.Linear(2 + 6, 1, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.arange(8.0).reshape(1, 8))  # columns 0,1 attention; 2..7 mlp
    _interleave_packed_columns(linear, [2, 6], world=2)
    assert linear.weight.tolist() == [[0.0, 2.0, 3.0, 4.0, 1.0, 5.0, 6.0, 7.0]]
