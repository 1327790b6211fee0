"""The main job (``python train_policy.py``): demos, feature cache, head training, evaluation, report.

Lives in an importable module (not in ``train_policy.py``) so hydra launchers that pickle the task function
(joblib/loky, submitit) can send it to workers by reference.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from envs.spec import TaskSpec
from s2_policy.collect import collect_demos
from s2_policy.data.augment import AugmentConfig
from s2_policy.data.feature_cache import ensure_feature_cache
from s2_policy.data.sequence import SequenceDataset
from s2_policy.data.store import ReplayStore
from s2_policy.encoders import EncoderConfig, build_encoder
from s2_policy.evaluation.evaluate import evaluate_policy, format_result, write_json
from s2_policy.evaluation.profile import encoder_profile
from s2_policy.evaluation.seeds import eval_seeds
from s2_policy.jobs.common import task_spec, user_errors
from s2_policy.policies import LinearNormalizer, Policy
from s2_policy.policies.config import PolicyConfig
from s2_policy.runtime import configure_cpu
from s2_policy.training.trainer import TrainConfig, Trainer, seed_everything

log = logging.getLogger("train_policy")


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def check_demo_store(task: TaskSpec) -> ReplayStore:
    """Open an existing demonstration store read-only and check it has what the task reads."""
    path = Path(task.demos.path)
    if not path.exists():
        raise FileNotFoundError(f"task {task.name!r}: demonstration store {path} does not exist; set "
                                "task.demos.path, or demos.source: expert to collect it")
    store = ReplayStore.open(path, mode="r")
    keys = [task.store_key(c) for c in task.camera_names] + [task.demos.state_key, task.demos.action_key]
    missing = [k for k in keys if k not in store]
    if missing:
        raise ValueError(f"task {task.name!r}: store {path} has no data/{missing[0]} (it has "
                         f"{store.keys()}); "
                         "map the task to its keys with cameras.<name>.store_key, demos.state_key and "
                         "demos.action_key")
    want = task.demos.n_episodes
    if want is not None and store.n_episodes < want:
        raise ValueError(f"task {task.name!r}: store {path} holds {store.n_episodes} episodes, "
                         "demos.n_episodes "
                         f"asks for {want}; lower it (or null for all)")
    return store


def _eval_enabled(cfg: DictConfig, task: TaskSpec) -> bool:
    enabled = cfg.eval.enabled
    if enabled is None:
        return task.has_env
    if enabled and not task.has_env:
        raise ValueError(f"eval.enabled=true but task {task.name!r} has no simulator (env: null); set "
                         "eval.enabled=false")
    return bool(enabled)


def run(cfg: DictConfig) -> dict[str, Any]:
    """The whole pipeline for one configuration; returns the result dict (also written as JSON)."""
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    configure_cpu(cfg.num_threads)

    # 0. validate everything before any long step
    task = task_spec(cfg)
    policy_cfg = PolicyConfig.from_dict(cfg.policy)
    enc_cfg = EncoderConfig.from_dict({**OmegaConf.to_container(cfg.encoder, resolve=True),
                                       **OmegaConf.to_container(cfg.s2, resolve=True)}, device=cfg.device)
    train_cfg = TrainConfig.from_mapping({**OmegaConf.to_container(cfg.train, resolve=True),
                                          "seed": int(cfg.seed), "device": cfg.device})
    augment = AugmentConfig.from_dict(OmegaConf.to_container(cfg.data.augment, resolve=True))
    ev = cfg.eval
    do_eval = _eval_enabled(cfg, task)
    periodic = do_eval and train_cfg.rollout_every > 0
    store_path = Path(task.demos.path)
    if do_eval:
        eval_seeds(task, "test", ev.n_episodes, store_path)
    if periodic:
        eval_seeds(task, "selection", ev.periodic_episodes, store_path)
    encoder = build_encoder(enc_cfg)
    if task.demos.source == "store":
        check_demo_store(task)

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    choices = HydraConfig.get().runtime.choices
    label = cfg.label or f"{choices.get('encoder')}/{choices.get('s2')}/{choices.get('policy')}"

    # 1. demonstrations
    t = time.perf_counter()
    if rank == 0 and task.demos.source == "expert":
        # Always through collect_demos: a no-op on a full store, it tops up a short one and refuses a store
        # written by another task version or other settings (instead of silently training on stale demos).
        collect_demos(task, store_path, task.demos.n_episodes, n_workers=cfg.collect.n_workers,
                      wait_s=cfg.collect.wait_s)
    _barrier()
    timings["collect_s"] = time.perf_counter() - t

    # 2. frozen encoder + feature cache (over the store's camera arrays; with DDP every rank encodes a shard)
    t = time.perf_counter()
    store_keys = [task.store_key(c) for c in task.camera_names]
    world = dist.get_world_size() if dist.is_initialized() else 1
    cache = ensure_feature_cache(store_path, encoder, store_keys, batch_size=cfg.cache.batch_size,
                                 cache_dir=cfg.cache.dir, rank=rank, world=world)
    copies = [ensure_feature_cache(store_path, encoder, store_keys, batch_size=cfg.cache.batch_size,
                                   cache_dir=cfg.cache.dir, rank=rank, world=world, augment=shift)
              for shift in augment.shifts()]
    timings["feature_cache_s"] = time.perf_counter() - t

    # 3. data, normaliser, policy
    ds = SequenceDataset(store_path, cameras={c: task.store_key(c) for c in task.camera_names},
                         state_key=task.demos.state_key, action_key=task.demos.action_key,
                         horizon=policy_cfg.horizon, n_obs_steps=policy_cfg.n_obs_steps,
                         n_action_steps=policy_cfg.n_action_steps, split="train",
                         val_ratio=cfg.data.val_ratio,
                         seed=cfg.data.split_seed, max_train_episodes=cfg.data.max_train_episodes,
                         features=cache, n_episodes=task.demos.n_episodes, augmented_features=copies)
    val = ds.get_validation_dataset()
    low = ds.low_dim_arrays()
    norm = LinearNormalizer().fit({"state": low["state"], "action": low["action"]},
                                  mode=policy_cfg.normalizer_mode)
    seed_everything(int(cfg.seed))
    meta = {"task": task.to_dict(), "label": label, "seed": int(cfg.seed), "store": str(store_path),
            "n_train_episodes": len(ds.episodes)}
    feat_shape = tuple(cache.get(store_keys[0]).shape[1:])   # (F,) pooled or (N, C) tokens
    policy = Policy(policy_cfg, feat_shape, task.camera_names, low["state"].shape[-1],
                    low["action"].shape[-1], norm, encoder=encoder, encoder_identity=encoder.identity(),
                    meta=meta)

    def rollout_fn(pol: Policy, step: int) -> dict:
        res = evaluate_policy(pol, task, ev.periodic_episodes, ev.n_envs, role="selection", n_videos=0,
                              progress=False)
        log.info("step %d: %s", step, format_result(res))
        return res

    # 4. train on cached features
    t = time.perf_counter()
    trainer = Trainer(policy, ds, val, train_cfg, out_dir, rollout_fn=rollout_fn if periodic else None)
    summary = trainer.fit()
    timings["train_s"] = time.perf_counter() - t
    if rank != 0:
        return {}

    # 5. evaluate the final (EMA) policy with its encoder on live observations, on the test seeds
    res: dict[str, Any] | None = None
    if do_eval:
        t = time.perf_counter()
        with trainer.averaged_weights() as pol:
            pol.eval()
            res = evaluate_policy(pol, task, ev.n_episodes, ev.n_envs, role="test",
                                  video_dir=out_dir / "videos" if ev.n_videos else None, n_videos=ev.n_videos)
        timings["eval_s"] = time.perf_counter() - t
    store = ReplayStore.open(store_path, mode="r", validate=False)
    sizes = {c: tuple(store[task.store_key(c)].shape[1:3]) for c in task.camera_names}
    prof = encoder_profile(encoder, sizes) if ev.profile_encoder else {}
    timings["total_s"] = time.perf_counter() - t_start
    result = {"label": label, "seed": int(cfg.seed), "task": task.name, "rollout": res, "train": summary,
              "encoder": {"identity": encoder.identity(), "n_tiles_per_image": encoder.plan.n_tiles
                          if hasattr(encoder, "plan") else None, **prof},
              "trainable_params": policy.trainable_parameters(), "policy_config": policy_cfg.to_dict(),
              "config": OmegaConf.to_container(cfg, resolve=True), "timings": timings,
              "checkpoint": str(out_dir / "policy.pt")}
    path = write_json(result, out_dir / "result.json")
    print(format_result(res) if res else f"{task.name}: trained (evaluation off: the task has no simulator "
                                         "or eval.enabled=false)")
    print(f"policy: {out_dir / 'policy.pt'}  result: {path}  total {timings['total_s']:.0f} s")
    return result


@user_errors
def main_job(cfg: DictConfig) -> float:
    """Run the pipeline for one configuration and tear down DDP; returns the success rate (for sweepers)."""
    try:
        res = run(cfg)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return float(res["rollout"]["success_rate"]) if res and res.get("rollout") else 0.0
