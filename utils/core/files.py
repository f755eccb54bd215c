"""Writing result files atomically (a temporary file beside the target, then a rename, so
an interrupted run never leaves a truncated checkpoint, log or result), and checking that
an output can be written before the long work that produces it."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from typing import IO, Any

from utils.core.errors import UserError

__all__ = ["atomic_open", "ensure_writable", "write_json"]


def ensure_writable(path: str | os.PathLike, flag: str, is_folder: bool = False) -> str:
    """Check, before any long work, that ``path`` (a file, or a folder with ``is_folder``)
    can be written: its folder is created and a probe file is written there and removed.

    Args:
        path: the output file or folder.
        flag: the command-line flag that sets it (named in the error, e.g. ``"--output"``).

    Returns:
        ``path`` as a string.

    Raises:
        UserError: one line naming the path, the flag and the reason.
    """
    path = os.fspath(path)
    folder = path if is_folder else (os.path.dirname(os.path.abspath(path)) or ".")
    if not is_folder and os.path.isdir(path):
        raise UserError(f"cannot write {path!r} ({flag}): it is a folder; give a file name")
    probe = os.path.join(folder, f".write-check-{os.getpid()}")
    try:
        os.makedirs(folder, exist_ok=True)
        with open(probe, "w", encoding="utf-8") as handle:
            handle.write("")
        os.remove(probe)
    except OSError as error:
        reason = error.strerror or error.__class__.__name__
        blocking_file = _existing_file_on_the_way(folder)
        if blocking_file is not None:
            reason = f"{blocking_file!r} is a file, not a folder"
        raise UserError(f"cannot write to {folder!r} ({flag}): {reason}; choose another folder with {flag}") from None
    return path


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


def _existing_file_on_the_way(folder: str) -> str | None:
    """The first regular file among ``folder`` and its parents, if one stands there."""
    current = os.path.abspath(folder)
    while True:
        if os.path.isfile(current):
            return current
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent
