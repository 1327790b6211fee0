"""Building encoders from config: the one place that chooses between the PyTorch encoder and a runtime.

:mod:`.s2_encoder` (PyTorch) and :mod:`.runtimes` (exported graphs) both sit below this module, so neither
imports the other's builder.
"""

from __future__ import annotations

from typing import Any

from .config import EncoderConfig
from .runtimes import RuntimeEncoder, build_runtime_encoder
from .s2_encoder import S2Encoder, build_torch_encoder


def resolve_config(config: EncoderConfig | dict[str, Any] | None = None, **overrides: Any) -> EncoderConfig:
    """An :class:`EncoderConfig` from a config or a mapping of its fields, with ``overrides`` applied."""
    if config is None:
        return EncoderConfig(**overrides)
    if not isinstance(config, EncoderConfig):
        return EncoderConfig.from_dict(config, **overrides)
    if overrides:
        return EncoderConfig.from_dict(config.to_dict(), **overrides)
    return config


def build_encoder(
    config: EncoderConfig | dict[str, Any] | None = None, **overrides: Any
) -> S2Encoder | RuntimeEncoder:
    """Build a frozen encoder from a config (an ``EncoderConfig`` or a mapping of its fields).

    ``runtime=torch`` gives an :class:`S2Encoder`; any other runtime a
    :class:`~s2_policy.encoders.runtimes.RuntimeEncoder` (same interface, the encoder runs as an exported
    graph; its packages are the ``deploy`` extra, imported only when a graph is built).
    """
    config = resolve_config(config, **overrides)
    if config.runtime != "torch":
        return build_runtime_encoder(config)
    return build_torch_encoder(config)


def build_encoder_from_identity(
    identity: dict[str, Any], verify: bool = True, **overrides: Any
) -> S2Encoder | RuntimeEncoder:
    """Rebuild the encoder a policy checkpoint recorded; ``overrides`` (e.g. ``device``, ``precision``) apply.

    With ``verify`` the fingerprint must match: a changed checkpoint file raises ``ValueError``.
    """
    encoder = build_encoder(dict(identity["config"]), **overrides)
    if verify and encoder.fingerprint() != identity.get("fingerprint"):
        raise ValueError(
            f"encoder fingerprint {encoder.fingerprint()[:12]} does not match the recorded "
            f"{str(identity.get('fingerprint'))[:12]}: the weights or settings changed since the policy "
            "was trained"
        )
    return encoder


__all__ = ["build_encoder", "build_encoder_from_identity", "resolve_config"]
