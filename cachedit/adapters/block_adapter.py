"""cache-dit's `BlockAdapter`: describe your own transformer (any `nn.Module`) to the cache.

It names the transformer(s), their block lists and how the blocks are called (`ForwardPattern`);
`cachedit.enable_cache(BlockAdapter(...))` then caches exactly those lists, each list with its own
engine (cache-dit's one cache context per list), and `params_modifiers` give a list its own
config. This module only describes and checks; `cachedit.api` hands the lists to the manager.

Fields are cache-dit's. CacheDit hooks the blocks themselves rather than replacing the lists, so
`dummy_blocks_names` and `unique_blocks_name` are accepted and not needed; `forward_pattern=None`
(a CacheDit extension) lets the codec learn each block's layout from its first call, as it does
for models found without an adapter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, List, Optional, Tuple, Union

import torch
from torch import nn

from ..config.forward_pattern import ForwardPattern

_ATOMS = (str, bytes, nn.ModuleList, nn.Module, torch.Tensor)
_DEFAULT_PREFIXES = ["transformer", "single_transformer", "blocks", "layers", "single_stream_blocks",
                     "double_stream_blocks"]


@dataclasses.dataclass
class AdapterLists:
    """One transformer of a BlockAdapter with its block lists (checked, one entry per list)."""

    transformer: nn.Module
    names: List[str]
    blocks: List[nn.ModuleList]
    patterns: List[Optional[ForwardPattern]]


@dataclasses.dataclass
class BlockAdapter:
    """Which transformer(s) and block lists to cache, and how their blocks are called (cache-dit's fields).

    `transformer`: a module or a list (Wan 2.2's two experts); `blocks` / `blocks_name`: one list,
    several, or a list per transformer; `forward_pattern`: one, or one per list; `pipe`: optional,
    each of its calls is then one generation (run); `params_modifiers`: a ParamsModifier per list."""

    pipe: Any = None
    transformer: Union[nn.Module, List[nn.Module], None] = None
    blocks: Any = None
    blocks_name: Any = None
    unique_blocks_name: Any = dataclasses.field(default_factory=list)
    dummy_blocks_names: Any = dataclasses.field(default_factory=list)
    forward_pattern: Any = None
    params_modifiers: Any = None
    check_forward_pattern: Optional[bool] = None
    check_num_outputs: bool = False
    patch_functor: Any = None
    has_separate_cfg: bool = False
    auto: bool = False
    allow_prefixes: List[str] = dataclasses.field(default_factory=lambda: list(_DEFAULT_PREFIXES))
    check_prefixes: bool = True
    allow_suffixes: List[str] = dataclasses.field(default_factory=lambda: ["TransformerBlock"])
    check_suffixes: bool = False
    blocks_policy: str = "max"
    skip_post_init: bool = False

    def __post_init__(self) -> None:
        for name in ("check_num_outputs", "has_separate_cfg", "auto", "check_prefixes", "check_suffixes",
                     "skip_post_init"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"BlockAdapter {name}={getattr(self, name)!r} is invalid; allowed: True or False")
        if self.check_forward_pattern is not None and not isinstance(self.check_forward_pattern, bool):
            raise ValueError(f"BlockAdapter check_forward_pattern={self.check_forward_pattern!r} is invalid; allowed: "
                             f"True, False or None (check diffusers blocks only)")
        if self.blocks_policy not in ("max", "min"):
            raise ValueError(f"BlockAdapter blocks_policy={self.blocks_policy!r} is invalid; allowed: 'max' or 'min'")
        for name in ("allow_prefixes", "allow_suffixes"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"BlockAdapter {name}={value!r} is invalid; allowed: a list of strings")
        if self.skip_post_init:
            return
        transformers = self.transformers(required=False)
        if self.patch_functor is not None:
            for transformer in transformers:
                self.patch_functor.apply(transformer)  # the user's own model patch, as cache-dit runs it
        if self.check_forward_pattern is None and transformers:
            # cache-dit's default: check diffusers blocks (their names follow the patterns), trust others
            first = transformers[0]
            self.check_forward_pattern = type(first).__module__.startswith("diffusers")
            if getattr(first, "_hf_hook", None) is not None or getattr(first, "_diffusers_hook", None) is not None:
                self.check_forward_pattern = False

    # -- what the cache uses ----------------------------------------------------------------------
    def transformers(self, required: bool = True) -> List[nn.Module]:
        """The transformer(s) as a list (`pipe.transformer` when `transformer` is not given)."""
        value = self.transformer if self.transformer is not None else getattr(self.pipe, "transformer", None)
        items = [] if value is None else (list(value) if isinstance(value, (list, tuple)) else [value])
        for i, item in enumerate(items):
            if not isinstance(item, nn.Module):
                raise TypeError(f"BlockAdapter transformer[{i}]={type(item).__name__} is invalid; allowed: a "
                                f"torch.nn.Module or a list of them")
        if required and not items:
            raise ValueError("BlockAdapter transformer=None (and no pipe.transformer); allowed: the transformer "
                             "module, or a list of them")
        return items

    def plan(self) -> List[AdapterLists]:
        """Every transformer with its block lists, names and patterns, checked (errors name what is wrong)."""
        adapter = BlockAdapter.auto_block_adapter(self) if self.auto else self
        transformers = adapter.transformers()
        n = len(transformers)
        blocks = _per_transformer(adapter.blocks, n, "blocks")
        names = _per_transformer(adapter.blocks_name, n, "blocks_name")
        patterns = _per_transformer(adapter.forward_pattern, n, "forward_pattern")
        plans, seen = [], {}
        for i, transformer in enumerate(transformers):
            lists, list_names = _lists(transformer, blocks[i], names[i], i)
            plan = AdapterLists(transformer, list_names, lists, _patterns(patterns[i], len(lists), i))
            for j, (name, mlist, pattern) in enumerate(zip(plan.names, plan.blocks, plan.patterns)):
                label = f"{type(transformer).__name__}.{name}"
                for block in mlist:
                    if id(block) in seen:
                        raise ValueError(f"BlockAdapter blocks: {label} repeats a block of {seen[id(block)]}; "
                                         f"allowed: each block in one list only")
                    seen[id(block)] = label
                if pattern is not None and adapter.check_forward_pattern:
                    _check_pattern(mlist, pattern, label, adapter.check_num_outputs)
            plans.append(plan)
        return plans

    # -- cache-dit's helpers ----------------------------------------------------------------------
    @staticmethod
    def nested_depth(obj: Any) -> int:
        """0 for a module, list of blocks, string or pattern; 1 for a list of them; 2 for a list of lists."""
        if isinstance(obj, _ATOMS) or not isinstance(obj, Iterable):
            return 0
        items = obj.values() if isinstance(obj, dict) else obj
        return 1 + max((BlockAdapter.nested_depth(item) for item in items), default=0)

    @staticmethod
    def flatten(attr: Any) -> List[Any]:
        """A nested list as a flat list (anything else is returned as is)."""
        if not isinstance(attr, list):
            return attr
        flat: List[Any] = []
        for item in attr:
            flat.extend(BlockAdapter.flatten(item) if isinstance(item, list) else [item])
        return flat

    @staticmethod
    def normalize(adapter: "BlockAdapter") -> "BlockAdapter":
        """A copy with cache-dit's normalized layout: a list of transformers, a list of lists per transformer."""
        plans = adapter.plan()
        return dataclasses.replace(adapter, transformer=[p.transformer for p in plans], auto=False,
                                   blocks=[p.blocks for p in plans], blocks_name=[p.names for p in plans],
                                   forward_pattern=[p.patterns for p in plans], skip_post_init=True)

    @staticmethod
    def check_block_adapter(adapter: "BlockAdapter") -> bool:
        """Whether the adapter describes something to cache (the errors of `plan()` say what is missing)."""
        try:
            return bool(adapter.plan())
        except (TypeError, ValueError):
            return False

    @staticmethod
    def find_blocks(transformer: nn.Module) -> List[nn.ModuleList]:
        """Every non-empty ModuleList attribute of `transformer`."""
        return [m for m in transformer.children() if isinstance(m, nn.ModuleList) and len(m) > 0]

    @staticmethod
    def match_block_pattern(block: nn.Module, forward_pattern: ForwardPattern, **kwargs: Any) -> bool:
        """Whether one block's forward fits `forward_pattern` (cache-dit's check)."""
        if not kwargs.get("check_forward_pattern", True):
            return True
        return _as_pattern(forward_pattern, "forward_pattern").mismatch(
            block, kwargs.get("check_num_outputs", True)) is None

    @staticmethod
    def match_blocks_pattern(transformer_blocks: nn.ModuleList, forward_pattern: ForwardPattern,
                             logging: bool = True, **kwargs: Any) -> bool:
        """Whether every block of a list fits `forward_pattern`."""
        return all(BlockAdapter.match_block_pattern(b, forward_pattern, **kwargs) for b in transformer_blocks)

    @staticmethod
    def find_match_blocks(transformer: nn.Module, allow_prefixes: Optional[List[str]] = None,
                          allow_suffixes: Optional[List[str]] = None, check_prefixes: bool = True,
                          check_suffixes: bool = False, **kwargs: Any) -> Tuple[nn.ModuleList, str]:
        """The block list cache-dit's `auto=True` picks: a ModuleList attribute whose name starts with an
        allowed prefix (whose block class ends with an allowed suffix, when checked) and whose blocks fit
        `forward_pattern`; the longest (`blocks_policy="max"`) or shortest ("min") of them."""
        prefixes = _DEFAULT_PREFIXES if allow_prefixes is None else allow_prefixes
        suffixes = ["TransformerBlock"] if allow_suffixes is None else allow_suffixes
        pattern = kwargs.get("forward_pattern")
        policy = kwargs.get("blocks_policy", "max")
        if policy not in ("max", "min"):
            raise ValueError(f"blocks_policy={policy!r} is invalid; allowed: 'max' or 'min'")
        found = []
        for name, child in transformer.named_children():
            if not isinstance(child, nn.ModuleList) or len(child) == 0:
                continue
            if check_prefixes and not any(name.startswith(p) for p in prefixes):
                continue
            if check_suffixes and not any(type(child[0]).__name__.endswith(s) for s in suffixes):
                continue
            if pattern is not None and not BlockAdapter.match_blocks_pattern(
                    child, pattern, check_num_outputs=kwargs.get("check_num_outputs", False)):
                continue
            found.append((name, child))
        if not found:
            raise ValueError(f"auto=True found no block list in {type(transformer).__name__} (prefixes {prefixes}"
                             f"{', pattern ' + str(pattern) if pattern is not None else ''}); allowed: name the "
                             f"lists with blocks= or blocks_name=")
        pick = max if policy == "max" else min
        name, blocks = pick(found, key=lambda nb: len(nb[1]))
        return blocks, name

    @staticmethod
    def auto_block_adapter(adapter: "BlockAdapter") -> "BlockAdapter":
        """The adapter with `blocks` / `blocks_name` found as cache-dit's `auto=True` does (one transformer)."""
        transformers = adapter.transformers()
        if len(transformers) != 1:
            raise ValueError(f"auto=True with {len(transformers)} transformers; allowed: one transformer "
                             f"(name the block lists of several with blocks=)")
        blocks, name = BlockAdapter.find_match_blocks(
            transformers[0], adapter.allow_prefixes, adapter.allow_suffixes, adapter.check_prefixes,
            adapter.check_suffixes, forward_pattern=adapter.forward_pattern, blocks_policy=adapter.blocks_policy,
            check_num_outputs=adapter.check_num_outputs)
        return dataclasses.replace(adapter, transformer=transformers[0], blocks=blocks, blocks_name=name, auto=False,
                                   skip_post_init=True)


def _per_transformer(attr: Any, n: int, field: str) -> List[Optional[list]]:
    """cache-dit's normalization of `blocks` / `blocks_name` / `forward_pattern`: one list per transformer."""
    if attr is None:
        return [None] * n
    depth = BlockAdapter.nested_depth(attr)
    shared = field != "blocks"  # one pattern / one attribute name may serve every transformer; a list cannot
    if depth == 0:
        return [[attr]] * n if shared else _one([[attr]], n, field, attr)
    if depth == 1:
        attr = list(attr)
        if n > 1 and len(attr) == n:
            return [[a] for a in attr]
        return [attr] * n if shared and len(attr) == 1 else _one([attr], n, field, attr)
    if depth == 2 and len(attr) == n:
        return [list(a) for a in attr]
    raise ValueError(f"BlockAdapter {field} has {len(attr)} entries at the top level for {n} transformers; allowed: "
                     f"one entry, one per transformer, or a list per transformer")


def _one(value: list, n: int, field: str, attr: Any) -> list:
    if n != 1:
        raise ValueError(f"BlockAdapter {field}={attr!r} for {n} transformers; allowed: one entry (or list) per transformer")
    return value


def _lists(transformer: nn.Module, blocks: Optional[list], names: Optional[list], i: int) -> Tuple[list, List[str]]:
    """The ModuleLists of transformer `i` and their names (found by identity when not given)."""
    tname = type(transformer).__name__
    if blocks is None and names is None:
        raise ValueError(f"BlockAdapter transformer[{i}] ({tname}) has neither blocks nor blocks_name; allowed: the "
                         f"ModuleList(s) to cache, their attribute names, or auto=True")
    if blocks is not None and len(blocks) == 0 or blocks is None and not names:
        raise ValueError(f"BlockAdapter blocks=[] for transformer[{i}] ({tname}); allowed: at least one ModuleList")
    if blocks is None:
        blocks = []
        for name in names:
            obj: Any = transformer
            for part in str(name).split("."):
                obj = getattr(obj, part, None)
            blocks.append(obj)
    for j, mlist in enumerate(blocks):
        if not isinstance(mlist, nn.ModuleList) or len(mlist) == 0:
            where = f"blocks_name={names[j]!r}" if names is not None else f"blocks[{j}]"
            raise TypeError(f"BlockAdapter {where} of {tname} is {type(mlist).__name__}"
                            f"{' (empty)' if isinstance(mlist, nn.ModuleList) else ''}; allowed: a non-empty "
                            f"torch.nn.ModuleList of blocks")
    if names is None:
        by_id = {id(m): n for n, m in transformer.named_modules() if isinstance(m, nn.ModuleList)}
        names = [by_id.get(id(m), f"blocks_{j}") for j, m in enumerate(blocks)]
    if len(names) != len(blocks):
        raise ValueError(f"BlockAdapter blocks_name={names!r} has {len(names)} names for {len(blocks)} block lists "
                         f"of {tname}; allowed: one name per list")
    return list(blocks), [str(n) for n in names]


def _as_pattern(value: Any, where: str) -> ForwardPattern:
    if isinstance(value, ForwardPattern):
        return value
    name = getattr(value, "name", None)  # the real cache-dit's enum: same members
    if isinstance(name, str) and name in ForwardPattern.__members__:
        return ForwardPattern[name]
    raise TypeError(f"BlockAdapter {where}={value!r} is invalid; allowed: {', '.join(ForwardPattern.__members__)} "
                    f"(cachedit.ForwardPattern) or None")


def _patterns(patterns: Optional[list], count: int, i: int) -> List[Optional[ForwardPattern]]:
    if patterns is None:
        return [None] * count
    if len(patterns) == 1 and count > 1:
        patterns = patterns * count
    if len(patterns) != count:
        raise ValueError(f"BlockAdapter forward_pattern has {len(patterns)} patterns for {count} block lists of "
                         f"transformer[{i}]; allowed: one pattern, or one per block list")
    return [None if p is None else _as_pattern(p, "forward_pattern") for p in patterns]


def _check_pattern(blocks: nn.ModuleList, pattern: ForwardPattern, label: str, check_num_outputs: bool) -> None:
    for k, block in enumerate(blocks):
        why = pattern.mismatch(block, check_num_outputs)
        if why is not None:
            fitting = [p.name for p in ForwardPattern.matching(block)] or ["none (name its inputs hidden_states / "
                                                                           "encoder_hidden_states, or pass "
                                                                           "check_forward_pattern=False)"]
            raise ValueError(f"forward_pattern={pattern} does not match {label}[{k}]: {why}; "
                             f"allowed: a pattern its forward fits: {', '.join(fitting)}")


__all__ = ["AdapterLists", "BlockAdapter"]
