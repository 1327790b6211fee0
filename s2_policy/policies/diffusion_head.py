"""Diffusion head: denoises action chunks with a FiLM-conditioned 1-D U-Net.

Training uses diffusers' ``DDPMScheduler`` (``num_train_timesteps`` noise levels, default 100); inference uses
``DDIMScheduler`` built from the same noise schedule with few steps (default 5, ``trailing`` spacing so that
sampling starts at the pure-noise level). The default target is the clean chunk (``prediction_type=sample``),
which on 25-100 demonstrations beat noise prediction on selection seeds (BENCHMARKS.md, "Round five").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from torch import nn

from s2_policy.policies.config import DiffusionHeadConfig
from s2_policy.policies.unet1d import ConditionalUnet1D


class DiffusionHead(nn.Module):
    """Conditional denoiser over normalised action chunks ``(B, horizon, A)`` in [-1, 1]."""

    def __init__(self, cond_dim: int, action_dim: int, horizon: int,
                 cfg: DiffusionHeadConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or DiffusionHeadConfig()
        down_dims = tuple(cfg.down_dims)  # the config checked its own values
        self.action_dim, self.horizon = action_dim, horizon
        self.num_inference_steps, self.num_samples = cfg.num_inference_steps, cfg.num_samples
        self.model = ConditionalUnet1D(action_dim, cond_dim, down_dims, cfg.kernel_size, cfg.n_groups,
                                       cfg.step_embed_dim)
        sched = dict(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                     prediction_type=cfg.prediction_type, clip_sample=cfg.clip_sample)
        self.train_scheduler = DDPMScheduler(**sched)
        self.infer_scheduler = DDIMScheduler(**sched, set_alpha_to_one=True, steps_offset=0,
                                             timestep_spacing=cfg.timestep_spacing)
        if horizon % (2 ** self.model.n_down):
            raise ValueError(f"horizon {horizon} must be divisible by {2 ** self.model.n_down} for "
                             f"down_dims={list(down_dims)}; change horizon or use fewer down_dims")

    def set_sampler(self, num_inference_steps: int | None = None, timestep_spacing: str | None = None,
                    num_samples: int | None = None) -> None:
        """Change the DDIM sampler after training (steps, spacing, chunks averaged per query); the trained
        denoiser is unchanged."""
        if num_inference_steps is not None:
            self.num_inference_steps = num_inference_steps
        if num_samples is not None:
            self.num_samples = num_samples
        if timestep_spacing is not None:
            self.infer_scheduler = DDIMScheduler.from_config(self.infer_scheduler.config,
                                                             timestep_spacing=timestep_spacing)

    def compute_loss(self, cond: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Denoising loss: MSE between predicted and true noise (or clean sample) at a random timestep."""
        noise = torch.randn_like(action)
        t = torch.randint(0, self.train_scheduler.config.num_train_timesteps, (action.shape[0],),
                          device=action.device)
        noisy = self.train_scheduler.add_noise(action, noise, t)
        pred = self.model(noisy, t, cond)
        target = noise if self.train_scheduler.config.prediction_type == "epsilon" else action
        return F.mse_loss(pred, target)

    @torch.no_grad()
    def predict(self, cond: torch.Tensor, generator: torch.Generator | None = None,
                prior: torch.Tensor | None = None, prior_weight: torch.Tensor | None = None) -> torch.Tensor:
        """Sample an action chunk by DDIM denoising from Gaussian noise (seeded by ``generator``); with
        ``num_samples`` > 1, the mean of that many chunks denoised in one batch.

        ``prior (B, horizon, A)`` with ``prior_weight (B, horizon)`` in [0, 1] inpaints known actions: before
        every denoising step the sample becomes ``(1 - w) * x_t + w * q(prior, t)``, ``q`` noising the prior
        to step ``t``'s level with the same initial noise, so the free steps are denoised to continue it
        (RePaint's replacement, soft as in real-time chunking; diffusers has no inpainting for 1-D samples).
        """
        b, k = cond.shape[0], self.num_samples
        if k > 1:
            cond = cond.repeat_interleave(k, dim=0)
        x = torch.randn((b * k, self.horizon, self.action_dim), generator=generator, device=cond.device,
                        dtype=cond.dtype)
        if prior is not None:
            if prior.shape != (b, self.horizon, self.action_dim) or prior_weight is None \
                    or prior_weight.shape != (b, self.horizon):
                raise ValueError(f"prior must be (B, horizon, A) = {(b, self.horizon, self.action_dim)} with "
                                 f"prior_weight (B, horizon), got {tuple(prior.shape)} and "
                                 f"{None if prior_weight is None else tuple(prior_weight.shape)}")
            prior = prior.to(x).repeat_interleave(k, dim=0)
            w = prior_weight.to(x).clamp(0, 1).repeat_interleave(k, dim=0).unsqueeze(-1)
            noise = x.clone()
        sched = self.infer_scheduler
        sched.set_timesteps(self.num_inference_steps, device=cond.device)
        film_cond = self.model.film_condition(cond)   # the same at every step: computed once
        for t in sched.timesteps:
            if prior is not None:
                x = torch.lerp(x, sched.add_noise(prior, noise, t.reshape(1)), w)
            x = sched.step(self.model(x, t, film_cond=film_cond), t, x, eta=0.0).prev_sample
        return x.view(b, k, self.horizon, self.action_dim).mean(dim=1) if k > 1 else x
