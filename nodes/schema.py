"""What every CacheDit node schema shares: the category, the search aliases, and the one place
that knows which `io.Schema` fields the running ComfyUI has.

Display names are plain English ("CacheDit Accelerate"); Chinese names, descriptions and tooltips
come from `locales/zh/nodeDefs.json`, which the frontend applies when the UI language is Chinese
(a bilingual "English | 中文" name would show one half only: the frontend reads " | " as a plural
separator). `search_aliases` (newer ComfyUI) let users find the nodes under the names of peer
packs and in Chinese whatever the UI language.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from comfy_api.latest import io

CATEGORY = "CacheDit"

# What users type when they look for a cache node (peer packs' names, the technique, Chinese).
COMMON_ALIASES = ("cache-dit", "cachedit", "TeaCache", "FBCache", "first block cache", "DBCache", "MagCache",
                  "EasyCache", "step cache", "speed up", "accelerate", "faster", "缓存", "加速", "提速")


def _schema_fields() -> frozenset:
    return frozenset(f.name for f in dataclasses.fields(io.Schema))


def supports(field: str) -> bool:
    """True when this ComfyUI's io.Schema has `field` (search_aliases came after v0.3.64)."""
    return field in _schema_fields()


def aliases(own: Sequence[str] = ()) -> list:
    """A node's search aliases: COMMON_ALIASES, then its own, without repeats."""
    return list(dict.fromkeys((*COMMON_ALIASES, *own)))


def make_schema(*, search_aliases: Sequence[str] = (), **kwargs: Any) -> io.Schema:
    """io.Schema(category=CATEGORY, **kwargs), with `aliases(search_aliases)` where this ComfyUI
    knows the field and without them where it does not (an older io.Schema rejects unknown fields)."""
    kwargs.setdefault("category", CATEGORY)
    if supports("search_aliases"):
        kwargs["search_aliases"] = aliases(search_aliases)
    return io.Schema(**kwargs)


def combo_error(schema: io.Schema, values: dict) -> str | None:
    """The first combo value in `values` that is not one of its input's options, as a message (None
    when all are). The ComfyUI versions we support do not check a V3 combo's value before a run, so
    a workflow posted over the HTTP API with e.g. strategy="turbo" would otherwise fail only when
    the node runs. None (a linked or absent input) is not checked here."""
    options = {i.id: list(i.options) for i in schema.inputs if isinstance(i, io.Combo.Input)}
    for name, value in values.items():
        if value is not None and value not in options[name]:
            return f"{name}={value!r} is invalid; allowed: {' | '.join(map(repr, options[name]))}"
    return None
