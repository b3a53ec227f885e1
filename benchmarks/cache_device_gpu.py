"""What `cache_device="cpu"` costs on a GPU against `"model"`: wall time per run and peak GPU memory.

    python -m benchmarks.cache_device_gpu                       # cuda, hidden 3072, 12 blocks, bf16
    python -m benchmarks.cache_device_gpu --tokens 4096 16384 --steps 28 --repeats 5
    python -m benchmarks.cache_device_gpu --device cpu --small  # the same code path, tiny (a CPU check)

Random weights, a FLUX-width stack of self-attention + MLP blocks (`transformer_blocks`, found
without an adapter), batch 2 (CFG batched), one run = `--steps` Euler steps. Per token count:
uncached, `strategy="fixed"` with the cache on the model's device, and the same with
`cache_device="cpu"` (pinned host memory, residuals staged on a side stream ahead of each reuse and
copied back after each computed step). Reported: median ms per run (CUDA events, interleaved
repeats), the peak GPU memory of each model's first run (above what was allocated just before it:
another model's cache is not charged to it), the cache's bytes per device, whether the outputs are
bit-identical to the on-device cache, and the transfers issued. Not run in CI (no GPU); the table
measured on an H200 is results/cache_device_gpu_h200.md (quoted in the README's Cache placement).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import List, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F


class Block(nn.Module):
    """Pre-norm self-attention + MLP, with a timestep modulation (what a DiT block costs)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))
        self.mod = nn.Linear(dim, 2 * dim)

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        shift, scale = self.mod(temb)[:, None].chunk(2, dim=-1)
        b, n, d = hidden_states.shape
        x = self.norm1(hidden_states) * (1 + scale) + shift
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        h = hidden_states + self.proj(attn)
        return h + self.mlp(self.norm2(h))


class DiT(nn.Module):
    def __init__(self, dim: int, heads: int, depth: int) -> None:
        super().__init__()
        self.t_embed = nn.Linear(1, dim)
        self.transformer_blocks = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
        self.out = nn.Linear(dim, dim)

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        temb = self.t_embed(timestep.reshape(-1, 1).to(hidden_states.dtype) / 1000)
        for block in self.transformer_blocks:
            hidden_states = block(hidden_states, temb)
        return self.out(hidden_states)


def run(model: nn.Module, x0: torch.Tensor, steps: int) -> torch.Tensor:
    x = x0.clone()
    with torch.inference_mode():
        for i in range(steps):
            t = torch.full((x.shape[0],), 1000.0 * (1 - i / steps), device=x.device)
            x = x - model(x, t) / steps
    return x


def timed(model: nn.Module, x0: torch.Tensor, steps: int) -> float:
    """Milliseconds of one run (CUDA events on a GPU, wall clock elsewhere)."""
    if x0.is_cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run(model, x0, steps)
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t = time.perf_counter()
    run(model, x0, steps)
    return 1000 * (time.perf_counter() - t)


def main(argv: Optional[Sequence[str]] = None) -> int:
    import cachedit

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--small", action="store_true", help="hidden 64, 4 blocks, 64 tokens (a CPU check of the code path)")
    p.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    dim, heads, depth = (64, 4, 4) if args.small else (3072, 24, 12)
    tokens = [64] if args.small else args.tokens
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    cuda = args.device.startswith("cuda")
    rows: List[str] = []
    for n in tokens:
        torch.manual_seed(0)
        models = {name: DiT(dim, heads, depth).to(args.device, dtype) for name in ("uncached", "model", "cpu")}
        for name in ("model", "cpu"):
            models[name].load_state_dict(models["uncached"].state_dict())
            cachedit.enable_cache(models[name], strategy="fixed", skip_interval=2, warmup_steps=2, cache_device=name)
        x0 = torch.randn(2, n, dim, device=args.device, dtype=dtype)
        outs, times, peaks = {}, {k: [] for k in models}, {}
        run(models["uncached"], x0, args.steps)  # warm up the kernels and their workspaces, once
        for name, m in models.items():
            # Each model's peak counts from what was allocated just before its run: the other models'
            # caches (held since their runs) are not charged to it, its own cache is built in this run.
            before = torch.cuda.memory_allocated() if cuda else 0
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            outs[name] = run(m, x0, args.steps)  # the output compared below
            if cuda:
                torch.cuda.synchronize()
                peaks[name] = (torch.cuda.max_memory_allocated() - before) / 2**20
        for _ in range(args.repeats):
            for name, m in models.items():
                times[name].append(timed(m, x0, args.steps))
        base = statistics.median(times["uncached"])
        for name in ("uncached", "model", "cpu"):
            ms = statistics.median(times[name])
            stats = cachedit.summary(models[name], logging=False)[0] if name != "uncached" else None
            where = ", ".join(f"{d} {b / 2**20:.1f} MiB" for d, b in sorted((stats.cache_bytes_by_device or {}).items())) \
                if stats else "-"
            same = "yes" if name == "uncached" or torch.equal(outs[name], outs["model"]) else "NO"
            copies = cachedit.get_manager().entry(models[name]).engine.placement.copies if stats else 0
            peak = f"{peaks[name]:.0f}" if cuda else "-"
            rows.append(f"| {n} | {name if stats else 'uncached'} | {ms:.1f} | {base / ms:.3f}x | {peak} | {where} | "
                        f"{same} | {copies} |")
    device = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"cache_device on {device}: hidden {dim}, {depth} blocks, batch 2, {args.steps} steps, fixed schedule "
          f"(skip_interval 2, warmup 2), {dtype}, median of {args.repeats}\n")
    print("| tokens | cache_device | ms/run | speedup vs uncached | peak MiB of its first run | cache bytes | "
          "same output as model | transfers |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
