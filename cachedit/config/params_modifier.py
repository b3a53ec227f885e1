"""cache-dit's `ParamsModifier`: a different cache / calibrator config for one transformer or one
block list (Wan 2.2's high-noise and low-noise experts, a model's double- and single-stream lists).

`enable_cache(..., params_modifiers=[m0, m1, ...])` (or `BlockAdapter(params_modifiers=...)`)
gives modifier i to the i-th block list in order (transformer by transformer, list by list); for
a pipeline or transformer without an adapter, to the i-th transformer. As in cache-dit, a
modifier's config *updates* the shared one: every field it sets to a non-None value wins, so
`DBCacheConfig().reset(residual_diff_threshold=0.2)` changes only the threshold while a plain
`DBCacheConfig(residual_diff_threshold=0.2)` also brings back cache-dit's defaults for the rest.
"""

from __future__ import annotations

import copy
from typing import Any, List, Optional

from .cache_dit import BasicCacheConfig, CalibratorConfig, DBCacheConfig, TaylorSeerCalibratorConfig
from .options import LEGACY_CACHE_KWARGS, LEGACY_CALIBRATOR_KWARGS, CacheOptions


class ParamsModifier:
    """Per transformer / per block list overrides of `cache_config` and `calibrator_config`.

    Legacy keyword arguments (`Fn_compute_blocks=`, `enable_taylorseer=`, ...) are accepted as
    in cache-dit; anything else is an error naming it."""

    def __init__(self, cache_config: Optional[BasicCacheConfig] = None,
                 calibrator_config: Optional[CalibratorConfig] = None, **kwargs: Any) -> None:
        unknown = [k for k in kwargs if k not in LEGACY_CACHE_KWARGS + LEGACY_CALIBRATOR_KWARGS]
        if unknown:
            raise TypeError(f"ParamsModifier got {unknown[0]}={kwargs[unknown[0]]!r}; allowed: cache_config, "
                            f"calibrator_config, {', '.join(LEGACY_CACHE_KWARGS + LEGACY_CALIBRATOR_KWARGS)}")
        if cache_config is not None and not isinstance(cache_config, BasicCacheConfig):
            raise TypeError(f"ParamsModifier cache_config={cache_config!r} is invalid; allowed: a DBCacheConfig or None")
        if calibrator_config is not None and not isinstance(calibrator_config, TaylorSeerCalibratorConfig):
            raise TypeError(f"ParamsModifier calibrator_config={calibrator_config!r} is invalid; allowed: a "
                            f"TaylorSeerCalibratorConfig or None")
        legacy = {k: v for k, v in kwargs.items() if k in LEGACY_CACHE_KWARGS and v is not None}
        if legacy:
            cache_config = cache_config.update(**legacy) if cache_config is not None else DBCacheConfig(**legacy)
        if kwargs.get("enable_taylorseer") is not None or kwargs.get("enable_encoder_taylorseer") is not None:
            calibrator_config = TaylorSeerCalibratorConfig(
                enable_calibrator=kwargs.get("enable_taylorseer", False),
                enable_encoder_calibrator=kwargs.get("enable_encoder_taylorseer", False),
                calibrator_cache_type=kwargs.get("taylorseer_cache_type", "residual"),
                taylorseer_order=kwargs.get("taylorseer_order", 1))
        self.cache_config = cache_config
        self.calibrator_config = calibrator_config
        # cache-dit keeps the overrides here; code written for it may read them.
        self._context_kwargs = {k: v for k, v in (("cache_config", cache_config),
                                                  ("calibrator_config", calibrator_config)) if v is not None}

    def apply(self, options: CacheOptions) -> CacheOptions:
        """A validated copy of `options` with this modifier's overrides applied."""
        options = copy.deepcopy(options)
        if self.cache_config is not None:
            options.cache_config.update(**self.cache_config.as_dict())
        if self.calibrator_config is not None:
            if options.calibrator_config is None:
                options.calibrator_config = copy.deepcopy(self.calibrator_config)
            else:
                options.calibrator_config.update(**copy.deepcopy(self.calibrator_config.as_dict()))
        return options.validate()

    def __repr__(self) -> str:
        return f"ParamsModifier(cache_config={self.cache_config!r}, calibrator_config={self.calibrator_config!r})"


def flatten_modifiers(modifiers: Any) -> List[ParamsModifier]:
    """One ParamsModifier, or a (nested) list of them, as a flat list in order; errors name what is wrong."""
    if modifiers is None:
        return []
    if isinstance(modifiers, ParamsModifier):
        return [modifiers]
    if not isinstance(modifiers, (list, tuple)):
        raise TypeError(f"params_modifiers={modifiers!r} is invalid; allowed: a ParamsModifier, a list of them "
                        f"(one per block list or transformer), or None")
    flat: List[ParamsModifier] = []
    for item in modifiers:
        flat.extend(flatten_modifiers(item))
    return flat


__all__ = ["ParamsModifier", "flatten_modifiers"]
