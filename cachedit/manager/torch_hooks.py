"""Hooks for plain PyTorch / diffusers models: instance-level `forward` overrides, fully undoable.

The model's own forward runs unchanged; we only set an instance attribute `forward` on the
model (to place each call in a run/step/branch) and on the few blocks the engine needs (block 0,
block Fn-1, the middle blocks): the block protocol (protocol.py) with a codec translating
arguments to streams (`BlockIO`, or a `PatternCodec` when a BlockAdapter declares the pattern).
The state_dict is untouched (no wrapper modules).

Hooks compose with other libraries' instance-level wrappers (diffusers' hook registry and context-
parallel split/gather hooks, accelerate's offload hooks): installing wraps whatever `forward` the
module has now, and removing puts back exactly what was there. If another library wrapped ours in
the meantime, ours stays in its chain as a pass-through (its engine is disabled).

A model has one engine, or (a BlockAdapter listing several block lists) one engine per block list,
as cache-dit keeps one cache context per list: each call opens a call on every engine.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import weakref
from typing import Any, Callable, List, Optional, Sequence, Union

import torch
from torch import nn

from .blocks import BlockIO
from .calls import DeferredScalar
from .engine import CacheEngine
from .protocol import block_forward

TIMESTEP_NAMES = ("timestep", "timesteps", "t", "sigma", "sigmas", "time_step")
MAIN_INPUT_NAMES = ("hidden_states", "x", "sample", "latents", "img")
DEFERRED_TIMESTEP_DEVICES = ("cuda",)  # timesteps read without a GPU drain (tests add "cpu" to run that path)


def _current_forward(module: nn.Module) -> Callable:
    """What calling `module.forward` runs now: another library's instance-level wrapper, else the
    class's forward."""
    return module.__dict__.get("forward") or type(module).forward.__get__(module)


@dataclasses.dataclass
class _Installed:
    """One module we hooked: our forward, and the instance-level forward it replaced (if any)."""

    module: Any  # the module, or a weakref to the model (the manager must not keep it alive)
    ours: "weakref.ref[Callable]"  # weak: the model's forward holds the model, which holds it
    previous: Optional[Callable]

    def restore(self) -> None:
        module = self.module() if isinstance(self.module, weakref.ref) else self.module
        current = module.__dict__.get("forward") if module is not None else None
        if current is None or current is not self.ours():
            return  # gone, or replaced or wrapped by someone else since: ours passes through in their chain
        if self.previous is None:
            del module.__dict__["forward"]
        else:
            module.forward = self.previous


def _scalar(value: Any) -> Union[float, None, DeferredScalar]:
    """First element of a timestep argument: a float, or for a CUDA tensor a DeferredScalar (a
    queued copy, read at the decision: no GPU drain at the start of every call)."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        if value.numel() == 0:
            return None
        if value.device.type in DEFERRED_TIMESTEP_DEVICES:
            return DeferredScalar(value)
        return float(value.reshape(-1)[0].item())
    if isinstance(value, (int, float)):
        return float(value)
    return None


CodecFactory = Callable[[int, nn.Module], Any]  # (block index in its engine, block) -> StreamCodec


@dataclasses.dataclass
class EngineBlocks:
    """One engine and the blocks it caches, in execution order, with the codec of each."""

    engine: CacheEngine
    blocks: List[nn.Module]
    codec: CodecFactory = lambda index, block: BlockIO(block)


class TorchHooks:
    """Installs and removes the model-level and block-level hooks of a model's engine(s)."""

    def __init__(self, model: nn.Module, parts: Sequence[EngineBlocks]) -> None:
        self.parts = list(parts)
        self.engine = self.parts[0].engine  # the engine of whole-step caching (a single engine)
        self._model_ref = weakref.ref(model)  # the manager must not keep the model alive
        self.hooked: List[_Installed] = []
        sig = inspect.signature(type(model).forward)
        names = [p.name for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][1:]
        self._param_pos = {n: i for i, n in enumerate(names)}
        self._timestep_arg = next((n for n in TIMESTEP_NAMES if n in sig.parameters), None)
        self._output_template: Any = None
        self._main_arg = next((n for n in MAIN_INPUT_NAMES if n in sig.parameters), names[0] if names else None)

    # -- install / remove ---------------------------------------------------------------------------
    def install(self) -> None:
        """Hook the model and the blocks the engine needs."""
        self.remove()
        model = self._model_ref()
        if model is None:
            return
        self._hook(weakref.ref(model), model, self._model_forward(_current_forward(model)))
        if self.engine.step_level:
            return
        for part in self.parts:
            for index in part.engine.hooked_blocks():
                block = part.blocks[index]
                self._hook(block, block, block_forward(part.engine, index, part.codec(index, block), _current_forward(block)))

    def _hook(self, handle: Any, module: nn.Module, ours: Callable) -> None:
        self.hooked.append(_Installed(handle, weakref.ref(ours), module.__dict__.get("forward")))
        module.forward = ours  # an instance attribute shadows the class method

    def remove(self) -> None:
        """Put back what each hooked module's `forward` was before (last hooked first)."""
        for installed in reversed(self.hooked):
            installed.restore()
        self.hooked.clear()

    # -- model level -----------------------------------------------------------------------------
    def _arg(self, name: Optional[str], args: tuple, kwargs: dict) -> Any:
        if name is None:
            return None
        if name in kwargs:
            return kwargs[name]
        pos = self._param_pos.get(name)
        return args[pos] if pos is not None and pos < len(args) else None

    def _model_forward(self, original: Callable) -> Callable:
        engine = self.engine
        engines = [part.engine for part in self.parts]

        @functools.wraps(original)
        def forward(*args: Any, **kwargs: Any) -> Any:
            x = _main_tensor(self._arg(self._main_arg, args, kwargs))
            if x is None:
                t = self._arg(self._timestep_arg, args, kwargs)
                x = next((a for a in args if isinstance(a, torch.Tensor) and a is not t), None)
            if x is None or not engine.enabled or torch.is_grad_enabled() and x.requires_grad:
                return original(*args, **kwargs)  # training or an odd call: never cache
            timestep = _scalar(self._arg(self._timestep_arg, args, kwargs))
            signature = (tuple(x.shape), x.dtype, x.device)
            injected = adds_between_blocks(kwargs)
            if len(engines) > 1:
                return _run_calls(engines, timestep, signature, x, injected, lambda: original(*args, **kwargs))
            call = engine.begin_call(timestep, None, signature, model_input=x, injected=injected)
            if call is None:
                return original(*args, **kwargs)
            if engine.step_level:
                return engine.run_call(call, lambda: self._step_level(call, x, original, args, kwargs))
            return engine.run_call(call, lambda: original(*args, **kwargs))

        return forward

    def _step_level(self, call, x: torch.Tensor, original: Callable, args: tuple, kwargs: dict) -> Any:
        holder: dict = {}

        def compute() -> torch.Tensor:
            out = original(*args, **kwargs)
            holder["out"] = self._output_template = out
            return _main_output(out)

        tensor = self.engine.step_level_call(call, x, compute)
        if "out" in holder:
            return holder["out"]
        return _rebuild_output(self._output_template, tensor)


def _main_tensor(value: Any) -> Optional[torch.Tensor]:
    """The latents a call denoises: the main argument itself, or, where a model takes a list of
    per-image latents of one shape (diffusers' Z-Image), those stacked into a batch (a copy of the
    latents only: the run tracker, the sampler-noise check and the model-input probe read it)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, torch.Tensor) for v in value):
        if all(v.shape == value[0].shape for v in value):
            return torch.stack(list(value))
    return None


def adds_between_blocks(kwargs: dict) -> bool:
    """Whether a diffusers transformer call adds something to the hidden stream between its
    blocks: ControlNet residuals (`controlnet_block_samples`, `controlnet_single_block_samples`,
    SD3's `block_controlnet_hidden_states`) or Wan VACE's `control_hidden_states`, i.e. any tensor
    (or list of tensors) passed under a keyword naming "control"."""
    for name, value in kwargs.items():
        if "control" not in name.lower() or value is None:
            continue
        if isinstance(value, torch.Tensor):
            return True
        if isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
            return True
    return False


def _run_calls(engines: List[CacheEngine], timestep: Any, signature: tuple, x: torch.Tensor, injected: bool,
               run: Callable[[], Any]) -> Any:
    """Open one call per engine (each block list is its own cache context), run, close them all."""
    calls = [(e, e.begin_call(timestep, None, signature, model_input=x, injected=injected)) for e in engines]
    for engine, call in reversed(calls):
        if call is not None:
            run = functools.partial(engine.run_call, call, run)
    return run()


def _main_output(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return out[0]
    sample = getattr(out, "sample", None)
    if isinstance(sample, torch.Tensor):
        return sample
    raise TypeError(f"cannot find the output tensor in {type(out).__name__}")


def _rebuild_output(template: Any, tensor: torch.Tensor) -> Any:
    """The model's output structure (tensor, tuple, or diffusers output class) around `tensor`."""
    if isinstance(template, torch.Tensor):
        return tensor
    if isinstance(template, tuple):
        return (tensor,) + tuple(template[1:])
    if isinstance(template, list):
        return [tensor] + list(template[1:])
    if dataclasses.is_dataclass(template) and hasattr(template, "sample"):
        return dataclasses.replace(template, sample=tensor)
    return tensor
