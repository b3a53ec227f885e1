"""cache-dit's YAML config files, read into CacheDit's configs.

Two layouts, as in cache-dit:

- sectioned: `cache_config:` (DBCacheConfig fields plus the TaylorSeer keys `enable_taylorseer`,
  `enable_encoder_taylorseer`, `taylorseer_cache_type`, `taylorseer_order`;
  `steps_computation_mask` may name a `steps_mask` policy, "fast" etc., with
  `num_inference_steps`), `parallelism_config:`, `attention_backend:`, `quantize_config:`;
- flat: the `cache_config` keys (and `cache_type`) at the top level.

`parallelism_config` becomes a `cachedit.ParallelismConfig` (aliases `ulysses`/`ring`/`tp`
resolved) that `enable_cache(pipe, **load_configs(path))` runs. CacheDit sets no attention backend
and quantizes nothing: those sections are kept as plain data, ignored with a warning. Any key CacheDit does not know is an error that names it.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any, Dict, Optional, Tuple, Union

from ..steps_mask import steps_mask
from .cache_dit import CacheType, DBCacheConfig, DBPruneConfig, TaylorSeerCalibratorConfig, cache_type

SECTIONS = ("cache_config", "parallelism_config", "attention_backend", "quantize_config")
CALIBRATOR_KEYS = ("enable_taylorseer", "enable_encoder_taylorseer", "taylorseer_cache_type", "taylorseer_order")
CACHE_KEYS = tuple(f.name for f in dataclasses.fields(DBPruneConfig)) + CALIBRATOR_KEYS  # DBPrune's are a superset
# cache-dit calibrators and prune options CacheDit does not run (named in the error).
UNSUPPORTED_KEYS = ("enable_dmd", "enable_encoder_dmd", "dmd_history", "dmd_rank", "dmd_ridge", "dmd_svd_precision",
                    "enable_foca", "enable_encoder_foca", "calibrator_cache_type")
# The public fields of cache-dit's ParallelismConfig (1.5.x), kept as data.
PARALLELISM_KEYS = (
    "backend", "ulysses_size", "ring_size", "tp_size", "use_ray", "ray_num_workers", "ray_address", "ray_runtime_env",
    "ray_init_kwargs", "ray_worker_options", "ray_master_port", "ray_auto_shutdown", "ray_transfer_backend",
    "ray_transfer_custom_obj", "ray_use_flashpack", "ray_use_compile", "ray_transfer_fn", "cp_plan",
    "attention_backend", "ulysses_anything", "ulysses_float8", "ulysses_async", "extra_parallel_kwargs",
    "ring_rotate_method", "ring_convert_to_fp32", "extra_parallel_modules", "parallel_kwargs",
)
PARALLELISM_ALIASES = {"ulysses": "ulysses_size", "ring": "ring_size", "tp": "tp_size"}

Source = Union[str, "os.PathLike[str]", dict]


def _read(path_or_dict: Source) -> dict:
    """The YAML file's mapping (or a copy of the dict given)."""
    if isinstance(path_or_dict, dict):
        data: Any = copy.deepcopy(path_or_dict)
    elif isinstance(path_or_dict, (str, os.PathLike)):
        try:
            import yaml  # noqa: PLC0415 (only the YAML loaders need PyYAML)
        except ImportError as exc:  # pragma: no cover - PyYAML ships with most environments
            raise ImportError("reading YAML configs needs PyYAML: pip install pyyaml") from exc
        path = os.fspath(path_or_dict)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"path_or_dict={path!r}: configuration file not found")
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    else:
        raise TypeError(f"path_or_dict={path_or_dict!r} is invalid; allowed: a YAML file path or a dict")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"path_or_dict={path_or_dict!r} holds a {type(data).__name__}; allowed: a mapping of "
                         f"{', '.join(SECTIONS)} (or the cache_config keys at the top level)")
    return data


def _options(function: str, kwargs: dict, allowed: Tuple[str, ...]) -> Dict[str, bool]:
    """The keyword options of a loader, each True or False; an unknown one is an error naming it."""
    for key, value in kwargs.items():
        if key not in allowed:
            raise TypeError(f"{function}() got {key}={value!r}; allowed keyword arguments: {', '.join(allowed)}")
        if not isinstance(value, bool):
            raise ValueError(f"{function}: {key}={value!r} is invalid; allowed: True or False")
    return {key: bool(kwargs.get(key, False)) for key in allowed}


def _sectioned(data: dict) -> bool:
    """True for the `cache_config:` / `parallelism_config:` layout; errors on stray top-level keys."""
    if not any(k in data for k in SECTIONS):
        return False
    stray = [k for k in data if k not in SECTIONS]
    if stray:
        raise ValueError(f"unknown top-level key {stray[0]!r} in the config; allowed: {', '.join(SECTIONS)}")
    return True


def _cache_from_dict(kwargs: dict, reset: bool, where: str) -> Tuple[DBCacheConfig, Optional[TaylorSeerCalibratorConfig]]:
    """A DBCacheConfig (all-None but the given keys when `reset`) and the TaylorSeer calibrator, if enabled."""
    if not isinstance(kwargs, dict):
        raise ValueError(f"{where}={kwargs!r} is invalid; allowed: a mapping of DBCacheConfig fields")
    unsupported = [k for k in kwargs if k in UNSUPPORTED_KEYS]
    if unsupported:
        raise ValueError(f"{where} key {unsupported[0]!r} is not supported (CacheDit runs the TaylorSeer calibrator "
                         f"only); allowed calibrator keys: {', '.join(CALIBRATOR_KEYS)}")
    unknown = [k for k in kwargs if k not in CACHE_KEYS]
    if unknown:
        raise ValueError(f"unknown {where} key {unknown[0]!r}; allowed: {', '.join(CACHE_KEYS)}")
    kwargs = dict(kwargs)
    cls = DBCacheConfig
    if "cache_type" in kwargs:
        try:
            parsed = cache_type(kwargs["cache_type"])
        except (ValueError, AttributeError):
            parsed = None
        if parsed not in (CacheType.DBCache, CacheType.DBPrune):
            raise ValueError(f"{where} cache_type={kwargs['cache_type']!r} is not supported; allowed: 'DBCache', 'DBPrune'")
        kwargs["cache_type"] = parsed
        cls = DBPruneConfig if parsed is CacheType.DBPrune else DBCacheConfig  # as cache-dit's load_configs
    mask = kwargs.get("steps_computation_mask")
    if isinstance(mask, str):
        total = kwargs.get("num_inference_steps")
        if total is None:
            raise ValueError(f"{where} steps_computation_mask={mask!r} names a steps_mask policy and needs "
                             f"num_inference_steps; allowed: a list of 0/1, or a policy name with num_inference_steps")
        kwargs["steps_computation_mask"] = steps_mask(total_steps=total, mask_policy=mask)
    config = cls().reset() if reset else cls()
    config.update(**{k: v for k, v in kwargs.items() if k not in CALIBRATOR_KEYS})
    if not reset:
        config.validate()
    for key in ("enable_taylorseer", "enable_encoder_taylorseer"):
        if key in kwargs and not isinstance(kwargs[key], bool):
            raise ValueError(f"{where} {key}={kwargs[key]!r} is invalid; allowed: true or false")
    calibrator = None
    if kwargs.get("enable_taylorseer"):
        calibrator = TaylorSeerCalibratorConfig(
            enable_calibrator=True, enable_encoder_calibrator=kwargs.get("enable_encoder_taylorseer", False),
            calibrator_cache_type=kwargs.get("taylorseer_cache_type", "residual"),
            taylorseer_order=kwargs.get("taylorseer_order", 1)).validate()
    return config, calibrator


def load_cache_config(path_or_dict: Source, **kwargs: Any) -> Tuple[Optional[DBCacheConfig], Optional[TaylorSeerCalibratorConfig]]:
    """`(cache_config, calibrator_config)` from a cache-dit YAML file or dict (either layout).

    `reset=True` leaves every field the source does not set at None (a partial config, as
    `refresh_context` and `ParamsModifier` use). A file with only other sections gives `(None, None)`."""
    reset = _options("load_cache_config", kwargs, ("reset",))["reset"]
    data = _read(path_or_dict)
    if not _sectioned(data):
        return _cache_from_dict(data, reset, "cache_config")
    if "cache_config" not in data:
        return None, None
    return _cache_from_dict(data["cache_config"], reset, "cache_config")


def load_parallelism_config(path_or_dict: Source, **kwargs: Any) -> Union[Optional[Any], bool]:
    """The `parallelism_config` section as a `cachedit.ParallelismConfig` (None when absent), as
    cache-dit returns it; pass it on as `enable_cache(..., parallelism_config=)`. `check_only=True`
    returns whether the section exists."""
    check_only = _options("load_parallelism_config", kwargs, ("check_only",))["check_only"]
    data = _read(path_or_dict)
    present = _sectioned(data) and "parallelism_config" in data
    if check_only:
        return present
    if not present:
        return None
    section = data["parallelism_config"] or {}
    if not isinstance(section, dict):
        raise ValueError(f"parallelism_config={section!r} is invalid; allowed: a mapping of {', '.join(PARALLELISM_KEYS)}")
    out: Dict[str, Any] = {}
    given: Dict[str, str] = {}  # field -> the key that set it (a field or its alias)
    for key, value in section.items():
        name = PARALLELISM_ALIASES.get(key, key)
        if name not in PARALLELISM_KEYS:
            raise ValueError(f"unknown parallelism_config key {key!r}; allowed: {', '.join(PARALLELISM_KEYS)}, "
                             f"{', '.join(PARALLELISM_ALIASES)}")
        if name in out and out[name] != value:
            raise ValueError(f"parallelism_config sets {given[name]}={out[name]!r} and {key}={value!r}; allowed: "
                             f"one of them")
        out[name], given[name] = value, key
    # cache-dit's deprecated `parallel_kwargs`: its entries stand for the fields of the same name
    for key, value in (out.get("parallel_kwargs") or {}).items():
        field = key.replace("experimental_", "") if key.startswith("experimental_ulysses_") else key
        if field in PARALLELISM_KEYS and field != "parallel_kwargs":
            out[field] = value
    out.pop("parallel_kwargs", None)
    from ..parallel.config import ParallelismConfig  # noqa: PLC0415 (parallel imports config, not the reverse)

    return ParallelismConfig.from_dict(out)


def load_configs(path_or_dict: Source, return_dict: bool = True, **kwargs: Any) -> Union[dict, tuple]:
    """Every section of a cache-dit config: `cache_config`, `calibrator_config`, `parallelism_config`
    (a dict), `attention_backend` and `quantize_config` (kept as given; CacheDit runs neither).

    Returns a dict (pass it on as `enable_cache(pipe, **configs)`) or, with `return_dict=False`,
    the same five values as a tuple in that order."""
    _options("load_configs", {"return_dict": return_dict, **kwargs}, ("return_dict", "reset"))
    data = _read(path_or_dict)
    cache_config, calibrator_config = load_cache_config(data, **kwargs)
    sectioned = _sectioned(data)
    values = {
        "cache_config": cache_config,
        "calibrator_config": calibrator_config,
        "parallelism_config": load_parallelism_config(data),
        "attention_backend": data.get("attention_backend") if sectioned else None,
        "quantize_config": data.get("quantize_config") if sectioned else None,
    }
    return values if return_dict else tuple(values.values())


def load_options(path_or_dict: Source, reset: bool = False) -> dict:
    """cache-dit's older loader: `{"cache_config": ..., "calibrator_config": ...}` (the calibrator
    only when enabled; `parallelism_config` too, as a dict, when the file has one)."""
    _options("load_options", {"reset": reset}, ("reset",))
    data = _read(path_or_dict)
    cache_config, calibrator_config = load_cache_config(data, reset=reset)
    out: Dict[str, Any] = {}
    if cache_config is not None:
        out["cache_config"] = cache_config
    if calibrator_config is not None:
        out["calibrator_config"] = calibrator_config
    parallelism = load_parallelism_config(data)
    if parallelism is not None:
        out["parallelism_config"] = parallelism
    return out


__all__ = ["load_cache_config", "load_configs", "load_options", "load_parallelism_config"]
