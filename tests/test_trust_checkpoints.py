"""Checkpoints cannot run code: pickled files are refused (no sentinel appears); damaged files are named."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from s2_policy.encoders.checkpoint import read_state_dict
from s2_policy.policies import LinearNormalizer, Policy
from s2_policy.pretrain.data import FrameSampler
from s2_policy.pretrain.mae import MAEConfig, MaskedAutoencoder
from s2_policy.pretrain.train import STATE_FILE, train_mae
from s2_policy.serialization import CheckpointError, is_pickle, load_tree, save_tree
from s2_policy.training.trainer import TrainConfig, Trainer

REPO = Path(__file__).resolve().parents[1]
CAMS = ["front"]


class _Touch:
    """Unpickling this object creates ``path`` (stands in for any code a malicious checkpoint runs)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _evil(path: Path, sentinel: Path) -> Path:
    torch.save({"format": "s2_policy.policy/1", "state_dict": {"w": _Touch(sentinel)}}, path)
    return path


def _policy() -> Policy:
    g = np.random.default_rng(0)
    norm = LinearNormalizer().fit({"state": g.normal(size=(50, 3)), "action": g.normal(size=(50, 2))})
    return Policy({"head": "mlp", "horizon": 4, "n_obs_steps": 1, "n_action_steps": 2, "obs_proj_dim": 8,
                   "mlp": {"hidden_dim": 16, "n_layers": 2}}, 6, CAMS, 3, 2, norm, meta={"label": "x"})


def _obs() -> dict:
    g = torch.Generator().manual_seed(1)
    return {"front": torch.randn(2, 1, 6, generator=g), "state": torch.randn(2, 1, 3, generator=g)}


def test_the_sentinel_works(tmp_path):
    """The malicious file really runs code when unpickled unprotected (so the refusals mean something)."""
    sentinel = tmp_path / "pwned"
    torch.load(_evil(tmp_path / "evil.pt", sentinel), weights_only=False)
    assert sentinel.exists()


def test_policy_load_refuses_pickles(tmp_path):
    sentinel = tmp_path / "pwned"
    evil = _evil(tmp_path / "policy.pt", sentinel)
    with pytest.raises(CheckpointError, match=r"policy.pt is a pickled torch.save file.*trust_pickle=True"):
        Policy.load(evil, load_encoder=False)
    assert not sentinel.exists()


def test_safe_checkpoint_is_inspectable_without_the_project(tmp_path):
    p = _policy()
    path = p.save(tmp_path / "policy.pt")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
        w = f.get_tensor("state_dict/obs_proj.weight")
    assert meta["format"] == "s2_policy.policy/2"
    assert json.loads(meta["config"])["horizon"] == 4 and json.loads(meta["dims"])["cameras"] == CAMS
    assert json.loads(meta["meta"]) == {"label": "x"}
    want = {"normalizer/params/state/scale", "normalizer/params/action/offset", "state_dict/obs_norm.weight"}
    assert want <= keys
    scale = json.loads(meta["normalizer"])["params"]["state"]["scale"]
    assert scale == {"__tensor__": "normalizer/params/state/scale"}
    torch.testing.assert_close(w, p.core.obs_proj.weight.detach(), rtol=0, atol=0)


def test_old_pickled_policy_loads_only_with_opt_in(tmp_path):
    p = _policy()
    old = tmp_path / "old.pt"
    torch.save({**p.checkpoint_dict(), "format": "s2_policy.policy/1"}, old)
    with pytest.raises(CheckpointError, match="pickled"):
        Policy.load(old, load_encoder=False)
    q = Policy.load(old, load_encoder=False, trust_pickle=True)
    torch.testing.assert_close(q.predict_action(_obs()), p.predict_action(_obs()), rtol=0, atol=0)
    converted = Policy.load(q.save(tmp_path / "new.pt"), load_encoder=False)  # re-saving converts it
    torch.testing.assert_close(converted.predict_action(_obs()), p.predict_action(_obs()), rtol=0, atol=0)


def test_truncated_or_foreign_policy_files_are_named(tmp_path):
    path = _policy().save(tmp_path / "policy.pt")
    data = path.read_bytes()
    cut = tmp_path / "cut.pt"
    for n in (len(data) - 100, 200, 20, 3):
        cut.write_bytes(data[:n])
        with pytest.raises(CheckpointError, match=r"cut.pt .*(truncated|empty)"):
            Policy.load(cut, load_encoder=False)
    text = tmp_path / "notes.pt"
    text.write_text("these are my notes, not a checkpoint\n" * 20)
    with pytest.raises(CheckpointError, match="notes.pt is not a checkpoint file"):
        Policy.load(text, load_encoder=False)
    state = tmp_path / "state.pt"
    save_tree({"step": 3}, state, "s2_policy.train_state/1")
    with pytest.raises(CheckpointError, match="state.pt is not a policy checkpoint"):
        Policy.load(state, load_encoder=False)


def test_tree_roundtrip_is_exact(tmp_path):
    """Tuples, int-keyed dicts (optimizer state), numpy arrays and dtypes survive a save/load."""
    tree = {"rng": {"python": (3, tuple(range(5)), None), "numpy": ("MT19937", np.arange(4, dtype=np.uint32),
                                                                   2, 0, 0.5)},
            "opt": {"state": {0: {"step": torch.tensor(3.0), "m": torch.randn(2, 3)}}, "lr": [0.1, 1e-300]},
            "bf16": torch.randn(3).to(torch.bfloat16), "flag": True, "none": None}
    back = load_tree(save_tree(tree, tmp_path / "t.st", "fmt/1"), "fmt/1")
    assert back["rng"]["python"] == tree["rng"]["python"]
    assert back["rng"]["numpy"][0] == "MT19937" and back["rng"]["numpy"][1].dtype == np.uint32
    np.testing.assert_array_equal(back["rng"]["numpy"][1], tree["rng"]["numpy"][1])
    assert list(back["opt"]["state"]) == [0] and back["opt"]["lr"] == [0.1, 1e-300]
    torch.testing.assert_close(back["opt"]["state"][0]["m"], tree["opt"]["state"][0]["m"], rtol=0, atol=0)
    assert back["bf16"].dtype == torch.bfloat16 and back["flag"] is True and back["none"] is None


def _trainer(out: Path, **cfg) -> Trainer:
    p = _policy()
    g = torch.Generator().manual_seed(0)
    data = {"front": torch.randn(16, 1, 6, generator=g), "state": torch.randn(16, 1, 3, generator=g),
            "action": torch.randn(16, 4, 2, generator=g)}
    return Trainer(p, data, None, TrainConfig(steps=2, batch_size=8, progress=False, val_every=0, **cfg), out)


def test_trainer_resume_refuses_pickles_and_names_truncated_state(tmp_path):
    sentinel = tmp_path / "pwned"
    latest = tmp_path / "run" / "checkpoints" / "latest.pt"
    latest.parent.mkdir(parents=True)
    _evil(latest, sentinel)
    with pytest.raises(CheckpointError, match=r"latest.pt is a pickled .*train.trust_pickle=true"):
        _trainer(tmp_path / "run").fit()
    assert not sentinel.exists()
    _trainer(tmp_path / "ok").fit()
    good = tmp_path / "ok" / "checkpoints" / "latest.pt"
    good.write_bytes(good.read_bytes()[:-50])
    with pytest.raises(CheckpointError, match=r"training resume state .*latest.pt is truncated"):
        _trainer(tmp_path / "ok").fit()


def test_pretrain_resume_refuses_pickles(tmp_path):
    sentinel = tmp_path / "pwned"
    _evil(tmp_path / STATE_FILE, sentinel)
    model = MaskedAutoencoder(MAEConfig(arch="s2p-nano"))
    frames = np.zeros((4, 64, 64, 3), np.uint8)
    with pytest.raises(CheckpointError, match="train_state.pt is a pickled"):
        train_mae(model, FrameSampler(frames, 2), tmp_path, steps=1, progress=False)
    assert not sentinel.exists()
    ok = tmp_path / "ok"
    train_mae(model, FrameSampler(frames, 2), ok, steps=1, amp=False, progress=False)
    state = ok / STATE_FILE
    state.write_bytes(state.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=r"pre-training resume state .*train_state.pt is truncated"):
        train_mae(model, FrameSampler(frames, 2), ok, steps=1, progress=False)


def test_evaluate_command_refuses_pickles(tmp_path):
    sentinel = tmp_path / "pwned"
    evil = _evil(tmp_path / "policy.pt", sentinel)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-m", "s2_policy.jobs.evaluate", f"checkpoint={evil}",
                          f"hydra.run.dir={tmp_path / 'logs'}"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode != 0
    assert "is a pickled torch.save file" in res.stderr + res.stdout
    assert not sentinel.exists()


def test_encoder_checkpoint_errors_say_what_is_wrong(tmp_path):
    text = tmp_path / "weights.pth"
    text.write_text("model: vit_small\n" * 50)
    with pytest.raises(ValueError, match="weights.pth is not a checkpoint") as e:
        read_state_dict(text)
    assert "trust_checkpoint" not in str(e.value)
    good = tmp_path / "good.pth"
    torch.save({"model": {"w": torch.zeros(4096)}}, good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(ValueError, match="cut.pth is damaged or truncated"):
        read_state_dict(cut)
    sentinel = tmp_path / "pwned"
    torch.save({"model": {"w": _Touch(sentinel)}}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="trust_checkpoint=True"):
        read_state_dict(tmp_path / "evil.pth")
    assert not sentinel.exists()


def test_safetensors_header_starting_like_a_pickle_is_not_a_pickle(tmp_path):
    """A safetensors header length whose low byte is 0x80 (a pickle's first byte) must still load."""
    path = tmp_path / "x.safetensors"
    header = b'{"__metadata__":{"k":"' + b"v" * 200 + b'"}}'
    header += b" " * (0x280 - len(header))          # header length 0x280: starts b"\x80\x02", like pickle 2
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    assert path.read_bytes()[:2] == b"\x80\x02" and not is_pickle(path)
    pickled = tmp_path / "p.pt"
    pickled.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    assert is_pickle(pickled)
