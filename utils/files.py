"""Writing result files atomically: a temporary file beside the target, then a rename, so
an interrupted run never leaves a truncated checkpoint, log or result."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from typing import IO, Any

__all__ = ["atomic_open", "write_json"]


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", newline: str | None = None) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing (text in UTF-8, or binary with
    ``mode="wb"``; folders are created). When the block ends normally it replaces ``path``;
    on an error it is removed and ``path`` stays as it was."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = f"{path}.tmp-{os.getpid()}"
    options = {} if "b" in mode else {"encoding": "utf-8", "newline": newline}
    try:
        with open(temporary, mode, **options) as handle:
            yield handle
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_json(
    path: str | os.PathLike, document: Any, indent: int = 2, default: Callable[[Any], Any] | None = None
) -> str:
    """Write ``document`` as indented JSON to ``path``, atomically; returns the path."""
    with atomic_open(path) as handle:
        json.dump(document, handle, indent=indent, default=default)
    return os.fspath(path)
