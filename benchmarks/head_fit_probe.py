"""Why a head does not fit: train small readouts of the same cached features for a few hundred steps and print
the per-dimension action error on the training and validation windows.

Usage: ``python benchmarks/head_fit_probe.py CHECKPOINT [--steps 300] [--variants flat shared_q0.02 ...]``

``CHECKPOINT`` is any trained policy of the task (it gives the store, the encoder, the split and the
normaliser; its head is not used). Every variant reads the same input as the transformer head's readout token
(LayerNorm-ed tokens -> 16 channels each -> flattened -> ``d``) plus the state, then a 3-layer GELU MLP of
width 512, trained with L2 (``--loss``), AdamW 1e-3, 100 warm-up steps and a cosine decay, batch 128:

- ``flat``: one vector ``[view, state]`` -> the whole chunk (the MLP head's shape);
- ``shared_qS``: one learned query per chunk step (init std ``S``) added to the vector, one network shared by
  every step, one action per query (ACT's per-query action layer);
- ``joint_qS``: the same queries and network, then one linear map from all of them to the whole chunk (the
  transformer head's action layer since round seven).

Round seven found the transformer head's x/y error stuck at the targets' variance; this probe isolates the
action layer and the query scale from attention (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from machine import cpu_model
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from envs.spec import TaskSpec  # noqa: E402  (after sys.path)
from s2_policy.data.feature_cache import ensure_feature_cache  # noqa: E402  (after sys.path)
from s2_policy.data.sequence import SequenceDataset  # noqa: E402  (after sys.path)
from s2_policy.encoders import build_encoder_from_identity  # noqa: E402  (after sys.path)
from s2_policy.policies.policy import Policy  # noqa: E402  (after sys.path)
from s2_policy.training.trainer import prepare_batch, tensorize_dataset  # noqa: E402  (after sys.path)


def windows(policy: Policy, val_ratio: float, split_seed: int) -> tuple[dict, dict]:
    """The checkpoint's training and validation windows (its store, split and feature cache)."""
    task = TaskSpec.from_config(policy.meta["task"])
    encoder = build_encoder_from_identity(policy.encoder_identity)
    keys = [task.store_key(c) for c in task.camera_names]
    cache = ensure_feature_cache(policy.meta["store"], encoder, keys, progress=False)
    cfg = policy.config
    ds = SequenceDataset(policy.meta["store"], cameras={c: task.store_key(c) for c in task.camera_names},
                         state_key=task.demos.state_key, action_key=task.demos.action_key,
                         horizon=cfg.horizon, n_obs_steps=cfg.n_obs_steps, n_action_steps=cfg.n_action_steps,
                         split="train", val_ratio=val_ratio, seed=split_seed, features=cache,
                         n_episodes=task.demos.n_episodes)
    return (tensorize_dataset(ds, policy.cameras, progress=False),
            tensorize_dataset(ds.get_validation_dataset(), policy.cameras, progress=False))


class Probe(nn.Module):
    """Readout of the whole token view + state -> chunk, with one of the three action layers above."""

    def __init__(self, variant: str, feature_shape: tuple[int, ...], n_cameras: int, state_dim: int,
                 action_dim: int, horizon: int, n_obs_steps: int) -> None:
        super().__init__()
        self.kind, _, std = variant.partition("_q")
        if self.kind not in ("flat", "shared", "joint"):
            raise SystemExit(f"unknown variant {variant!r}: flat | shared_q<std> | joint_q<std>")
        self.horizon, self.action_dim = horizon, action_dim
        n_tok = feature_shape[0] if len(feature_shape) == 2 else 1
        self.norm = nn.LayerNorm(feature_shape[-1], elementwise_affine=False)
        self.token_proj = nn.Linear(feature_shape[-1], 16)
        self.view_proj = nn.Linear(n_obs_steps * n_cameras * n_tok * 16, 256)
        width = 256 + n_obs_steps * state_dim
        out = horizon * action_dim if self.kind == "flat" else action_dim if self.kind == "shared" else 32
        self.net = nn.Sequential(nn.Linear(width, 512), nn.GELU(), nn.Linear(512, 512), nn.GELU(),
                                 nn.Linear(512, 512), nn.GELU(), nn.Linear(512, out))
        if self.kind != "flat":
            self.queries = nn.Parameter(torch.randn(horizon, width) * float(std))
        if self.kind == "joint":
            self.chunk = nn.Linear(horizon * 32, horizon * action_dim)

    def forward(self, feats: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        b = feats.shape[0]
        if feats.ndim == 4:
            feats = feats.unsqueeze(3)
        x = torch.cat([self.view_proj(self.token_proj(self.norm(feats)).flatten(1)), state.flatten(1)], 1)
        if self.kind == "flat":
            return self.net(x).view(b, self.horizon, self.action_dim)
        y = self.net(x[:, None] + self.queries)
        return y if self.kind == "shared" else self.chunk(y.flatten(1)).view(b, self.horizon, self.action_dim)


def errors(policy: Policy, model: nn.Module, data: dict, n: int = 600) -> torch.Tensor:
    """Per-dimension MSE of the executed actions (normalised units) on up to ``n`` evenly spaced windows."""
    idx = torch.linspace(0, len(data["action"]) - 1, min(n, len(data["action"]))).long()
    feats, state, action = prepare_batch(policy, data, idx)
    s = policy.n_obs_steps - 1
    with torch.no_grad():
        pred = model(feats, state)
    return ((pred[:, s:s + policy.n_action_steps] - action[:, s:s + policy.n_action_steps]) ** 2).mean((0, 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--variants", nargs="+",
                    default=["flat", "shared_q0.02", "shared_q1", "joint_q0.02", "joint_q1"])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--loss", choices=["l2", "l1"], default="l2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--val-ratio", type=float, default=0.1)
    ap.add_argument("--split-seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    policy = Policy.load(args.checkpoint, load_encoder=False)
    train, val = windows(policy, args.val_ratio, args.split_seed)
    print(f"CPU: {cpu_model()}, {args.threads} thread(s); {len(train['action'])} training and "
          f"{len(val['action'])} validation windows; {args.steps} steps, {args.loss}\n")
    print("| variant | train mse per action dim | validation mse per action dim |\n| --- | --- | --- |")
    loss_fn = F.mse_loss if args.loss == "l2" else F.l1_loss
    for variant in args.variants:
        torch.manual_seed(0)
        model = Probe(variant, policy.feature_shape, len(policy.cameras), policy.state_dim, policy.action_dim,
                      policy.horizon, policy.n_obs_steps)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-6)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda i: min(1.0, (i + 1) / 100) * 0.5 * (1 + math.cos(math.pi * i / args.steps)))
        g = torch.Generator().manual_seed(0)
        for _ in range(args.steps):
            feats, state, action = prepare_batch(policy, train,
                                                 torch.randint(0, len(train["action"]), (128,), generator=g))
            loss = loss_fn(model(feats, state), action)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
        fmt = lambda e: " ".join(f"{v:.4f}" for v in e.tolist())  # noqa: E731
        print(f"| {variant} | {fmt(errors(policy, model, train))} | {fmt(errors(policy, model, val))} |",
              flush=True)


if __name__ == "__main__":
    main()
