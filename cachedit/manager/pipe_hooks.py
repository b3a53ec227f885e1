"""Run boundaries from a pipeline's own call, for pipelines a BlockAdapter names.

cache-dit resets its cache contexts on every call of the adapter's pipeline; so does CacheDit:
each call of a hooked pipeline ends the run in progress before and after it, so a transformer
called without timesteps (or whose timesteps never go back up) still starts each generation clean.

Python looks `__call__` up on the class, so the class's `__call__` is wrapped while any of its
instances is hooked, and restored when none is left; calls of instances that are not hooked go
straight through. Pipelines that are torch modules are left alone (a module's call is usually a
single step, not a whole generation).
"""

from __future__ import annotations

import functools
import threading
import weakref
from typing import Any, Callable, Dict, Optional, Tuple

from torch import nn

Boundary = Callable[[Any], bool]  # called with the pipeline; False: nothing to do any more (unhook)

_lock = threading.RLock()
_classes: Dict[type, Tuple[bool, Callable]] = {}  # class -> (it defined __call__ itself, the original)
_instances: Dict[int, Tuple[weakref.ref, Boundary]] = {}  # id(pipeline) -> (weakref, boundary)


def _own_call(cls: type) -> Optional[Callable]:
    return next((k.__dict__["__call__"] for k in cls.__mro__ if "__call__" in k.__dict__), None)


def hook_calls(pipe: Any, boundary: Boundary) -> bool:
    """Call `boundary(pipe)` before and after every call of `pipe`; False when `pipe` cannot be hooked."""
    cls = type(pipe)
    if isinstance(pipe, nn.Module) or _own_call(cls) is None:
        return False
    key = id(pipe)
    with _lock:
        _instances[key] = (weakref.ref(pipe, lambda _ref: _drop(key, cls)), boundary)
        if cls not in _classes:
            original = _own_call(cls)
            _classes[cls] = ("__call__" in cls.__dict__, original)
            cls.__call__ = _wrap(original)  # type: ignore[method-assign]
    return True


def unhook_calls(pipe: Any) -> None:
    """Stop hooking `pipe` (its class's `__call__` is restored when no hooked instance is left)."""
    _drop(id(pipe), type(pipe))


def is_hooked(pipe: Any) -> bool:
    """Whether calls of `pipe` are hooked."""
    with _lock:
        hooked = _instances.get(id(pipe))
    return hooked is not None and hooked[0]() is pipe


def _drop(key: int, cls: type) -> None:
    with _lock:
        _instances.pop(key, None)
        if cls in _classes and not any(type(ref()) is cls for ref, _ in _instances.values()):
            own, original = _classes.pop(cls)
            if own:
                cls.__call__ = original  # type: ignore[method-assign]
            else:
                del cls.__call__


def _wrap(original: Callable) -> Callable:
    @functools.wraps(original)
    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        hooked = _instances.get(id(self))
        if hooked is None or hooked[0]() is not self:
            return original(self, *args, **kwargs)
        boundary = hooked[1]
        if not boundary(self):
            unhook_calls(self)
            return original(self, *args, **kwargs)
        try:
            return original(self, *args, **kwargs)
        finally:
            boundary(self)

    return __call__


__all__ = ["hook_calls", "is_hooked", "unhook_calls"]
