"""Multi-process decisions: two gloo ranks on the CPU (spawned, short timeouts, a hard join
deadline so a desynchronised pair fails instead of hanging CI). Each rank's code is in
distributed_workers.py; the assertions are here."""

from __future__ import annotations

import os

import pytest
import torch

from distributed_workers import spawn

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """One spawn of two ranks running every scenario (distributed_workers.everything)."""
    tmp = tmp_path_factory.mktemp("distributed")
    return spawn("everything", tmp, {"init_file": os.path.join(str(tmp), "failing.init")}, deadline=540, timeout=20)


@pytest.mark.parametrize("order", ["parallel_first", "cache_first"])
def test_context_parallel_ranks_decide_as_one_process(ranks, order):
    """Ulysses 2 on the bundled Flux, CacheDit enabled before or after the parallelism, thresholds
    right between the two ranks' own probe diffs: every rank reuses the steps one process reuses."""
    thresholds = ranks[0]["thresholds"]
    assert thresholds and ranks[1]["thresholds"] == thresholds
    results = [r[order] for r in ranks]
    for key in [str(t) for t in thresholds] + ["default"]:
        single = results[0]["single"][key]
        assert results[1]["single"][key]["cached"] == single["cached"]
        for r in results:
            assert r["parallel"][key]["cached"] == single["cached"], (order, key)
            diff = abs(r["parallel"][key]["images"] - single["images"]).max()
            assert diff < 1e-4, (order, key, diff)  # same steps reused: the same images up to float sums
    assert any(results[0]["single"][str(t)]["cached"] for t in thresholds)  # something is reused at all


def test_ranks_with_different_inputs_reuse_the_same_steps(ranks):
    a, b = (r["different_inputs"] for r in ranks)
    for key in ("reduced", "fixed", "default"):
        assert a[key] == b[key], key
    assert a["fixed"] == [3, 5, 7, 9, 11, 13]
    # the measurement is the world's: both ranks see the same probe diffs; unreduced, their own differ
    assert a["reduced_diffs"] == b["reduced_diffs"] and a["reduced_diffs"]
    assert a["alone_diffs"] != b["alone_diffs"]


def test_cfg_parallel_branches_take_one_decision(ranks):
    assert ranks[0]["cfg_parallel"]["cached"] == ranks[1]["cfg_parallel"]["cached"]
    assert ranks[0]["cfg_parallel"]["cached"]


def test_ranks_agree_on_a_sampler_that_adds_noise(ranks):
    """Noise on both ranks: both compute every step from step 2. Noise on one rank only: the world's
    mean cosine decides, the same on both ranks (same steps reused, same step the reuse stops)."""
    a, b = (r["noisy_sampler"] for r in ranks)
    assert a["both"] == b["both"] == {"cached": [], "noisy_from": 2}
    assert a["rank 1"] == b["rank 1"]


def test_a_failing_rank_leaves_no_stale_state(ranks):
    a, b = (r["failing_rank"] for r in ranks)
    assert b["error"] == "RuntimeError" and a["error"]  # rank 0 learns it from the reduction
    for r in (a, b):
        assert r["again"] == r["fresh"] and r["equal"]


@pytest.mark.parametrize("key", ["ulysses_flux", "tp_flux", "tp_wan"])
def test_parallelism_config_shards_and_caches_in_one_call(ranks, key):
    """enable_cache(..., parallelism_config=) with Ulysses 2 (Flux) or tensor parallelism 2 (Flux, Wan
    layouts): every rank reuses the steps one process reuses, the images match it."""
    for r in ranks:
        run = r["parallelism_config"][key]
        assert run["sharded"]["cached"] == run["single"]["cached"] and run["single"]["cached"], key
        diff = abs(run["sharded"]["images"] - run["single"]["images"]).max()
        assert diff < 1e-4, (key, diff)
    assert ranks[0]["parallelism_config"][key]["default"] == ranks[1]["parallelism_config"][key]["default"]


def test_parallelism_config_refuses_what_it_cannot_run(ranks):
    errors = ranks[0]["parallelism_config"]["errors"]
    assert errors["ring"].startswith("ValueError: parallelism_config.ring_size=2 needs an attention backend that "
                                     "returns the log-sum-exp"), errors["ring"]
    assert errors["hybrid"].startswith("ValueError: parallelism_config sets ulysses_size/ring_size (2x1) and tp_size=2")
    assert errors["product"].startswith("ValueError: parallelism_config ulysses_size x ring_size x tp_size = 4 but the "
                                        "world has 2 ranks")
    assert errors["tp_plan"].startswith("ValueError: parallelism_config.tp_size=2 is not supported for "
                                        "QwenImageTransformer2DModel")
    assert ranks[1]["parallelism_config"]["errors"] == errors
