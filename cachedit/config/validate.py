"""Validation helpers: every error names the parameter, the value and what is allowed."""

from __future__ import annotations

from typing import Any, Optional, Sequence


def fail(name: str, value: Any, allowed: str) -> None:
    """Raise the project's one kind of configuration error."""
    raise ValueError(f"{name}={value!r} is invalid; allowed: {allowed}")


def check_int(name: str, value: Any, low: int, high: Optional[int] = None) -> None:
    """`value` must be an int (not a bool) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        fail(name, value, f"an integer in [{low}, {high if high is not None else 'inf'}]")


def check_float(name: str, value: Any, low: float, high: float) -> None:
    """`value` must be a real number (not a bool; NaN never is in range) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (low <= float(value) <= high):
        fail(name, value, f"a number in [{low}, {high}]")


def check_bool(name: str, value: Any) -> None:
    """`value` must be True or False."""
    if not isinstance(value, bool):
        fail(name, value, "True or False")


def check_str(name: str, value: Any, choices: Optional[Sequence[str]] = None) -> None:
    """`value` must be a str (one of `choices` when given)."""
    if not isinstance(value, str) or (choices is not None and value not in choices):
        fail(name, value, " | ".join(repr(c) for c in choices) if choices is not None else "a string")


def check_dict(name: str, value: Any) -> None:
    """`value` must be a dict."""
    if not isinstance(value, dict):
        fail(name, value, "a dict")

