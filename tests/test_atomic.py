"""Atomic writes: a failed write leaves the previous file intact and no temp files behind."""

import json

import pytest
import torch

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
