"""cache-dit's `ParallelismConfig`: how `enable_cache(..., parallelism_config=)` shards a transformer.

Same field names as cache-dit 1.5.x, so configs (and YAML files) written for cache-dit load here.
CacheDit runs two of cache-dit's backends, through the libraries' own APIs:

- context parallelism (`ulysses_size`, `ring_size`): diffusers' `ModelMixin.enable_parallelism`
  with a `ContextParallelConfig` (the model's own `_cp_plan`, or `cp_plan=`);
- tensor parallelism (`tp_size`): torch's `parallelize_module` with CacheDit's plans for the FLUX
  and Wan layouts (`cachedit/parallel/tensor.py`).

Everything else cache-dit can do (Ray workers, hybrid CP+TP, Ulysses float8/async/"anything",
extra modules such as text encoders and VAEs) is an error naming the field, never a silent
single-GPU run. Sizes are checked against the world when the config is applied, not here: a config
may be built before `torch.distributed` is initialised.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Dict, List, Optional, Union


class ParallelismBackend(enum.Enum):
    """cache-dit's backend names (its values), for configs that set `backend=` explicitly."""

    AUTO = "Auto"
    CACHE_DIT = "CACHE_DIT"  # context parallelism (cache-dit's name for it)
    NATIVE_DIFFUSER = "Native_Diffuser"  # context parallelism through diffusers
    NATIVE_PYTORCH = "Native_PyTorch"  # tensor parallelism through torch
    NATIVE_HYBRID = "Native_Hybrid"  # context + tensor parallelism (not run here)
    NONE = "None"

    @classmethod
    def from_str(cls, text: str) -> "ParallelismBackend":
        """The backend a name or value stands for (case-insensitive), as cache-dit parses it."""
        for backend in cls:
            if text.lower() in (backend.value.lower(), backend.name.lower()):
                return backend
        raise ValueError(f"backend={text!r} is invalid; allowed: {', '.join(repr(b.value) for b in cls)}")


# Fields whose non-default values ask for something CacheDit does not run (value -> why not).
_UNSUPPORTED = {
    "use_ray": "Ray workers (launch one process per GPU with torchrun instead)",
    "ulysses_anything": "Ulysses for arbitrary sequence lengths/head counts",
    "ulysses_float8": "float8 Ulysses communication",
    "ulysses_async": "asynchronous Ulysses",
    "extra_parallel_modules": "parallel text encoders / VAEs / ControlNets",
    "extra_parallel_kwargs": "model-specific cache-dit planner options",
}
_RAY_FIELDS = ("ray_num_workers", "ray_address", "ray_runtime_env", "ray_init_kwargs", "ray_worker_options",
               "ray_master_port", "ray_auto_shutdown", "ray_transfer_backend", "ray_transfer_custom_obj",
               "ray_use_flashpack", "ray_use_compile", "ray_transfer_fn")


@dataclasses.dataclass
class ParallelismConfig:
    """How to shard the transformer(s) across the ranks of `torch.distributed` (cache-dit's fields).

    `ulysses_size` / `ring_size`: context-parallel degrees (their product is the world size);
    `tp_size`: tensor-parallel degree (the world size). A size may be "auto" (the world size
    divided by the others). `attention_backend`: a diffusers attention backend name set on the
    transformer first; `cp_plan`: a diffusers context-parallel plan for a model without its own."""

    backend: Union[ParallelismBackend, str] = ParallelismBackend.AUTO
    ulysses_size: Optional[Union[int, str]] = None
    ring_size: Optional[Union[int, str]] = None
    tp_size: Optional[Union[int, str]] = None
    use_ray: bool = False
    ray_num_workers: Optional[int] = None
    ray_address: Optional[str] = None
    ray_runtime_env: Optional[Dict[str, Any]] = None
    ray_init_kwargs: Dict[str, Any] = dataclasses.field(default_factory=lambda: {"include_dashboard": False})
    ray_worker_options: Dict[str, Any] = dataclasses.field(default_factory=dict)
    ray_master_port: int = 0
    ray_auto_shutdown: bool = True
    ray_transfer_backend: str = "auto"
    ray_transfer_custom_obj: bool = True
    ray_use_flashpack: bool = False
    ray_use_compile: bool = False
    ray_transfer_fn: Optional[Any] = None
    cp_plan: Optional[Any] = None
    attention_backend: Optional[str] = None
    ulysses_anything: Optional[bool] = False
    ulysses_float8: Optional[bool] = False
    ulysses_async: Optional[bool] = False
    extra_parallel_kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    ring_rotate_method: Optional[str] = "p2p"
    ring_convert_to_fp32: Optional[bool] = True
    extra_parallel_modules: Optional[List[Any]] = dataclasses.field(default_factory=list)
    parallel_kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for key, value in (self.parallel_kwargs or {}).items():  # cache-dit's deprecated spelling
            if not hasattr(self, key) or key == "parallel_kwargs":
                raise ValueError(f"parallelism_config.parallel_kwargs key {key!r} is unknown; allowed: the "
                                 f"ParallelismConfig fields")
            setattr(self, key, value)
        self.parallel_kwargs = {}
        if isinstance(self.backend, str):
            self.backend = ParallelismBackend.from_str(self.backend)
        if not isinstance(self.backend, ParallelismBackend):
            _fail("backend", self.backend, ", ".join(repr(b.value) for b in ParallelismBackend))
        for name in ("ulysses_size", "ring_size", "tp_size"):
            value = getattr(self, name)
            if value is None or value == "auto":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                _fail(name, value, "a positive integer, 'auto' or None")
        if sum(getattr(self, n) == "auto" for n in ("ulysses_size", "ring_size", "tp_size")) > 1:
            raise ValueError("parallelism_config sets more than one size to 'auto'; allowed: at most one of "
                             "ulysses_size, ring_size, tp_size")
        if self.ring_rotate_method not in ("p2p", "allgather", "alltoall"):
            _fail("ring_rotate_method", self.ring_rotate_method, "'p2p', 'allgather' or 'alltoall'")
        if self.attention_backend is not None and not isinstance(self.attention_backend, str):
            _fail("attention_backend", self.attention_backend, "a diffusers attention backend name or None")

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "ParallelismConfig":
        """A config from a dict of its fields (what `load_parallelism_config` reads from YAML)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in values if k not in names]
        if unknown:
            raise ValueError(f"parallelism_config key {unknown[0]!r} is unknown; allowed: {', '.join(sorted(names))}")
        return cls(**values)

    def sizes(self, world: int) -> Dict[str, int]:
        """ulysses, ring and tp degrees for a world of `world` ranks ("auto" resolved, None -> 1)."""
        given = {n: getattr(self, f"{n}_size") for n in ("ulysses", "ring", "tp")}
        fixed = 1
        for value in given.values():
            if isinstance(value, int):
                fixed *= value
        return {n: (world // fixed if v == "auto" else (v or 1)) for n, v in given.items()}

    def check_supported(self) -> None:
        """Raise ValueError naming the first field that asks for something CacheDit does not run."""
        for field in dataclasses.fields(self):
            if field.name in _UNSUPPORTED or field.name in _RAY_FIELDS:
                value = getattr(self, field.name)
                base = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
                if value != base and value not in (None, False, [], {}):
                    why = _UNSUPPORTED.get(field.name, "Ray workers")
                    raise ValueError(f"parallelism_config.{field.name}={value!r} is not supported: CacheDit does not "
                                     f"run {why}; allowed: the default ({base!r}). Supported: ulysses_size / "
                                     f"ring_size (diffusers context parallelism) or tp_size (torch tensor "
                                     f"parallelism, FLUX and Wan layouts)")
        if self.backend is ParallelismBackend.NATIVE_HYBRID:
            _fail("backend", self.backend.value, "'Auto', 'Native_Diffuser'/'CACHE_DIT' (context parallelism) or "
                                                 "'Native_PyTorch' (tensor parallelism); hybrid is not run here")


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"parallelism_config.{name}={value!r} is invalid; allowed: {allowed}")


__all__ = ["ParallelismBackend", "ParallelismConfig"]
