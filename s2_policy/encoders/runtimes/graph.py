"""The whole S2 encoder as one exportable module, and the frames used to calibrate and check its graphs."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...data.store import ReplayStore
from ...s2 import antialias_matrix
from ..preprocess import to_float_chw
from ..s2_encoder import S2Encoder

OPSET = 18
GRAPH_VERSION = 3  # bump when EncoderGraph or the int8 quantisation changes: part of every cache key
Shapes = tuple[tuple[int, int], ...]


class EncoderGraph(nn.Module):
    """``K`` uint8 camera batches ``(B, H_k, W_k, 3)`` of the fixed ``shapes`` -> features ``(B, K, out_dim)``
    (or tokens).

    Exactly :meth:`S2Encoder.encode_cameras`: preprocessing (crop, antialiased resize, normalisation), the
    tiles of every scale and camera in ONE backbone batch, stitching and pooling. The encoder must be fp32
    (the runtime applies its own precision). The antialiased resize is two products with constant matrices
    holding torch's own weights: runtimes implement antialiased ``Resize`` differently (OpenVINO 2026.4
    differs from torch by up to 40 % when downsampling).
    """

    def __init__(self, encoder: S2Encoder, shapes: Shapes) -> None:
        super().__init__()
        if encoder.compute_dtype != torch.float32 or encoder.int8_layers:
            raise ValueError(
                f"export an fp32 encoder (got {encoder.compute_dtype}, {encoder.int8_layers} int8 layers): "
                "the runtime sets the precision"
            )
        self.encoder = encoder
        self.shapes = tuple((int(h), int(w)) for h, w in shapes)
        th, tw = encoder.preprocess.size
        self.boxes = [encoder.preprocess.crop_box(h, w) for h, w in self.shapes]
        for k, (_, _, ch, cw) in enumerate(self.boxes):  # buffers: constants of the exported graph
            self.register_buffer(f"rows{k}", resize_matrix(ch, th), persistent=False)
            self.register_buffer(f"cols{k}", resize_matrix(cw, tw), persistent=False)

    def preprocess(self, images: torch.Tensor, k: int) -> torch.Tensor:
        """Camera ``k``'s uint8 frames -> normalised float32 ``(B, 3, *input_size)``."""
        pre = self.encoder.preprocess
        if tuple(images.shape[1:3]) != self.shapes[k]:
            raise ValueError(f"camera {k}: frames {tuple(images.shape)}, graph built for {self.shapes[k]}")
        x = to_float_chw(images)
        top, left, ch, cw = self.boxes[k]
        x = x[:, :, top : top + ch, left : left + cw]
        if ch != pre.size[0]:
            x = getattr(self, f"rows{k}") @ x
        if cw != pre.size[1]:
            x = x @ getattr(self, f"cols{k}").T
        return (x - pre.mean) / pre.std

    def forward(self, *cameras: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        xs = [self.preprocess(c, k) for k, c in enumerate(cameras)]
        b = xs[0].shape[0]
        x = torch.cat(xs, dim=0)
        outs = [enc.backbone.forward_features(t) for t in enc.plan.tile(x)]
        feats = enc.pool(outs, x.shape[0])
        return feats.reshape(len(xs), b, *feats.shape[1:]).transpose(0, 1)


def resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """``(n_out, n_in)`` weights of torch's antialiased bilinear resize along one axis (the preprocessing's):
    ``R @ v`` resizes ``v`` as ``F.interpolate`` would."""
    return antialias_matrix(n_in, n_out, "bilinear")


def export_onnx(encoder: S2Encoder, shapes: Shapes, path: Path) -> None:
    """Write the ONNX graph of :class:`EncoderGraph` for cameras of ``shapes`` (batch size dynamic) to
    ``path`` (weights may go to a ``.data`` file beside it)."""
    graph = EncoderGraph(encoder, shapes).eval()
    # an example batch of 2, so that the exporter does not specialise the batch dimension to 1
    example = tuple(torch.zeros((2, h, w, 3), dtype=torch.uint8) for h, w in shapes)
    batch = torch.export.Dim("batch", min=1)
    names = [f"camera{k}" for k in range(len(shapes))]
    with torch.no_grad():
        torch.onnx.export(
            graph, example, str(path), input_names=names, output_names=["features"], opset_version=OPSET,
            dynamo=True, dynamic_shapes=(tuple({0: batch} for _ in shapes),), verbose=False,
        )


def fit_frames(frames: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """uint8 frames ``(N, H, W, 3)`` brought to ``shape`` (centre crop to its aspect ratio, antialiased
    bilinear resize), still uint8: calibration frames for a camera of another size."""
    h, w = frames.shape[1:3]
    th, tw = shape
    if (h, w) == (th, tw):
        return np.ascontiguousarray(frames)
    x = to_float_chw(torch.from_numpy(np.ascontiguousarray(frames)))
    if h * tw != w * th:
        ch, cw = (h, h * tw // th) if w * th > h * tw else (w * th // tw, w)
        top, left = (h - ch) // 2, (w - cw) // 2
        x = x[:, :, top : top + ch, left : left + cw]
    x = F.interpolate(x, size=(th, tw), mode="bilinear", align_corners=False, antialias=True)
    return x.mul(255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def synthetic_frames(n: int, shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """``n`` deterministic uint8 frames with image-like statistics (smooth colour fields, edges and mild
    noise) for agreement checks when no store is given."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.uniform(0, 1, (n, 3, 6, 6)).astype(np.float32))
    x = F.interpolate(coarse, size=shape, mode="bicubic", align_corners=False)
    edges = torch.from_numpy(rng.uniform(0, 1, (n, 3, 12, 12)).astype(np.float32))
    x = x + 0.3 * F.interpolate(edges, size=shape, mode="nearest")
    x = x + torch.from_numpy(rng.normal(0, 0.03, (n, 3, *shape)).astype(np.float32))
    return (x / 1.3).clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


class FramePool:
    """Frames that calibrate int8 graphs and check a graph's agreement with the PyTorch encoder.

    ``cameras`` holds one uint8 ``(N, H, W, 3)`` array per source camera; a graph's camera ``k`` uses
    source ``k % len(cameras)``, fitted to its shape. The first half of the frames calibrates, the second
    half checks (so agreement is measured on frames the quantiser has not seen). ``identity`` enters the
    graph cache key. ``reference_features`` keeps the PyTorch features of the check frames, so that
    encoders built on the same pool compute them once.
    """

    def __init__(self, cameras: Sequence[np.ndarray], identity: str) -> None:
        if not cameras or any(c.ndim != 4 or c.shape[-1] != 3 or c.dtype != np.uint8 for c in cameras):
            raise ValueError("calibration frames must be uint8 (N, H, W, 3) arrays, one per camera")
        n = min(len(c) for c in cameras)
        if n < 2:
            raise ValueError(f"need >= 2 calibration frames per camera (half calibrate, half check), got {n}")
        self.cameras = [np.ascontiguousarray(c[:n]) for c in cameras]
        self.n = n
        self.identity = identity
        # PyTorch fp32 features of the check frames, per (encoder fingerprint, camera shapes)
        self.reference_features: dict[tuple[str, Shapes], torch.Tensor] = {}

    @classmethod
    def from_arrays(cls, cameras: Sequence[np.ndarray]) -> FramePool:
        """Frames given in memory; identified by a digest of their bytes."""
        h = hashlib.sha256()
        for c in cameras:
            h.update(f"{c.shape}{c.dtype};".encode())
            h.update(np.ascontiguousarray(c).tobytes())
        return cls(list(cameras), f"arrays:{h.hexdigest()[:16]}")

    @classmethod
    def from_store(cls, path: str | Path, n: int) -> FramePool:
        """``n`` frames spread evenly over every camera of a demonstration store."""
        store = ReplayStore.open(path, mode="r")
        keys = [k for k in store.image_keys() if store[k].dtype == np.uint8 and store[k].shape[-1] == 3]
        if not keys or store.n_frames < 2:
            raise ValueError(f"{path} has no RGB uint8 camera arrays with >= 2 frames to calibrate on")
        idx = np.unique(np.linspace(0, store.n_frames - 1, n).round().astype(np.int64))
        pool = cls.from_arrays([np.asarray(store[k].get_orthogonal_selection(idx)) for k in keys])
        pool.identity = f"store:{pool.identity}"
        return pool

    @classmethod
    def synthetic(cls, n: int, shape: tuple[int, int]) -> FramePool:
        """Deterministic synthetic frames (:func:`synthetic_frames`)."""
        return cls([synthetic_frames(n, shape)], f"synthetic:v1:{n}:{shape[0]}x{shape[1]}")

    def for_shapes(self, shapes: Shapes, part: str) -> list[list[np.ndarray]]:
        """One input list per frame of the ``calibrate`` or ``check`` half, cameras fitted to ``shapes``."""
        half = self.n // 2
        sl = slice(0, half) if part == "calibrate" else slice(half, self.n)
        per_cam = [fit_frames(self.cameras[k % len(self.cameras)][sl], s) for k, s in enumerate(shapes)]
        return [[cam[i : i + 1] for cam in per_cam] for i in range(len(per_cam[0]))]


__all__ = [
    "GRAPH_VERSION",
    "OPSET", "EncoderGraph", "FramePool", "export_onnx", "fit_frames", "resize_matrix", "synthetic_frames",
]
