"""Dynamic int8 linear layers for frozen backbones (``precision="int8"``).

A ViT spends ~85 % of its FLOPs in the linear layers (qkv, proj, fc1, fc2). On CPUs with AVX512-VNNI an
int8 GEMM (``torch._int_mm``, oneDNN) runs ~2x faster than bf16 and ~4-5x faster than fp32. Weights are
quantised once, symmetric per output channel; activations are quantised at every call, symmetric per token
(row), which follows each token's own range and keeps the error far below per-tensor schemes. Everything
else (patch embedding, attention, norms) stays in the backbone's float dtype (bf16 where supported).
"""

from __future__ import annotations

import torch
from torch import nn

_QMAX = 127.0


class Int8Linear(nn.Module):
    """``nn.Linear`` replacement: ``(q(x) @ q(W)^T) * s_x * s_w + b`` with an int8 x int8 -> int32 GEMM.

    ``q(W)`` is stored transposed (``in x out``, int8) with one fp32 scale per output channel; ``q(x)`` uses
    one fp32 scale per row of ``x``. The output has ``x``'s dtype.
    """

    def __init__(self, weight_t_int8: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.in_features, self.out_features = weight_t_int8.shape
        self.register_buffer("weight_t_int8", weight_t_int8)
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        """Quantise a float ``nn.Linear`` (weights per output channel, symmetric)."""
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp_min(1e-12) / _QMAX
        wq = torch.round(w / scale[:, None]).clamp_(-_QMAX, _QMAX).to(torch.int8).t().contiguous()
        bias = torch.zeros(linear.out_features, device=w.device) if linear.bias is None else linear.bias
        return cls(wq, scale, bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        scale = rows.abs().amax(dim=1, keepdim=True).float().clamp_min_(1e-12).div_(_QMAX)
        xq = (rows * scale.reciprocal()).round_().to(torch.int8)
        if xq.shape[0] > 16:
            acc = torch._int_mm(xq, self.weight_t_int8).float()
        else:  # _int_mm needs more than 16 rows; tiny batches are cheap in float anyway
            acc = xq.float() @ self.weight_t_int8.float()
        # in place: one output allocation and fewer passes over it
        acc.mul_(scale).mul_(self.weight_scale).add_(self.bias)
        return acc.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 dynamic"


def quantizable(linear: nn.Linear) -> bool:
    """``torch._int_mm`` needs both GEMM dimensions to be multiples of 8."""
    return linear.in_features % 8 == 0 and linear.out_features % 8 == 0


def quantize_linears(module: nn.Module, skip: tuple[str, ...] = ("head",)) -> int:
    """Replace every quantisable ``nn.Linear`` below ``module`` (except children named in ``skip``, e.g. the
    classifier that ``forward_features`` never runs) by an :class:`Int8Linear`, in place; returns how many."""
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            if name not in skip and quantizable(child):
                setattr(module, name, Int8Linear.from_linear(child))
                count += 1
        else:
            count += quantize_linears(child, skip)
    return count


__all__ = ["Int8Linear", "quantizable", "quantize_linears"]
