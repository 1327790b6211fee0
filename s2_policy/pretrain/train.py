"""MAE pre-training loop: resumable, seeded, logged to CSV, exporting an MVP-format encoder checkpoint.

``run_pretraining(cfg)`` runs the whole job described by ``configs/pretrain.yaml``: frames (rendered from the
project's tasks or read from demonstration stores, once, and cached), the masked autoencoder, AdamW with
warm-up + cosine decay, bf16 autocast on CPU, a training checkpoint every ``train.ckpt_every`` steps (atomic,
resumed automatically), then the exported encoder ``{"model": timm ViT state_dict, "meta": {...}}`` and
figures (loss curve, reconstructions).
"""

from __future__ import annotations

import csv
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from timm.optim import param_groups_weight_decay
from timm.scheduler import CosineLRScheduler
from tqdm import tqdm

from s2_policy.atomic import atomic_path, atomic_torch_save
from s2_policy.encoders.precision import cpu_has_bf16
from s2_policy.pretrain.data import FrameConfig, FrameSampler, load_or_render_frames
from s2_policy.pretrain.mae import MAEConfig, MaskedAutoencoder
from s2_policy.runtime import configure_cpu
from s2_policy.serialization import load_tree, save_tree

log = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"  # safetensors + JSON metadata (docs/checkpoints.md), whatever the suffix
STATE_FORMAT = "s2_policy.pretrain_state/1"
LOG_FILE = "loss.csv"
LOG_FIELDS = ["step", "loss", "lr", "elapsed_s"]


def build_model(model_cfg: DictConfig | dict) -> MaskedAutoencoder:
    """A :class:`MaskedAutoencoder` from the ``model`` section of the config."""
    cfg = (
        OmegaConf.to_container(model_cfg, resolve=True)
        if isinstance(model_cfg, DictConfig)
        else dict(model_cfg)
    )
    return MaskedAutoencoder(MAEConfig(**cfg))


def build_frame_config(data_cfg: DictConfig | dict) -> FrameConfig:
    """A :class:`FrameConfig` from the ``data`` section of the config (all keys but ``cache``)."""
    cfg = (
        OmegaConf.to_container(data_cfg, resolve=True) if isinstance(data_cfg, DictConfig) else dict(data_cfg)
    )
    return FrameConfig(**{k: v for k, v in cfg.items() if k != "cache"})


def export_encoder(
    model: MaskedAutoencoder, path: str | os.PathLike, dtype: str = "fp16", meta: dict | None = None
) -> Path:
    """Write the encoder as an MVP-format checkpoint ``{"model": state_dict, "meta": meta}`` (atomic).

    Only timm ViT keys are written (no ``decoder_*``/``mask_token``); ``dtype`` is ``"fp16"`` or ``"fp32"``.
    """
    dtypes = {"fp16": torch.float16, "fp32": torch.float32}
    if dtype not in dtypes:
        raise ValueError(f"export dtype must be one of {sorted(dtypes)}, got {dtype!r}")
    path = Path(path)
    payload = {"model": model.encoder_state_dict(dtypes[dtype]), "meta": dict(meta or {})}
    atomic_torch_save(payload, path)
    return path


def _read_log(path: Path, up_to_step: int) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [row for row in csv.DictReader(f) if int(row["step"]) <= up_to_step]


def _write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LOG_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def train_mae(
    model: MaskedAutoencoder,
    sampler: FrameSampler,
    out_dir: str | os.PathLike,
    steps: int,
    lr: float = 5e-4,
    min_lr: float = 1e-5,
    warmup_steps: int = 200,
    weight_decay: float = 0.05,
    betas: tuple[float, float] = (0.9, 0.95),
    amp: bool = True,
    seed: int = 0,
    ckpt_every: int = 250,
    log_every: int = 10,
    progress: bool = True,
    trust_pickle: bool = False,
) -> list[dict[str, Any]]:
    """Train ``model`` for ``steps`` optimiser steps on ``sampler`` batches, resuming from ``out_dir``.

    Returns the loss log (one row per ``log_every`` steps, averaged over them), also written to
    ``out_dir/loss.csv``. The training state (model, optimiser, scheduler, sampler and masking RNGs) is saved
    to ``out_dir/train_state.pt`` every ``ckpt_every`` steps and at the end. A state file of the earlier
    pickled format is resumed from only with ``trust_pickle=True`` (unpickling can run code).
    """
    if steps < 1 or ckpt_every < 1 or log_every < 1:
        raise ValueError("steps, ckpt_every and log_every must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups = param_groups_weight_decay(
        model, weight_decay, no_weight_decay_list=("encoder.cls_token", "mask_token")
    )
    opt = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))
    sched = CosineLRScheduler(
        opt,
        t_initial=steps,
        lr_min=min_lr,
        warmup_t=min(warmup_steps, steps - 1),
        warmup_lr_init=lr * 1e-3,
        t_in_epochs=False,
    )
    mask_gen = torch.Generator().manual_seed(seed + 1)
    step, elapsed = 0, 0.0
    state_path = out / STATE_FILE
    if state_path.exists():
        state = load_tree(
            state_path,
            STATE_FORMAT,
            what="pre-training resume state",
            trust_pickle=trust_pickle,
            opt_in="+train.trust_pickle=true (train_mae(trust_pickle=True))",
        )
        if state["steps"] != steps:
            raise ValueError(
                f"{state_path} was saved by a run of {state['steps']} steps, this run asks for {steps}: "
                "use the same train.steps or another out_dir"
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sampler.load_state_dict(state["sampler"])
        mask_gen.set_state(state["mask_generator"])
        step, elapsed = state["step"], state["elapsed_s"]
    log_path = out / LOG_FILE
    rows: list[dict[str, Any]] = _read_log(log_path, step)

    def save_state() -> None:
        save_tree(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "sampler": sampler.state_dict(),
                "mask_generator": mask_gen.get_state(),
                "step": step,
                "steps": steps,
                "elapsed_s": elapsed,
                "mae_config": model.config.to_dict(),
            },
            state_path,
            STATE_FORMAT,
        )
        _write_log(log_path, rows)

    model.train()
    bar = tqdm(total=steps, initial=step, desc="MAE", disable=not progress)
    window: list[float] = []
    t_last = time.perf_counter()
    while step < steps:
        sched.step_update(step)
        imgs = sampler.sample()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss, _, _ = model(imgs, generator=mask_gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        window.append(loss.item())
        now = time.perf_counter()
        elapsed += now - t_last
        t_last = now
        if step % log_every == 0 or step == steps:
            rows.append(
                {
                    "step": step,
                    "loss": float(np.mean(window)),
                    "lr": opt.param_groups[0]["lr"],
                    "elapsed_s": round(elapsed, 2),
                }
            )
            bar.set_postfix(loss=f"{rows[-1]['loss']:.4f}")
            window.clear()
        bar.update()
        if step % ckpt_every == 0 or step == steps:
            save_state()
    bar.close()
    return rows


def resolve_amp(amp: bool | str) -> bool:
    """``train.amp``: ``auto`` = bf16 autocast only on CPUs with bf16 units (AVX512-BF16 / AMX). Without them
    bf16 is emulated: an MAE step of ``s2p-small`` took 55 s instead of 3 s in fp32 (AMD EPYC Zen 2)."""
    if amp == "auto":
        return cpu_has_bf16()
    if not isinstance(amp, bool):
        raise ValueError(f"train.amp={amp!r}: use auto, true or false")
    if amp and not cpu_has_bf16():
        log.warning("train.amp=true on a CPU without bf16 units: bf16 is emulated and ~18x slower than fp32 "
                    "(train.amp=auto picks fp32 here)")
    return amp


def run_pretraining(cfg: DictConfig) -> Path:
    """The whole job of ``python -m s2_policy.pretrain``: frames, training, export, figures.

    Returns the exported encoder checkpoint path.
    """
    configure_cpu(int(cfg.train.threads))
    torch.manual_seed(int(cfg.train.seed))
    frame_cfg = build_frame_config(cfg.data)
    frames = load_or_render_frames(frame_cfg, cfg.data.cache)
    model = build_model(cfg.model)
    sampler = FrameSampler(
        frames,
        int(cfg.train.batch_size),
        seed=int(cfg.train.seed),
        crop_scale=tuple(cfg.train.crop_scale),
        normalize=str(cfg.train.normalize),
    )
    out_dir = Path(cfg.out_dir)
    rows = train_mae(
        model,
        sampler,
        out_dir,
        steps=int(cfg.train.steps),
        lr=float(cfg.train.lr),
        min_lr=float(cfg.train.min_lr),
        warmup_steps=int(cfg.train.warmup_steps),
        weight_decay=float(cfg.train.weight_decay),
        betas=tuple(cfg.train.betas),
        amp=resolve_amp(cfg.train.amp),
        seed=int(cfg.train.seed),
        ckpt_every=int(cfg.train.ckpt_every),
        log_every=int(cfg.train.log_every),
        trust_pickle=bool(cfg.train.get("trust_pickle", False)),
    )
    meta = {
        "recipe": "MAE (75% mask, norm-pix loss, fixed 2-D sin-cos pos-embed), s2_policy.pretrain",
        "arch": model.config.arch,
        "arch_kwargs": model.config.arch_dict(),
        "normalize": str(cfg.train.normalize),
        "steps": int(cfg.train.steps),
        "batch_size": int(cfg.train.batch_size),
        "n_frames": len(frames),
        "final_loss": float(rows[-1]["loss"]) if rows else None,
        "train_time_s": float(rows[-1]["elapsed_s"]) if rows else None,
        "frames": frame_cfg.key(),
        "frame_sources": frame_cfg.store_paths() or list(frame_cfg.tasks),  # stores, else the rendered tasks
        # the S2 scales whose views it was trained on (1: whole frames); others are unseen zooms for it
        "scales": sorted({1, *frame_cfg.scales()}) if frame_cfg.tiles_per_frame else [1],
    }
    path = export_encoder(model, cfg.export.path, dtype=str(cfg.export.dtype), meta=meta)
    from s2_policy.pretrain.viz import plot_loss, plot_reconstructions

    plot_loss(out_dir / LOG_FILE, cfg.figures.loss, title=f"MAE {model.config.arch}")
    pick = np.random.default_rng(int(cfg.train.seed)).choice(
        len(frames), int(cfg.figures.n_reconstructions), False
    )
    plot_reconstructions(
        model, frames[np.sort(pick)], sampler, cfg.figures.reconstructions, seed=int(cfg.train.seed)
    )
    return path
