"""Policy benchmarks: training steps/s on cached features and inference latency, per head, side by side.

    python benchmarks/bench_policy.py [--threads 1] [--steps 30] [--repeats 15]

Training: ``Trainer``-equivalent steps (forward, backward, clip, AdamW, EMA for diffusion) on synthetic
cached features shaped like the main job (2 cameras, F = 384 = s2p-tiny dim 192 x 2 scales, 2 obs steps,
horizon 16, batch 256). Inference: one policy call (batch 1) from features (head only) and from images
(s2p-tiny encoder, single scale and S2 [1, 2], 2 cameras x 2 obs steps of 128 px). Prints markdown tables
of medians; timings interleave the configurations round-robin so machine noise hits all of them alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from diffusers.training_utils import EMAModel

from s2_policy.policies import LinearNormalizer, Policy

CAMS = ["front", "wrist"]


def make_policy(head: str, feat: int, encoder=None) -> Policy:
    rng = np.random.default_rng(0)
    norm = LinearNormalizer().fit({"state": rng.normal(size=(500, 4)),
                                   "action": rng.uniform(-1, 1, (500, 4))})
    cfg = {"head": head, "horizon": 16, "n_obs_steps": 2, "n_action_steps": 8}
    return Policy(cfg, feat, CAMS, 4, 4, norm, encoder=encoder)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=30, help="timed training steps per head and round")
    ap.add_argument("--repeats", type=int, default=15, help="timed inference calls per configuration")
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    feat, b = 384, args.batch
    batch = {"obs": {c: torch.randn(b, 2, feat) for c in CAMS} | {"state": torch.randn(b, 2, 4)},
             "action": torch.rand(b, 16, 4) * 2 - 1}

    # -- training steps/s --------------------------------------------------------------------------------
    trainers = {}
    for head in ("mlp", "diffusion"):
        p = make_policy(head, feat)
        params = list(p.core.parameters())
        opt = torch.optim.AdamW(params, lr=1e-4)
        ema = EMAModel(params, power=0.75) if head == "diffusion" else None
        trainers[head] = (p, params, opt, ema)

    def train_steps(head: str, n: int) -> float:
        p, params, opt, ema = trainers[head]
        t = time.perf_counter()
        for _ in range(n):
            loss = p.compute_loss(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            if ema is not None:
                ema.step(params)
        return n / (time.perf_counter() - t)

    rates: dict[str, list[float]] = {h: [] for h in trainers}
    for h in trainers:
        train_steps(h, 3)
    for _ in range(3):
        for h in trainers:
            rates[h].append(train_steps(h, args.steps))
    print(f"## Training on cached features (batch {b}, {args.threads} thread(s))\n")
    print("| head | trainable params | steps/s (median of 3) | ms/step |")
    print("|---|---|---|---|")
    for h, r in rates.items():
        m = statistics.median(r)
        print(f"| {h} | {trainers[h][0].trainable_parameters():,} | {m:.1f} | {1000 / m:.1f} |")

    # -- inference latency ----------------------------------------------------------------------------------
    from s2_policy.encoders import build_encoder

    encs = {"single": build_encoder({"backbone": "s2p-tiny", "scales": [1]}),
            "s2": build_encoder({"backbone": "s2p-tiny", "scales": [1, 2]})}
    configs = {}
    for head in ("mlp", "diffusion"):
        p = trainers[head][0]
        p.eval()
        feats = torch.randn(1, 2, 2, feat)
        state = torch.zeros(1, 2, 4)
        configs[f"{head} head only (features)"] = lambda p=p, f=feats, s=state: p.predict_from_features(f, s)
        for name, enc in encs.items():
            q = make_policy(head, enc.out_dim, encoder=enc)
            q.eval()
            obs = {c: np.random.randint(0, 256, (1, 2, 128, 128, 3), np.uint8) for c in CAMS}
            obs["state"] = np.zeros((1, 2, 4), np.float32)
            configs[f"{head} + s2p-tiny {name} (images)"] = lambda q=q, o=obs: q.predict_action(o)
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
