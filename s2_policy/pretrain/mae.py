"""Masked autoencoder (He et al. 2022, as used by MVP) around a timm VisionTransformer encoder.

The encoder is a plain ``timm`` ``VisionTransformer`` (no classifier head), so its ``state_dict`` has exactly
the key layout of MVP checkpoints (``cls_token``, ``pos_embed``, ``patch_embed.proj.*``, ``blocks.N.*``,
``norm.*``) and the exported file loads through the same code path as real MVP weights. Position embeddings
of encoder and decoder are fixed 2-D sin-cos tables (the ``cls`` slot is zero), stored as frozen parameters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from s2_policy.encoders.backbones import PROJECT_ARCHS

# The project ViT architectures (``s2p-nano`` / ``s2p-tiny`` / ``s2p-small``): one definition, shared with
# the encoders, so an exported MAE encoder always loads into the backbone of the same name.
ARCHS: dict[str, dict[str, Any]] = PROJECT_ARCHS


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int, cls_token: bool = False) -> np.ndarray:
    """MAE's fixed 2-D sin-cos table, ``(grid_size**2 [+1], embed_dim)``; the optional cls row is zeros.

    Half the channels encode the column (x) and half the row (y) coordinate, each as sin/cos of the
    coordinate times geometric frequencies ``1 / 10000**(k / (D/4))`` -- the exact layout of the MAE
    reference code, so checkpoints are interchangeable with it.
    """
    if embed_dim % 4 != 0:
        raise ValueError(f"embed_dim must be divisible by 4 for 2-D sin-cos embeddings, got {embed_dim}")
    coords = np.arange(grid_size, dtype=np.float64)
    grid_w, grid_h = np.meshgrid(coords, coords)  # grid_w varies along columns (x), grid_h along rows (y)
    omega = 1.0 / 10000 ** (np.arange(embed_dim // 4, dtype=np.float64) / (embed_dim / 4.0))

    def _1d(pos: np.ndarray) -> np.ndarray:
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([_1d(grid_w), _1d(grid_h)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros((1, embed_dim)), emb], axis=0)
    return emb.astype(np.float32)


def build_vit(arch: str | dict[str, Any]) -> VisionTransformer:
    """A headless timm ``VisionTransformer`` with MVP conventions (qkv bias, LayerNorm eps 1e-6).

    ``arch`` is a name from :data:`ARCHS` or a dict of ``img_size, patch_size, embed_dim, depth, num_heads``.
    """
    if isinstance(arch, str):
        if arch not in ARCHS:
            raise ValueError(
                f"unknown MAE architecture {arch!r}; choose one of {sorted(ARCHS)} or pass a dict"
            )
        arch = ARCHS[arch]
    required = {"img_size", "patch_size", "embed_dim", "depth", "num_heads"}
    missing = required - set(arch)
    if missing:
        raise ValueError(f"architecture dict is missing {sorted(missing)}")
    if arch["img_size"] % arch["patch_size"]:
        raise ValueError(f"img_size {arch['img_size']} is not a multiple of patch_size {arch['patch_size']}")
    return VisionTransformer(
        num_classes=0,
        global_pool="token",
        qkv_bias=True,
        mlp_ratio=4.0,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        **arch,
    )


@dataclass
class MAEConfig:
    """Sizes of the masked autoencoder: encoder architecture, light decoder and masking ratio."""

    arch: str = "s2p-tiny"
    arch_overrides: dict[str, Any] = field(default_factory=dict)
    decoder_embed_dim: int = 128
    decoder_depth: int = 2
    decoder_num_heads: int = 4
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True

    def arch_dict(self) -> dict[str, Any]:
        """The encoder architecture: the named preset with ``arch_overrides`` applied."""
        if self.arch not in ARCHS:
            raise ValueError(f"unknown MAE architecture {self.arch!r}; choose one of {sorted(ARCHS)}")
        return {**ARCHS[self.arch], **self.arch_overrides}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class MaskedAutoencoder(nn.Module):
    """MAE: encode a random 25% of patches with the ViT, reconstruct the rest with a light decoder.

    ``self.encoder`` is the timm ViT that gets exported; every decoder module is named ``decoder_*`` (plus
    ``mask_token``) as in the MAE reference code.
    """

    def __init__(self, config: MAEConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or MAEConfig()
        if not 0.0 <= config.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {config.mask_ratio}")
        self.encoder = build_vit(config.arch_dict())
        pe = self.encoder.patch_embed
        self.patch_size: int = pe.patch_size[0]
        self.grid_size: int = pe.grid_size[0]
        num_patches = pe.num_patches
        dim = self.encoder.embed_dim
        ddim = config.decoder_embed_dim

        self.decoder_embed = nn.Linear(dim, ddim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, ddim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, ddim), requires_grad=False)
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.decoder_blocks = nn.ModuleList(
            Block(ddim, config.decoder_num_heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=norm)
            for _ in range(config.decoder_depth)
        )
        self.decoder_norm = norm(ddim)
        self.decoder_pred = nn.Linear(ddim, self.patch_size**2 * 3)
        self._init_weights()

    def _init_weights(self) -> None:
        enc = self.encoder
        enc.pos_embed.requires_grad_(False)
        enc.pos_embed.data.copy_(
            torch.from_numpy(get_2d_sincos_pos_embed(enc.embed_dim, self.grid_size, cls_token=True))[None]
        )
        self.decoder_pos_embed.data.copy_(
            torch.from_numpy(
                get_2d_sincos_pos_embed(self.decoder_pos_embed.shape[-1], self.grid_size, cls_token=True)
            )[None]
        )
        w = enc.patch_embed.proj.weight.data  # initialise like a Linear layer (MAE)
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(enc.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for module in [*enc.blocks.modules(), *enc.norm.modules(), *self._decoder_modules()]:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _decoder_modules(self) -> list[nn.Module]:
        return [self.decoder_embed, *self.decoder_blocks.modules(), self.decoder_norm, self.decoder_pred]

    # ---------------------------------------------------------------- patches
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, L, p*p*3)`` with patches in row-major order, pixels as (p, p, C)."""
        p, g = self.patch_size, self.grid_size
        if imgs.shape[1:] != (3, p * g, p * g):
            raise ValueError(f"expected images of shape (B, 3, {p * g}, {p * g}), got {tuple(imgs.shape)}")
        x = imgs.reshape(imgs.shape[0], 3, g, p, g, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(imgs.shape[0], g * g, p * p * 3)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`patchify`."""
        p, g = self.patch_size, self.grid_size
        x = x.reshape(x.shape[0], g, g, p, p, 3)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], 3, g * p, g * p)

    # ---------------------------------------------------------------- model
    def random_masking(
        self, x: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keep a random subset of tokens per sample (argsort of uniform noise).

        Returns the kept tokens, the binary mask (1 = removed) in original patch order, and the indices that
        restore the original order.
        """
        n, length, dim = x.shape
        len_keep = max(1, int(round(length * (1 - mask_ratio))))
        noise = torch.rand(n, length, device=x.device, generator=generator)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        x_kept = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, dim))
        mask = torch.ones(n, length, device=x.device)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return x_kept, mask, ids_restore

    def forward_encoder(
        self, imgs: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        enc = self.encoder
        x = enc.patch_embed(imgs) + enc.pos_embed[:, 1:]
        x, mask, ids_restore = self.random_masking(x, mask_ratio, generator)
        cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in enc.blocks:
            x = blk(x)
        return enc.norm(x), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(latent)
        n_masked = ids_restore.shape[1] + 1 - x.shape[1]
        tokens = torch.cat([x[:, 1:], self.mask_token.expand(x.shape[0], n_masked, -1)], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore[..., None].expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def target(self, imgs: torch.Tensor) -> torch.Tensor:
        """Reconstruction target per patch: pixels, normalised by the patch's own mean/var if configured."""
        target = self.patchify(imgs)
        if self.config.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        return target

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error over the removed patches only."""
        loss = ((pred.float() - self.target(imgs)) ** 2).mean(dim=-1)
        return (loss * mask).sum() / mask.sum().clamp_min(1.0)

    def forward(
        self, imgs: torch.Tensor, mask_ratio: float | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``imgs``: ``(B, 3, H, W)`` normalised images. Returns ``(loss, pred patches, mask)``."""
        ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, ids_restore = self.forward_encoder(imgs, ratio, generator)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask

    @torch.no_grad()
    def reconstruct(self, imgs: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """Predicted patches back to image space, undoing the per-patch normalisation with true statistics."""
        if self.config.norm_pix_loss:
            target = self.patchify(imgs)
            mean = target.mean(dim=-1, keepdim=True)
            std = (target.var(dim=-1, keepdim=True) + 1.0e-6) ** 0.5
            pred = pred.float() * std + mean
        return self.unpatchify(pred)

    def encoder_state_dict(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The exportable timm ViT weights (MVP key layout), optionally cast to ``dtype``."""
        sd = {k: v.detach().cpu().clone() for k, v in self.encoder.state_dict().items()}
        if dtype is not None:
            sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
        return sd
