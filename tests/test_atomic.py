"""Atomic writes: a failed write leaves the previous file intact and no temp files behind."""

import json
import os
import stat

import pytest
import torch

from s2_policy import atomic
from s2_policy.atomic import atomic_path, atomic_torch_save, atomic_write_json, atomic_write_text


def test_failed_write_keeps_the_previous_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "result.json"
    atomic_write_json(path, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text('{"a": 2, "trunc')
        raise RuntimeError("killed mid-write")
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in path.parent.iterdir()) == ["result.json"]


def test_writers_keep_the_suffix_and_replace_in_place(tmp_path):
    with atomic_path(tmp_path / "x.npy") as tmp:
        assert tmp.suffix == ".npy" and tmp.parent == tmp_path
    atomic_write_text(tmp_path / "t.txt", "one")
    atomic_write_text(tmp_path / "t.txt", "two")
    assert (tmp_path / "t.txt").read_text() == "two"
    atomic_torch_save({"w": torch.arange(3)}, tmp_path / "c.pt")
    assert torch.load(tmp_path / "c.pt")["w"].tolist() == [0, 1, 2]


def test_written_files_get_open_permissions_or_keep_the_replaced_files(tmp_path, monkeypatch):
    old = os.umask(0o022)
    try:
        assert atomic._read_umask() == 0o022 and os.umask(0o022) == 0o022  # read without changing it
    finally:
        os.umask(old)
    monkeypatch.setattr(atomic, "_UMASK", 0o022)  # the module reads the umask once, at import
    fresh = atomic.atomic_write_text(tmp_path / "fresh.json", "{}")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o644  # as open() gives, not mkstemp's 0o600
    atomic.atomic_torch_save({"w": 1}, tmp_path / "c.pt")
    assert stat.S_IMODE((tmp_path / "c.pt").stat().st_mode) == 0o644
    os.chmod(fresh, 0o640)
    atomic.atomic_write_text(fresh, "{}")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o640  # a rewrite keeps the file's own mode
