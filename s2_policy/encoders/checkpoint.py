"""Strict checkpoint loading for ViT backbones (MVP / MAE / timm formats)."""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"

# Keys a frozen feature extractor does not use: MAE decoder, mask token, classifier heads.
_DROPPED_PREFIXES = ("decoder", "mask_token", "head.", "head_dist.")


def resolve_checkpoint(checkpoint: str | Path) -> Path:
    """Turn ``builtin:NAME`` into ``s2_policy/weights/NAME``; check that the file exists."""
    text = str(checkpoint)
    if text.startswith("builtin:"):
        path = WEIGHTS_DIR / text[len("builtin:") :]
        if not path.is_file():
            raise FileNotFoundError(
                f"built-in checkpoint {text!r} not found at {path}. Built-in weights ship with the "
                "package (git pull / reinstall), or make your own with `python -m s2_policy.pretrain` "
                "and pass its path."
            )
        return path
    path = Path(text).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} not found. MVP checkpoints are not downloadable any more: bring the "
            ".pth file (see docs/encoders.md for the nearest online equivalents) and pass its path."
        )
    return path


def read_state_dict(path: str | Path, trust_checkpoint: bool = False) -> dict[str, torch.Tensor]:
    """Load a state dict from ``{"model": sd}``, ``{"state_dict": sd}`` or a bare ``sd``; floats cast to fp32.

    ``weights_only=True`` unless ``trust_checkpoint`` (the file may then run arbitrary code when unpickled).
    A ``module.`` prefix (DDP) is stripped.
    """
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise ValueError(
            f"{path} is not a checkpoint: it is neither a torch.save archive nor a pickle (it starts with "
            f"{head!r}). Pass the .pth/.pt file holding the backbone weights."
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_checkpoint)
    except pickle.UnpicklingError as err:
        if trust_checkpoint or "weights only load failed" not in str(err).lower():
            raise ValueError(f"{path} is damaged or truncated: it cannot be unpickled ({err})") from err
        why = next((ln.strip() for ln in str(err).splitlines() if "WeightsUnpickler" in ln), str(err)[:200])
        raise ValueError(
            f"{path} pickles objects other than tensors, so it was not loaded with weights_only=True "
            f"({why}). If you trust the file, set trust_checkpoint=True (EncoderConfig) to load it anyway."
        ) from err
    except (RuntimeError, EOFError, KeyError, ValueError) as err:
        raise ValueError(
            f"{path} is damaged or truncated: torch.load failed ({type(err).__name__}: {str(err)[:200]}); "
            "copy the checkpoint again from its source"
        ) from err
    sd = obj
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                sd = obj[key]
                break
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(
            f"{path} holds no state dict: expected {{'model': sd}}, {{'state_dict': sd}} or a bare sd"
        )
    out = {}
    for k, v in sd.items():
        k = k[len("module.") :] if k.startswith("module.") else k
        out[k] = v.float() if v.is_floating_point() else v
    return out


def load_backbone_weights(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> None:
    """Load ``state_dict`` into a timm ViT strictly.

    Decoder keys, ``mask_token`` and classifier heads are dropped; a ``pos_embed`` for another grid is
    resampled (with a warning); any other missing/unexpected key or shape mismatch raises ``ValueError``
    naming the keys.
    """
    sd = {k: v for k, v in state_dict.items() if not k.startswith(_DROPPED_PREFIXES)}
    own = model.state_dict()
    pos, own_pos = sd.get("pos_embed"), own.get("pos_embed")
    if pos is not None and own_pos is not None and pos.shape[-1] == own_pos.shape[-1] != 0 and (
        pos.shape != own_pos.shape
    ):
        sd["pos_embed"] = _resample_pos_embed(model, sd["pos_embed"], own["pos_embed"], source)
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(sd) & set(own)
        if sd[k].shape != own[k].shape
    )
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_short(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches {_short(mismatched)}")
        raise ValueError(
            f"{source} does not fit the backbone: {'; '.join(parts)}. Check the backbone name "
            "(MVP ViT-S has 12 heads, ViT-L is 256 px) and that the file is complete."
        )
    model.load_state_dict(sd, strict=True)


def _resample_pos_embed(model: nn.Module, pos: torch.Tensor, own: torch.Tensor, source: str) -> torch.Tensor:
    n_prefix = 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 1))
    old_n, new_n = pos.shape[1] - n_prefix, own.shape[1] - n_prefix
    old_side, new_grid = int(round(old_n**0.5)), model.patch_embed.grid_size
    if pos.dim() != 3 or old_side * old_side != old_n:
        raise ValueError(f"{source}: pos_embed {tuple(pos.shape)} cannot be resampled to {tuple(own.shape)}")
    warnings.warn(
        f"{source}: resampling pos_embed from a {old_side}x{old_side} grid to {new_grid[0]}x{new_grid[1]} "
        f"({old_n} -> {new_n} tokens); features differ from the original resolution",
        stacklevel=3,
    )
    return resample_abs_pos_embed(
        pos, new_size=list(new_grid), old_size=[old_side, old_side], num_prefix_tokens=n_prefix
    )


def _short(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{', ...' if len(keys) > limit else ''}] ({len(keys)})"
