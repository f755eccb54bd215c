"""utils.files: atomic writes leave either the old file or the whole new one."""

from __future__ import annotations

import json

import pytest

from utils.core.files import atomic_open, write_json


def test_atomic_open_replaces_the_file_only_when_the_block_ends(tmp_path):
    path = tmp_path / "deep" / "folder" / "result.csv"  # folders are created
    with atomic_open(path, newline="") as handle:
        handle.write("a,b\r\n")
        assert not path.exists()  # nothing visible before the block ends
    assert path.read_bytes() == b"a,b\r\n"
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_open(path) as handle:
            handle.write("half a fi")
            raise RuntimeError("interrupted")
    assert path.read_bytes() == b"a,b\r\n"  # the old file survives an interrupted write
    assert sorted(p.name for p in path.parent.iterdir()) == ["result.csv"]  # no temporary left


def test_binary_mode_and_json(tmp_path):
    with atomic_open(tmp_path / "blob.bin", "wb") as handle:
        handle.write(b"\x00\xff")
    assert (tmp_path / "blob.bin").read_bytes() == b"\x00\xff"
    path = write_json(tmp_path / "out" / "r.json", {"x": {1, 2}}, indent=1, default=sorted)
    assert path == str(tmp_path / "out" / "r.json")
    assert json.loads((tmp_path / "out" / "r.json").read_text()) == {"x": [1, 2]}
