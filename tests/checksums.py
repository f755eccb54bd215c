"""sha256 of every file under a folder, for the tests that check nothing was lost or changed."""

from __future__ import annotations

import hashlib
import os


def file_checksums(root: str | os.PathLike) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root``."""
    checksums = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                checksums[os.path.relpath(path, root)] = hashlib.sha256(handle.read()).hexdigest()
    return checksums
