"""Stable fingerprints of frozen encoders (the feature cache and policy checkpoints key on them)."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:
    from .s2_encoder import S2Encoder

FINGERPRINT_VERSION = 1


def weights_digest(model: nn.Module) -> str:
    """sha256 of a module's state dict: keys sorted, every tensor as contiguous fp32 (ints as int64) bytes.

    Identical across processes and machines for identical weights, whatever dtype they are stored in.
    """
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        t = value.detach().cpu()
        t = t.float() if t.is_floating_point() else t.long()
        h.update(f"{key}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def fingerprint_payload(encoder: S2Encoder) -> dict[str, Any]:
    """Everything the encoder's features depend on, except numerics (precision, device, compile)."""
    cfg = encoder.config
    return {
        "version": FINGERPRINT_VERSION,
        "backbone": cfg.backbone,
        "arch_kwargs": cfg.arch_kwargs,
        "weights": encoder.weights_digest,
        "s2": {
            "img_sizes": [list(s) for s in encoder.img_sizes],
            "max_split_size": list(encoder.max_split_size),
            "num_prefix_tokens": encoder.num_prefix_tokens,
            # only when on, so the fingerprints (and caches) of every earlier encoder stay valid
            **({"scale_antialias": True} if encoder.plan.antialias else {}),
        },
        "preprocess": encoder.preprocess.settings(),
        "pooling": cfg.pooling,
    }


def fingerprint(encoder: S2Encoder) -> str:
    """sha256 hex digest of weights + S2 settings + preprocessing + pooling (:func:`fingerprint_payload`).

    An encoder whose numerics change its features beyond the shared tolerance (a deployment runtime whose
    cosine to PyTorch fp32 is below 0.999) says so with ``fingerprint_extra()``, which enters the digest.
    """
    payload = fingerprint_payload(encoder)
    extra = getattr(encoder, "fingerprint_extra", None)
    if callable(extra) and (numerics := extra()) is not None:
        payload["numerics"] = numerics
    payload = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


__all__ = ["fingerprint", "fingerprint_payload", "weights_digest"]
