"""``Policy``: frozen S2 encoder (optional) + proprio state + normaliser + action head.

The trainable part (``policy.core``: per-camera LayerNorm, a linear projection of the observation features,
and the head) is what the trainer optimises; the encoder is frozen and, when training on cached features,
absent. A saved checkpoint is self-contained (config, dimensions, normaliser statistics, trainable weights,
encoder identity) and :meth:`Policy.load` rebuilds and verifies the encoder from that identity.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from s2_policy.encoders.preprocess import check_images
from s2_policy.policies.config import PolicyConfig
from s2_policy.policies.diffusion_head import DiffusionHead
from s2_policy.policies.mlp_head import MLPHead
from s2_policy.policies.normalizer import LinearNormalizer
from s2_policy.policies.transformer_head import TransformerHead
from s2_policy.serialization import load_tree, save_tree

CHECKPOINT_FORMAT = "s2_policy.policy/2"
_PICKLED_FORMAT = "s2_policy.policy/1"  # torch.save files: loaded only with trust_pickle=True

def _to_plain(x: Any) -> Any:
    """OmegaConf containers / tuples -> plain dicts and lists (for torch.save and JSON)."""
    if isinstance(x, Mapping):
        return {str(k): _to_plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple) or type(x).__name__ == "ListConfig":
        return [_to_plain(v) for v in x]
    return x


def _check_finite(x: torch.Tensor, what: str) -> None:
    """Inputs reach the head unchecked otherwise: one NaN makes every action of its batch NaN."""
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} hold {int((~torch.isfinite(x)).sum())} NaN/inf values; the policy needs "
                         "finite inputs (check the sensor or the code producing them)")


class PolicyCore(nn.Module):
    """Trainable part: observation features + normalised state -> condition -> head.

    Pooled features ``F`` are LayerNorm-ed; token features ``(N, C)`` (``pooling="tokens"``: spatial layout
    kept) are LayerNorm-ed and projected per token to ``token_proj_dim`` channels, then flattened. The
    cameras' vectors are concatenated and linearly projected to ``obs_proj_dim``, and the state is appended
    per step (``use_state=false``: left out). The transformer head takes
    the LayerNorm-ed features as tokens instead (its own projection and embeddings; no flattening).
    ``forward(feats, state, action)`` returns the training loss so that DDP can wrap this module directly.
    """

    def __init__(self, cfg: PolicyConfig, feature_shape: tuple[int, ...], n_cameras: int, state_dim: int,
                 action_dim: int) -> None:
        super().__init__()
        self.n_obs_steps, self.use_state = cfg.n_obs_steps, cfg.use_state
        self.feature_shape = tuple(int(v) for v in feature_shape)
        if len(self.feature_shape) not in (1, 2):
            raise ValueError(f"features must be pooled (F,) or tokens (N, C), got shape {self.feature_shape}")
        self.reads_tokens = cfg.head == "transformer"
        # the transformer head's first layer is linear: a LayerNorm affine before it adds nothing it cannot
        # learn, and training it would need the gradient of every (N x C) input token (a third of a step)
        self.obs_norm = nn.LayerNorm(self.feature_shape[-1], elementwise_affine=not self.reads_tokens)
        if self.reads_tokens:
            self.head: nn.Module = TransformerHead(self.feature_shape, n_cameras, cfg.n_obs_steps, state_dim,
                                                   action_dim, cfg.horizon, cfg.transformer)
            return
        if len(self.feature_shape) == 2:
            tok = cfg.token_proj_dim
            self.token_proj: nn.Module = nn.Linear(self.feature_shape[-1], tok)
            per_cam = self.feature_shape[0] * tok
        else:
            self.token_proj = nn.Identity()
            per_cam = self.feature_shape[0]
        proj = cfg.obs_proj_dim
        self.obs_proj = nn.Linear(n_cameras * per_cam, proj) if proj > 0 else nn.Identity()
        step_dim = (proj if proj > 0 else n_cameras * per_cam) + (state_dim if cfg.use_state else 0)
        cond_dim = self.n_obs_steps * step_dim
        if cfg.head == "mlp":
            self.head = MLPHead(cond_dim, action_dim, cfg.horizon, cfg.mlp)
        else:
            self.head = DiffusionHead(cond_dim, action_dim, cfg.horizon, cfg.diffusion)

    def condition(self, feats: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """``feats (B, To, K, *feature_shape)`` + normalised ``state (B, To, D)`` -> the head's condition:
        ``(B, cond_dim)``, or observation tokens ``(B, L, d_model)`` for the transformer head."""
        if self.reads_tokens:
            return self.head.tokens(self.obs_norm(feats), state)
        b, to = feats.shape[:2]
        x = self.obs_proj(self.token_proj(self.obs_norm(feats)).flatten(2))
        return (torch.cat([x, state], dim=-1) if self.use_state else x).reshape(b, -1)

    def forward(self, feats: torch.Tensor, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.head.compute_loss(self.condition(feats, state), action)


class Policy(nn.Module):
    """Behaviour-cloning policy over camera features and proprio state.

    Args:
        config: a :class:`PolicyConfig` (or a mapping of its fields, e.g. ``configs/policy/*.yaml``).
        feature_dim: per-camera encoder feature size ``F`` (pooled) or ``(N, C)`` (``pooling="tokens"``).
        cameras: camera names, in the order the features are stacked.
        state_dim, action_dim: proprio and action sizes.
        normalizer: fitted :class:`LinearNormalizer` with ``state`` and ``action`` keys.
        encoder: frozen ``S2Encoder`` for image observations, or ``None`` (features only).
        encoder_identity: ``encoder.identity()`` of the encoder whose features the head was trained on.
        meta: free JSON-able metadata saved with the checkpoint (task config, training info).
    """

    def __init__(self, config: PolicyConfig | Mapping, feature_dim: int | tuple[int, int], cameras: list[str],
                 state_dim: int, action_dim: int, normalizer: LinearNormalizer,
                 encoder: nn.Module | None = None, encoder_identity: Mapping | None = None,
                 meta: Mapping | None = None) -> None:
        super().__init__()
        self.config = PolicyConfig.from_dict(config)
        for key in ("state", "action"):
            if key not in normalizer:
                raise ValueError(f"the normaliser must be fitted on {key!r} (has {normalizer.keys()})")
        if not cameras:
            raise ValueError("a policy needs at least one camera")
        self.cameras = list(cameras)
        shape = (int(feature_dim),) if np.ndim(feature_dim) == 0 else tuple(int(v) for v in feature_dim)
        self.feature_shape = shape
        self.feature_dim: int | list[int] = shape[0] if len(shape) == 1 else list(shape)
        self.state_dim, self.action_dim = int(state_dim), int(action_dim)
        self.normalizer = normalizer
        self.encoder_identity = _to_plain(encoder_identity) if encoder_identity is not None else None
        self.meta = _to_plain(meta or {})
        self.core = PolicyCore(self.config, self.feature_shape, len(self.cameras), self.state_dim,
                               self.action_dim)
        self.encoder: nn.Module | None = None
        if encoder is not None:
            self.attach_encoder(encoder)
        self._last_chunks: dict[int, torch.Tensor] = {}  # env id -> its last normalised chunk (inpainting)

    # -- properties ---------------------------------------------------------------------------------------
    @property
    def n_obs_steps(self) -> int:
        return self.config.n_obs_steps

    @property
    def n_action_steps(self) -> int:
        return self.config.n_action_steps

    @property
    def horizon(self) -> int:
        return self.config.horizon

    @property
    def temporal_ensemble_m(self) -> float | None:
        """ACT's ``m`` when the head asks for temporal ensembling (query every step, average the overlapping
        predictions with weights ``exp(-m * i)``, ``i = 0`` the oldest); ``None`` for chunked execution."""
        block = getattr(self.config, self.config.head)
        return float(block.temporal_ensemble_m) if block.temporal_ensemble else None

    @property
    def device(self) -> torch.device:
        return next(self.core.parameters()).device

    def trainable_parameters(self) -> int:
        """Number of trainable parameters (the head side; the encoder is frozen)."""
        return sum(p.numel() for p in self.core.parameters() if p.requires_grad)

    def attach_encoder(self, encoder: nn.Module) -> None:
        """Use ``encoder`` for image observations; its fingerprint must match the stored identity."""
        from s2_policy.encoders import fingerprint

        if self.encoder_identity is not None:
            want, got = self.encoder_identity.get("fingerprint"), fingerprint(encoder)
            if want is not None and want != got:
                raise ValueError(f"encoder fingerprint {got} does not match the one this policy was trained "
                                 f"on ({want}); rebuild the encoder from policy.encoder_identity")
        else:
            self.encoder_identity = _to_plain(encoder.identity())
        if getattr(encoder, "out_dim", self.feature_shape[-1]) != self.feature_shape[-1]:
            raise ValueError(f"encoder out_dim {encoder.out_dim} != the policy's feature size "
                             f"{self.feature_shape[-1]}")
        for p in encoder.parameters():
            p.requires_grad_(False)
        self.encoder = encoder.eval().to(self.device)

    @property
    def inpaints(self) -> bool:
        """Whether chunks are tied to the previous chunk of their env (``policy.diffusion.inpaint``)."""
        return self.config.head == "diffusion" and self.config.diffusion.inpaint != "none"

    def inpaint_weights(self, shift: int) -> torch.Tensor:
        """Weights ``(horizon,)`` of the previous chunk, shifted by the ``shift`` steps executed since, in
        the new chunk: 1 where it holds an executed action, and for ``inpaint=plan`` its unexecuted plan with
        weights falling linearly to 0 across the overlap; 0 where it has no prediction."""
        j, last_obs, overlap = torch.arange(self.horizon), self.n_obs_steps - 1, self.horizon - shift
        w = ((j >= last_obs - shift) & (j < last_obs)).float()          # actions already executed
        if self.config.diffusion.inpaint == "plan":
            w = torch.where(j >= last_obs, 1.0 - (j - last_obs + 1) / (overlap - last_obs + 1), w)
        return torch.where(j < overlap, w, 0.0)

    def reset(self, env_ids: Iterable[int] | None = None) -> None:
        """Forget the chunks remembered for ``env_ids`` (every env if ``None``): call at each episode start
        when predicting with ``env_ids``."""
        if env_ids is None:
            self._last_chunks.clear()
        for e in env_ids or ():
            self._last_chunks.pop(int(e), None)

    def _inpaint_prior(self, env_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The previous chunks of ``env_ids`` moved to the new chunk's steps, and their weights."""
        shift = 1 if self.temporal_ensemble_m is not None else self.n_action_steps
        w = self.inpaint_weights(shift)
        prior = torch.zeros(len(env_ids), self.horizon, self.action_dim, device=self.device)
        weight = torch.zeros(len(env_ids), self.horizon, device=self.device)
        for row, e in enumerate(env_ids):
            last = self._last_chunks.get(int(e))
            if last is not None and shift < self.horizon:
                prior[row, :self.horizon - shift] = last[shift:]
                weight[row] = w.to(self.device)
        return prior, weight

    # -- inference ----------------------------------------------------------------------------------------
    def _tensor(self, x: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
        return t.to(self.device, dtype=dtype) if dtype is not None else t.to(self.device)

    def _check_obs(self, obs: Mapping) -> None:
        missing = [k for k in (*self.cameras, "state") if k not in obs]
        if missing:
            raise KeyError(f"observation is missing keys {missing}; the policy expects "
                           f"{[*self.cameras, 'state']}")

    @torch.no_grad()
    def encode_obs(self, obs: Mapping) -> torch.Tensor:
        """Camera observations -> features ``(B, To, K, *feature_shape)``.

        ``obs[cam]`` is uint8 ``(B, To, H, W, 3)`` (encoded with the attached encoder, every camera and
        timestep in one call) or already-computed features ``(B, To, F)`` / ``(B, To, N, C)``.
        """
        self._check_obs(obs)
        first = obs[self.cameras[0]]
        if np.ndim(first) == 2 + len(self.feature_shape):
            feats = torch.stack([self._tensor(obs[c], torch.float32) for c in self.cameras], dim=2)
            _check_finite(feats, "observation features")
        else:
            if self.encoder is None:
                raise ValueError("image observations need an encoder: load the policy with load_encoder=True "
                                 "or call attach_encoder(), or pass cached features (B, To, F)")
            imgs = [self._tensor(obs[c]) for c in self.cameras]
            for c, im in zip(self.cameras, imgs, strict=True):
                check_images(im, where=f"camera {c!r} images")
            b, to = imgs[0].shape[:2]
            flat = [im.reshape(b * to, *im.shape[2:]) for im in imgs]
            enc = self.encoder.encode_cameras(flat).float()
            feats = enc.reshape(b, to, *enc.shape[1:])
        if tuple(feats.shape[3:]) != self.feature_shape:
            raise ValueError(f"observation features have shape {tuple(feats.shape[3:])}, the policy expects "
                             f"{self.feature_shape}")
        return feats[:, -self.n_obs_steps:]

    @torch.no_grad()
    def predict_from_features(self, feats: torch.Tensor, state: Any, generator: torch.Generator | None = None,
                              env_ids: Sequence[int] | None = None) -> torch.Tensor:
        """Features ``(B, To, K, F)`` + raw state ``(B, To, D)`` -> env actions ``(B, n_action_steps, A)``.

        ``env_ids`` (one per row) name the episodes the rows continue: with ``policy.diffusion.inpaint`` each
        new chunk is tied to that env's previous chunk, which assumes the env executed ``n_action_steps``
        actions since (one with temporal ensembling); :meth:`reset` an env when its episode starts.
        """
        state = self._tensor(state, torch.float32)[:, -self.n_obs_steps:]
        if state.ndim != 3 or state.shape[-1] != self.state_dim:
            raise ValueError(f"state must be (B, To, {self.state_dim}), got {tuple(state.shape)}")
        _check_finite(state, "state")
        if feats.shape[1] != self.n_obs_steps or state.shape[1] != self.n_obs_steps:
            raise ValueError(f"need n_obs_steps={self.n_obs_steps} observation steps, got features "
                             f"{tuple(feats.shape)} and state {tuple(state.shape)}")
        cond = self.core.condition(feats.to(self.device), self.normalizer.normalize("state", state))
        if env_ids is not None and self.inpaints:
            if len(env_ids) != cond.shape[0]:
                raise ValueError(f"env_ids names {len(env_ids)} envs for a batch of {cond.shape[0]}")
            prior, weight = self._inpaint_prior(env_ids)
            chunk = self.core.head.predict(cond, generator=generator, prior=prior, prior_weight=weight)
            for row, e in enumerate(env_ids):
                self._last_chunks[int(e)] = chunk[row].clone()
        else:
            chunk = self.core.head.predict(cond, generator=generator)
        start = self.n_obs_steps - 1
        actions = self.normalizer.unnormalize("action", chunk[:, start:start + self.n_action_steps])
        return actions.float()

    @torch.no_grad()
    def predict_action(self, obs: Mapping, generator: torch.Generator | None = None,
                       env_ids: Sequence[int] | None = None) -> torch.Tensor:
        """Observation history -> action chunk ``(B, n_action_steps, A)`` float32 in env units (``env_ids``:
        :meth:`predict_from_features`)."""
        return self.predict_from_features(self.encode_obs(obs), obs["state"], generator=generator,
                                          env_ids=env_ids)

    # -- checkpoints --------------------------------------------------------------------------------------
    def checkpoint_dict(self) -> dict:
        """Self-contained description of this policy (no encoder weights): what :meth:`save` writes."""
        return {
            "format": CHECKPOINT_FORMAT, "config": self.config.to_dict(),
            "dims": {"feature_dim": self.feature_dim, "cameras": self.cameras, "state_dim": self.state_dim,
                     "action_dim": self.action_dim},
            "normalizer": self.normalizer.state_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in self.core.state_dict().items()},
            "encoder_identity": self.encoder_identity, "meta": self.meta,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the checkpoint atomically: one safetensors file, weights as tensors, the rest as JSON.

        See docs/checkpoints.md for the layout; the file loads without unpickling anything.
        """
        ckpt = self.checkpoint_dict()
        fmt = ckpt.pop("format")
        return save_tree(ckpt, path, fmt)

    @classmethod
    def from_checkpoint_dict(cls, ckpt: Mapping, device: str | torch.device = "cpu",
                             load_encoder: bool = True) -> Policy:
        """Rebuild a policy from :meth:`checkpoint_dict` output."""
        if ckpt.get("format") not in (CHECKPOINT_FORMAT, _PICKLED_FORMAT):
            raise ValueError(f"not an s2_policy policy checkpoint (format {ckpt.get('format')!r}, "
                             f"expected {CHECKPOINT_FORMAT!r})")
        norm = LinearNormalizer()
        norm.load_state_dict(ckpt["normalizer"])
        d = ckpt["dims"]
        config = dict(ckpt["config"])
        if "diffusion" in config and "timestep_spacing" not in config["diffusion"]:
            # written before the setting existed: keep sampling the way it was trained and evaluated
            config["diffusion"] = {**config["diffusion"], "timestep_spacing": "leading"}
        if config.get("head") == "transformer" and "readout_dim" not in config.get("transformer", {}):
            raise ValueError("this transformer-head checkpoint was written before the head's chunk readout "
                             "(s2_policy round six) and its weights do not fit the current head; retrain it: "
                             "python train_policy.py policy=transformer")
        policy = cls(config, d["feature_dim"], d["cameras"], d["state_dim"], d["action_dim"], norm,
                     encoder_identity=ckpt.get("encoder_identity"), meta=ckpt.get("meta"))
        policy.core.load_state_dict(ckpt["state_dict"])
        policy.to(device).eval()
        if load_encoder:
            if policy.encoder_identity is None:
                raise ValueError("this checkpoint stores no encoder identity; load with load_encoder=False "
                                 "and feed features")
            from s2_policy.encoders import build_encoder_from_identity

            overrides = {"device": str(device)} if str(device) != "cpu" else {}
            policy.attach_encoder(build_encoder_from_identity(policy.encoder_identity, **overrides))
        return policy

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu",
             load_encoder: bool = True, trust_pickle: bool = False) -> Policy:
        """Load a checkpoint written by :meth:`save`; rebuilds and verifies the encoder unless told not to.

        Checkpoints of the earlier pickled format (``torch.save``) can run code when loaded: they are refused
        unless ``trust_pickle=True`` (re-save them to convert).
        """
        ckpt = load_tree(path, (CHECKPOINT_FORMAT, _PICKLED_FORMAT), what="policy checkpoint",
                         trust_pickle=trust_pickle,
                         opt_in="Policy.load(path, trust_pickle=True) (evaluate: +trust_pickle=true)")
        return cls.from_checkpoint_dict(ckpt, device=device, load_encoder=load_encoder)
