"""Do S2's features locate MetaWorld's small parts better? A linear probe of object and goal positions.

Usage (metaworld extra): ``python benchmarks/probe_metaworld.py [--tasks push hand-insert ...]
[--encoders s2p-tiny s2p-tiny-mw] [--episodes 60] [--cache outputs/probe_metaworld]``

For each task, frames come from the task's own camera exactly as a policy sees it (``configs/task/metaworld/
<task>.yaml``: corner4, 128 px, flipped upright), along episodes on seeds no demonstration, selection or test
episode uses (seed block 300000+), driven by the scripted expert with Gaussian execution noise (so the object
also sits off the demonstrated path). Targets are the object's and the goal's positions (MetaWorld's
privileged observation: ``obs[4:7]`` and ``obs[36:39]``). Features are the frozen encoder's, built as the
policy builds it (``pooling: tokens``: the 8 x 8 grid plus CLS, flattened), at one scale [64] and with S2
[64, 128], with s2wrapper's plain bicubic scales and with antialiased ones (``scale_antialias``); for each S2
read also its base-scale channels alone, which should locate as well as the single-scale encoder does. A
ridge regression (alpha picked on a validation split; splits by episode, 60/20/20) maps features to each
position; the table gives the mean Euclidean error on the test split in millimetres and, for scale,
the error of predicting the training mean. Rendered frames are cached per task (``--cache``), so a rerun
only encodes.

Why: S2's premise is that finer tiles resolve small parts that the base scale blurs. Where S2 does not lower
this error, the encoder gives the policy no finer localisation to use; where it does and the policy still
does not gain, the head (or the data) is what fails to use it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bench_metaworld import load
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from probe_position import ridge_predict
from tqdm import tqdm

os.environ.setdefault("MUJOCO_GL", "egl")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

import s2_policy.jobs.common  # noqa: E402, F401  (registers the hydra schemas the main config names)
from envs.spec import make_env, make_expert  # noqa: E402  (after sys.path; no EGL context yet)
from s2_policy.encoders import EncoderConfig, build_encoder  # noqa: E402
from s2_policy.s2 import TilingPlan  # noqa: E402

TASKS = ["push", "hand-insert", "pick-out-of-hole", "assembly"]  # 128 px; the 256 px settings work too
SEED_BASE = 300_000  # MT1 pools 6000+: disjoint from demo (0), test (2000+) and selection (4000+) pools
S2_CONFIGS = {1: "single", 2: "s2", 3: "s2x3"}  # configs/s2/<name>.yaml by number of scales
TARGETS = {"object": slice(4, 7), "goal": slice(36, 39)}  # MetaWorld's 39-dim observation


def render_frames(task: str, episodes: int, steps: int, every: int, noise: float, cache: Path
                  ) -> dict[str, np.ndarray]:
    """Frames ``(N, H, W, 3)``, privileged observation ``(N, 39)`` and episode index ``(N,)`` (cached)."""
    path = cache / f"{task}-e{episodes}-s{steps}-k{every}-n{noise}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as f:
            return dict(f)
    spec = load(task)
    (camera,) = spec.camera_names
    env = make_env(spec, terminate_on_success=False)
    expert = make_expert(spec, env)
    frames, obs_raw, episode = [], [], []
    try:
        for e in tqdm(range(episodes), desc=f"render {task}"):
            seed = SEED_BASE + e
            obs, _ = env.reset(seed=seed)
            expert.reset(seed)
            rng = np.random.default_rng([seed, 0x9B0E])
            for t in range(steps):
                if t % every == 0:
                    frames.append(obs[camera])
                    obs_raw.append(np.asarray(env.raw_obs["metaworld_obs"], np.float64))
                    episode.append(e)
                action = expert.act(obs) + rng.normal(0.0, noise, env.action_space.shape)
                obs, *_ = env.step(np.clip(action, -1, 1).astype(np.float32))
    finally:
        env.close()
    out = {"frames": np.stack(frames), "obs": np.stack(obs_raw), "episode": np.array(episode)}
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **out)
    tmp.replace(path)  # atomic: a cut-off run leaves no half-written cache
    return out


@torch.no_grad()
def encode(encoder: str, scales: list[int], frames: np.ndarray, fine_grid: bool = False,
           antialias: bool = False, batch: int = 128) -> np.ndarray:
    """The policy's token features ``(N, tokens, channels)``: the encoder composed from ``configs/`` as the
    main job composes it (``encoder=<name> s2=single|s2|s2x3``, ``pooling: tokens``).

    ``fine_grid``: keep the largest scale's token grid (16 x 16 at [64, 128]) instead of area-pooling every
    scale onto the base grid (8 x 8), i.e. ``resize_output_to_idx`` = the last scale in ``s2wrapper`` terms.
    A diagnostic only (no shipped config does this): it tells whether the pooling discards position."""
    s2 = S2_CONFIGS[len(scales)]
    name, _, checkpoint = encoder.partition("=")  # NAME=CHECKPOINT: that config with other weights
    overrides = [f"encoder={name}", f"s2={s2}", f"s2.scale_antialias={str(antialias).lower()}"]
    if checkpoint:
        overrides.append(f"encoder.checkpoint={checkpoint}")
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):  # as the main job does
        cfg = compose(config_name="config", overrides=overrides)
    enc_cfg = EncoderConfig.from_dict({**OmegaConf.to_container(cfg.encoder, resolve=True),
                                       **OmegaConf.to_container(cfg.s2, resolve=True)})
    assert enc_cfg.pooling == "tokens" and enc_cfg.scales == scales, (enc_cfg.pooling, enc_cfg.scales)
    enc = build_encoder(enc_cfg)
    if fine_grid:
        enc.plan = TilingPlan.build(enc.input_size, enc.img_sizes, enc.max_split_size,
                                    resize_output_to_idx=len(enc.img_sizes) - 1, antialias=antialias)
    out = [enc(torch.from_numpy(frames[i:i + batch])).float().numpy() for i in range(0, len(frames), batch)]
    return np.concatenate(out)  # (N, tokens, channels): channels are [scale 1 | scale 2 ...]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=TASKS,
                    help="configs/task/metaworld/<task>.yaml names (128 or 256 px cameras)")
    ap.add_argument("--encoders", nargs="+", default=["s2p-tiny", "s2p-tiny-mw"],
                    help="configs/encoder/<name>.yaml (64 px tiles); NAME=CHECKPOINT probes that config with "
                         "other weights (e.g. s2p-tiny=outputs/pretrain/x/s2p-tiny-mae.pth)")
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--steps", type=int, default=100, help="steps per episode (no early end on success)")
    ap.add_argument("--every", type=int, default=5, help="keep every k-th frame")
    ap.add_argument("--noise", type=float, default=0.3, help="execution noise SD on the expert's actions")
    ap.add_argument("--cache", type=Path, default=REPO / "outputs" / "probe_metaworld",
                    help="where rendered frames are kept between runs")
    ap.add_argument("--fine-grid", action="store_true",
                    help="add an S2 row on the largest scale's token grid (diagnostic; see encode())")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    alphas = tuple(float(a) for a in np.logspace(-1, 5, 13))

    rows = []
    for task in args.tasks:
        t0 = time.perf_counter()
        data = render_frames(task, args.episodes, args.steps, args.every, args.noise, args.cache)
        ep = data["episode"]
        split = np.where(ep % 5 < 3, 0, np.where(ep % 5 == 3, 1, 2))
        te = split == 2
        targets = {name: data["obs"][:, sl] for name, sl in TARGETS.items()}
        base = {name: 1000 * np.linalg.norm(y[te] - y[split == 0].mean(0), axis=1).mean()
                for name, y in targets.items()}
        for encoder in args.encoders:
            # S2 up to the camera's size: [64, 128] at 128 px, [64, 128, 256] at 256 px (s2x3)
            size = data["frames"].shape[1]
            scales = [2 ** i for i in range(int(np.log2(size // 64)) + 1)]
            s2 = f"S2 {[64 * k for k in scales]}"
            arms = [("single [64]", [1], False, False), (s2, scales, False, False),
                    (f"{s2}, antialiased scales", scales, False, True)]
            if args.fine_grid:
                arms.append((f"{s2}, {size // 8} x {size // 8} grid", scales, True, False))
            for label, arm_scales, fine, aa in arms:
                tokens = encode(encoder, arm_scales, data["frames"], fine, aa)
                reads = [(label, tokens)]
                if len(arm_scales) > 1 and not fine:  # the base scale's channels alone: single scale's twin
                    base_channels = tokens[..., : tokens.shape[-1] // len(arm_scales)]
                    reads.append((f"{label}: base-scale channels only", base_channels))
                for name_, feats in reads:
                    x = feats.reshape(len(feats), -1).astype(np.float64)
                    errs = {}
                    for name, y in targets.items():
                        pred, _ = ridge_predict(x, y, split, alphas)
                        errs[name] = 1000 * np.linalg.norm(pred - y[te], axis=1).mean()
                    rows.append((task, encoder, name_, x.shape[1], errs, base))
                    got = ", ".join(f"{k} {v:.1f} mm" for k, v in errs.items())
                    print(f"{task} {encoder} {name_}: {got}", flush=True)
        print(f"{task}: {len(ep)} frames ({te.sum()} test) in {time.perf_counter() - t0:.0f} s", flush=True)

    print("\n| task | encoder | scales | feature dim | object error (mm) | goal error (mm) | "
          "S2 / single, object | S2 / single, goal | mean-prediction error, object / goal (mm) |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for i, (task, encoder, label, dim, errs, base) in enumerate(rows):
        ratio = ["", ""]
        if label.startswith("S2"):
            single = next(r[4] for r in rows[i::-1] if r[:2] == (task, encoder) and r[2].startswith("single"))
            ratio = [f"{errs[k] / single[k]:.2f}" for k in TARGETS]
        print(f"| {task} | {encoder} | {label} | {dim} | {errs['object']:.1f} | {errs['goal']:.1f} | "
              f"{ratio[0]} | {ratio[1]} | {base['object']:.0f} / {base['goal']:.0f} |")


if __name__ == "__main__":
    main()
