"""Every diffusers transformer, cached: the block lists CacheDit finds and whether it runs right.

diffusers' own model tests hold a tiny config and dummy inputs for each of its transformers
(`tests/models/transformers/test_models_*.py`, not in the PyPI package). This builds each model
from them (random weights, seed 0), runs a short Euler-style loop (`--steps` calls, the timestep
falling from the dummy input's scale to 0, the main input moved by the output where the shapes
match) and records, per model:

- the block lists found without an adapter;
- *never reuse* (threshold 0): the outputs bit-identical to the uncached loop;
- *forced reuse* (Fn 0 Bn 0, threshold 1e6, warmup 2: every block skipped after warmup): the steps
  reused, every output finite;
- *default*: the steps the one-click default reuses (random weights: how much it reuses says
  nothing about a trained model; that it runs, and that error feedback holds back when the measured
  errors are large, does);
- after `disable_cache`, the loop bit-identical to the uncached one again.

Quality is not measured here (random weights); the bundled trained models are for that. Needs a
diffusers source checkout matching the installed version closely enough for its test configs
(`--tests DIR`: its `tests` folder) and `accelerate` (diffusers' test utilities import it).

    python -m benchmarks.diffusers_models --tests /path/to/diffusers/tests [--only ltx] [--label TEXT] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import io
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

import cachedit
from cachedit import DBCacheConfig
from cachedit.manager.blocks import find_block_lists

from .common import machine_info

NEVER_REUSE = DBCacheConfig(residual_diff_threshold=0.0)
FORCED_REUSE = dict(Fn_compute_blocks=0, Bn_compute_blocks=0, residual_diff_threshold=1e6, max_warmup_steps=2)
TIMESTEP_NAMES = ("timestep", "timesteps", "t")
RISING_TIME = ("ZImage", "Lumina2")  # called with t = 1 - sigma by their pipelines


@dataclasses.dataclass
class Case:
    """One transformer and how to call it (from a diffusers test config)."""

    model_class: type
    init: Dict[str, Any]
    inputs: Dict[str, Any]
    main: str
    timestep: Optional[str]


@dataclasses.dataclass
class Row:
    model: str
    lists: str = ""
    never: str = ""
    forced: str = ""
    default: str = ""
    disabled: str = ""
    note: str = ""


def cases_in(module: Any) -> List[Case]:
    """The test configs of one diffusers test module (new style: get_init_dict / get_dummy_inputs;
    old style: prepare_init_args_and_inputs_for_common), one per model class, quantization ones skipped."""
    found: Dict[str, Case] = {}
    for name in sorted(dir(module)):
        cls = getattr(module, name)
        if not isinstance(cls, type) or any(q in name for q in ("Quant", "SDNQ", "GGUF", "BitsAndBytes", "TorchAo")):
            continue
        new = name.endswith("Config") and hasattr(cls, "get_init_dict") and hasattr(cls, "get_dummy_inputs")
        old = hasattr(cls, "prepare_init_args_and_inputs_for_common") and not name.startswith("Test")
        if not (new or old):
            continue
        try:
            cfg = cls()
            init, inputs = ((cfg.get_init_dict(), cfg.get_dummy_inputs()) if new
                            else cfg.prepare_init_args_and_inputs_for_common())
            model_class = cfg.model_class
        except Exception:
            continue  # an abstract base config
        if model_class.__name__ in found:
            continue
        main = getattr(cfg, "main_input_name", "hidden_states")
        if main not in inputs:
            main = next(k for k, v in inputs.items() if torch.is_tensor(v) and v.is_floating_point())
        timestep = next((k for k in TIMESTEP_NAMES if k in inputs), None)
        found[model_class.__name__] = Case(model_class, init, inputs, main, timestep)
    return list(found.values())


def _output(out: Any) -> List[torch.Tensor]:
    """A call's first output as a list of tensors (Z-Image's is a list of per-image tensors)."""
    out = out.sample if hasattr(out, "sample") else out[0] if isinstance(out, tuple) else out
    return [out] if torch.is_tensor(out) else list(out)


def sample(model: torch.nn.Module, case: Case, steps: int) -> List[torch.Tensor]:
    """The model's outputs over `steps` calls of a falling timestep, the main input moved by each output."""
    t0 = case.inputs.get(case.timestep) if case.timestep else None
    integer = torch.is_tensor(t0) and not t0.is_floating_point()
    peak = float(t0.float().abs().max()) if torch.is_tensor(t0) else float(t0 or 0)
    scale = 1000.0 if integer or peak > 1.5 else 1.0
    rising = any(k in case.model_class.__name__ for k in RISING_TIME)
    x = case.inputs[case.main]
    xs = [x.clone()] if torch.is_tensor(x) else [t.clone() for t in x]
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    outs: List[torch.Tensor] = []
    for i in range(steps):
        call = dict(case.inputs)
        call[case.main] = xs[0] if torch.is_tensor(x) else list(xs)
        if t0 is not None:
            value = (1 - float(sigmas[i]) if rising else float(sigmas[i])) * scale
            call[case.timestep] = (torch.full_like(t0, round(value) if integer else value) if torch.is_tensor(t0)
                                   else type(t0)(value))
        with torch.no_grad():
            out = _output(model(**call))
        outs.append(torch.cat([o.float().flatten() for o in out]))
        dt = float(sigmas[i + 1] - sigmas[i])
        xs = [xi + dt * oi.to(xi.dtype) if oi.shape == xi.shape else xi * 0.95 if xi.is_floating_point() else xi
              for xi, oi in zip(xs, out)]
    return outs


def _same(a: List[torch.Tensor], b: List[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def _reused(model: torch.nn.Module) -> List[int]:
    return sorted(s for stats in cachedit.summary(model, logging=False) for s in stats.cached_steps)


def measure(case: Case, steps: int) -> Row:
    """One model: the row of the table (errors are recorded, not raised)."""
    row = Row(case.model_class.__name__)
    torch.manual_seed(0)
    model = case.model_class(**case.init).eval()
    row.lists = ", ".join(f"{name} x{len(blocks)}" for name, blocks in find_block_lists(model)) or "none (step level)"
    reference = sample(model, case, steps)
    for label, options in (("never", dict(cache_config=NEVER_REUSE)),
                           ("forced", dict(cache_config=DBCacheConfig(**FORCED_REUSE))), ("default", {})):
        cachedit.enable_cache(model, **options)
        try:
            outs = sample(model, case, steps)
            reused = _reused(model)
            if label == "never":
                row.never = "bit-identical" if _same(outs, reference) and not reused else f"DIFFERS (reused {reused})"
            else:
                finite = all(torch.isfinite(o).all() for o in outs)
                setattr(row, label, f"{len(reused)} of {steps}" + ("" if finite else ", NOT FINITE"))
        except Exception as exc:  # a crash is the finding
            setattr(row, label, f"ERROR {type(exc).__name__}")
            row.note = str(exc).splitlines()[0][:120]
        finally:
            cachedit.disable_cache(model)
    row.disabled = "bit-identical" if _same(sample(model, case, steps), reference) else "DIFFERS"
    return row


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tests", required=True, help="a diffusers source checkout's tests folder")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--only", default=None, help="only test modules whose name contains this")
    parser.add_argument("--label", default=None, help="what the tests folder is (e.g. the diffusers commit)")
    parser.add_argument("--out", default="benchmarks/results/diffusers_models.md")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("cachedit").setLevel(logging.ERROR)
    tests = Path(args.tests).resolve()
    sys.path.insert(0, str(tests.parent))
    start = time.time()
    rows: List[Row] = []
    skipped: List[str] = []
    for path in sorted((tests / "models" / "transformers").glob("test_models_*.py")):
        if args.only and args.only not in path.stem:
            continue
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                module = importlib.import_module(f"{tests.name}.models.transformers.{path.stem}")
        except Exception as exc:
            skipped.append(f"{path.stem}: import failed ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})")
            continue
        for case in cases_in(module):
            try:
                rows.append(measure(case, args.steps))
            except Exception as exc:
                skipped.append(f"{case.model_class.__name__}: its test config does not run uncached here "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0][:80]})")
                continue
            print(rows[-1], flush=True)
    lines = [f"# Every diffusers transformer, cached ({len(rows)} models, random weights)", "",
             __doc__.split("\n\n", 1)[1].split("\n\n    python")[0].strip(), "", "Machine:"]
    lines += [f"- {k}: {v}" for k, v in machine_info().items()]
    lines += [f"- diffusers tests: {args.label or tests}", f"- steps: {args.steps}", "", f"Took {time.time() - start:.0f} s.", "",
              "| model | block lists found | never reuse | forced reuse: steps reused | default: steps reused "
              "| after disable_cache | note |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r.model} | {r.lists} | {r.never} | {r.forced} | {r.default} | {r.disabled} | {r.note} |" for r in rows]
    if skipped:
        lines += ["", "Not measured:", ""] + [f"- {s}" for s in skipped]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
