"""S2 ("Scaling on Scales") multi-scale forward: a drop-in for the public ``s2wrapper.forward``.

Semantics (see DESIGN.md): every scale is a bicubic resize of the input (fp32, align_corners=False, no
antialias, cast back to the input dtype) cut into an ``nh x nw`` chessboard of tiles, tile ``(i, j)`` of
image ``k`` at batch index ``(i * nw + j) * B + k``. The backbone's tokens are split into ``num_prefix_token``
prefix tokens (CLS + registers) and a token grid; grids are stitched back per scale, area-pooled to the
grid of scale ``resize_output_to_idx`` and concatenated on channels; prefix tokens are averaged over a
scale's tiles, concatenated over scales and prepended.

Differences from s2wrapper: all scales whose tiles share a size go through ``model`` in ONE call, inputs and
scales may be non-square (``(h, w)`` pairs; token grids follow the tile's aspect ratio), and bad arguments
raise ``ValueError`` instead of asserting. A plan may also resize with antialiasing
(``TilingPlan.build(..., antialias=True)``, ``EncoderConfig.scale_antialias``; ``multiscale_forward`` keeps
s2wrapper's plain bicubic). The geometry lives in a cached :class:`TilingPlan` so the encoder and the
real-time loop reuse one implementation; tiles are cut with reshape/permute, never a per-tile loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

Size = int | tuple[int, int]
HW = tuple[int, int]

__all__ = ["ScaleTiling", "TilingPlan", "antialias_matrix", "get_plan", "multiscale_forward", "token_grid"]


def _pair(value: Size | Sequence[int], name: str) -> HW:
    """Return ``value`` as an ``(h, w)`` tuple of positive ints (an int means a square)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int or an (h, w) pair, got {value!r}")
    if isinstance(value, int):
        pair = (value, value)
    elif isinstance(value, Sequence) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        pair = (int(value[0]), int(value[1]))
    else:
        raise ValueError(f"{name} must be an int or an (h, w) pair of ints, got {value!r}")
    if pair[0] <= 0 or pair[1] <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return pair


def token_grid(n_tokens: int, tile_hw: HW) -> HW:
    """Grid ``(gh, gw)`` of ``n_tokens`` patch tokens for a tile of size ``tile_hw`` (same aspect ratio).

    A square tile gives ``sqrt(n)`` x ``sqrt(n)`` as in s2wrapper; a non-square tile gives the grid whose
    aspect ratio equals the tile's. Raises ``ValueError`` when no such grid exists.
    """
    th, tw = tile_hw
    if n_tokens > 0:
        gh = max(1, round(math.sqrt(n_tokens * th / tw)))
        for cand in (gh, gh - 1, gh + 1):
            if cand > 0 and n_tokens % cand == 0 and cand * tw == (n_tokens // cand) * th:
                return cand, n_tokens // cand
    raise ValueError(
        f"{n_tokens} tokens per tile do not form a grid with the aspect ratio of a {th}x{tw} tile; "
        "check num_prefix_token (CLS + registers) and that the model returns (B, N, C) tokens"
    )


@dataclass(frozen=True)
class ScaleTiling:
    """One scale: the resized image size, the chessboard split and the tile size."""

    size: HW
    splits: HW
    tile: HW

    @property
    def n_tiles(self) -> int:
        return self.splits[0] * self.splits[1]


@dataclass(frozen=True)
class TilingPlan:
    """Precomputed geometry of one S2 configuration for one input size.

    ``groups`` holds, for every distinct tile size (in order of first appearance), the indices of the scales
    whose tiles have that size: :meth:`tile` returns one stacked batch per group and :meth:`merge` takes the
    backbone outputs in the same order.
    """

    input_size: HW
    scales: tuple[ScaleTiling, ...]
    resize_output_to_idx: int
    groups: tuple[tuple[HW, tuple[int, ...]], ...]
    antialias: bool = False

    @classmethod
    def build(
        cls,
        input_size: Size,
        img_sizes: Sequence[Size],
        max_split_size: Size | None = None,
        resize_output_to_idx: int = 0,
        antialias: bool = False,
    ) -> TilingPlan:
        """Plan for inputs of ``input_size``; ``max_split_size`` defaults to the input size (as s2wrapper).

        ``antialias``: scales smaller than the input are bicubic resizes with antialiasing (a low-pass filter
        first) instead of s2wrapper's plain bicubic, which samples a 2x-larger input sparsely and aliases
        parts a few pixels wide (``EncoderConfig.scale_antialias``)."""
        in_hw = _pair(input_size, "input size")
        if img_sizes is None or len(img_sizes) == 0:
            raise ValueError("S2 needs at least one scale: pass non-empty scales or img_sizes")
        sizes = [_pair(s, "img_sizes entry") for s in img_sizes]
        split_max = in_hw if max_split_size is None else _pair(max_split_size, "max_split_size")
        scales = []
        for h, w in sizes:
            nh, nw = math.ceil(h / split_max[0]), math.ceil(w / split_max[1])
            if h % nh or w % nw:
                raise ValueError(
                    f"scale {h}x{w} cannot be cut into {nh}x{nw} equal tiles (max_split_size={split_max}); "
                    "choose img_sizes that are multiples of the tile size"
                )
            scales.append(ScaleTiling(size=(h, w), splits=(nh, nw), tile=(h // nh, w // nw)))
        n = len(scales)
        if not -n <= resize_output_to_idx < n:
            raise ValueError(f"resize_output_to_idx={resize_output_to_idx} is out of range for {n} scales")
        groups: dict[HW, list[int]] = {}
        for i, s in enumerate(scales):
            groups.setdefault(s.tile, []).append(i)
        return cls(
            input_size=in_hw,
            scales=tuple(scales),
            resize_output_to_idx=resize_output_to_idx % n,
            groups=tuple((tile, tuple(idx)) for tile, idx in groups.items()),
            antialias=bool(antialias),
        )

    @property
    def n_tiles(self) -> int:
        """Tiles per input image over all scales."""
        return sum(s.n_tiles for s in self.scales)

    def tile(self, x: torch.Tensor, dtype: torch.dtype | None = None) -> list[torch.Tensor]:
        """Resize ``x`` (B, C, H, W) to every scale and cut it into tiles: one batch per tile-size group.

        Within a group, scales follow each other in scale order; within a scale, tile ``(i, j)`` of image
        ``k`` sits at ``(i * nw + j) * B + k``. Resizing runs in fp32 and is cast back to ``x.dtype``; tiles
        are written straight into a buffer of ``dtype`` (default ``x.dtype``), e.g. a backbone's bf16.
        """
        b, c, h, w = x.shape
        if (h, w) != self.input_size:
            raise ValueError(f"plan was built for {self.input_size} inputs, got {(h, w)}")
        batches = []
        for (th, tw), idx in self.groups:
            rows = sum(self.scales[i].n_tiles for i in idx) * b
            out = x.new_empty((rows, c, th, tw), dtype=dtype or x.dtype)
            offset = 0
            for i in idx:
                s = self.scales[i]
                # bicubic at the input's own size is the identity (weights 0, 1, 0, 0): skip it
                xs = x if s.size == (h, w) else self._resize(x, s.size)
                nh, nw = s.splits
                dst = out[offset : offset + s.n_tiles * b].view(nh, nw, b, c, th, tw)
                dst.copy_(xs.view(b, c, nh, th, nw, tw).permute(2, 4, 0, 1, 3, 5))
                offset += s.n_tiles * b
            batches.append(out)
        return batches

    def _resize(self, x: torch.Tensor, size: HW) -> torch.Tensor:
        """Bicubic resize in fp32 (s2wrapper's), or its antialiased form as two products with constant
        matrices holding torch's weights: exported graphs then resize exactly as torch does (OpenVINO's
        own antialiased ``Resize`` differs)."""
        if not self.antialias:
            return F.interpolate(x.to(torch.float32), size=size, mode="bicubic").to(x.dtype)
        rows = antialias_matrix(x.shape[-2], size[0], device=x.device)  # cached per device: no per-call copy
        cols = antialias_matrix(x.shape[-1], size[1], device=x.device)
        return (rows @ x.to(torch.float32) @ cols.T).to(x.dtype)

    def _per_scale(self, outs: Sequence[torch.Tensor], batch: int) -> list[torch.Tensor]:
        """Split the group outputs back into one tensor per scale (in scale order)."""
        if len(outs) != len(self.groups):
            raise ValueError(
                f"expected {len(self.groups)} output batches (one per tile size), got {len(outs)}"
            )
        per_scale: list[torch.Tensor | None] = [None] * len(self.scales)
        for out, (_, idx) in zip(outs, self.groups, strict=True):
            counts = [self.scales[i].n_tiles * batch for i in idx]
            if out.shape[0] != sum(counts):
                raise ValueError(f"model returned {out.shape[0]} rows for a batch of {sum(counts)} tiles")
            for i, part in zip(idx, out.split(counts), strict=True):
                per_scale[i] = part
        return per_scale  # type: ignore[return-value]

    def merge_prefix(self, outs: Sequence[torch.Tensor], batch: int, num_prefix_token: int) -> torch.Tensor:
        """Prefix tokens (B, P, C * S): averaged over each scale's tiles, concatenated over scales.

        ``outs`` may hold just the first ``num_prefix_token`` tokens of each tile (all this needs).
        """
        if num_prefix_token <= 0:
            raise ValueError("merge_prefix needs num_prefix_token > 0")
        prefixes = []
        for s, out in zip(self.scales, self._per_scale(outs, batch), strict=True):
            if out.dim() != 3 or out.shape[1] < num_prefix_token:
                raise ValueError(f"need (B, N >= {num_prefix_token}, C) tokens, got {tuple(out.shape)}")
            pre = out[:, :num_prefix_token]
            prefixes.append(pre.reshape(s.n_tiles, batch, *pre.shape[1:]).mean(dim=0))
        return torch.cat(prefixes, dim=-1)

    def merge(
        self,
        outs: Sequence[torch.Tensor],
        batch: int,
        num_prefix_token: int = 0,
        output_shape: str = "bnc",
    ) -> torch.Tensor:
        """Stitch backbone outputs back into the S2 feature (B, P + N, C * S) or (B, C * S, h, w)."""
        _check_output_shape(output_shape, num_prefix_token)
        grids = []
        for s, out in zip(self.scales, self._per_scale(outs, batch), strict=True):
            nh, nw = s.splits
            if output_shape == "bnc":
                _check_tokens(out, num_prefix_token)
                tokens = out[:, num_prefix_token:]
                gh, gw = token_grid(tokens.shape[1], s.tile)
                ch = tokens.shape[2]
                grid = tokens.reshape(nh, nw, batch, gh, gw, ch).permute(2, 5, 0, 3, 1, 4)
            else:
                if out.dim() != 4:
                    raise ValueError(
                        f"output_shape='bchw' needs a model returning (B, C, h, w), got {tuple(out.shape)}"
                    )
                ch, gh, gw = out.shape[1:]
                grid = out.reshape(nh, nw, batch, ch, gh, gw).permute(2, 3, 0, 4, 1, 5)
            grids.append(grid.reshape(batch, ch, nh * gh, nw * gw))
        target = tuple(grids[self.resize_output_to_idx].shape[-2:])
        out = torch.cat(
            [F.interpolate(g.to(torch.float32), size=target, mode="area").to(g.dtype) for g in grids], dim=1
        )
        if output_shape == "bnc":
            out = out.flatten(2).transpose(1, 2)
            if num_prefix_token > 0:
                out = torch.cat([self.merge_prefix(outs, batch, num_prefix_token), out], dim=1)
        return out


def _check_output_shape(output_shape: str, num_prefix_token: int) -> None:
    if output_shape not in ("bnc", "bchw"):
        raise ValueError(
            f"output_shape must be 'bnc' (ViT tokens) or 'bchw' (conv maps), got {output_shape!r}"
        )
    if num_prefix_token < 0:
        raise ValueError(f"num_prefix_token must be >= 0, got {num_prefix_token}")
    if output_shape == "bchw" and num_prefix_token > 0:
        raise ValueError("output_shape='bchw' has no prefix tokens: set num_prefix_token=0")


def _check_tokens(out: torch.Tensor, num_prefix_token: int) -> None:
    if out.dim() != 3:
        raise ValueError(
            f"output_shape='bnc' needs a model returning (B, N, C) tokens, got {tuple(out.shape)}"
        )
    if out.shape[1] <= num_prefix_token:
        raise ValueError(
            f"model returned {out.shape[1]} tokens, not more than num_prefix_token={num_prefix_token}"
        )


@lru_cache(maxsize=64)
def antialias_matrix(n_in: int, n_out: int, mode: str = "bicubic", device: torch.device | str = "cpu"
                     ) -> torch.Tensor:
    """``(n_out, n_in)`` weights of torch's antialiased ``mode`` resize along one axis (align_corners False),
    read off by resizing the identity: ``R @ v`` resizes ``v`` as ``F.interpolate`` would. As constants of an
    exported graph they make every runtime resize exactly as torch does. Cached: treat as read-only."""
    eye = torch.eye(n_in).view(1, 1, n_in, n_in)
    out = F.interpolate(eye, size=(n_out, n_in), mode=mode, align_corners=False, antialias=True)[0, 0]
    return out.to(device)


@lru_cache(maxsize=256)
def _cached_plan(
    input_size: HW, img_sizes: tuple[HW, ...], max_split: HW | None, resize_idx: int
) -> TilingPlan:
    return TilingPlan.build(input_size, img_sizes, max_split, resize_idx)


def get_plan(
    input_size: Size,
    img_sizes: Sequence[Size],
    max_split_size: Size | None = None,
    resize_output_to_idx: int = 0,
) -> TilingPlan:
    """Cached :meth:`TilingPlan.build` (one plan per input shape and S2 setting)."""
    if img_sizes is None or len(img_sizes) == 0:
        raise ValueError("S2 needs at least one scale: pass non-empty scales or img_sizes")
    sizes = tuple(_pair(s, "img_sizes entry") for s in img_sizes)
    split = None if max_split_size is None else _pair(max_split_size, "max_split_size")
    return _cached_plan(_pair(input_size, "input size"), sizes, split, resize_output_to_idx)


def multiscale_forward(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    scales: Sequence[float] | None = None,
    img_sizes: Sequence[Size] | None = None,
    max_split_size: Size | None = None,
    resize_output_to_idx: int = 0,
    num_prefix_token: int = 0,
    output_shape: str = "bnc",
    split_forward: bool = False,
) -> torch.Tensor:
    """S2 forward of ``model`` over ``x`` (B, C, H, W); same arguments and output as ``s2wrapper.forward``.

    ``scales`` multiply the input size; ``img_sizes`` (ints or ``(h, w)`` pairs) override them.
    ``split_forward`` runs the model in chunks of B tiles to bound memory.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"input must be a (B, C, H, W) tensor, got {getattr(x, 'shape', type(x))}")
    _check_output_shape(output_shape, num_prefix_token)
    b, _, h, w = x.shape
    if img_sizes is None:
        if scales is None or len(scales) == 0:
            raise ValueError("pass non-empty scales or img_sizes")
        img_sizes = [(int(h * s), int(w * s)) for s in scales]
    plan = get_plan((h, w), img_sizes, max_split_size, resize_output_to_idx)
    outs = []
    for tiles in plan.tile(x):
        if split_forward:
            outs.append(torch.cat([model(chunk) for chunk in tiles.split(b)], dim=0))
        else:
            outs.append(model(tiles))
    return plan.merge(outs, b, num_prefix_token, output_shape)
