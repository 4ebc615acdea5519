"""Atomic writes: the usual permissions, and a failed write changes nothing."""

from __future__ import annotations

import os

import pytest
import torch

from workbench.artifacts import (
    atomic_write_bytes,
    atomic_write_text,
    load_tensors,
    save_tensors,
)


@pytest.fixture
def umask():
    old = os.umask(0o027)  # not the common 022, so a hard-coded mode would show
    yield 0o027
    os.umask(old)


def test_atomic_files_get_the_usual_permissions(tmp_path, umask):
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "sub" / "b.txt", "é")
    save_tensors(tmp_path / "t.safetensors", {"x": torch.arange(3.0)}, {"note": "n"})
    for name in ("a.bin", "sub/b.txt", "t.safetensors", "t.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01" and (tmp_path / "sub" / "b.txt").read_text() == "é"
    tensors, meta = load_tensors(tmp_path / "t.safetensors")
    assert torch.equal(tensors["x"], torch.arange(3.0)) and meta == {"note": "n"}
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.bin", "b.txt", "sub", "t.json", "t.safetensors"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "old")
    with pytest.raises(TypeError):
        atomic_write_bytes(tmp_path / "a.txt", "not bytes")
    save_tensors(tmp_path / "t.safetensors", {"x": torch.ones(2)}, {"v": 1})
    shared = torch.zeros(2)
    with pytest.raises(RuntimeError, match="share memory"):  # safetensors fails while writing the temp file
        save_tensors(tmp_path / "t.safetensors", {"x": shared, "y": shared}, {"v": 2})
    with pytest.raises(TypeError):  # metadata that is not JSON: the tensors are not replaced either
        save_tensors(tmp_path / "t.safetensors", {"x": torch.zeros(2)}, {"v": object()})
    assert (tmp_path / "a.txt").read_text() == "old"
    tensors, meta = load_tensors(tmp_path / "t.safetensors")
    assert torch.equal(tensors["x"], torch.ones(2)) and meta == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "t.json", "t.safetensors"]
