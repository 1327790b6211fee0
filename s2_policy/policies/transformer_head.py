"""ACT-style transformer head: learned action queries cross-attend to the S2 feature tokens.

Token layout (``tokens``): every feature token of every camera and observation step is projected to
``d_model`` and gets three learned embeddings added, for its observation step, its camera and its position in
the camera's token grid (the position codes start as sinusoids; ``encoder.pooling=tokens``: CLS + spatial
grid; pooled features are one token per camera and step). With ``readout_dim > 0`` one readout token per
step follows: every token of every camera projected to ``readout_dim`` channels, flattened, projected to
``d_model`` (the flat heads' linear view of the whole grid). One proprio token per observation step (the
normalised state, projected) comes last, with the step embedding and a "proprio" source embedding. Order:
``[step 0: cam 0 tokens, cam 1 tokens, ..., step 1: ..., readout 0, readout 1, ..., proprio 0, ...]``.

An optional ``nn.TransformerEncoder`` runs self-attention over these tokens; an ``nn.TransformerDecoder``
then runs ``horizon`` learned queries (starting as sinusoids of the chunk step), each plus the newest proprio
and readout tokens (self-attention among the queries, cross-attention to the tokens), and one linear layer
maps all decoded queries to the normalised chunk ``(B, horizon, A)``. The loss is L2 (or ACT's L1) on that
chunk.
Why the readout token, unit-scale queries and the chunk-wide action layer: without them the head did not fit
PickCube's x/y delta actions within the CPU training budget (BENCHMARKS.md, round seven).

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
        if cfg.readout_dim > 0:   # one token per step: a linear read of every camera's whole token grid
            self.readout_token_proj = nn.Linear(feature_shape[-1], cfg.readout_dim)
            self.readout_proj = nn.Linear(n_cameras * self.n_feature_tokens * cfg.readout_dim, d)
            self.readout_embed = nn.Parameter(torch.zeros(1, d))
        self.encoder = _encoder(cfg, cfg.n_encoder_layers) if cfg.n_encoder_layers > 0 else None
        layer = nn.TransformerDecoderLayer(d, cfg.n_heads, cfg.dim_feedforward, cfg.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, cfg.n_decoder_layers, norm=nn.LayerNorm(d))
        self.queries = nn.Parameter(torch.zeros(horizon, d))
        # one linear map from all the decoded queries to the whole chunk (each action reads every query): a
        # per-query map shared across the chunk learns delta actions far slower (BENCHMARKS.md, round seven)
        self.action_out = nn.Linear(horizon * d, horizon * action_dim)
        if cfg.use_vae:
            self.vae_encoder = _encoder(cfg, cfg.n_vae_encoder_layers)
            self.vae_cls = nn.Parameter(torch.zeros(1, d))
            self.vae_action_proj = nn.Linear(action_dim, d)
            self.vae_pos = nn.Parameter(torch.zeros(1 + n_obs_steps + horizon, d))
            self.vae_stats = nn.Linear(d, 2 * cfg.latent_dim)
            self.latent_proj = nn.Linear(cfg.latent_dim, d)
            self.latent_embed = nn.Parameter(torch.zeros(1, d))
        for name, p in self.named_parameters():
            if name in ("step_embed", "source_embed", "vae_cls", "vae_pos", "latent_embed", "readout_embed"):
                nn.init.normal_(p, std=0.02)
        with torch.no_grad():  # token positions and queries start as sinusoids of unit scale (then learned)
            self.token_embed.copy_(sinusoidal_embedding(self.n_feature_tokens, d))
            self.queries.copy_(sinusoidal_embedding(horizon, d))

    @property
    def n_tokens(self) -> int:
        """Observation tokens per sample (without the VAE's latent token)."""
        readout = 1 if self.cfg.readout_dim > 0 else 0
        return self.n_obs_steps * (self.n_cameras * self.n_feature_tokens + readout + 1)

    def tokens(self, feats: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """``feats (B, To, K, *feature_shape)`` (LayerNorm-ed) + normalised ``state (B, To, D)`` ->
        observation tokens ``(B, n_tokens, d_model)``: feature tokens, readout tokens, proprio last."""
        b, to, k = feats.shape[:3]
        if feats.ndim == 4:
            feats = feats.unsqueeze(3)   # pooled: one token per camera and step
        x = (self.feature_proj(feats) + self.step_embed[:to, None, None] + self.source_embed[:k, None]
             + self.token_embed)
        s = self.state_proj(state) + self.step_embed[:to] + self.source_embed[-1]
        parts = [x.reshape(b, -1, x.shape[-1])]
        if self.cfg.readout_dim > 0:
            parts.append(self.readout_proj(self.readout_token_proj(feats).flatten(2)) + self.step_embed[:to]
                         + self.readout_embed)
        return torch.cat([*parts, s], dim=1)

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
        # every query starts from the newest proprio (and readout) token: a direct path for the robot's state
        # and the whole view, which cross-attention over ~130 tokens would otherwise have to single out first
        start = self.queries + tokens[:, -1:]
        if self.cfg.readout_dim > 0:
            start = start + tokens[:, -self.n_obs_steps - 1:-self.n_obs_steps]
        out = self.decoder(start, memory)
        return self.action_out(out.flatten(1)).view(-1, self.horizon, self.action_dim)

    def compute_loss(self, tokens: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """L2 (or L1) on the normalised chunk, plus ``kl_weight`` x KL(q(z | obs, chunk) || N(0, I)) with
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
