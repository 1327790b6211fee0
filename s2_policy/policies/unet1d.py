"""1-D temporal U-Net with FiLM conditioning (the Diffusion Policy CNN backbone), written for this project.

The noisy action chunk ``(B, T, A)`` is convolved over time; every residual block receives a FiLM
(per-channel scale and bias) computed from the diffusion-step embedding concatenated with the global
observation condition. The FiLM layer is ``Linear(Mish([step, cond]))``; Mish acts per element, so the
condition's share of it is the same at every denoising step: :meth:`ConditionalUnet1D.film_condition`
computes it once per query, and sampling reuses it (with an unprojected condition of ~16k features that
weight is most of the U-Net's bytes, read once instead of once per step).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SinusoidalPosEmb(nn.Module):
    """Transformer-style sinusoidal embedding of the (integer) diffusion timestep."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / max(half - 1, 1))
        args = t.float()[:, None] * freqs[None]
        return torch.cat([args.sin(), args.cos()], dim=-1)


class Conv1dBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, n_groups: int) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2),
                                   nn.GroupNorm(n_groups, c_out), nn.Mish())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ConditionalResidualBlock1D(nn.Module):
    """Two conv blocks with FiLM (scale, bias) from the condition between them, plus a residual path."""

    def __init__(self, c_in: int, c_out: int, step_dim: int, cond_dim: int, kernel_size: int,
                 n_groups: int) -> None:
        super().__init__()
        self.step_dim = step_dim
        self.block1 = Conv1dBlock(c_in, c_out, kernel_size, n_groups)
        self.block2 = Conv1dBlock(c_out, c_out, kernel_size, n_groups)
        # kept as one Sequential(Mish, Linear) so checkpoints keep their keys; forward applies it in two parts
        self.film = nn.Sequential(nn.Mish(), nn.Linear(step_dim + cond_dim, 2 * c_out))
        self.residual = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def film_condition(self, mish_cond: torch.Tensor) -> torch.Tensor:
        """The condition's share of the FiLM output, bias included: ``(B, 2 * c_out)``."""
        lin = self.film[1]
        return F.linear(mish_cond, lin.weight[:, self.step_dim:], lin.bias)

    def forward(self, x: torch.Tensor, mish_step: torch.Tensor, film_cond: torch.Tensor) -> torch.Tensor:
        h = self.block1(x)
        film = F.linear(mish_step, self.film[1].weight[:, :self.step_dim]) + film_cond
        scale, bias = film.unsqueeze(-1).chunk(2, dim=1)
        h = self.block2(h * (1 + scale) + bias)
        return h + self.residual(x)


class ConditionalUnet1D(nn.Module):
    """Noise (or sample) predictor ``f(x_t, t, cond)`` over action chunks.

    ``horizon`` must be divisible by ``2 ** (len(down_dims) - 1)`` (one halving per level below the top).
    """

    def __init__(self, action_dim: int, cond_dim: int, down_dims: tuple[int, ...] = (64, 128, 256),
                 kernel_size: int = 5, n_groups: int = 8, step_embed_dim: int = 128) -> None:
        super().__init__()
        if not down_dims:
            raise ValueError("ConditionalUnet1D needs at least one entry in down_dims")
        if any(d % n_groups for d in down_dims):
            raise ValueError(f"every down_dims entry must be divisible by n_groups={n_groups}, "
                             f"got {down_dims}")
        self.n_down = len(down_dims) - 1
        e = step_embed_dim
        self.step_emb = nn.Sequential(SinusoidalPosEmb(e), nn.Linear(e, 4 * e), nn.Mish(),
                                      nn.Linear(4 * e, e))
        dims = [action_dim, *down_dims]

        def res(a: int, b: int) -> ConditionalResidualBlock1D:
            return ConditionalResidualBlock1D(a, b, step_embed_dim, cond_dim, kernel_size, n_groups)

        self.down = nn.ModuleList()
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            last = i == len(down_dims) - 1
            down = nn.Identity() if last else nn.Conv1d(b, b, 3, stride=2, padding=1)
            self.down.append(nn.ModuleList([res(a, b), res(b, b), down]))
        self.mid = nn.ModuleList([res(down_dims[-1], down_dims[-1]), res(down_dims[-1], down_dims[-1])])
        self.up = nn.ModuleList()
        for a, b in reversed(list(zip(down_dims[:-1], down_dims[1:], strict=True))):
            up = nn.ConvTranspose1d(a, a, 4, stride=2, padding=1)
            self.up.append(nn.ModuleList([res(2 * b, a), res(a, a), up]))
        self.final = nn.Sequential(Conv1dBlock(down_dims[0], down_dims[0], kernel_size, n_groups),
                                   nn.Conv1d(down_dims[0], action_dim, 1))

    def blocks(self) -> list[ConditionalResidualBlock1D]:
        """The residual blocks in the order :meth:`forward` runs them."""
        down = [r for r1, r2, _ in self.down for r in (r1, r2)]
        up = [r for r1, r2, _ in self.up for r in (r1, r2)]
        return [*down, *self.mid, *up]

    def film_condition(self, cond: torch.Tensor) -> list[torch.Tensor]:
        """``cond (B, cond_dim)`` -> every block's share of its FiLM output; the same at every diffusion step,
        so a sampler computes it once per query and passes it to :meth:`forward` as ``film_cond``."""
        mish_cond = F.mish(cond)
        return [r.film_condition(mish_cond) for r in self.blocks()]

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int, cond: torch.Tensor | None = None,
                film_cond: list[torch.Tensor] | None = None) -> torch.Tensor:
        """``sample (B, T, A)``, ``timestep`` scalar or ``(B,)``, ``cond (B, cond_dim)`` (or its
        :meth:`film_condition`) -> ``(B, T, A)``."""
        if sample.shape[1] % (2 ** self.n_down):
            raise ValueError(f"action horizon {sample.shape[1]} must be divisible by {2 ** self.n_down} "
                             f"(2 ** (len(down_dims) - 1)); change horizon or down_dims")
        if film_cond is None:
            if cond is None:
                raise ValueError("ConditionalUnet1D needs cond or its film_condition(cond)")
            film_cond = self.film_condition(cond)
        b = sample.shape[0]
        t = torch.as_tensor(timestep, device=sample.device)
        t = t.expand(b) if t.ndim == 0 else t
        mish_step = F.mish(self.step_emb(t))
        fc = iter(film_cond)
        x = sample.transpose(1, 2)
        skips = []
        for r1, r2, down in self.down:
            x = r2(r1(x, mish_step, next(fc)), mish_step, next(fc))
            skips.append(x)
            x = down(x)
        for r in self.mid:
            x = r(x, mish_step, next(fc))
        for r1, r2, up in self.up:
            x = torch.cat([x, skips.pop()], dim=1)
            x = up(r2(r1(x, mish_step, next(fc)), mish_step, next(fc)))
        return self.final(x).transpose(1, 2)
