"""Backbone construction: project ViTs (CPU pipeline), the five MVP ViTs, and any timm ViT by name."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

# Project ViTs for the CPU pipeline (64 px, patch 8). Per-tile compute relative to s2p-tiny: s2p-nano ~0.3x
# (the real-time encoder), s2p-small ~3.6x.
PROJECT_ARCHS: dict[str, dict[str, Any]] = {
    "s2p-nano": {"img_size": 64, "patch_size": 8, "embed_dim": 128, "depth": 4, "num_heads": 2},
    "s2p-tiny": {"img_size": 64, "patch_size": 8, "embed_dim": 192, "depth": 6, "num_heads": 3},
    "s2p-small": {"img_size": 64, "patch_size": 8, "embed_dim": 256, "depth": 12, "num_heads": 4},
}

_VIT_S = {"img_size": 224, "patch_size": 16, "embed_dim": 384, "depth": 12, "num_heads": 12}  # MVP: 12 heads
_VIT_B = {"img_size": 224, "patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12}
_VIT_L = {"img_size": 256, "patch_size": 16, "embed_dim": 1024, "depth": 24, "num_heads": 16}

# MVP (Radosavovic et al.): name -> (architecture, the checkpoint file users bring).
MVP_ARCHS: dict[str, tuple[dict[str, Any], str]] = {
    "vits-mae-hoi": (_VIT_S, "mae_pretrain_hoi_vit_small.pth"),
    "vits-mae-in": (_VIT_S, "mae_pretrain_imagenet_vit_small.pth"),
    "vits-sup-in": (_VIT_S, "sup_pretrain_imagenet_vit_small.pth"),
    "vitb-mae-egosoup": (_VIT_B, "mae_pretrain_egosoup_vit_base.pth"),
    "vitl-256-mae-egosoup": (_VIT_L, "mae_pretrain_egosoup_vit_large_256.pth"),
}

# Seed for randomly initialised backbones, so that two processes build identical weights (and fingerprints).
INIT_SEED = 0


@dataclass(frozen=True)
class BackboneInfo:
    """What S2 and the encoder need to know about a ViT backbone."""

    native_size: tuple[int, int]
    patch_size: tuple[int, int]
    embed_dim: int
    num_prefix_tokens: int
    dynamic_img_size: bool


def _vit(arch: dict[str, Any], arch_kwargs: dict[str, Any]) -> VisionTransformer:
    kwargs = {"qkv_bias": True, "norm_layer": partial(nn.LayerNorm, eps=1e-6), "num_classes": 0, **arch}
    kwargs.update(arch_kwargs)
    return VisionTransformer(**kwargs)


def create_backbone(
    name: str, pretrained: bool = False, arch_kwargs: dict[str, Any] | None = None
) -> nn.Module:
    """Build the backbone ``name`` without classifier head (``num_classes=0``).

    Random initialisation is seeded (``INIT_SEED``) so that it is identical across processes. ``pretrained``
    is only honoured for timm names and downloads weights: only set it when the user asks and is online.
    """
    if pretrained and (name in PROJECT_ARCHS or name in MVP_ARCHS):
        raise ValueError(f"pretrained=True only applies to timm names; give {name!r} a checkpoint instead")
    arch_kwargs = dict(arch_kwargs or {})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        if name in PROJECT_ARCHS:
            model = _vit(PROJECT_ARCHS[name], arch_kwargs)
        elif name in MVP_ARCHS:
            model = _vit(MVP_ARCHS[name][0], arch_kwargs)
        else:
            if not timm.is_model(name):
                raise ValueError(
                    f"unknown backbone {name!r}: use one of {sorted(PROJECT_ARCHS) + sorted(MVP_ARCHS)} "
                    "or a timm model name (timm.list_models('vit_*'))"
                )
            model = timm.create_model(name, pretrained=pretrained, num_classes=0, **arch_kwargs)
    backbone_info(model, name)  # fail early on models that are not ViTs
    return model


def backbone_info(model: nn.Module, name: str = "backbone") -> BackboneInfo:
    """Read the ViT geometry from a timm-style model; ``ValueError`` for models S2Encoder cannot drive."""
    patch_embed = getattr(model, "patch_embed", None)
    needed = hasattr(model, "forward_features") and hasattr(model, "num_prefix_tokens")
    if not needed or patch_embed is None:
        raise ValueError(
            f"{name!r} is not a timm ViT-style model "
            "(needs forward_features, patch_embed and num_prefix_tokens)"
        )
    img_size = patch_embed.img_size
    patch = patch_embed.patch_size
    if img_size is None:
        raise ValueError(f"{name!r} has no fixed input size; build it with img_size=... in arch_kwargs")
    return BackboneInfo(
        native_size=(int(img_size[0]), int(img_size[1])),
        patch_size=(int(patch[0]), int(patch[1])),
        embed_dim=int(model.embed_dim),
        num_prefix_tokens=int(model.num_prefix_tokens),
        dynamic_img_size=bool(getattr(model, "dynamic_img_size", False)),
    )
