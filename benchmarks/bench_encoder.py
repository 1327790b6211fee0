"""Encoder benchmark: S2Encoder (default settings) vs a straightforward fp32 per-scale S2 reference.

Measures first the bf16 and fp32 GEMM peak (torch.matmul at ViT-sized shapes), then for each model and camera
count: median latency of both, their ratio, the cosine similarity of the features, and the achieved FLOP rate
(FLOPs counted by torch's FlopCounterMode) as a fraction of the bf16 GEMM peak. Prints markdown tables.

    python benchmarks/bench_encoder.py              # ViT-B/16 [224, 448] + s2p-tiny [64, 128], 2 threads
    python benchmarks/bench_encoder.py --models s2p-tiny --repeats 20 --ref-repeats 5
    python benchmarks/bench_encoder.py --device cuda   # on a GPU: bf16/fp16, p50/p99

Each ``--precisions`` entry is one S2Encoder row (``auto`` is the default encoder); ``--scale-antialias``
adds the same encoder with antialiased smaller scales. ViT-B has random weights
(timm ``vit_base_patch16_224`` without download); s2p-tiny uses the shipped MAE weights, whose trained
activation ranges are the honest test of int8 agreement.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from s2_policy.encoders import EncoderConfig, S2Encoder, build_encoder, cpu_has_bf16
from s2_policy.runtime import configure_cpu

MODELS = {  # name: (img_sizes, checkpoint)
    "vit_base_patch16_224": ([224, 448], None),
    "s2p-tiny": ([64, 128], "builtin:s2p-tiny-mae.pth"),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn: Callable[[], object], repeats: int, warmup: int, device: torch.device) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def timeit_interleaved(
    fns: list[Callable[[], object]], repeats: list[int], warmup: int, device: torch.device
) -> list[list[float]]:
    """Time several functions in alternation (round robin), so a shared machine's load hits all alike."""
    for fn in fns:
        timeit(fn, 0, warmup, device)
    times: list[list[float]] = [[] for _ in fns]
    for r in range(max(repeats)):
        for fn, n, out in zip(fns, repeats, times, strict=True):
            if r < n:
                out.extend(timeit(fn, 1, 0, device))
    return times


def gemm_peak(dtype: torch.dtype, device: torch.device, repeats: int) -> tuple[float, str]:
    """Best GFLOP/s of torch.matmul over ViT-B-sized shapes (tokens x dim x hidden) and a square GEMM."""
    shapes = [(1970, 768, 3072), (1970, 3072, 768), (1970, 768, 2304), (2048, 2048, 2048)]
    best, best_shape = 0.0, ""
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device).to(dtype)
        b = torch.randn(k, n, device=device).to(dtype)
        t = statistics.median(timeit(lambda a=a, b=b: torch.matmul(a, b), repeats, 2, device))
        rate = 2 * m * k * n / t / 1e9
        if rate > best:
            best, best_shape = rate, f"{m}x{k}x{n}"
    return best, best_shape


def int8_gemm_peak(device: torch.device, repeats: int) -> float:
    """Best GOP/s (2 x MACs) of torch._int_mm (int8 x int8 -> int32) over the ViT-B shapes."""
    best = 0.0
    for m, k, n in [(1970, 768, 3072), (1970, 3072, 768), (1970, 768, 2304)]:
        a = torch.randint(-127, 128, (m, k), dtype=torch.int8, device=device)
        b = torch.randint(-127, 128, (k, n), dtype=torch.int8, device=device)
        t = statistics.median(timeit(lambda a=a, b=b: torch._int_mm(a, b), repeats, 2, device))
        best = max(best, 2 * m * k * n / t / 1e9)
    return best


def reference_features(
    model: torch.nn.Module, x: torch.Tensor, img_sizes: list[int], tile: int
) -> torch.Tensor:
    """s2wrapper-style fp32 S2 with CLS pooling: per scale, resize, cut tiles (torch.cat), ONE model call."""
    b = x.shape[0]
    feats = []
    for size in img_sizes:
        xs = F.interpolate(x, size=(size, size), mode="bicubic")
        n = math.ceil(size / tile)
        tiles = torch.cat([xs[:, :, i * tile:(i + 1) * tile, j * tile:(j + 1) * tile]
                           for i in range(n) for j in range(n)], dim=0)
        cls = model.forward_features(tiles)[:, 0]
        feats.append(torch.stack(cls.split(b, dim=0), dim=0).mean(dim=0))
    return torch.cat(feats, dim=-1)


def backbone_flops(encoder: S2Encoder, n_images: int) -> int:
    """FLOPs of one backbone pass over every tile of ``n_images`` images (matmuls, convs, attention)."""
    tiles = torch.zeros(n_images * encoder.plan.n_tiles, 3, *encoder.native_size, device=encoder.device,
                        dtype=encoder.compute_dtype)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        encoder.backbone.forward_features(tiles)
    return counter.get_total_flops()


def bench_model(name: str, img_sizes: list[int], checkpoint: str | None, cameras: list[int],
                args: argparse.Namespace, device: torch.device) -> list[dict[str, object]]:
    """Rows for one backbone: for each camera count and precision, S2Encoder vs the fp32 per-scale reference.

    The reference and every precision are timed round robin in one loop, so load changes hit all alike.
    """
    common = {"backbone": name, "img_sizes": img_sizes, "checkpoint": checkpoint, "device": str(device)}
    ours = {}
    for precision in args.precisions:
        ours[precision] = build_encoder(EncoderConfig(**common, precision=precision, compile=args.compile))
        if args.scale_antialias:  # the same encoder with antialiased smaller scales (its cosine is to plain)
            ours[f"{precision}, antialiased scales"] = build_encoder(EncoderConfig(
                **common, precision=precision, compile=args.compile, scale_antialias=True))
    ref = build_encoder(EncoderConfig(**common, precision="fp32"))
    tile = ref.native_size[0]
    rng = np.random.default_rng(0)
    rows = []
    for k in cameras:
        side = max(img_sizes)
        frames = [torch.from_numpy(rng.integers(0, 256, (1, side, side, 3), dtype=np.uint8))
                  for _ in range(k)]

        def run_ref(frames=frames):
            with torch.inference_mode():
                x = torch.cat([ref.preprocess(f) for f in frames], dim=0)
                return reference_features(ref.backbone, x, img_sizes, tile)

        runs = [lambda enc=enc, frames=frames: enc.encode_cameras(frames) for enc in ours.values()]
        times = timeit_interleaved([*runs, run_ref], [args.repeats] * len(runs) + [args.ref_repeats], 1,
                                   device)
        r = run_ref().reshape(k, -1).float()
        med_ref = statistics.median(times[-1])
        flops = backbone_flops(ref, k)  # model FLOPs, the same for every variant (int8 GEMMs are not counted)
        for (precision, enc), run, t in zip(ours.items(), runs, times, strict=False):
            a = run().reshape(k, -1).float()
            cos = F.cosine_similarity(a, r, dim=-1).min().item()
            med = statistics.median(t)
            rows.append({
                "model": name, "img_sizes": img_sizes, "cameras": k, "tiles": k * enc.plan.n_tiles,
                "precision": precision, "dtype": _describe(enc),
                "ours_ms": med * 1e3, "p99_ms": float(np.percentile(t, 99)) * 1e3, "ref_ms": med_ref * 1e3,
                "speedup": med_ref / med, "cos": cos, "gflop": flops / 1e9, "gflops": flops / med / 1e9,
            })
    return rows


def _describe(enc: S2Encoder) -> str:
    """Compute dtype and int8 linear layers of an encoder, for the table."""
    dtype = str(enc.compute_dtype).replace("torch.", "")
    return f"int8 linears + {dtype}" if enc.int8_layers else dtype


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--cameras", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of S2Encoder")
    parser.add_argument("--ref-repeats", type=int, default=3,
                        help="timed calls of the slow fp32 reference (alternating with S2Encoder calls)")
    parser.add_argument("--precisions", nargs="+", default=["auto", "int8"],
                        choices=["auto", "fp32", "bf16", "fp16", "int8"],
                        help="S2Encoder precisions to time against the reference (auto = the default)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    parser.add_argument("--scale-antialias", action="store_true",
                        help="add a row per precision with s2.scale_antialias=true (the cost of the option)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    configure_cpu(args.threads)
    device = torch.device(args.device)

    bf16_peak, bf16_shape = gemm_peak(torch.bfloat16, device, repeats=10)
    fp32_peak, fp32_shape = gemm_peak(torch.float32, device, repeats=5)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"\n### GEMM peak ({where}; bf16 units: {cpu_has_bf16() if device.type == 'cpu' else 'n/a'})\n")
    print("| dtype | GFLOP/s | best shape (MxKxN) |\n| --- | ---: | --- |")
    print(f"| bf16 | {bf16_peak:.0f} | {bf16_shape} |\n| fp32 | {fp32_peak:.0f} | {fp32_shape} |")
    print(f"| int8 (torch._int_mm, GOP/s) | {int8_gemm_peak(device, repeats=10):.0f} | ViT-B shapes |")

    rows = []
    for name in tqdm(args.models, desc="models"):
        rows += bench_model(name, *MODELS[name], args.cameras, args, device)
    # the machine may be shared: measure the peak again after the models and keep the better figure
    bf16_after, _ = gemm_peak(torch.bfloat16, device, repeats=10)
    print(f"\nbf16 GEMM peak after the models: {bf16_after:.0f} GFLOP/s; fractions below use the max")
    peak = max(bf16_peak, bf16_after)
    print("\n### S2Encoder vs fp32 per-scale reference (batch 1)\n")
    print("| model | img_sizes | cams | tiles | precision | compute | ours median ms | ours p99 ms "
          "| ref fp32 median ms | speed-up | cos | GFLOP | GFLOP/s | of bf16 peak |")
    print("| --- | --- | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['model']} | {r['img_sizes']} | {r['cameras']} | {r['tiles']} | {r['precision']} "
              f"| {r['dtype']} "
              f"| {r['ours_ms']:.1f} | {r['p99_ms']:.1f} | {r['ref_ms']:.1f} | {r['speedup']:.2f}x "
              f"| {r['cos']:.5f} | {r['gflop']:.1f} | {r['gflops']:.0f} | {r['gflops'] / peak:.0%} |")


if __name__ == "__main__":
    main()
