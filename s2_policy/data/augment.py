"""Image augmentation for heads trained on frozen features: cached copies of every frame, randomly shifted.

With a frozen encoder the features are cached once per frame, so per-batch image augmentation (Diffusion
Policy's random crop, DrQ's random shift) would re-encode every batch. Instead the feature cache holds
``copies`` extra versions of each frame, each shifted by its own random offset (edge-replicated, as DrQ
pads), and training draws one version per frame and step; validation and evaluation see the clean frame.

The offsets are a pure function of (seed, copy, frame index), so an interrupted cache build resumes to the
same features, and the copy's description goes into the cache key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["AugmentConfig", "FrameShift"]


@dataclass(frozen=True)
class AugmentConfig:
    """``data.augment`` of the main job: shifted copies of every demonstration frame (0 = off)."""

    copies: int = 0            # shifted versions of each frame beside the clean one; one encode pass each
    max_shift: float = 0.0625  # largest shift per axis, a fraction of the image side (8 px at 128 px)
    seed: int = 0              # picks the offsets; part of the cache key

    def __post_init__(self) -> None:
        if self.copies < 0:
            raise ValueError(f"data.augment.copies must be >= 0 (0 turns augmentation off), "
                             f"got {self.copies}")
        if not 0.0 < self.max_shift < 0.5:
            raise ValueError(f"data.augment.max_shift must be in (0, 0.5) (a fraction of the image side, "
                             f"e.g. 0.0625), got {self.max_shift}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> AugmentConfig:
        """Build from a mapping (hydra's ``data.augment``), naming an unknown key instead of ignoring it."""
        d = dict(d or {})
        known = sorted(cls.__dataclass_fields__)
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"data.augment has no field {unknown[0]!r}; known: {known}")
        return cls(**d)

    def shifts(self) -> list[FrameShift]:
        """One :class:`FrameShift` per cached copy (copy 0 is the clean frame and has none)."""
        return [FrameShift(self.max_shift, copy=k, seed=self.seed) for k in range(1, self.copies + 1)]


@dataclass(frozen=True)
class FrameShift:
    """Shift each frame by a random offset of at most ``max_shift`` x its side, edge pixels repeated.

    Written with numpy rather than torchvision's ``RandomCrop(padding_mode="edge")`` because the offset must
    be a function of the frame index (resumable, reproducible caches), not of a global random state.
    """

    max_shift: float
    copy: int
    seed: int = 0

    @property
    def key(self) -> str:
        """What makes this copy's features differ from the clean ones (goes into the cache key)."""
        return f"shift{self.max_shift:g}-copy{self.copy}-seed{self.seed}"

    def offsets(self, frame_index: np.ndarray, side: int) -> np.ndarray:
        """int (len(frame_index), 2) offsets (dy, dx) in [-p, p] pixels, p = round(max_shift * side)."""
        p = round(self.max_shift * side)
        return np.array([np.random.default_rng([self.seed, self.copy, int(i)]).integers(-p, p + 1, size=2)
                         for i in np.asarray(frame_index).reshape(-1)], dtype=np.int64).reshape(-1, 2)

    def __call__(self, frames: np.ndarray, frame_index: np.ndarray) -> np.ndarray:
        """uint8 (B, H, W, C) frames, store indices (B,) -> the shifted frames, same shape."""
        b, h, w = frames.shape[:3]
        p = round(self.max_shift * min(h, w))
        if p == 0:
            return frames
        padded = np.pad(frames, ((0, 0), (p, p), (p, p), (0, 0)), mode="edge")
        out = np.empty_like(frames)
        for j, (dy, dx) in enumerate(self.offsets(frame_index, min(h, w))):
            out[j] = padded[j, p + dy : p + dy + h, p + dx : p + dx + w]
        return out
