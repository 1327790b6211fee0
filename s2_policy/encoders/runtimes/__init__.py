"""Deployment runtimes for S2 encoders: the whole encoder exported into one graph (ONNX Runtime, OpenVINO).

``EncoderConfig(runtime="openvino", precision="bf16")`` passed to :func:`~s2_policy.encoders.build_encoder`
returns a :class:`RuntimeEncoder`, which callers use like an ``S2Encoder``. Needs ``pip install -e
'.[deploy]'``; see README "Deployment runtimes".
"""

from .backends import SUPPORTED, resolve_runtime_precision
from .cache import CACHE_ENV, cache_root
from .encoder import AGREEMENT_COSINE, RuntimeEncoder, build_runtime_encoder
from .graph import EncoderGraph, FramePool, export_onnx, fit_frames, synthetic_frames

__all__ = [
    "AGREEMENT_COSINE",
    "CACHE_ENV",
    "SUPPORTED",
    "EncoderGraph",
    "FramePool",
    "RuntimeEncoder",
    "build_runtime_encoder",
    "cache_root",
    "export_onnx",
    "fit_frames",
    "resolve_runtime_precision",
    "synthetic_frames",
]
