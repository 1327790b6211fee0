"""The main job's pipeline (``python train_policy.py``): demos, feature cache, head training, evaluation.

Lives in an importable module (not in ``train_policy.py``) so hydra launchers that pickle the task function
(joblib/loky, submitit) can send it to workers by reference.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import hydra
import torch
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from s2_policy.runtime import configure_cpu

log = logging.getLogger("train_policy")


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def run(cfg: DictConfig) -> dict[str, Any]:
    """The whole pipeline for one configuration; returns the result dict (also written as JSON)."""
    import envs  # noqa: F401  (registers the gymnasium ids, sets MUJOCO_GL)
    from s2_policy.collect import collect_demos
    from s2_policy.data.feature_cache import ensure_feature_cache
    from s2_policy.data.sequence import SequenceDataset
    from s2_policy.encoders import build_encoder
    from s2_policy.evaluation.evaluate import evaluate_policy, format_result, write_json
    from s2_policy.evaluation.profile import encoder_profile, task_image_sizes
    from s2_policy.policies import LinearNormalizer, Policy
    from s2_policy.training.trainer import TrainConfig, Trainer, seed_everything

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    configure_cpu(cfg.num_threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    task = OmegaConf.to_container(cfg.task, resolve=True)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    store_path = Path(hydra.utils.to_absolute_path(task["dataset"]))
    choices = HydraConfig.get().runtime.choices
    label = cfg.label or f"{choices.get('encoder')}/{choices.get('s2')}/{choices.get('policy')}"

    # 1. demonstrations
    t = time.perf_counter()
    if rank == 0:
        # Always through collect_demos: a no-op on a full store, it tops up a short one and refuses a store
        # written by another task version or other settings (instead of silently training on stale demos).
        collect_demos(task, store_path, task["n_demos"], n_workers=cfg.collect.n_workers,
                      seed=cfg.collect.seed, wait_s=cfg.collect.wait_s)
    _barrier()
    timings["collect_s"] = time.perf_counter() - t

    # 2. frozen encoder + feature cache
    t = time.perf_counter()
    enc_cfg = {**OmegaConf.to_container(cfg.encoder, resolve=True),
               **OmegaConf.to_container(cfg.s2, resolve=True)}
    encoder = build_encoder(enc_cfg)
    if rank == 0:
        ensure_feature_cache(store_path, encoder, task["cameras"], batch_size=cfg.cache.batch_size)
    _barrier()
    cache = ensure_feature_cache(store_path, encoder, task["cameras"], batch_size=cfg.cache.batch_size,
                                 progress=False)
    timings["feature_cache_s"] = time.perf_counter() - t

    # 3. data, normaliser, policy
    pc = cfg.policy
    ds = SequenceDataset(store_path, cameras=list(task["cameras"]), state_key=task["state_key"],
                         action_key=task["action_key"], horizon=pc.horizon, n_obs_steps=pc.n_obs_steps,
                         n_action_steps=pc.n_action_steps, split="train", val_ratio=cfg.data.val_ratio,
                         seed=cfg.data.split_seed, max_train_episodes=cfg.data.max_train_episodes,
                         features=cache)
    val = ds.get_validation_dataset()
    low = ds.low_dim_arrays()
    norm = LinearNormalizer().fit({"state": low["state"], "action": low["action"]}, mode=pc.normalizer_mode)
    seed_everything(int(cfg.seed))
    meta = {"task": task, "label": label, "seed": int(cfg.seed), "store": str(store_path),
            "n_train_episodes": len(ds.episodes)}
    feat_shape = tuple(cache.get(task["cameras"][0]).shape[1:])   # (F,) pooled or (N, C) tokens
    policy = Policy(OmegaConf.to_container(pc, resolve=True), feat_shape, list(task["cameras"]),
                    low["state"].shape[-1], low["action"].shape[-1], norm, encoder=encoder,
                    encoder_identity=encoder.identity(), meta=meta)
    ev = cfg.eval

    def rollout_fn(pol: Policy, step: int) -> dict:
        res = evaluate_policy(pol, task, ev.periodic_episodes, ev.n_envs, ev.periodic_seed_start,
                              n_videos=0, progress=False)
        log.info("step %d: %s", step, format_result(res))
        return res

    # 4. train on cached features
    t = time.perf_counter()
    train_cfg = TrainConfig.from_mapping({**OmegaConf.to_container(cfg.train, resolve=True),
                                          "seed": int(cfg.seed), "device": cfg.device})
    trainer = Trainer(policy, ds, val, train_cfg, out_dir, rollout_fn=rollout_fn)
    summary = trainer.fit()
    timings["train_s"] = time.perf_counter() - t
    if rank != 0:
        return {}

    # 5. evaluate the final (EMA) policy with its encoder on live observations
    t = time.perf_counter()
    with trainer.averaged_weights() as pol:
        pol.eval()
        res = evaluate_policy(pol, task, ev.n_episodes, ev.n_envs, ev.seed_start,
                              video_dir=out_dir / "videos" if ev.n_videos else None, n_videos=ev.n_videos)
    timings["eval_s"] = time.perf_counter() - t
    prof = encoder_profile(encoder, task_image_sizes(task)) if ev.profile_encoder else {}
    timings["total_s"] = time.perf_counter() - t_start
    result = {"label": label, "seed": int(cfg.seed), "task": task["name"], "rollout": res, "train": summary,
              "encoder": {"identity": encoder.identity(), "n_tiles_per_image": encoder.plan.n_tiles
                          if hasattr(encoder, "plan") else None, **prof},
              "trainable_params": policy.trainable_parameters(), "policy_config": policy.config,
              "config": OmegaConf.to_container(cfg, resolve=True), "timings": timings,
              "checkpoint": str(out_dir / "policy.pt")}
    path = write_json(result, out_dir / "result.json")
    print(format_result(res))
    print(f"policy: {out_dir / 'policy.pt'}  result: {path}  total {timings['total_s']:.0f} s")
    return result


def main_job(cfg: DictConfig) -> float:
    """Run the pipeline for one configuration and tear down DDP; returns the success rate (for sweepers)."""
    res = run(cfg)
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    return float(res["rollout"]["success_rate"]) if res else 0.0
