"""robomimic 0.3 adapter: use a frozen S2 encoder as a robomimic visual backbone / observation encoder core.

robomimic resolves backbone classes by name with ``eval`` inside ``robomimic.models.obs_core`` and encoder
cores through ``ObsUtils.OBS_ENCODER_CORES``. Importing this module (or calling :func:`register`) makes both
names resolvable:

- ``VisualCore(input_shape, backbone_class="S2Backbone", pool_class=None, backbone_kwargs={...})``
- ``core_class="S2VisualCore"`` in a robomimic config's ``observation.encoder.rgb`` section
  (``core_kwargs: {backbone_kwargs: {backbone: s2p-tiny, scales: [1, 2]}, feature_dimension: 64}``).

``backbone_kwargs`` are :class:`s2_policy.encoders.EncoderConfig` fields. robomimic feeds images as float
(B, 3, H, W) in [0, 1], which the encoder accepts directly; the encoder stays frozen and in eval mode.
"""

from __future__ import annotations

from typing import Any

import robomimic.models.obs_core as obs_core
import robomimic.utils.obs_utils as obs_utils
from robomimic.models.base_nets import ConvBase

from ..encoders import EncoderConfig, S2Encoder, build_encoder

__all__ = ["S2Backbone", "S2VisualCore", "register"]


class S2Backbone(ConvBase):
    """robomimic ``ConvBase`` wrapping a frozen :class:`S2Encoder`; output shape ``[out_dim]``."""

    def __init__(
        self,
        input_channel: int = 3,
        backbone: str = "s2p-tiny",
        checkpoint: str | None = None,
        scales: list[float] | None = None,
        img_sizes: list[Any] | None = None,
        max_split_size: int | list[int] | None = None,
        pooling: str = "cls",
        normalize: str = "imagenet",
        resize: str = "crop",
        precision: str = "auto",
        trust_checkpoint: bool = False,
        device: str = "cpu",
        arch_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if input_channel != 3:
            raise ValueError(f"S2Backbone takes RGB images (3 channels), got input_channel={input_channel}")
        if pooling == "tokens":
            raise ValueError("pooling='tokens' gives no vector per image: use pooling cls, mean or cls+mean")
        config = EncoderConfig(
            backbone=backbone, checkpoint=checkpoint, scales=scales, img_sizes=img_sizes,
            max_split_size=max_split_size, pooling=pooling, normalize=normalize, resize=resize,
            precision=precision, trust_checkpoint=trust_checkpoint, device=device,
            arch_kwargs=arch_kwargs or {},
        )
        self.encoder: S2Encoder = build_encoder(config)
        self.nets = self.encoder  # ConvBase.forward runs self.nets and checks output_shape

    def output_shape(self, input_shape: list[int] | tuple[int, ...]) -> list[int]:
        """Feature shape for an input of ``input_shape`` (C, H, W): ``[out_dim]`` whatever the image size."""
        if len(input_shape) != 3 or input_shape[0] != 3:
            raise ValueError(f"S2Backbone expects (3, H, W) inputs, got {tuple(input_shape)}")
        return [self.encoder.out_dim]


class S2VisualCore(obs_core.VisualCore):
    """robomimic encoder core (``core_class="S2VisualCore"``): S2Backbone + optional linear projection."""

    def __init__(
        self,
        input_shape: list[int] | tuple[int, ...],
        backbone_kwargs: dict[str, Any] | None = None,
        feature_dimension: int | None = None,
    ) -> None:
        super().__init__(
            input_shape=input_shape,
            backbone_class="S2Backbone",
            pool_class=None,
            backbone_kwargs=dict(backbone_kwargs or {}),
            flatten=True,
            feature_dimension=feature_dimension,
        )


def register() -> None:
    """Make ``S2Backbone`` resolvable by robomimic's ``eval`` and ``S2VisualCore`` a registered core.

    Idempotent; runs on import of this module.
    """
    obs_core.S2Backbone = S2Backbone  # type: ignore[attr-defined]
    obs_utils.OBS_ENCODER_CORES.setdefault("S2VisualCore", S2VisualCore)


register()
