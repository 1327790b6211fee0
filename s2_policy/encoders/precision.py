"""Compute-precision choice for frozen backbones."""

from __future__ import annotations

import functools

import torch

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _cpu_has(torch_probes: tuple[str, ...], cpuinfo_flags: tuple[str, ...]) -> bool:
    """True when any of torch's ``torch.cpu`` probes says so, else when ``/proc/cpuinfo`` lists any flag."""
    cpu = getattr(torch, "cpu", None)
    for probe in torch_probes:
        fn = getattr(cpu, probe, None)
        if fn is not None and fn():
            return True
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return any(flag in flags for flag in cpuinfo_flags)


@functools.cache
def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 matrix units (AVX512-BF16 or AMX), i.e. bf16 GEMMs beat fp32."""
    return _cpu_has(("_is_avx512_bf16_supported", "_is_amx_tile_supported"), ("avx512_bf16", "amx_bf16"))


@functools.cache
def cpu_has_vnni() -> bool:
    """True when the CPU has int8 dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX-INT8). Without them
    int8 kernels multiply u8 x s8 pairs with 16-bit saturation, which 8-bit weights can overflow."""
    return _cpu_has(("_is_avx512_vnni_supported", "_is_amx_tile_supported"),
                    ("avx512_vnni", "avx_vnni", "amx_int8"))


def resolve_precision(precision: str, device: torch.device | str) -> torch.dtype:
    """Weight/compute dtype for ``precision`` on ``device``.

    ``auto``: bf16 on CPUs with bf16 units (weights converted once: autocast would re-cast them every call),
    bf16 on CUDA GPUs that support it, else fp16 on CUDA, else fp32. ``int8`` quantises only the linear
    layers (:mod:`s2_policy.encoders.quantize`); the dtype returned is the one of everything else (as auto).
    """
    device = torch.device(device)
    if precision not in ("auto", "int8"):
        if precision not in _DTYPES:
            raise ValueError(f"precision={precision!r} is not one of {['auto', 'int8', *_DTYPES]}")
        return _DTYPES[precision]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return torch.float32
