"""Image preprocessing for S2 encoders: uint8 HWC / float CHW -> normalised float CHW at the S2 input size."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

NORMALIZATION_STATS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def check_images(images: torch.Tensor, where: str = "images") -> None:
    """Raise ValueError (naming ``where`` and the fix) for unusable values or sizes.

    Float images must lie in [0, 1] with no NaN/inf; frames must not be empty. One min/max pass over a float
    batch (nothing for uint8 beyond the size check); its cost is measured in BENCHMARKS.md.
    """
    if images.dim() >= 3 and 0 in images.shape[-3:]:
        raise ValueError(f"{where} have an empty frame: shape {tuple(images.shape)}")
    if not images.is_floating_point() or images.numel() == 0:
        return
    lo, hi = (float(v) for v in torch.aminmax(images.detach()))
    if lo >= 0.0 and hi <= 1.0:  # also False for NaN
        return
    bad = int((~torch.isfinite(images)).sum())
    if bad:
        raise ValueError(
            f"{where} hold {bad} NaN/inf values (one NaN pixel makes every feature of its image NaN); "
            "check the camera driver / the conversion that produced them"
        )
    if lo >= 0.0 and hi <= 255.0:
        raise ValueError(
            f"float {where} range up to {hi:g}: they look like 0..255 values, but float images must be in "
            "[0, 1]. Divide by 255, or pass the uint8 frames as they come from the camera"
        )
    raise ValueError(f"float {where} must be in [0, 1], got values in [{lo:g}, {hi:g}]")


def to_float_chw(images: torch.Tensor | np.ndarray, check: bool = True) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [0, 1]; (B, 3, H, W) float passes through.

    With ``check`` the values are checked first (:func:`check_images`).
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(
            "images must be a batch: (B, H, W, 3) uint8 or (B, 3, H, W) float, "
            f"got {getattr(images, 'shape', type(images))}"
        )
    if check:
        check_images(images)
    if images.dtype == torch.uint8:
        if images.shape[-1] != 3:
            raise ValueError(f"uint8 images must be (B, H, W, 3) with 3 channels, got {tuple(images.shape)}")
        return images.permute(0, 3, 1, 2).float().div_(255.0)
    if not images.is_floating_point():
        raise ValueError(f"images must be uint8 (0..255) or float (0..1), got dtype {images.dtype}")
    if images.shape[1] != 3:
        raise ValueError(f"float images must be (B, 3, H, W) in [0, 1], got {tuple(images.shape)}")
    return images.float()


class Preprocessor(nn.Module):
    """Crop/resize to ``size`` (h, w) and normalise; output float32 (B, 3, h, w).

    ``resize="crop"`` centre-crops to the target aspect ratio first (no distortion), ``"stretch"`` resizes
    directly. Resizing is bilinear with antialias (camera frames are usually larger than the target).
    ``check``: validate the input values first (:func:`check_images`); not part of :meth:`settings`.
    """

    def __init__(self, size: tuple[int, int], normalize: str = "imagenet", resize: str = "crop",
                 check: bool = True) -> None:
        super().__init__()
        if normalize not in NORMALIZATION_STATS:
            raise ValueError(f"normalize={normalize!r} is not one of {sorted(NORMALIZATION_STATS)}")
        if resize not in ("crop", "stretch"):
            raise ValueError(f"resize={resize!r} is not 'crop' or 'stretch'")
        self.size = (int(size[0]), int(size[1]))
        self.normalize, self.resize, self.check = normalize, resize, check
        mean, std = NORMALIZATION_STATS[normalize]
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def settings(self) -> dict[str, Any]:
        """What the output depends on (part of the encoder fingerprint)."""
        return {"size": list(self.size), "normalize": self.normalize, "resize": self.resize,
                "interpolation": "bilinear-antialias"}

    def crop_box(self, h: int, w: int) -> tuple[int, int, int, int]:
        """``(top, left, height, width)`` of the window of an ``h x w`` frame that is resized: the largest
        centred window with the target aspect ratio for ``resize="crop"``, else the whole frame."""
        th, tw = self.size
        if self.resize != "crop" or h * tw == w * th:
            return 0, 0, h, w
        ch, cw = (h, h * tw // th) if w * th > h * tw else (w * th // tw, w)
        return (h - ch) // 2, (w - cw) // 2, ch, cw

    def forward(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(images)
        if isinstance(images, torch.Tensor):  # move uint8 before converting: 4x less to copy to a GPU
            images = images.to(self.mean.device, non_blocking=True)
        x = to_float_chw(images, check=self.check)
        h, w = x.shape[-2:]
        th, tw = self.size
        if (h, w) != (th, tw):
            top, left, ch, cw = self.crop_box(h, w)
            x = x[:, :, top : top + ch, left : left + cw]
            if tuple(x.shape[-2:]) != (th, tw):
                x = F.interpolate(x, size=(th, tw), mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean) / self.std
