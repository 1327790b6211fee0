"""S2Encoder: a frozen ViT run with S2 over one or several cameras, every tile in one backbone batch."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..s2 import TilingPlan, _pair
from .backbones import MVP_ARCHS, backbone_info, create_backbone
from .checkpoint import load_backbone_weights, read_state_dict, resolve_checkpoint
from .config import EncoderConfig
from .fingerprint import fingerprint, weights_digest
from .precision import resolve_precision
from .preprocess import Preprocessor
from .quantize import quantize_linears

Images = torch.Tensor | np.ndarray


class S2Encoder(nn.Module):
    """Frozen backbone + preprocessing + S2 tiling + pooling.

    Input images are resized to the largest S2 size; every scale is a bicubic resize of that image cut into
    tiles of the backbone's native size (see :mod:`s2_policy.s2`). ``forward`` returns ``(B, out_dim)``
    float32 features (``(B, T, out_dim)`` tokens for ``pooling="tokens"``). The module never trains: its
    parameters do not require grad, ``train()`` keeps it in eval mode, and it computes under inference mode.
    """

    def __init__(
        self, backbone: nn.Module, config: EncoderConfig, checkpoint_path: str | None = None
    ) -> None:
        super().__init__()
        self.config = config
        self.checkpoint_path = checkpoint_path
        info = backbone_info(backbone, config.backbone)
        self.native_size = info.native_size
        self.patch_size = info.patch_size
        self.embed_dim = info.embed_dim
        self.num_prefix_tokens = info.num_prefix_tokens
        if config.pooling in ("cls", "cls+mean") and self.num_prefix_tokens == 0:
            raise ValueError(f"{config.backbone!r} has no CLS token: use pooling='mean' or 'tokens'")
        self.img_sizes = self._resolve_img_sizes(config)
        split = config.max_split_size
        self.max_split_size = self.native_size if split is None else _pair(split, "max_split_size")
        # Inputs are brought to the largest scale; smaller scales are bicubic downsamples of it.
        self.input_size = max(self.img_sizes, key=lambda s: s[0] * s[1])
        self.plan = TilingPlan.build(self.input_size, self.img_sizes, self.max_split_size,
                                     antialias=config.scale_antialias)
        for tile, _ in self.plan.groups:
            if tile != self.native_size and not info.dynamic_img_size:
                raise ValueError(
                    f"S2 tiles of {tile} do not match the backbone's native size {self.native_size}: use "
                    f"img_sizes that are multiples of it and max_split_size={self.native_size}"
                )
        n_scales = len(self.img_sizes)
        self.out_dim = self.embed_dim * n_scales * (2 if config.pooling == "cls+mean" else 1)
        self.num_tokens = self.num_prefix_tokens + math.prod(
            s // p for s, p in zip(self._output_grid_pixels(), self.patch_size, strict=True)
        )

        self.weights_digest = weights_digest(backbone)  # before any dtype change: canonical fp32 weights
        device = torch.device(config.device)
        self.compute_dtype = resolve_precision(config.precision, device)
        backbone = backbone.to(device=device, dtype=self.compute_dtype).eval().requires_grad_(False)
        self.int8_layers = quantize_linears(backbone) if config.precision == "int8" else 0
        self.backbone = backbone
        self.preprocess = Preprocessor(self.input_size, config.normalize, config.resize,
                                       check=config.check_inputs).to(device)
        features = backbone.forward_features
        self._features = torch.compile(features) if config.compile else features
        self._fingerprint: str | None = None

    # -- configuration -----------------------------------------------------------------------------------
    def _resolve_img_sizes(self, config: EncoderConfig) -> list[tuple[int, int]]:
        nh, nw = self.native_size
        if config.img_sizes is not None:
            return [_pair(s if isinstance(s, int) else tuple(s), "img_sizes entry") for s in config.img_sizes]
        scales = config.scales or [1.0]
        sizes = [(round(nh * s), round(nw * s)) for s in scales]
        for s, (h, w) in zip(scales, sizes, strict=True):
            if abs(h - nh * s) > 1e-6 or abs(w - nw * s) > 1e-6:
                raise ValueError(f"scale {s} of the native size {self.native_size} is not a whole pixel size")
        return sizes

    def _output_grid_pixels(self) -> tuple[int, int]:
        s = self.plan.scales[self.plan.resize_output_to_idx]
        return (s.splits[0] * s.tile[0], s.splits[1] * s.tile[1])

    @property
    def device(self) -> torch.device:
        return self.preprocess.mean.device

    def train(self, mode: bool = True) -> S2Encoder:
        """Frozen: stays in eval mode whatever the parent module asks."""
        return super().train(False)

    # -- forward -----------------------------------------------------------------------------------------
    def forward(self, images: Images) -> torch.Tensor:
        """(B, H, W, 3) uint8 or (B, 3, H, W) float in [0, 1] -> (B, out_dim) float32."""
        return self.encode_cameras([images])[:, 0]

    def encode_cameras(self, cameras: Sequence[Images]) -> torch.Tensor:
        """K camera batches (each B images, any sizes) -> (B, K, out_dim) float32, one backbone call in all.

        With ``pooling="tokens"`` the result is (B, K, num_tokens, out_dim).
        """
        if isinstance(cameras, torch.Tensor | np.ndarray) or len(cameras) == 0:
            raise ValueError("encode_cameras takes a non-empty list of per-camera image batches")
        with torch.inference_mode():
            xs = []
            for i, cam in enumerate(cameras):
                try:
                    xs.append(self.preprocess(cam))
                except ValueError as e:
                    raise ValueError(f"camera {i} of {len(cameras)}: {e}") from e
            b = xs[0].shape[0]
            if any(x.shape[0] != b for x in xs):
                raise ValueError(f"all cameras need the same batch size, got {[x.shape[0] for x in xs]}")
            feats = self.encode_preprocessed(torch.cat(xs, dim=0))
            feats = feats.reshape(len(xs), b, *feats.shape[1:]).transpose(0, 1)
        return feats.clone()  # a normal tensor that autograd code downstream may use

    def encode_preprocessed(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised (N, 3, *input_size) float32 images -> pooled features (the hot path)."""
        with torch.inference_mode():
            outs = [self._features(t) for t in self.plan.tile(x, self.compute_dtype)]
            return self.pool(outs, x.shape[0])

    def pool(self, outs: Sequence[torch.Tensor], n: int) -> torch.Tensor:
        """Backbone outputs of the plan's tile batches for ``n`` images -> pooled float32 features."""
        p = self.num_prefix_tokens
        if self.config.pooling == "cls":  # only the CLS tokens leave the backbone's dtype
            return self.plan.merge_prefix([o[:, :1].float() for o in outs], n, 1)[:, 0]
        tokens = self.plan.merge([o.float() for o in outs], n, p, "bnc")
        if self.config.pooling == "tokens":
            return tokens
        mean = tokens[:, p:].mean(dim=1)
        if self.config.pooling == "mean":
            return mean
        return torch.cat([tokens[:, 0], mean], dim=-1)

    # -- identity ----------------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """Cached :func:`s2_policy.encoders.fingerprint.fingerprint` of this encoder."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self)
        return self._fingerprint

    def identity(self) -> dict[str, Any]:
        """JSON-able dict (config, resolved checkpoint path, fingerprint, out_dim) to rebuild and verify."""
        return {
            "config": self.config.to_dict(),
            "checkpoint_path": self.checkpoint_path,
            "fingerprint": self.fingerprint(),
            "out_dim": self.out_dim,
        }

    def extra_repr(self) -> str:
        return (
            f"backbone={self.config.backbone!r}, img_sizes={self.img_sizes}, tiles={self.plan.n_tiles}, "
            f"pooling={self.config.pooling!r}, out_dim={self.out_dim}, dtype={self.compute_dtype}, "
            f"int8_layers={self.int8_layers}"
        )


def build_torch_encoder(config: EncoderConfig) -> S2Encoder:
    """The PyTorch :class:`S2Encoder` of ``config`` (backbone created, checkpoint loaded and checked).

    ``config.runtime`` is not read here: :func:`s2_policy.encoders.factory.build_encoder` chooses the runtime,
    so this module knows nothing of exported graphs.
    """
    if config.runtime != "torch":
        raise ValueError(f"build_torch_encoder builds runtime='torch', not {config.runtime!r}: use "
                         "s2_policy.encoders.build_encoder, which chooses the runtime")
    backbone = create_backbone(config.backbone, config.pretrained, config.arch_kwargs)
    path = None
    if config.checkpoint:
        resolved = resolve_checkpoint(config.checkpoint)
        path = str(resolved)
        state_dict = read_state_dict(resolved, config.trust_checkpoint)
        load_backbone_weights(backbone, state_dict, source=path)
    elif config.backbone in MVP_ARCHS:
        raise ValueError(
            f"backbone {config.backbone!r} is an MVP model: pass checkpoint=/path/to/its .pth file "
            "(see docs/encoders.md); random MVP weights would be silently meaningless"
        )
    return S2Encoder(backbone, config, checkpoint_path=path)
