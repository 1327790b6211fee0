"""Per-key affine normaliser for low-dimensional data (actions, proprio state).

Diffusion heads expect targets in [-1, 1] (``mode="limits"``); an MLP head is fine with either mode.
The statistics travel inside the policy checkpoint so inference un-normalises exactly as training did.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

_MODES = ("limits", "gaussian")


class LinearNormalizer:
    """``normalize(key, x) = x * scale + offset`` per key and per feature dimension.

    ``fit`` computes ``scale``/``offset`` from training data: ``limits`` maps each dimension's [min, max] to
    [-1, 1] (a constant dimension is only centred on 0), ``gaussian`` standardises to zero mean and unit
    variance (a constant dimension is only centred). Works on numpy arrays and torch tensors of shape
    ``(..., D)``; the output type matches the input.
    """

    def __init__(self) -> None:
        self._params: dict[str, dict[str, torch.Tensor]] = {}
        self.mode: str | None = None

    def fit(self, data: Mapping[str, np.ndarray | torch.Tensor], mode: str = "limits",
            range_eps: float = 1e-4) -> LinearNormalizer:
        """Fit the statistics of every key in ``data`` (arrays ``(N, D)``); returns ``self``."""
        if mode not in _MODES:
            raise ValueError(f"normaliser mode {mode!r} is unknown; use one of {_MODES}")
        if not data:
            raise ValueError("LinearNormalizer.fit needs at least one key, got an empty mapping")
        self.mode = mode
        for key, value in data.items():
            x = torch.as_tensor(np.asarray(value), dtype=torch.float64)
            if x.ndim < 2 or x.shape[0] == 0:
                raise ValueError(f"normaliser key {key!r}: expected a non-empty (N, D) array, got shape "
                                 f"{tuple(x.shape)}")
            x = x.reshape(-1, x.shape[-1])
            if not torch.isfinite(x).all():
                raise ValueError(f"normaliser key {key!r} contains NaN or inf values; clean the data first")
            lo, hi = x.min(0).values, x.max(0).values
            mean, std = x.mean(0), x.std(0, unbiased=False)
            if mode == "limits":
                span = hi - lo
                const = span < range_eps
                scale = torch.where(const, torch.ones_like(span), 2.0 / span.clamp_min(range_eps))
                offset = torch.where(const, -(hi + lo) / 2, -1.0 - lo * scale)
            else:
                const = std < range_eps
                scale = torch.where(const, torch.ones_like(std), 1.0 / std.clamp_min(range_eps))
                offset = -mean * scale
            self._params[key] = {
                "scale": scale.float(), "offset": offset.float(),
                "min": lo.float(), "max": hi.float(), "mean": mean.float(), "std": std.float(),
            }
        return self

    def keys(self) -> list[str]:
        """The fitted keys."""
        return list(self._params)

    def __contains__(self, key: str) -> bool:
        return key in self._params

    def _get(self, key: str) -> dict[str, torch.Tensor]:
        if key not in self._params:
            raise KeyError(f"normaliser has no statistics for {key!r} (fitted keys: {self.keys()}); "
                           f"call fit() with that key")
        return self._params[key]

    def _apply(self, key: str, x: np.ndarray | torch.Tensor, inverse: bool) -> np.ndarray | torch.Tensor:
        p = self._get(key)
        is_np = not isinstance(x, torch.Tensor)
        t = torch.as_tensor(np.asarray(x, dtype=np.float32)) if is_np else x
        if t.shape[-1] != p["scale"].shape[0]:
            raise ValueError(f"normaliser key {key!r}: last dimension is {t.shape[-1]}, statistics were "
                             f"fitted on {p['scale'].shape[0]}")
        scale = p["scale"].to(device=t.device, dtype=t.dtype)
        offset = p["offset"].to(device=t.device, dtype=t.dtype)
        out = (t - offset) / scale if inverse else t * scale + offset
        return out.numpy() if is_np else out

    def normalize(self, key: str, x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Map raw values of ``key`` to normalised units."""
        return self._apply(key, x, inverse=False)

    def unnormalize(self, key: str, x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Map normalised values of ``key`` back to raw (env) units."""
        return self._apply(key, x, inverse=True)

    def stats(self, key: str) -> dict[str, np.ndarray]:
        """min/max/mean/std of the fitted data for ``key`` (for reports)."""
        p = self._get(key)
        return {k: p[k].numpy().copy() for k in ("min", "max", "mean", "std")}

    def state_dict(self) -> dict:
        """Plain, ``torch.save``-able statistics."""
        return {"mode": self.mode,
                "params": {k: {n: v.clone() for n, v in p.items()} for k, p in self._params.items()}}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore statistics written by :meth:`state_dict`."""
        if "params" not in state:
            raise ValueError("not a LinearNormalizer state dict: missing 'params'")
        self.mode = state.get("mode")
        self._params = {k: {n: torch.as_tensor(v).float().clone() for n, v in p.items()}
                        for k, p in state["params"].items()}
