"""Policy benchmarks: training steps/s on cached features and inference latency, per head, side by side.

    python benchmarks/bench_policy.py [--threads 1] [--steps 30] [--repeats 15]
        [--variant NAME=HEAD[,KEY=VALUE...] ...]

Heads are built from the shipped ``configs/policy/{mlp,diffusion,transformer}.yaml`` with the batch sizes of
``configs/train/{default,diffusion}.yaml`` (the transformer trains with ``default``). Training:
``Trainer``-equivalent steps (forward, backward, clip, AdamW, EMA for diffusion) on synthetic cached features
shaped like the main job (2 cameras, S2 tokens (65, 384) = 8x8 grid + CLS of s2p-tiny dim 192 x 2 scales,
each head's n_obs_steps). Inference: one policy call (batch 1) from features (head only) and from images
(s2p-tiny, single scale and S2 [1, 2], token pooling, 2 cameras x n_obs_steps of 128 px). Prints markdown
tables of medians; timings interleave the configurations round-robin so machine noise hits all of them alike.
``--variant`` adds a head with overridden config fields beside the shipped three (e.g. a default's old value,
``--variant diffusion_proj256=diffusion,obs_proj_dim=256``), to measure a default change before and after.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from diffusers.training_utils import EMAModel
from omegaconf import OmegaConf

from s2_policy.policies import LinearNormalizer, Policy
from s2_policy.training.trainer import prepare_batch

CAMS = ["front", "wrist"]
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TRAIN_CFG = {"mlp": "default", "diffusion": "diffusion", "transformer": "default"}
HEADS = tuple(TRAIN_CFG)


def policy_config(head: str, overrides: tuple[str, ...] = ()) -> dict:
    """The shipped ``configs/policy/<head>.yaml`` with ``KEY=VALUE`` overrides (OmegaConf dotlist)."""
    cfg = OmegaConf.load(CONFIGS / "policy" / f"{head}.yaml")
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    cfg = OmegaConf.to_container(cfg)
    cfg.pop("defaults", None)
    return cfg


def parse_variant(spec: str) -> tuple[str, str, tuple[str, ...]]:
    """``NAME=HEAD[,KEY=VALUE...]`` -> (name, head, overrides)."""
    name, _, rest = spec.partition("=")
    head, *overrides = rest.split(",")
    if not name or head not in HEADS or any("=" not in o for o in overrides):
        raise SystemExit(f"--variant {spec!r}: use NAME=HEAD[,KEY=VALUE...] with HEAD one of "
                         f"{', '.join(HEADS)}, e.g. diffusion_proj256=diffusion,obs_proj_dim=256")
    return name, head, tuple(overrides)


def train_batch_size(head: str) -> int:
    return int(OmegaConf.load(CONFIGS / "train" / f"{TRAIN_CFG[head]}.yaml").batch_size)


def make_policy(head: str, feat: tuple[int, ...], encoder=None, overrides: tuple[str, ...] = ()) -> Policy:
    rng = np.random.default_rng(0)
    norm = LinearNormalizer().fit({"state": rng.normal(size=(500, 4)),
                                   "action": rng.uniform(-1, 1, (500, 4))})
    return Policy(policy_config(head, overrides), feat, CAMS, 4, 4, norm, encoder=encoder)


@torch.no_grad()
def sample_reprojecting(p: Policy, feats: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """The diffusion head's DDIM loop as it ran before the FiLM condition was computed once per query: the
    U-Net gets the raw condition and re-projects it at every step (same result, the reference cost)."""
    head = p.core.head
    cond = p.core.condition(feats, p.normalizer.normalize("state", state))
    x = torch.randn(cond.shape[0], head.horizon, head.action_dim)
    sched = head.infer_scheduler
    sched.set_timesteps(head.num_inference_steps)
    for t in sched.timesteps:
        x = sched.step(head.model(x, t, cond), t, x, eta=0.0).prev_sample
    return x


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=30, help="timed training steps per head and round")
    ap.add_argument("--repeats", type=int, default=15, help="timed inference calls per configuration")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=HEAD[,KEY=VALUE...]",
                    help="another head configuration beside the shipped ones, e.g. "
                         "diffusion_proj256=diffusion,obs_proj_dim=256 (repeatable)")
    args = ap.parse_args()
    variants = [(h, h, ()) for h in HEADS] + [parse_variant(v) for v in args.variant]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    feat = (65, 384)

    def make_batch(b: int) -> dict:
        return {c: torch.randn(b, 2, *feat) for c in CAMS} | {"state": torch.randn(b, 2, 4),
                                                              "action": torch.rand(b, 16, 4) * 2 - 1}

    # -- training steps/s --------------------------------------------------------------------------------
    # "fused" is what the Trainer runs (fused AdamW, foreach EMA); "loop" is torch's CPU default (a Python
    # loop over the parameter tensors), kept here as the before/after reference.
    trainers = {}
    for name, head, overrides in variants:
        for variant in ("loop", "fused"):
            p = make_policy(head, feat, overrides=overrides)
            params = list(p.core.parameters())
            opt = torch.optim.AdamW(params, lr=1e-4, fused=variant == "fused")
            ema = EMAModel(params, power=0.75, foreach=variant == "fused") if head == "diffusion" else None
            trainers[name, variant] = (p, params, opt, ema, make_batch(train_batch_size(head)))

    def train_steps(key: tuple[str, str], n: int) -> float:
        p, params, opt, ema, batch = trainers[key]
        t = time.perf_counter()
        for _ in range(n):
            loss = p.core(*prepare_batch(p, batch, torch.arange(len(batch["action"]))))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            if ema is not None:
                ema.step(params)
        return n / (time.perf_counter() - t)

    rates: dict[tuple[str, str], list[float]] = {k: [] for k in trainers}
    for k in trainers:
        train_steps(k, 3)
    for _ in range(3):
        for k in trainers:
            rates[k].append(train_steps(k, args.steps))
    print(f"## Training on cached token features ({args.threads} thread(s))\n")
    print("| head | optimizer | batch | trainable params | steps/s (median of 3) | ms/step |")
    print("|---|---|---|---|---|---|")
    heads = {name: head for name, head, _ in variants}
    for (h, v), r in rates.items():
        m = statistics.median(r)
        n_params = trainers[h, v][0].trainable_parameters()
        print(f"| {h} | AdamW {v} | {train_batch_size(heads[h])} | {n_params:,} | {m:.1f} | {1000 / m:.1f} |")

    # -- inference latency ----------------------------------------------------------------------------------
    from s2_policy.encoders import build_encoder

    encs = {"single": build_encoder({"backbone": "s2p-tiny", "scales": [1], "pooling": "tokens"}),
            "s2": build_encoder({"backbone": "s2p-tiny", "scales": [1, 2], "pooling": "tokens"})}
    configs = {}
    for name, head, overrides in variants:
        p = trainers[name, "fused"][0]
        p.eval()
        to = p.n_obs_steps
        feats = torch.randn(1, to, 2, *feat)
        state = torch.zeros(1, to, 4)
        configs[f"{name} head only (features)"] = lambda p=p, f=feats, s=state: p.predict_from_features(f, s)
        if head == "diffusion":
            configs[f"{name} head only, FiLM condition re-projected every step (before)"] = \
                lambda p=p, f=feats, s=state: sample_reprojecting(p, f, s)
        for enc_name, enc in encs.items():
            q = make_policy(head, (65, enc.out_dim), encoder=enc, overrides=overrides)
            q.eval()
            obs = {c: np.random.randint(0, 256, (1, to, 128, 128, 3), np.uint8) for c in CAMS}
            obs["state"] = np.zeros((1, to, 4), np.float32)
            configs[f"{name} + s2p-tiny {enc_name} (images)"] = lambda q=q, o=obs: q.predict_action(o)
    times: dict[str, list[float]] = {k: [] for k in configs}
    for fn in configs.values():
        fn()
    for _ in range(args.repeats):
        for k, fn in configs.items():
            t = time.perf_counter()
            fn()
            times[k].append(1000 * (time.perf_counter() - t))
    print(f"\n## Policy inference, batch 1, one call = 8 actions ({args.threads} thread(s))\n")
    print("| configuration | median ms/call | p90 ms/call |")
    print("|---|---|---|")
    for k, v in times.items():
        print(f"| {k} | {statistics.median(v):.1f} | {np.percentile(v, 90):.1f} |")


if __name__ == "__main__":
    main()
