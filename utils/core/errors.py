"""What a user can get wrong, and one-line descriptions of it for error messages.

:class:`UserError` marks a mistake the user can fix (a bad flag value, a missing or foreign
file, a malformed datalist line); the command-line tools print it as one line. Anything
else is a bug and keeps its traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

import torch

__all__ = [
    "UserError",
    "UserFileNotFoundError",
    "UserTypeError",
    "UserValueError",
    "abbreviate",
    "closest_names",
    "state_dict_mismatch",
]


class UserError(Exception):
    """A mistake the user can fix; its message is one line that says what and how."""


class UserValueError(UserError, ValueError):
    """A bad value (a flag, a datalist line, a checkpoint's contents)."""


class UserTypeError(UserError, TypeError):
    """A value of the wrong kind."""


class UserFileNotFoundError(UserError, FileNotFoundError):
    """A file or folder the user named that does not exist."""


def closest_names(name: str, choices: Iterable[str], count: int = 3) -> str:
    """``"did you mean 'resnet18', 'resnet34'?"`` for the names closest to ``name``, or a
    short list of ``choices`` when none is close."""
    choices = sorted(set(choices))
    matches = difflib.get_close_matches(name, choices, n=count, cutoff=0.5)
    if not matches:
        lowered = name.lower()
        matches = [choice for choice in choices if lowered in choice.lower()][:count]
    if matches:
        return "did you mean " + ", ".join(repr(match) for match in matches) + "?"
    return f"valid names: {abbreviate(choices, shown=6)}"


def abbreviate(items: Iterable[str], shown: int = 4) -> str:
    """``['a', 'b'] and 7 more``: a list short enough for one line."""
    items = list(items)
    if len(items) <= shown:
        return str(items)
    return f"{items[:shown]} and {len(items) - shown} more"


def state_dict_mismatch(
    expected: Mapping[str, torch.Tensor],
    given: Mapping[str, torch.Tensor],
    required: Iterable[str] | None = None,
) -> str | None:
    """What keeps ``given`` from loading where ``expected`` is: the missing keys (of
    ``required``, default all of ``expected``) and unexpected ones, else the mismatching
    shapes; None when it fits."""
    required = set(expected) if required is None else set(required)
    missing = sorted(required - set(given))
    unexpected = sorted(set(given) - set(expected))
    if missing or unexpected:
        return f"missing keys {abbreviate(missing)}; unexpected keys {abbreviate(unexpected)}"
    mismatched = [
        f"{key} {tuple(value.shape)} vs {tuple(expected[key].shape)}"
        for key, value in given.items()
        if tuple(value.shape) != tuple(expected[key].shape)
    ]
    if mismatched:
        return f"shape mismatch {abbreviate(mismatched)}"
    return None
