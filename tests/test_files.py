"""vae.execution.files: the file-system primitives every store write goes through."""

import os

import pytest

from vae.execution.files import atomic_write_bytes


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path):
    target = tmp_path / "f.json"
    atomic_write_bytes(target, b"old")

    with pytest.raises(TypeError):
        atomic_write_bytes(target, object())  # the write raises half-way
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.json"]  # no temp file left behind
