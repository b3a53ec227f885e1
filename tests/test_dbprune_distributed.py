"""DBPrune under torch.distributed: two gloo ranks on the CPU (spawned; see distributed_workers.py).
Every prunable block's decision is measured through the decider, so ranks that sample different
latents still prune the same blocks at the same steps (a rank that skipped a block while another
ran it would desynchronise any collective inside the model)."""

from __future__ import annotations

import pytest
import torch

from distributed_workers import spawn

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")


def test_ranks_with_different_inputs_prune_the_same_blocks(tmp_path):
    a, b = (r for r in spawn("dbprune_different_inputs", tmp_path, deadline=240, timeout=30))
    assert a["auto"]["blocks"] == b["auto"]["blocks"] and sum(a["auto"]["blocks"]) > 0
    assert a["auto"]["diffs"] == b["auto"]["diffs"]  # the world's change, on every rank
    assert a["off"]["diffs"] != b["off"]["diffs"]  # alone, each rank measures its own latents
