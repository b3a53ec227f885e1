"""Cache placement: where the cached residuals live between the calls that use them.

`cache_device`: "model" keeps them on the model's device (no copies); "cpu" keeps them in host
memory (pinned when the model is on CUDA); "auto" is the model's device unless the framework says
it is low on memory there (ComfyUI: `adapters/comfyui/memory.py` sets `auto_device` before each
sampling run to its offload device), then that device.

Only the segment residuals and their TaylorSeer terms move: they are most of the cache (per
block list and stream, plus one per Taylor order). The probe and the two probe buffers stay on
the model's device (every decision reads them), as does a step-level model's output-sized cache.

Off the model's device, a branch's tensors are *staged* (copied to the model's device) right
after the decision that needs them: a reuse (it adds them back) or a computed step that reads
them (TaylorSeer's update, error feedback's measurement). On CUDA the copies run on a side
stream from pinned memory and the compute stream waits on it (a GPU-side wait, no host sync), so
they overlap whatever the GPU still has queued. When the call ends the staged copies are dropped;
after a computed step the new values are copied back (device -> pinned host, on the side stream,
after the compute stream's work; the device tensors are kept alive until the copy is done with
`record_stream`). The arithmetic is the same on the same device either way: outputs are
bit-identical to `cache_device="model"`.
"""

from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Tuple

import torch

from .state import BranchState

Slot = Tuple[str, object, int]  # ("res", (segment, stream), 0) or ("taylor", (segment, stream), term index)


def same_device(a: torch.device, b: torch.device) -> bool:
    """True when `a` and `b` name the same device ("cuda" and "cuda:0" alike when 0 is current)."""
    a, b = torch.device(a), torch.device(b)
    if a.type != b.type:
        return False
    if a.index is None or b.index is None:
        current = torch.cuda.current_device() if a.type == "cuda" and torch.cuda.is_available() else 0
        return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)
    return a.index == b.index


def _slots(branch: BranchState) -> Iterator[Tuple[Slot, torch.Tensor]]:
    for seg, streams in branch.residuals.items():
        for name, t in streams.items():
            yield ("res", (seg, name), 0), t
    for key, series in branch.taylor.items():
        for i, t in enumerate(series.terms):
            yield ("taylor", key, i), t


def _put(branch: BranchState, slot: Slot, value: torch.Tensor) -> None:
    kind, key, i = slot
    if kind == "res":
        seg, name = key
        branch.residuals[seg][name] = value
    else:
        branch.taylor[key].terms[i] = value


class CachePlacement:
    """Where one engine's residuals live, and the copies that keep them there."""

    def __init__(self, mode: str = "auto") -> None:
        self.mode = mode
        self.auto_device: Optional[torch.device] = None  # set by an adapter: "auto" goes there this run
        self._streams: Dict[torch.device, "torch.cuda.Stream"] = {}
        self.copies = 0  # transfers issued (tests and benchmarks read it)

    def device_for(self, model_device: torch.device) -> torch.device:
        """The cache's device for a model on `model_device`."""
        if self.mode == "cpu":
            return torch.device("cpu")
        if self.mode == "auto" and self.auto_device is not None:
            return torch.device(self.auto_device)
        return torch.device(model_device)

    def offloaded(self, model_device: torch.device) -> bool:
        """True when the cache lives elsewhere than the model (copies are needed)."""
        return not same_device(self.device_for(model_device), model_device)

    # -- copies -----------------------------------------------------------------------------------
    def _side(self, device: torch.device) -> Optional["torch.cuda.Stream"]:
        if device.type != "cuda":
            return None
        stream = self._streams.get(device)
        if stream is None:
            stream = self._streams[device] = torch.cuda.Stream(device)
        return stream

    def stage(self, branch: BranchState, model_device: torch.device, copy: bool = True) -> None:
        """Copy the branch's stored tensors to the model's device for this call (aliases stay aliases).
        `copy=False`: the call reads none of them (a computed step without TaylorSeer or error
        feedback); only their host buffers are noted, to take the new values at the end of the call."""
        if branch.staged is not None or not (branch.residuals or branch.taylor):
            return
        if not copy:
            branch.staged = list(_slots(branch))
            return
        model_device = torch.device(model_device)
        side = self._side(model_device)
        staged: Dict[int, torch.Tensor] = {}
        hosts: List[Tuple[Slot, torch.Tensor]] = []
        current = torch.cuda.current_stream(model_device) if side is not None else None
        if side is not None:
            side.wait_stream(current)  # the host buffers' last write (a copy back) is on `side` already
        with torch.cuda.stream(side) if side is not None else _nullcontext():
            for slot, host in list(_slots(branch)):
                hosts.append((slot, host))
                dev = staged.get(id(host))
                if dev is None:
                    dev = staged[id(host)] = host.to(model_device, non_blocking=side is not None, copy=True)
                    self.copies += 1
                _put(branch, slot, dev)
        if side is not None:
            current.wait_stream(side)  # GPU-side: the compute stream reads them after the copies
            for dev in staged.values():
                dev.record_stream(current)
        branch.staged = hosts

    def unstage(self, branch: BranchState, computed: bool) -> None:
        """End of a call: after a computed step copy the new values back into host buffers, after a
        reuse put the unchanged host tensors back. Tensors the call created are placed too."""
        hosts = dict(branch.staged or ())
        branch.staged = None
        if not computed:
            for slot, host in hosts.items():
                _put(branch, slot, host)
            return
        pinned_ok = torch.cuda.is_available()
        done: Dict[int, torch.Tensor] = {}
        side_for = {}
        for slot, dev in list(_slots(branch)):
            if hosts.get(slot) is dev or (dev.device.type == "cpu" and slot not in hosts):
                continue  # already on the host
            out = done.get(id(dev))
            if out is None:
                old = hosts.get(slot)
                reuse = old is not None and old.shape == dev.shape and old.dtype == dev.dtype and old is not dev \
                    and all(o is not old for o in done.values())
                out = old if reuse else torch.empty(dev.shape, dtype=dev.dtype, pin_memory=pinned_ok and dev.is_cuda)
                side = self._side(dev.device)
                if side is not None:
                    if dev.device not in side_for:
                        side.wait_stream(torch.cuda.current_stream(dev.device))  # after the compute that wrote them
                        side_for[dev.device] = side
                    with torch.cuda.stream(side):
                        out.copy_(dev, non_blocking=True)
                    dev.record_stream(side)  # not freed/reused before the copy ran
                else:
                    out.copy_(dev)
                self.copies += 1
                done[id(dev)] = out
            _put(branch, slot, out)


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc) -> None:
        return None


def bytes_by_device(tensors) -> Dict[str, int]:
    """Bytes of distinct tensors per device ("cuda:0", "cpu"...)."""
    seen: Dict[tuple, Tuple[str, int]] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor):
            seen[(t.device, t.data_ptr())] = (str(t.device), t.numel() * t.element_size())
    out: Dict[str, int] = {}
    for device, n in seen.values():
        out[device] = out.get(device, 0) + n
    return out
