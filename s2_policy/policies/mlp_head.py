"""MLP behaviour-cloning head: observation condition -> whole action chunk in one forward pass."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from s2_policy.policies.config import MLPHeadConfig


class MLPHead(nn.Module):
    """Regresses the normalised action chunk ``(B, horizon, A)`` from a flat condition ``(B, cond_dim)``.

    ``loss`` is ``"l2"`` (MSE) or ``"l1"``; deterministic at inference.
    """

    def __init__(self, cond_dim: int, action_dim: int, horizon: int,
                 cfg: MLPHeadConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or MLPHeadConfig()
        hidden_dim, n_layers, dropout, loss = cfg.hidden_dim, cfg.n_layers, cfg.dropout, cfg.loss
        if min(cond_dim, action_dim, horizon, hidden_dim, n_layers) < 1:
            raise ValueError("MLP head sizes (cond_dim, action_dim, horizon, hidden_dim, n_layers) "
                             "must be >= 1")
        self.action_dim, self.horizon, self.loss_type = action_dim, horizon, loss
        layers: list[nn.Module] = []
        dim = cond_dim
        for _ in range(n_layers):
            layers += [nn.Linear(dim, hidden_dim), nn.GELU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            dim = hidden_dim
        layers.append(nn.Linear(dim, horizon * action_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        """``(B, cond_dim)`` -> ``(B, horizon, action_dim)`` in normalised units."""
        return self.net(cond).view(cond.shape[0], self.horizon, self.action_dim)

    def compute_loss(self, cond: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Mean L2/L1 error between the predicted and the target normalised action chunk."""
        pred = self(cond)
        return F.mse_loss(pred, action) if self.loss_type == "l2" else F.l1_loss(pred, action)

    @torch.no_grad()
    def predict(self, cond: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Action chunk for ``cond``; ``generator`` is accepted for a head-independent API and unused."""
        return self(cond)
