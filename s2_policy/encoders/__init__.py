"""Frozen ViT encoders (project / MVP / timm) run with S2 multi-scale tiling.

Public API (see docs/CONTRACTS.md)::

    from s2_policy.encoders import EncoderConfig, build_encoder, fingerprint
    enc = build_encoder(EncoderConfig(backbone="s2p-tiny", scales=[1, 2]))
    feats = enc(images)                     # (B, out_dim) float32
    feats = enc.encode_cameras([cam0, cam1])  # (B, K, out_dim), one backbone call
"""

from .backbones import MVP_ARCHS, PROJECT_ARCHS, BackboneInfo, backbone_info, create_backbone
from .checkpoint import load_backbone_weights, read_state_dict, resolve_checkpoint
from .config import EncoderConfig
from .factory import build_encoder, build_encoder_from_identity
from .fingerprint import fingerprint, weights_digest
from .precision import cpu_has_bf16, resolve_precision
from .preprocess import Preprocessor
from .s2_encoder import S2Encoder, build_torch_encoder

__all__ = [
    "MVP_ARCHS",
    "PROJECT_ARCHS",
    "BackboneInfo",
    "EncoderConfig",
    "Preprocessor",
    "S2Encoder",
    "backbone_info",
    "build_encoder",
    "build_encoder_from_identity",
    "build_torch_encoder",
    "cpu_has_bf16",
    "create_backbone",
    "fingerprint",
    "load_backbone_weights",
    "read_state_dict",
    "resolve_checkpoint",
    "resolve_precision",
    "weights_digest",
]
