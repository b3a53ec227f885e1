"""Overhead and scaling at FLUX width on a GPU (or, to test this script, small on the CPU).

    python -m benchmarks.gpu_scaling                      # cuda: hidden 3072 (24 x 128), 2 double + 4 single
                                                          # blocks, bf16, batch 1, 512 text tokens,
                                                          # 1024 and 4096 image tokens, 20 steps
    python -m benchmarks.gpu_scaling --device cpu --small # the same code path, tiny, for a CPU check
    python -m benchmarks.gpu_scaling --tokens 1024 4096 16384 --steps 28 --repeats 7 --out DIR

Random weights. Per token count: uncached step time (CUDA events), never-reuse overhead (ours,
adaptive with a threshold nothing passes, no warmup), a forced `strategy="fixed"` schedule's
measured speedup vs the ideal implied by its counted block compute, the adaptive default's
speedup, and host syncs per run counted with `torch.cuda.set_sync_debug_mode("warn")`
(expected for ours on top of uncached: one per model call to read the timestep, plus one per
adaptive decision for the decision scalar; none per block). Writes `<out>/gpu_<device>.md` and
prints it.

On the device machine diffusers, blinker and structlog are not installed: carry wheels in `.whl`
(see benchmarks/README or the device README) and start the command with
`python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PYTHONPATH`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import warnings
from typing import Any, Callable, Optional, Sequence

import torch


def count_syncs(fn: Callable[[], Any]) -> int:
    """Synchronising CUDA calls made by `fn` (torch's sync debug mode, as warnings)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return sum(1 for w in caught if re.search(r"synchroniz", str(w.message), re.I))


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return "cpu"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--small", action="store_true", help="tiny model and tokens (a CPU check of this script)")
    p.add_argument("--tokens", type=int, nargs="+", default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--out", default=os.environ.get("OUT") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = p.parse_args(argv)

    from .common import machine_block, machine_info
    from .scaling import CpuTimer, CudaTimer, run_scaling, scaling_table

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("CUDA is not available; use --device cpu --small for a CPU check", file=sys.stderr)
        return 2
    if args.small:
        kw = dict(hidden=256, heads=4, double=1, single=2, txt_tokens=32, batch=1, in_channels=64,
                  tokens=tuple(args.tokens or (256,)), steps=args.steps or 6, repeats=args.repeats or 2)
        dtype = torch.bfloat16 if cuda else torch.float32
    else:
        kw = dict(hidden=3072, heads=24, double=2, single=4, txt_tokens=512, batch=1, in_channels=64,
                  tokens=tuple(args.tokens or (1024, 4096)), steps=args.steps or 20, repeats=args.repeats or 5)
        dtype = torch.bfloat16
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    t0 = time.perf_counter()
    info = machine_info(torch.get_num_threads())
    dev = device_name(args.device)
    info["device"] = dev
    if cuda:
        info["cuda"] = str(torch.version.cuda)
    print(f"device {dev}, {kw}", flush=True)
    rows = run_scaling(device=args.device, dtype=dtype, timer=CudaTimer() if cuda else CpuTimer(),
                       sync_counter=count_syncs if cuda else None, **kw)
    text = (f"# Overhead and scaling on {dev}: FluxTransformer2DModel hidden {kw['hidden']} ({kw['heads']} heads x "
            f"{kw['hidden'] // kw['heads']}), {kw['double']} double + {kw['single']} single blocks, random weights, "
            f"{str(dtype).replace('torch.', '')}, batch {kw['batch']}, {kw['txt_tokens']} text tokens, {kw['steps']} Euler "
            f"steps, no CFG, median of {kw['repeats']} interleaved rounds ({'CUDA events' if cuda else 'perf_counter'})\n\n"
            f"Machine:\n{machine_block(info)}\n\n{scaling_table(rows)}\n\n"
            "never-reuse = ours adaptive, threshold 1e-9, no warmup: probe + decision + residual bookkeeping every step, "
            "no reuse. fixed = ours strategy='fixed' skip_interval=2 warmup=2; ideal = T_uncached / (f * T_blocks + "
            "T_non-block), f = counted block-MAC fraction, T_non-block timed with every block replaced by an identity. "
            "adaptive = library defaults (random weights: the probe rarely passes). Host syncs: torch.cuda sync debug "
            "mode warnings per run (the sampler itself makes one per step when it builds the timestep tensor).\n"
            f"\nTotal wall time of this script: {time.perf_counter() - t0:.0f} s.\n")
    os.makedirs(args.out, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "_", dev).strip("_").lower() or "device"
    path = os.path.join(args.out, f"gpu_{slug}.md" if cuda else f"gpu_check_{slug}.md")
    with open(path, "w") as f:
        f.write(text)
    print(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
