"""What rank-consistent decisions cost: the per-decision collective (µs) and its share of a step.

Each rank runs the bundled FLUX-layout model with CacheDit's default (adaptive, error feedback:
one float64 all-reduce per decision and CFG branch), with the decisions reduced (`distributed=
"auto"`) and not (`"off"`), data parallel (each rank its own digits; no collective inside the
model), so the difference is the decision's collective alone. The all-reduce is timed where it
runs (`DecisionGroup.reduce`, host clock; on CUDA after a synchronize, so the figure includes the
wait for the queued step, an upper bound).

    python -m benchmarks.distributed_cost                   # 2 gloo ranks on the CPU (spawned)
    torchrun --nproc-per-node=2 -m benchmarks.distributed_cost --device cuda   # NCCL on 2 GPUs

Prints a Markdown table; `--write` saves it to benchmarks/results/distributed_cost_<device>.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import tempfile
import time
from typing import Any, Dict, List

import torch


def _measure(rank: int, device: str, steps: int, repeats: int, batch: int) -> Dict[str, Any]:
    import torch.distributed as dist

    import cachedit
    from cachedit.bundled import digits as D
    from cachedit.manager import distributed as decision_module

    model = D.load_model("flux", device=device)
    labels = [(rank + i) % 10 for i in range(batch)]
    timings: List[float] = []
    original = decision_module.DecisionGroup.reduce

    def timed(self, values, group):
        if values.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = original(self, values, group)
        if out.is_cuda:
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - start)
        return out

    decision_module.DecisionGroup.reduce = timed
    walls: Dict[str, List[float]] = {"auto": [], "off": []}
    cached: Dict[str, List[int]] = {}
    for _ in range(repeats + 1):  # the first round warms up
        for policy in ("auto", "off"):
            cachedit.enable_cache(model.transformer, distributed=policy)
            dist.barrier()
            start = time.perf_counter()
            D.generate(model, labels, num_steps=steps, seed=rank)
            if device == "cuda":
                torch.cuda.synchronize()
            walls[policy].append(time.perf_counter() - start)
            cached[policy] = list(cachedit.summary(model.transformer, logging=False)[0].cached_steps)
            cachedit.disable_cache(model.transformer)
        if _ == 0:
            timings.clear()
            walls = {"auto": [], "off": []}
    decision_module.DecisionGroup.reduce = original
    return {"reduce_us": [t * 1e6 for t in timings], "walls": walls, "cached": cached,
            "bare_us": _bare_all_reduce(device, 8 + 2 * batch * 2)}


def _bare_all_reduce(device: str, length: int, n: int = 200) -> List[float]:
    """The collective alone: ranks lined up by a barrier, then `n` all-reduces of a decision-sized
    float64 vector back to back (what a decision pays when no rank is behind)."""
    import torch.distributed as dist

    values = torch.zeros(length, dtype=torch.float64, device=device if dist.get_backend() != "gloo" else "cpu")
    out = []
    dist.barrier()
    for _ in range(n):
        start = time.perf_counter()
        dist.all_reduce(values)
        if values.is_cuda:
            torch.cuda.synchronize()
        out.append((time.perf_counter() - start) * 1e6)
    return out


def _rank_main(rank: int, world: int, init: str, args: argparse.Namespace, queue: Any) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        queue.put((rank, _measure(rank, "cpu", args.steps, args.repeats, args.batch)))
    finally:
        dist.destroy_process_group()


def _table(results: List[Dict[str, Any]], args: argparse.Namespace, device: str, backend: str) -> str:
    r0 = results[0]
    reduce_us = sorted(x for r in results for x in r["reduce_us"])
    decisions = len(r0["reduce_us"]) / max(1, args.repeats)
    auto, off = min(r0["walls"]["auto"]), min(r0["walls"]["off"])
    step_ms = auto / args.steps * 1e3
    bare = sorted(x for r in results for x in r["bare_us"])
    per_step_us = statistics.median(bare) * decisions / args.steps
    same = all(r["cached"]["auto"] == r0["cached"]["auto"] for r in results)
    lines = [
        f"# Decision collective cost: {len(results)} ranks, {backend} on {device}",
        "",
        f"Bundled FLUX-layout model, {args.steps} Euler steps, batch {args.batch} per rank with batched CFG, "
        f"CacheDit's default; {args.repeats} timed rounds after one warm-up, best wall time per policy.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| all-reduces per generation (decisions x CFG branches) | {decisions:.0f} |",
        f"| all-reduce alone, ranks lined up: median / p90 (µs) | {statistics.median(bare):.0f} / "
        f"{bare[int(0.9 * (len(bare) - 1))]:.0f} |",
        f"| all-reduce inside sampling, incl. waiting for the slower rank: median / p90 (µs) | "
        f"{statistics.median(reduce_us):.0f} / {reduce_us[int(0.9 * (len(reduce_us) - 1))]:.0f} |",
        f"| step time, decisions reduced (ms) | {step_ms:.2f} |",
        f"| collective time per step, ranks lined up (µs) | {per_step_us:.0f} |",
        f"| share of a step | {per_step_us / (step_ms * 1e3) * 100:.2f}% |",
        f"| generation wall: reduced vs not (s) | {auto:.3f} vs {off:.3f} ({(auto / off - 1) * 100:+.1f}%) |",
        f"| same reused steps on every rank (reduced) | {'yes' if same else 'NO'}: {r0['cached']['auto']} |",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    """Parse flags, run the ranks (spawned gloo ranks, or this torchrun rank), print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--world", type=int, default=2, help="spawned CPU ranks (ignored under torchrun)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    if "RANK" in os.environ:  # torchrun
        import torch.distributed as dist

        backend = "nccl" if args.device == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=120))
        rank = dist.get_rank()
        if args.device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
        mine = _measure(rank, args.device, args.steps, args.repeats, args.batch)
        gathered: List[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, mine)
        device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
        dist.destroy_process_group()
        if rank != 0:
            return
        results = gathered
    else:
        import torch.multiprocessing as mp

        backend, device = "gloo", "cpu"
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        init = os.path.join(tempfile.mkdtemp(), "init")
        procs = [ctx.Process(target=_rank_main, args=(r, args.world, init, args, queue)) for r in range(args.world)]
        for p in procs:
            p.start()
        got = dict(queue.get(timeout=1800) for _ in procs)
        for p in procs:
            p.join(timeout=30)
        results = [got[r] for r in range(args.world)]
    table = _table(results, args, device, backend)
    print(table)
    if args.write:
        name = "cpu" if device == "cpu" else device.lower().replace(" ", "_")
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"distributed_cost_{name}.md")
        with open(path, "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
