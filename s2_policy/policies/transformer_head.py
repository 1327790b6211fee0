"""ACT-style transformer head: learned action queries cross-attend to the S2 feature tokens.

Token layout (``tokens``): every feature token of every camera and observation step is projected to
``d_model`` and gets three learned embeddings added, for its observation step, its camera and its position in
the camera's token grid (the position codes start as sinusoids; ``encoder.pooling=tokens``: CLS + spatial
grid; pooled features are one token per camera and step). One proprio token per observation step (the
normalised state, projected) follows, with the step embedding and a "proprio" source embedding. Order:
``[step 0: cam 0 tokens, cam 1 tokens, ..., step 1: ...,  proprio step 0, proprio step 1, ...]``.

An optional ``nn.TransformerEncoder`` runs self-attention over these tokens; an ``nn.TransformerDecoder``
then runs ``horizon`` learned queries, each plus the newest proprio token (self-attention among the queries,
cross-attention to the tokens), and a linear layer reads one action per query: the normalised chunk
``(B, horizon, A)``. The loss is L1 (ACT's) or L2 on that chunk.

With ``use_vae`` (ACT's CVAE, off by default) a second encoder reads ``[CLS, proprio tokens, action chunk]``
during training, its CLS output gives the mean and log-variance of a ``latent_dim`` Gaussian, and a sample
(the mean of the prior, zeros, at inference) enters the observation tokens as one more token; the loss adds
``kl_weight`` times the KL divergence to the standard normal prior.

Everything is built from torch's own transformer layers (pre-norm, GELU); nothing here computes attention
by hand.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from s2_policy.policies.config import TransformerHeadConfig


def _encoder(cfg: TransformerHeadConfig, n_layers: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_heads, cfg.dim_feedforward, cfg.dropout,
                                       activation="gelu", batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, n_layers, norm=nn.LayerNorm(cfg.d_model), enable_nested_tensor=False)


def sinusoidal_embedding(n: int, d: int) -> torch.Tensor:
    """``(n, d)`` sin/cos position codes (Vaswani et al.): the token order of a camera's grid (row-major,
    prefix tokens first), distinct and of unit scale from the first step, unlike a small random init."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    out = torch.zeros(n, d)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq[: d // 2])
    return out


class TransformerHead(nn.Module):
    """Observation tokens -> normalised action chunk ``(B, horizon, A)``.

    Args:
        feature_shape: per-camera feature shape, ``(F,)`` pooled or ``(N, C)`` tokens.
        n_cameras, n_obs_steps, state_dim, action_dim, horizon: the policy's sizes.
        cfg: :class:`TransformerHeadConfig`.

    :meth:`tokens` builds the condition (the observation tokens ``(B, L, d_model)``, the last ``n_obs_steps``
    of them proprio) that :meth:`compute_loss` and :meth:`predict` take, like the other heads' ``cond``.
    """

    def __init__(self, feature_shape: tuple[int, ...], n_cameras: int, n_obs_steps: int, state_dim: int,
                 action_dim: int, horizon: int, cfg: TransformerHeadConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or TransformerHeadConfig()
        if len(feature_shape) not in (1, 2):
            raise ValueError(f"features must be pooled (F,) or tokens (N, C), got shape "
                             f"{tuple(feature_shape)}")
        if min(n_cameras, n_obs_steps, action_dim, horizon) < 1:
            raise ValueError("transformer head sizes (n_cameras, n_obs_steps, action_dim, horizon) must be "
                             ">= 1")
        d = cfg.d_model
        self.cfg = cfg
        self.n_obs_steps, self.n_cameras = n_obs_steps, n_cameras
        self.horizon, self.action_dim = horizon, action_dim
        self.n_feature_tokens = feature_shape[0] if len(feature_shape) == 2 else 1
        self.feature_proj = nn.Linear(feature_shape[-1], d)
        self.state_proj = nn.Linear(state_dim, d)
        self.step_embed = nn.Parameter(torch.zeros(n_obs_steps, d))
        self.source_embed = nn.Parameter(torch.zeros(n_cameras + 1, d))   # cameras, then proprio
        self.token_embed = nn.Parameter(torch.zeros(self.n_feature_tokens, d))
        self.encoder = _encoder(cfg, cfg.n_encoder_layers) if cfg.n_encoder_layers > 0 else None
        layer = nn.TransformerDecoderLayer(d, cfg.n_heads, cfg.dim_feedforward, cfg.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, cfg.n_decoder_layers, norm=nn.LayerNorm(d))
        self.queries = nn.Parameter(torch.zeros(horizon, d))
        self.action_out = nn.Linear(d, action_dim)
        if cfg.use_vae:
            self.vae_encoder = _encoder(cfg, cfg.n_vae_encoder_layers)
            self.vae_cls = nn.Parameter(torch.zeros(1, d))
            self.vae_action_proj = nn.Linear(action_dim, d)
            self.vae_pos = nn.Parameter(torch.zeros(1 + n_obs_steps + horizon, d))
            self.vae_stats = nn.Linear(d, 2 * cfg.latent_dim)
            self.latent_proj = nn.Linear(cfg.latent_dim, d)
            self.latent_embed = nn.Parameter(torch.zeros(1, d))
        for name, p in self.named_parameters():
            if name in ("step_embed", "source_embed", "queries", "vae_cls", "vae_pos", "latent_embed"):
                nn.init.normal_(p, std=0.02)
        with torch.no_grad():  # token positions start as sinusoids of unit scale (learned from there)
            self.token_embed.copy_(sinusoidal_embedding(self.n_feature_tokens, d))

    @property
    def n_tokens(self) -> int:
        """Observation tokens per sample (without the VAE's latent token)."""
        return self.n_obs_steps * (self.n_cameras * self.n_feature_tokens + 1)

    def tokens(self, feats: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """``feats (B, To, K, *feature_shape)`` (LayerNorm-ed) + normalised ``state (B, To, D)`` ->
        observation tokens ``(B, To*K*N + To, d_model)`` (proprio last)."""
        b, to, k = feats.shape[:3]
        if feats.ndim == 4:
            feats = feats.unsqueeze(3)   # pooled: one token per camera and step
        x = (self.feature_proj(feats) + self.step_embed[:to, None, None] + self.source_embed[:k, None]
             + self.token_embed)
        s = self.state_proj(state) + self.step_embed[:to] + self.source_embed[-1]
        return torch.cat([x.reshape(b, -1, x.shape[-1]), s], dim=1)

    def _latent_stats(self, tokens: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CVAE encoder: ``[CLS, proprio tokens, action tokens]`` -> (mean, log-variance) of the latent."""
        b = tokens.shape[0]
        seq = torch.cat([self.vae_cls.expand(b, -1, -1), tokens[:, -self.n_obs_steps:],
                         self.vae_action_proj(action)], dim=1) + self.vae_pos
        mu, logvar = self.vae_stats(self.vae_encoder(seq)[:, 0]).chunk(2, dim=-1)
        return mu, logvar

    def decode(self, tokens: torch.Tensor, latent: torch.Tensor | None = None) -> torch.Tensor:
        """Observation tokens (+ a latent sample ``(B, latent_dim)`` with ``use_vae``) -> chunk
        ``(B, horizon, A)``."""
        if self.cfg.use_vae:
            if latent is None:   # the prior's mean, as ACT at inference
                latent = tokens.new_zeros(tokens.shape[0], self.cfg.latent_dim)
            tokens = torch.cat([(self.latent_proj(latent) + self.latent_embed)[:, None], tokens], dim=1)
        memory = self.encoder(tokens) if self.encoder is not None else tokens
        # every query starts from the newest proprio token: a direct path for the robot's own state, which
        # cross-attention over ~100 image tokens would otherwise have to single out first
        out = self.decoder(self.queries + tokens[:, -1:], memory)
        return self.action_out(out)

    def compute_loss(self, tokens: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """L1 (or L2) on the normalised chunk, plus ``kl_weight`` x KL(q(z | obs, chunk) || N(0, I)) with
        ``use_vae``."""
        latent = kl = None
        if self.cfg.use_vae:
            mu, logvar = self._latent_stats(tokens, action)
            latent = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
            kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).sum(-1).mean()
        pred = self.decode(tokens, latent)
        loss = F.l1_loss(pred, action) if self.cfg.loss == "l1" else F.mse_loss(pred, action)
        return loss + self.cfg.kl_weight * kl if kl is not None else loss

    @torch.no_grad()
    def predict(self, tokens: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Action chunk for the observation tokens (deterministic: the VAE's latent is the prior mean);
        ``generator`` is accepted for a head-independent API and unused."""
        return self.decode(tokens)
