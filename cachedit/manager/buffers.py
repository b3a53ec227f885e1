"""Tensor buffers of the engine: write-into helpers and the two probe-sized buffers shared by
every branch, so that no hidden-state-sized tensor is allocated per step.

On CPU fresh large allocations page-fault, and that cost more than the math; on GPU they churn
the caching allocator. The probe of a computed step is kept by its branch until the next
computed step; the probe it replaces becomes the *spare* the next probe is written into, and
the difference of two probes goes into the *scratch*.
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch


def tensor_version(t: Optional[torch.Tensor]) -> int:
    """In-place write counter of a tensor; -1 for inference tensors (torch.inference_mode(), as
    ComfyUI samples), which keep none: adapters for such callers ask for copies up front."""
    if t is None or t.is_inference():
        return -1
    return t._version


def sub_into(buffer: Optional[torch.Tensor], a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a - b, written into `buffer` when it fits (same shape, dtype and device), else a new tensor."""
    if buffer is not None and buffer.shape == a.shape and buffer.dtype == a.dtype and buffer.device == a.device:
        return torch.sub(a, b, out=buffer)
    return a - b


def sample_l1(t: torch.Tensor) -> torch.Tensor:
    """Sum of |t| per batch element (dim 0), in float32, on t's device (no host sync)."""
    if t.dim() < 2:
        return torch.linalg.vector_norm(t, 1, dtype=torch.float32).reshape(1)
    return torch.linalg.vector_norm(t.reshape(t.shape[0], -1), 1, dim=1, dtype=torch.float32)


def tensor_bytes(tensors: Iterable[Optional[torch.Tensor]]) -> int:
    """Bytes held by distinct tensors (an alias of another counts once)."""
    seen = {}
    for t in tensors:
        if isinstance(t, torch.Tensor):
            seen[(t.device, t.data_ptr())] = t.numel() * t.element_size()
    return sum(seen.values())


class ProbeBuffers:
    """The engine-wide spare (the next probe is written into it) and scratch (probe differences)."""

    __slots__ = ("spare", "scratch", "__weakref__")

    def __init__(self) -> None:
        self.spare: Optional[torch.Tensor] = None
        self.scratch: Optional[torch.Tensor] = None

    def probe(self, output: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """output - base in the spare (which the returned probe now owns)."""
        probe = sub_into(self.spare, output, base)
        self.spare = None
        return probe

    def give_back(self, tensor: Optional[torch.Tensor]) -> None:
        """A probe no branch keeps any more: its memory takes the next probe."""
        if tensor is not None:
            self.spare = tensor

    def scratch_like(self, probe: torch.Tensor) -> torch.Tensor:
        """A buffer of the probe's shape for its difference to the previous probe."""
        if self.scratch is None or self.scratch.shape != probe.shape:
            self.scratch = torch.empty_like(probe)
        return self.scratch

    def nbytes(self) -> int:
        """Bytes held now."""
        return tensor_bytes((self.spare, self.scratch))
