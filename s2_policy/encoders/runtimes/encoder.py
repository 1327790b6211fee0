"""RuntimeEncoder: an S2 encoder whose forward pass runs as an exported graph (ONNX Runtime or OpenVINO)."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import EncoderConfig
from ..fingerprint import fingerprint
from ..s2_encoder import S2Encoder, build_torch_encoder
from .backends import PACKAGES, open_session, package_version, quantize_int8, resolve_runtime_precision
from .cache import build_entry, cache_key, cache_root, load_entry
from .graph import GRAPH_VERSION, OPSET, FramePool, Shapes, export_onnx

log = logging.getLogger(__name__)

AGREEMENT_COSINE = 0.999  # features at least this close (mean cosine) to PyTorch fp32 share its fingerprint


class RuntimeEncoder(nn.Module):
    """Drop-in for :class:`S2Encoder` (``encode_cameras``, ``forward``, ``out_dim``, ``plan``, ``identity``,
    ``fingerprint``) that runs the whole encoder through an exported graph.

    One graph per set of camera shapes (batch size free), exported on first use and cached on disk keyed by
    the encoder fingerprint, runtime, precision, camera shapes, calibration frames and library versions.
    Inputs are uint8 ``(B, H, W, 3)`` frames. ``reference`` is the fp32 PyTorch encoder the graphs are
    exported from and compared with.

    Feature identity: when the graph's features agree with PyTorch fp32 (mean cosine >=
    ``AGREEMENT_COSINE`` on check frames through a one-camera graph at the S2 input size), the encoder has
    the PyTorch fingerprint, so feature caches and policies are shared; otherwise the fingerprint also covers
    runtime, precision, versions and calibration, and such features get their own caches.
    """

    def __init__(self, reference: S2Encoder, config: EncoderConfig, frames: FramePool | None = None) -> None:
        super().__init__()
        if reference.compute_dtype != torch.float32 or reference.int8_layers:
            raise ValueError("a runtime's reference encoder must be fp32 (build it with precision='fp32')")
        self.reference = reference
        self.config = config
        self.runtime = config.runtime
        self.precision = resolve_runtime_precision(config.runtime, config.precision)
        if self.precision == "int8" and frames is None:
            raise ValueError(
                "precision='int8' with a runtime needs calibration frames: set encoder.runtime_calibration "
                "to a demonstration store, or pass frames=FramePool.from_arrays([...])"
            )
        self.frames = frames or FramePool.synthetic(config.runtime_calibration_frames, reference.input_size)
        self.cache_dir = cache_root(config.runtime_cache_dir)
        self.threads = torch.get_num_threads()
        self.versions = {"torch": torch.__version__,
                         self.runtime: package_version(PACKAGES[self.runtime], self.runtime)}
        if self.precision == "int8":
            self.versions["nncf"] = package_version("nncf", self.runtime)
        # what callers of an S2Encoder read
        for name in ("checkpoint_path", "native_size", "patch_size", "embed_dim", "num_prefix_tokens",
                     "img_sizes", "max_split_size", "input_size", "plan", "out_dim", "num_tokens",
                     "weights_digest", "preprocess", "backbone"):
            setattr(self, name, getattr(reference, name))
        self.compute_dtype = torch.float32  # what the inputs and outputs are; the graph has its own precision
        self.int8_layers = 0
        self._sessions: dict[Shapes, Any] = {}
        self._metas: dict[Shapes, dict[str, Any]] = {}
        self._fingerprint: str | None = None

    # -- S2Encoder interface ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def train(self, mode: bool = True) -> RuntimeEncoder:
        """Frozen: stays in eval mode whatever the parent module asks."""
        return super().train(False)

    def forward(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, out_dim) float32."""
        return self.encode_cameras([images])[:, 0]

    def encode_cameras(self, cameras: Sequence[torch.Tensor | np.ndarray]) -> torch.Tensor:
        """K uint8 camera batches ``(B, H, W, 3)`` -> ``(B, K, out_dim)`` float32, one graph call."""
        if isinstance(cameras, torch.Tensor | np.ndarray) or len(cameras) == 0:
            raise ValueError("encode_cameras takes a non-empty list of per-camera image batches")
        arrays = [_uint8_frames(c, k) for k, c in enumerate(cameras)]
        if any(a.shape[0] != arrays[0].shape[0] for a in arrays):
            raise ValueError(f"all cameras need the same batch size, got {[a.shape[0] for a in arrays]}")
        shapes = tuple((int(a.shape[1]), int(a.shape[2])) for a in arrays)
        return torch.from_numpy(self.session(shapes).run(arrays))

    # -- graphs -------------------------------------------------------------------------------------------
    def graph_key(self, shapes: Shapes) -> str:
        """Cache key of the graph for cameras of ``shapes``."""
        return cache_key({
            "fingerprint": self.reference.fingerprint(), "runtime": self.runtime, "precision": self.precision,
            "camera_shapes": [list(s) for s in shapes], "frames": self.frames.identity, "opset": OPSET,
            "graph": GRAPH_VERSION, "versions": self.versions,
        })

    def session(self, shapes: Shapes) -> Any:
        """The inference session for cameras of ``shapes``: opened from the cache, or exported first."""
        if shapes not in self._sessions:
            meta = self.graph_meta(shapes)
            self._sessions[shapes] = open_session(
                self.runtime, self.precision, _entry_file(meta), self.threads
            )
        return self._sessions[shapes]

    def graph_meta(self, shapes: Shapes) -> dict[str, Any]:
        """Meta of the cached graph for ``shapes`` (built if absent or damaged): files, agreement, timings."""
        if shapes not in self._metas:
            key = self.graph_key(shapes)
            meta = load_entry(self.cache_dir, key)
            if meta is None:
                meta = build_entry(self.cache_dir, key, lambda tmp: self._build(shapes, tmp))
            self._metas[shapes] = meta
        return self._metas[shapes]

    def onnx_meta(self, shapes: Shapes) -> dict[str, Any]:
        """Meta of the cached fp32 ONNX export for ``shapes``, shared by every runtime and precision."""
        key = cache_key({"fingerprint": self.reference.fingerprint(), "export": "onnx-fp32", "opset": OPSET,
                         "graph": GRAPH_VERSION, "camera_shapes": [list(s) for s in shapes],
                         "torch": torch.__version__})
        meta = load_entry(self.cache_dir, key)
        if meta is None:
            meta = build_entry(self.cache_dir, key, lambda tmp: self._export(shapes, tmp))
        return meta

    def _export(self, shapes: Shapes, out_dir: Path) -> dict[str, Any]:
        t0 = time.perf_counter()
        export_onnx(self.reference, shapes, out_dir / "model.onnx")
        return {"export": "onnx-fp32", "camera_shapes": [list(s) for s in shapes], "model": "model.onnx",
                "fingerprint": self.reference.fingerprint(), "export_s": round(time.perf_counter() - t0, 2)}

    def _build(self, shapes: Shapes, out_dir: Path) -> dict[str, Any]:
        t0 = time.perf_counter()
        onnx = self.onnx_meta(shapes)
        src = Path(onnx["path"])
        if self.precision == "int8":
            model = quantize_int8(self.runtime, src / onnx["model"], out_dir,
                                  self.frames.for_shapes(shapes, "calibrate"))
        else:  # the fp32 graph as it is (OpenVINO applies bf16 when compiling); copies: onnx refuses to
            # read external data through hard links
            for f in src.iterdir():
                if f.name != "meta.json":
                    shutil.copy2(f, out_dir / f.name)
            model = out_dir / onnx["model"]
        t_build = time.perf_counter() - t0
        session = open_session(self.runtime, self.precision, model, self.threads)
        agreement = self._agreement(session, shapes)
        log.info("built the %s %s encoder graph for cameras %s in %.1f s (cosine to fp32 %.5f)",
                 self.runtime, self.precision, list(shapes), t_build, agreement["cosine_mean"])
        return {
            "runtime": self.runtime, "precision": self.precision, "camera_shapes": [list(s) for s in shapes],
            "model": model.name, "fingerprint": self.reference.fingerprint(), "frames": self.frames.identity,
            "versions": self.versions, "export_s": onnx["export_s"], "build_s": round(t_build, 2),
            "agreement": agreement,
        }

    def _agreement(self, session: Any, shapes: Shapes) -> dict[str, Any]:
        """Cosine of the graph's features to the PyTorch fp32 encoder's on the check frames."""
        items = self.frames.for_shapes(shapes, "check")
        batch = [np.concatenate(cam) for cam in zip(*items, strict=True)]  # one call for all check frames
        key = (self.reference.fingerprint(), shapes)
        if key not in self.frames.reference_features:  # shared by the encoders built on these frames
            self.frames.reference_features[key] = self.reference.encode_cameras(
                [torch.from_numpy(a) for a in batch])
        ref = self.frames.reference_features[key]
        ours = torch.from_numpy(session.run(batch))
        c = F.cosine_similarity(ours.flatten(2).double(), ref.flatten(2).double(), dim=-1).flatten()
        return {"cosine_mean": float(c.mean()), "cosine_min": float(c.min()), "n": int(c.numel()),
                "frames": self.frames.identity}

    # -- identity -----------------------------------------------------------------------------------------
    def agreement(self) -> dict[str, Any]:
        """Agreement with PyTorch fp32 measured on the one-camera graph at the S2 input size (built once)."""
        return self.graph_meta((tuple(self.input_size),))["agreement"]

    def shares_torch_features(self) -> bool:
        """True when the features count as the PyTorch encoder's (mean cosine >= ``AGREEMENT_COSINE``)."""
        return self.agreement()["cosine_mean"] >= AGREEMENT_COSINE

    def fingerprint_extra(self) -> dict[str, Any] | None:
        """What :func:`~s2_policy.encoders.fingerprint.fingerprint` adds for this encoder: ``None`` when
        the features agree with PyTorch fp32, else the runtime's numerics (runtime, precision, versions,
        calibration frames)."""
        if self.shares_torch_features():
            return None
        return {"runtime": self.runtime, "precision": self.precision, "versions": self.versions,
                "frames": self.frames.identity if self.precision == "int8" else None}

    def fingerprint(self) -> str:
        """Cached :func:`~s2_policy.encoders.fingerprint.fingerprint` of this encoder."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self)
        return self._fingerprint

    def identity(self) -> dict[str, Any]:
        """Like :meth:`S2Encoder.identity`, plus the runtime's agreement with PyTorch fp32."""
        return {
            "config": self.config.to_dict(),
            "checkpoint_path": self.checkpoint_path,
            "fingerprint": self.fingerprint(),
            "out_dim": self.out_dim,
            "runtime": {"runtime": self.runtime, "precision": self.precision, **self.agreement()},
        }

    def extra_repr(self) -> str:
        return (f"runtime={self.runtime!r}, precision={self.precision!r}, img_sizes={self.img_sizes}, "
                f"tiles={self.plan.n_tiles}, pooling={self.config.pooling!r}, out_dim={self.out_dim}, "
                f"cache={str(self.cache_dir)!r}")


def _uint8_frames(images: torch.Tensor | np.ndarray, k: int) -> np.ndarray:
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[-1] != 3 \
            or images.dtype != np.uint8:
        raise ValueError(
            f"camera {k}: runtime graphs take uint8 (B, H, W, 3) frames, got "
            f"{getattr(images, 'dtype', type(images))} {getattr(images, 'shape', '')}; "
            "use encoder.runtime=torch for float inputs"
        )
    return np.ascontiguousarray(images)


def _entry_file(meta: dict[str, Any]) -> Path:
    return Path(meta["path"]) / meta["model"]


def build_runtime_encoder(
    config: EncoderConfig, frames: FramePool | None = None, reference: S2Encoder | None = None
) -> RuntimeEncoder:
    """The :class:`RuntimeEncoder` for ``config`` (``config.runtime`` not ``torch``). Calibration frames:
    ``frames`` if given, else ``config.runtime_calibration`` (a store), else synthetic (fp32/bf16 only).
    ``reference``: an fp32 PyTorch encoder of the same config to share (saves building one)."""
    if config.runtime == "torch":
        raise ValueError("build_runtime_encoder needs config.runtime set to a runtime, not 'torch'")
    resolve_runtime_precision(config.runtime, config.precision)  # fail before building anything
    if config.device != "cpu":
        raise ValueError(f"runtime={config.runtime!r} runs on the CPU: set device=cpu, not {config.device!r}")
    torch_config = EncoderConfig.from_dict(config.to_dict(), runtime="torch", precision="fp32", compile=False)
    if reference is None:
        reference = build_torch_encoder(torch_config)
    elif reference.config.to_dict() != torch_config.to_dict():
        raise ValueError("reference must be built from this config with runtime=torch, precision=fp32")
    if frames is None and config.runtime_calibration:
        frames = FramePool.from_store(config.runtime_calibration, config.runtime_calibration_frames)
    return RuntimeEncoder(reference, config, frames)


__all__ = ["AGREEMENT_COSINE", "RuntimeEncoder", "build_runtime_encoder"]
