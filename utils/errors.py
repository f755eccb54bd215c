"""One-line descriptions of what is wrong, for error messages."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

__all__ = ["abbreviate", "state_dict_mismatch"]


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
