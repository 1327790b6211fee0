"""EncoderConfig: everything needed to rebuild a frozen S2 encoder (backbone, weights, S2, preprocessing)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

POOLINGS = ("cls", "mean", "cls+mean", "tokens")
NORMALIZATIONS = ("imagenet", "half")
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
RESIZE_MODES = ("crop", "stretch")
RUNTIMES = ("torch", "onnxruntime", "openvino", "tensorrt")


def _size_list(value: Any, name: str) -> list[int | list[int]] | None:
    """Normalise a list of sizes (ints or (h, w) pairs, e.g. from YAML) to plain JSON-able lists."""
    if value is None:
        return None
    out: list[int | list[int]] = []
    for v in value:
        if isinstance(v, int) and not isinstance(v, bool):
            out.append(int(v))
        elif isinstance(v, list | tuple) and len(v) == 2 and all(isinstance(u, int) for u in v):
            out.append([int(v[0]), int(v[1])])
        else:
            raise ValueError(f"{name} entries must be ints or (h, w) pairs, got {v!r}")
    return out


@dataclass
class EncoderConfig:
    """Configuration of a frozen S2 encoder; ``to_dict`` / ``from_dict`` round-trip through JSON and YAML.

    backbone: ``s2p-tiny`` / ``s2p-small`` (project ViTs), an MVP name (``vits-mae-hoi``, ``vits-mae-in``,
        ``vits-sup-in``, ``vitb-mae-egosoup``, ``vitl-256-mae-egosoup``) or any timm ViT name.
    checkpoint: ``None``, a ``.pth`` path, or ``builtin:NAME`` (a file in ``s2_policy/weights``).
    pretrained: let timm download its weights (only when online and asked for; never in tests).
    scales / img_sizes: S2 scales as multiples of the backbone's native size, or explicit sizes (ints or
        ``(h, w)`` pairs); ``None`` for both means a single scale at the native size.
    max_split_size: tile size (int or ``(h, w)``); default: the backbone's native size.
    scale_antialias: make the scales smaller than the largest with an antialiased bicubic resize; ``False``
        (the default) keeps s2wrapper's plain bicubic, which aliases parts a few pixels wide at the base scale
        (docs/encoders.md, "S2 settings"). Enters the fingerprint only when true.
    pooling: ``cls`` (final-norm CLS averaged over tiles, concatenated over scales, like MVP), ``mean``
        (mean of patch tokens, like RPT), ``cls+mean``, or ``tokens`` (all tokens, for attending heads).
    normalize: ``imagenet`` mean/std or ``half`` (0.5, 0.5, 0.5).
    resize: ``crop`` (centre-crop to the target aspect ratio, then resize) or ``stretch``.
    precision: ``auto`` (bf16 weights on CPUs with bf16 units, fp16 on CUDA, fp32 otherwise), explicit
        ``fp32`` / ``bf16`` / ``fp16``, or ``int8``: dynamic int8 linear layers (per-channel weights,
        per-token activations; faster than bf16 for ViT-B on AVX512-VNNI CPUs, cosine ~0.9995 to fp32), the
        rest as ``auto``. The fingerprint ignores precision: features of every precision share a cache.
    compile: wrap the backbone in ``torch.compile``.
    trust_checkpoint: allow checkpoints that pickle arbitrary objects (``weights_only=False``).
    check_inputs: reject float images outside [0, 1], NaN/inf and empty frames before encoding (on by
        default; its cost is measured in BENCHMARKS.md). Not part of the fingerprint.
    device: where the encoder is built (``cpu``, ``cuda``, ...).
    arch_kwargs: extra keyword arguments for the timm constructor.
    runtime: ``torch`` (eager PyTorch, the default), or ``onnxruntime`` / ``openvino``: the whole encoder
        (uint8 frames -> pooled features) exported once per camera shape set into one graph, cached on disk
        (:mod:`s2_policy.encoders.runtimes`; install ``.[deploy]``). ``tensorrt`` is reserved (not built).
        With a runtime, ``precision`` means: ``fp32``; ``bf16`` (OpenVINO's inference precision); ``int8``
        (NNCF post-training quantisation, calibrated on ``runtime_calibration`` frames); ``auto`` (bf16 for
        OpenVINO on CPUs with bf16 units, else fp32).
    runtime_cache_dir: where exported graphs are cached (default ``$S2_POLICY_RUNTIME_CACHE`` or
        ``~/.cache/s2_policy/runtimes``).
    runtime_calibration: a demonstration store (zarr) whose camera frames calibrate int8 and check agreement.
    runtime_calibration_frames: how many frames to draw from it (half calibrate, half check).
    """

    backbone: str = "s2p-tiny"
    checkpoint: str | None = None
    pretrained: bool = False
    scales: list[float] | None = None
    img_sizes: list[int | list[int]] | None = None
    max_split_size: int | list[int] | None = None
    scale_antialias: bool = False
    pooling: str = "cls"
    normalize: str = "imagenet"
    resize: str = "crop"
    precision: str = "auto"
    compile: bool = False
    trust_checkpoint: bool = False
    check_inputs: bool = True
    device: str = "cpu"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    runtime: str = "torch"
    runtime_cache_dir: str | None = None
    runtime_calibration: str | None = None
    runtime_calibration_frames: int = 32

    def __post_init__(self) -> None:
        if not isinstance(self.backbone, str) or not self.backbone:
            raise ValueError(f"backbone must be a non-empty name, got {self.backbone!r}")
        for name, value, allowed in (
            ("pooling", self.pooling, POOLINGS),
            ("normalize", self.normalize, NORMALIZATIONS),
            ("precision", self.precision, PRECISIONS),
            ("resize", self.resize, RESIZE_MODES),
            ("runtime", self.runtime, RUNTIMES),
        ):
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not one of {allowed}")
        if self.scales is not None:
            self.scales = [float(s) for s in self.scales]
            if not self.scales or any(s <= 0 for s in self.scales):
                raise ValueError(f"scales must be a non-empty list of positive numbers, got {self.scales}")
        self.img_sizes = _size_list(self.img_sizes, "img_sizes")
        if self.img_sizes is not None and not self.img_sizes:
            raise ValueError("img_sizes must not be empty (use null for the native size)")
        if isinstance(self.max_split_size, list | tuple):
            self.max_split_size = [int(v) for v in self.max_split_size]
        self.arch_kwargs = dict(self.arch_kwargs or {})
        if int(self.runtime_calibration_frames) < 2:
            raise ValueError(
                f"runtime_calibration_frames must be >= 2 (half calibrate, half check), "
                f"got {self.runtime_calibration_frames}"
            )
        self.runtime_calibration_frames = int(self.runtime_calibration_frames)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of all fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], **overrides: Any) -> EncoderConfig:
        """Build from a mapping (e.g. merged hydra ``encoder`` + ``s2`` configs); unknown keys raise."""
        merged = {**_plain(data), **overrides}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise ValueError(f"unknown encoder config keys {unknown}; valid keys: {sorted(known)}")
        return cls(**merged)


def _plain(data: Mapping[str, Any]) -> dict[str, Any]:
    """Convert an OmegaConf node (or any mapping) to plain Python containers."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(data, DictConfig):
            return OmegaConf.to_container(data, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover - hydra is a dependency, but the config works without it
        pass
    return dict(data)
