"""Trainer: learning, checkpoints, rollouts/best, exact resume after SIGKILL, DDP (torchrun, gloo)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from s2_policy.policies import Policy
from s2_policy.policies.policy import CHECKPOINT_FORMAT
from s2_policy.serialization import load_tree
from s2_policy.training.trainer import RESUME_FORMAT, TrainConfig, Trainer

REPO = Path(__file__).resolve().parents[1]

# Synthetic cached-feature windows whose actions depend on the features: shared with the subprocess script.
SYNTH = '''
import numpy as np, torch
from s2_policy.policies import LinearNormalizer, Policy

def synth(n=96, f=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    front, wrist = torch.randn(n, 2, f, generator=g), torch.randn(n, 2, f, generator=g)
    state = torch.randn(n, 2, 3, generator=g)
    w = torch.randn(f, 3, generator=torch.Generator().manual_seed(99))
    base = torch.tanh(front[:, -1] @ w)
    action = base[:, None, :].repeat(1, 8, 1) + 0.05 * torch.arange(8.0)[None, :, None]
    return {"front": front, "wrist": wrist, "state": state, "action": action}

def make_policy(data, head):
    norm = LinearNormalizer().fit({"state": data["state"].reshape(-1, 3).numpy(),
                                   "action": data["action"].reshape(-1, 3).numpy()})
    cfg = {"head": head, "horizon": 8, "n_obs_steps": 2, "n_action_steps": 4, "obs_proj_dim": 32,
           "mlp": {"hidden_dim": 64, "n_layers": 2},
           "diffusion": {"down_dims": [16], "step_embed_dim": 16, "num_inference_steps": 4}}
    return Policy(cfg, data["front"].shape[-1], ["front", "wrist"], 3, 3, norm)
'''
exec(SYNTH)
synth, make_policy = synth, make_policy  # noqa: F821 (defined by exec(SYNTH); named here for linters)

SCRIPT = SYNTH + '''
import os, sys, time, torch
import torch.distributed as dist
from s2_policy.training.trainer import TrainConfig, Trainer

def run(out, head, steps, sleep):
    torch.set_num_threads(1)
    torch.manual_seed(0)   # the head's initial weights
    data = synth()
    pol = make_policy(data, head)
    init = {k: v.clone() for k, v in pol.core.state_dict().items()}
    def rollout(p, step):
        time.sleep(sleep)
        return {"success_rate": (step % 7) / 7}
    cfg = TrainConfig(steps=steps, batch_size=16, lr=1e-3, warmup_steps=5, log_every=5, val_every=20,
                      rollout_every=3, ckpt_every=5, progress=False, seed=3)
    return pol, init, Trainer(pol, data, synth(n=32, seed=1), cfg, out, rollout_fn=rollout).fit()

if __name__ == "__main__":
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group("gloo")
    pol, init, res = run(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    if dist.is_initialized():
        torch.save(pol.core.state_dict(), f"{sys.argv[1]}/rank{dist.get_rank()}.pt")
        torch.save(init, f"{sys.argv[1]}/init{dist.get_rank()}.pt")
        dist.destroy_process_group()
    print("STEPS_RUN", res["steps_run"])
'''


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("head", ["mlp", "diffusion"])
def test_trainer_learns_and_writes_outputs(tmp_path, head):
    data = synth()
    pol = make_policy(data, head)
    calls = []

    def rollout(p, step):
        calls.append(step)
        return {"success_rate": 0.5 if step == 20 else 0.25}

    steps = 60 if head == "mlp" else 30
    cfg = TrainConfig(steps=steps, batch_size=32, lr=3e-3, warmup_steps=5, log_every=10, val_every=20,
                      rollout_every=20, ckpt_every=25, progress=False)
    tr = Trainer(pol, data, synth(n=32, seed=1), cfg, tmp_path, rollout_fn=rollout)
    first = tr.validation_loss()
    res = tr.fit()
    assert res["steps"] == steps and res["steps_run"] == steps
    assert res["passes"] == pytest.approx(steps * 32 / len(data["action"]))  # how often each window was seen
    assert res["final_val_loss"] < first
    assert calls == list(range(20, steps + 1, 20))
    assert res["best_success"] == 0.5
    for f in ("checkpoints/latest.pt", "checkpoints/best.pt", "policy.pt"):
        assert (tmp_path / f).is_file(), f
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    best = Policy.load(tmp_path / "checkpoints" / "best.pt", load_encoder=False)
    assert best.meta["train_step"] == 20 and best.meta["rollout"]["success_rate"] == 0.5
    assert (tr.ema is not None) == (head == "diffusion")
    final = Policy.load(tmp_path / "policy.pt", load_encoder=False)
    obs = {k: data[k][:4] for k in ("front", "wrist", "state")}
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    with tr.averaged_weights() as p:
        want = p.predict_action(obs, generator=g())
    torch.testing.assert_close(final.predict_action(obs, generator=g()), want)


def test_trainer_mlp_fits_training_data(tmp_path):
    data = synth()
    pol = make_policy(data, "mlp")
    cfg = TrainConfig(steps=300, batch_size=32, lr=3e-3, warmup_steps=10, val_every=0, ckpt_every=1000,
                      progress=False)
    Trainer(pol, data, None, cfg, tmp_path).fit()
    pred = pol.predict_action({k: data[k] for k in ("front", "wrist", "state")})
    assert (pred - data["action"][:, 1:5]).abs().mean() < 0.1


def test_train_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown train config keys"):
        TrainConfig.from_mapping({"stpes": 3})
    assert TrainConfig.from_mapping({"betas": [0.9, 0.95]}).betas == (0.9, 0.95)


def test_trainer_rejects_image_windows(tmp_path):
    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            img = np.zeros((2, 8, 8, 3), np.uint8)
            return {"obs": {"front": img, "wrist": img, "state": np.zeros((2, 3), np.float32)},
                    "action": np.zeros((8, 3), np.float32)}

    pol = make_policy(synth(), "mlp")
    with pytest.raises(ValueError, match="cached features"):
        Trainer(pol, Images(), None, TrainConfig(progress=False), tmp_path)


@pytest.mark.slow
def test_resume_after_sigkill_is_exact(tmp_path):
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT)
    steps = "20"
    ns: dict = {}
    exec(SCRIPT, ns)                        # the uninterrupted reference run, in this process
    ns["run"](str(tmp_path / "ref"), "diffusion", int(steps), 0.0)
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(run), "diffusion", steps, "0.15"], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    latest = run / "checkpoints" / "latest.pt"
    deadline = time.time() + 240
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (run / "policy.pt").exists()
    killed_at = load_tree(latest, RESUME_FORMAT)["step"]
    assert 0 < killed_at < int(steps)
    res = subprocess.run([sys.executable, str(script), str(run), "diffusion", steps, "0"],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"STEPS_RUN {int(steps) - killed_at}" in res.stdout
    a = load_tree(tmp_path / "ref" / "policy.pt", CHECKPOINT_FORMAT)
    b = load_tree(run / "policy.pt", CHECKPOINT_FORMAT)
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    la = load_tree(tmp_path / "ref" / "checkpoints" / "latest.pt", RESUME_FORMAT)
    lb = load_tree(latest, RESUME_FORMAT)
    assert la["best_success"] == lb["best_success"]
    assert [h.get("loss") for h in la["history"]] == [h.get("loss") for h in lb["history"]]


@pytest.mark.slow
def test_ddp_two_processes_gloo(tmp_path):
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT)
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(out), "mlp", "12", "0"]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (out / "policy.pt").is_file()
    r0, r1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    for k in r0:
        torch.testing.assert_close(r0[k], r1[k])    # DDP keeps the replicas identical
    init = torch.load(out / "init0.pt")             # the weights this very run started from
    assert [k for k in init if torch.equal(init[k], r0[k])] == []   # training moved every parameter
