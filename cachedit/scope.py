"""cache-dit's top-level names that CacheDit leaves out on purpose, and why.

CacheDit is cache-dit's *caching* API. Reaching for one of these names (`cachedit.quantize`, ...)
raises an AttributeError that says so (`cachedit.__getattr__`), rather than a bare "no attribute".
"""

from __future__ import annotations

_AREAS = {
    "attention backends": ("set_attn_backend", "load_attn_backend_config"),
    "compilation settings": ("set_compile_configs",),
    "quantization": ("quantize", "load", "QuantizeConfig", "QuantizeBackend", "load_quantize_config"),
    "layer-wise offloading": ("LayerwiseOffloadHandle", "LayerwiseOffloadHandleGroup", "get_layerwise_offload_handles",
                              "layerwise_offload", "layerwise_cpu_offload", "remove_layerwise_offload"),
    "the profiler": ("ProfilerContext", "profile_function", "create_profiler_context", "get_profiler_output_dir",
                     "set_profiler_output_dir"),
    "parallelism helpers": ("supported_matrix",),
    "model-specific forward patches and the per-model adapter registry (CacheDit finds block lists itself; "
    "see supported_pipelines and get_adapter)": ("PatchFunctor", "BlockAdapterRegister"),
    "calibrators other than TaylorSeer": ("FoCaCalibratorConfig", "DMDCalibratorConfig"),
    "cache-dit's logging and utility helpers": ("init_logger", "disable_print", "maybe_empty_cache",
                                                "parse_extra_modules", "ENV"),
}

OUT_OF_SCOPE = {name: area for area, names in _AREAS.items() for name in names}


def out_of_scope_error(module: str, name: str) -> AttributeError:
    """The AttributeError for `module.name`: says why when cache-dit has that name and CacheDit leaves it out."""
    area = OUT_OF_SCOPE.get(name)
    if area is None:
        return AttributeError(f"module {module!r} has no attribute {name!r}")
    return AttributeError(f"module {module!r} has no attribute {name!r}: it belongs to cache-dit's {area}, which "
                          f"CacheDit leaves out of scope (it is cache-dit's caching API only; see README 'Out of scope')")


__all__ = ["OUT_OF_SCOPE", "out_of_scope_error"]
