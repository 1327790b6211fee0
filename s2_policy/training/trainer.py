"""Head trainer on cached features: AdamW, warmup + cosine schedule, EMA, clipping, checkpoints, resume, DDP.

Resume is exact: ``checkpoints/latest.pt`` holds the trainable weights, optimiser, LR scheduler, EMA, every
RNG state and the step (a safetensors file with JSON metadata, docs/checkpoints.md: nothing is unpickled);
the batch order is a pure function of ``(seed, step)``, so a run killed at any moment and restarted
continues as if it had never stopped (from the last checkpoint).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from s2_policy.policies.policy import Policy
from s2_policy.serialization import load_tree, save_tree

log = logging.getLogger(__name__)

RolloutFn = Callable[[Policy, int], Mapping[str, Any]]
RESUME_FORMAT = "s2_policy.train_state/1"


@dataclass
class TrainConfig:
    """Training hyper-parameters (``configs/train/*.yaml``)."""

    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-6
    betas: tuple[float, float] = (0.9, 0.999)
    lr_scheduler: str = "cosine"
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema: bool | None = None            # None: on for the diffusion head, off for the MLP head
    ema_power: float = 0.75
    ema_max_decay: float = 0.9999
    log_every: int = 50
    val_every: int = 500
    val_batches: int = 8
    rollout_every: int = 0             # 0: no periodic rollouts
    ckpt_every: int = 500
    seed: int = 0
    device: str = "cpu"
    resume: bool = True
    progress: bool = True
    trust_pickle: bool = False         # resume from an old pickled latest.pt (unpickling can run code)

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> TrainConfig:
        """Build from a (hydra) mapping; unknown keys are an error so typos do not pass silently."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - names)
        if unknown:
            raise ValueError(f"unknown train config keys {unknown}; valid keys: {sorted(names)}")
        kw = dict(cfg)
        if "betas" in kw:
            kw["betas"] = tuple(kw["betas"])
        return cls(**kw)


def tensorize_dataset(ds: Dataset, cameras: list[str], batch_size: int = 1024,
                      progress: bool = True) -> dict[str, torch.Tensor]:
    """Read every window of a (feature-cached) dataset into memory: ``{cam, 'state', 'action'}`` tensors.

    Training on cached features is memory-bound on the Python side otherwise; the stacked windows of a few
    hundred demonstrations take tens of MB.
    """
    if len(ds) == 0:
        raise ValueError("the dataset is empty: no training windows (check the store and the split)")
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in (*cameras, "state", "action")}
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0)
    for batch in tqdm(loader, desc="loading windows", disable=not progress, leave=False):
        for c in (*cameras, "state"):
            parts[c].append(torch.as_tensor(batch["obs"][c]))
        parts["action"].append(torch.as_tensor(batch["action"]))
    out = {k: torch.cat(v) for k, v in parts.items()}
    for c in cameras:
        if out[c].ndim not in (3, 4):
            raise ValueError(f"camera {c!r} windows have shape {tuple(out[c].shape)}; training expects "
                             f"cached features (N, To, F) or (N, To, tokens, C): build the dataset with "
                             f"features=ensure_feature_cache(...)")
    return out


def prepare_batch(policy: Policy, data: Mapping[str, torch.Tensor], idx: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows ``idx`` of the in-memory windows -> the core's normalised inputs (features, state, action).

    Features are stacked per camera ``(B, To, K, *feature_shape)``; state and action are normalised with the
    policy's fitted normaliser.
    """
    dev, norm, to = policy.device, policy.normalizer, policy.n_obs_steps
    feats = torch.stack([data[c][idx].to(dev, torch.float32) for c in policy.cameras], dim=2)
    state = norm.normalize("state", data["state"][idx].to(dev, torch.float32))
    action = norm.normalize("action", data["action"][idx].to(dev, torch.float32))
    return feats[:, :to], state[:, :to], action


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(state: Mapping) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Trains ``policy.core`` on in-memory feature windows.

    Args:
        policy: the policy (its normaliser already fitted); only ``policy.core`` is optimised.
        train_data / val_data: a dataset of cached-feature windows or the output of :func:`tensorize_dataset`.
        cfg: :class:`TrainConfig`.
        out_dir: run folder: ``checkpoints/latest.pt`` (resume state), ``checkpoints/best.pt`` (policy with
            the best rollout success), ``policy.pt`` (final policy), ``tb/`` (TensorBoard).
        rollout_fn: ``rollout_fn(policy, step) -> {"success_rate": ..., ...}``, called every
            ``rollout_every`` steps on rank 0 with the (EMA) policy.
    """

    def __init__(self, policy: Policy, train_data: Dataset | Mapping[str, torch.Tensor],
                 val_data: Dataset | Mapping[str, torch.Tensor] | None, cfg: TrainConfig,
                 out_dir: str | Path, rollout_fn: RolloutFn | None = None) -> None:
        self.policy, self.cfg, self.rollout_fn = policy, cfg, rollout_fn
        self.out_dir = Path(out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        self.is_main = self.rank == 0
        cams = policy.cameras
        self.train = train_data if isinstance(train_data, Mapping) else tensorize_dataset(
            train_data, cams, progress=cfg.progress and self.is_main)
        self.val = None
        if val_data is not None and (isinstance(val_data, Mapping) or len(val_data) > 0):
            self.val = val_data if isinstance(val_data, Mapping) else tensorize_dataset(
                val_data, cams, progress=cfg.progress and self.is_main)
        self.n_train = len(self.train["action"])
        self.batch_size = min(cfg.batch_size, self.n_train)
        if self.batch_size < self.world:
            raise ValueError(f"batch_size {self.batch_size} is smaller than the number of DDP processes "
                             f"{self.world}")
        self.steps_per_epoch = self.n_train // self.batch_size
        seed_everything(cfg.seed + self.rank)
        policy.to(cfg.device)
        self.core = policy.core
        self.model: torch.nn.Module = DistributedDataParallel(self.core) if self.distributed else self.core
        params = [p for p in self.core.parameters() if p.requires_grad]
        # fused: one kernel over all parameters instead of a Python loop over ~150 small tensors (diffusion
        # head, 1 CPU thread: optimizer step 28 -> 7 ms, 3-6 % of a training step; BENCHMARKS.md, round five)
        fused = {"fused": True} if params and params[0].device.type in ("cpu", "cuda") else {}
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                                           **fused)
        self.lr_scheduler = get_scheduler(cfg.lr_scheduler, self.optimizer, num_warmup_steps=cfg.warmup_steps,
                                          num_training_steps=cfg.steps)
        use_ema = cfg.ema if cfg.ema is not None else policy.config.head == "diffusion"
        self.ema = EMAModel(params, decay=cfg.ema_max_decay, use_ema_warmup=True, power=cfg.ema_power,
                            foreach=True) if use_ema else None
        self.step = 0
        self.best_success = -1.0
        self.history: list[dict] = []

    # -- data order -----------------------------------------------------------------------------------------
    def _indices(self, step: int) -> torch.Tensor:
        """This rank's batch indices for ``step``: a pure function of (seed, step)."""
        epoch, i = divmod(step, self.steps_per_epoch)
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        perm = torch.randperm(self.n_train, generator=g)
        return perm[i * self.batch_size:(i + 1) * self.batch_size][self.rank::self.world]

    # -- checkpoints ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"step": self.step, "core": self.core.state_dict(), "optimizer": self.optimizer.state_dict(),
                "lr_scheduler": self.lr_scheduler.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "rng": _rng_state(), "best_success": self.best_success, "history": self.history,
                "world": self.world, "train_config": asdict(self.cfg)}

    def save_latest(self) -> None:
        """Atomic resume checkpoint (rank 0 writes; all ranks wait)."""
        if self.is_main:
            save_tree(self.state_dict(), self.ckpt_dir / "latest.pt", RESUME_FORMAT)
        if self.distributed:
            dist.barrier()

    def load_latest(self) -> bool:
        """Restore from ``checkpoints/latest.pt`` if present; returns whether it resumed."""
        path = self.ckpt_dir / "latest.pt"
        if not path.is_file():
            return False
        st = load_tree(path, RESUME_FORMAT, what="training resume state", trust_pickle=self.cfg.trust_pickle,
                       opt_in="+train.trust_pickle=true (TrainConfig.trust_pickle)")
        self.core.load_state_dict(st["core"])
        self.optimizer.load_state_dict(st["optimizer"])
        self.lr_scheduler.load_state_dict(st["lr_scheduler"])
        if self.ema is not None:
            if st["ema"] is None:
                raise ValueError(f"{path} was written without EMA but this run uses EMA; use a fresh out_dir")
            self.ema.load_state_dict(st["ema"])
        if self.world == 1:
            _set_rng_state(st["rng"])
        else:  # per-rank RNG streams are not gathered: re-seed deterministically from (seed, rank, step)
            seed_everything(self.cfg.seed + self.rank + 7919 * st["step"])
        self.step, self.best_success, self.history = st["step"], st["best_success"], st["history"]
        log.info("resumed from %s at step %d", path, self.step)
        return True

    @contextlib.contextmanager
    def averaged_weights(self) -> Iterator[Policy]:
        """The policy with EMA weights swapped in (plain weights without EMA); restored on exit."""
        params = [p for p in self.core.parameters() if p.requires_grad]
        if self.ema is None:
            yield self.policy
            return
        self.ema.store(params)
        self.ema.copy_to(params)
        try:
            yield self.policy
        finally:
            self.ema.restore(params)

    # -- evaluation -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def validation_loss(self) -> float | None:
        """Mean loss over the first ``val_batches`` validation batches (fixed noise seed, RNG untouched)."""
        if self.val is None:
            return None
        n = len(self.val["action"])
        losses = []
        with torch.random.fork_rng(devices=[]), self.averaged_weights():
            torch.manual_seed(12345)
            self.core.eval()
            for b in range(min(self.cfg.val_batches, math.ceil(n / self.batch_size))):
                idx = torch.arange(b * self.batch_size, min((b + 1) * self.batch_size, n))
                losses.append(self.core(*prepare_batch(self.policy, self.val, idx)).item())
            self.core.train()
        return float(np.mean(losses))

    def _rollout(self) -> dict | None:
        if self.rollout_fn is None or not self.is_main:
            return None
        with torch.random.fork_rng(devices=[]), self.averaged_weights() as pol:
            self.core.eval()
            res = dict(self.rollout_fn(pol, self.step))
            self.core.train()
            if res.get("success_rate", -1.0) > self.best_success:
                self.best_success = float(res["success_rate"])
                pol.meta = {**pol.meta, "train_step": self.step, "rollout": _jsonable(res)}
                pol.save(self.ckpt_dir / "best.pt")
        return res

    # -- loop -----------------------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train to ``cfg.steps`` (resuming if allowed); returns a summary dict."""
        cfg = self.cfg
        if cfg.resume:
            self.load_latest()
        writer = None
        if self.is_main:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.out_dir / "tb"), purge_step=self.step)
        self.core.train()
        # passes over the training windows: the default 1,500 steps of 128 see 25 hand-insert demonstrations
        # ~140 times but 100 of them ~36 (29 % success; 83 % at ~140 passes: BENCHMARKS.md, round sixteen)
        passes = cfg.steps * self.batch_size / self.n_train
        if self.is_main:
            log.info("training %d steps of batch %d over %d windows: %.1f passes over the data",
                     cfg.steps, self.batch_size, self.n_train, passes)
        t0, start = time.perf_counter(), self.step
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train",
                   disable=not (cfg.progress and self.is_main))
        loss_acc: list[float] = []
        try:
            while self.step < cfg.steps:
                loss = self.model(*prepare_batch(self.policy, self.train, self._indices(self.step)))
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.core.parameters(), cfg.grad_clip)
                self.optimizer.step()
                self.lr_scheduler.step()
                if self.ema is not None:
                    self.ema.step([p for p in self.core.parameters() if p.requires_grad])
                self.step += 1
                loss_acc.append(loss.item())
                bar.update(1)
                rec: dict[str, Any] = {}
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    rec["loss"] = float(np.mean(loss_acc))
                    rec["lr"] = self.lr_scheduler.get_last_lr()[0]
                    loss_acc = []
                    bar.set_postfix(loss=f"{rec['loss']:.4f}")
                if cfg.val_every and (self.step % cfg.val_every == 0 or self.step == cfg.steps):
                    rec["val_loss"] = self.validation_loss()
                if cfg.rollout_every and self.step % cfg.rollout_every == 0:
                    res = self._rollout()
                    if res is not None:
                        rec["success_rate"] = res.get("success_rate")
                if rec and self.is_main:
                    rec["step"] = self.step
                    self.history.append(rec)
                    for k, v in rec.items():
                        if k != "step" and v is not None:
                            tag = f"train/{k}" if k in ("loss", "lr") else f"eval/{k}"
                            writer.add_scalar(tag, v, self.step)
                if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps:
                    self.save_latest()
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        elapsed = time.perf_counter() - t0
        if self.is_main:
            with self.averaged_weights() as pol:
                pol.meta = {**pol.meta, "train_step": self.step}
                pol.save(self.out_dir / "policy.pt")
        if self.distributed:
            dist.barrier()
        return {"steps": self.step, "steps_run": self.step - start, "passes": passes, "seconds": elapsed,
                "steps_per_s": (self.step - start) / elapsed if elapsed > 0 else None,
                "final_loss": next((h["loss"] for h in reversed(self.history) if "loss" in h), None),
                "final_val_loss": next((h["val_loss"] for h in reversed(self.history)
                                        if h.get("val_loss") is not None), None),
                "best_success": self.best_success if self.best_success >= 0 else None,
                "policy_path": str(self.out_dir / "policy.pt")}


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x if isinstance(x, str | int | float | bool | type(None)) else str(x)
