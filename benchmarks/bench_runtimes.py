"""Deployment-runtime benchmark: the whole S2 encoder as an exported graph (ONNX Runtime, OpenVINO) at each
precision vs the fp32 per-scale reference of bench_encoder.py, side by side in one run.

    python benchmarks/bench_runtimes.py                 # ViT-B/16 [224, 448], 2 cameras, 2 threads
    python benchmarks/bench_runtimes.py --model s2p-tiny --repeats 20

Prints the GEMM peaks of this CPU (bf16, fp32, int8 via torch._int_mm), then one row per encoder build:
median / min / max latency over the timed calls (all builds and the reference timed round robin, so load
changes hit all alike), speed-up over the reference median, cosine to the reference features (min over
cameras), achieved GFLOP/s (model FLOPs / median time) and that rate as a fraction of the int8 GEMM peak: the
bound an int8 graph could reach if every FLOP were an int8 GEMM at peak speed. ViT-B has random weights
(timm ``vit_base_patch16_224``, no download); int8 graphs are calibrated on synthetic frames (half of
``--calibration-frames``; the other half check the cosine). Graphs are exported once and cached
(``--cache-dir``); export and calibration times are printed from the cache's records.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from bench_encoder import (
    MODELS,
    backbone_flops,
    gemm_peak,
    int8_gemm_peak,
    reference_features,
    timeit_interleaved,
)
from tqdm import tqdm

from s2_policy.encoders import EncoderConfig, build_encoder, cpu_has_bf16
from s2_policy.encoders.runtimes import FramePool, build_runtime_encoder
from s2_policy.runtime import configure_cpu

BUILDS = ["torch:auto", "torch:int8", "onnxruntime:fp32", "onnxruntime:int8", "openvino:fp32",
          "openvino:bf16", "openvino:int8"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_base_patch16_224", choices=list(MODELS))
    ap.add_argument("--cameras", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--builds", nargs="+", default=BUILDS, help="runtime:precision entries")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per build")
    ap.add_argument("--ref-repeats", type=int, default=3, help="timed calls of the fp32 reference")
    ap.add_argument("--calibration-frames", type=int, default=16)
    ap.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "s2_policy_bench_runtimes"))
    args = ap.parse_args()
    configure_cpu(args.threads)
    img_sizes, checkpoint = MODELS[args.model]
    base = EncoderConfig(backbone=args.model, img_sizes=img_sizes, checkpoint=checkpoint,
                         runtime_cache_dir=args.cache_dir)
    ref = build_encoder(base, precision="fp32")
    side = max(img_sizes)
    frames = FramePool.synthetic(args.calibration_frames, (side, side))

    int8_peak = int8_gemm_peak(ref.device, repeats=10)
    bf16_peak, _ = gemm_peak(torch.bfloat16, ref.device, repeats=10)
    fp32_peak, _ = gemm_peak(torch.float32, ref.device, repeats=5)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load avg {os.getloadavg()[0]:.1f}, "
          f"{args.threads} threads, bf16 units: {cpu_has_bf16()}; torch {torch.__version__}")
    print(f"GEMM peaks: fp32 {fp32_peak:.0f} GFLOP/s, bf16 {bf16_peak:.0f} GFLOP/s, "
          f"int8 (torch._int_mm) {int8_peak:.0f} GOP/s\n")

    encoders = {}
    for build in tqdm(args.builds, desc="building (export + calibration on first use)"):
        runtime, precision = build.split(":")
        if runtime == "torch":
            encoders[build] = build_encoder(base, precision=precision)
            continue
        config = EncoderConfig.from_dict(base.to_dict(), runtime=runtime, precision=precision)
        encoders[build] = build_runtime_encoder(config, frames, reference=ref)

    rng = np.random.default_rng(0)
    cams = [torch.from_numpy(rng.integers(0, 256, (1, side, side, 3), dtype=np.uint8))
            for _ in range(args.cameras)]
    shapes = tuple((side, side) for _ in cams)
    metas = {b: e.graph_meta(shapes) for b, e in encoders.items() if hasattr(e, "graph_meta")}

    def run_ref():
        with torch.inference_mode():
            x = torch.cat([ref.preprocess(f) for f in cams], dim=0)
            return reference_features(ref.backbone, x, img_sizes, ref.native_size[0])

    runs = [lambda enc=enc: enc.encode_cameras(cams) for enc in encoders.values()]
    times = timeit_interleaved([*runs, run_ref], [args.repeats] * len(runs) + [args.ref_repeats], 1,
                               ref.device)
    r = run_ref().reshape(args.cameras, -1).double()
    t_ref = statistics.median(times[-1])
    flops = backbone_flops(ref, args.cameras)
    tiles = args.cameras * ref.plan.n_tiles
    print(f"### {args.model} S2 {img_sizes}, {args.cameras} cameras ({tiles} tiles, {flops / 1e9:.1f} GFLOP),"
          " batch 1: each build vs the fp32 per-scale reference\n")
    print("| build | median ms | min-max ms | speed-up vs ref | cos to ref (min) | GFLOP/s | of int8 peak "
          "| export s | build s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(f"| fp32 per-scale reference (torch) | {t_ref * 1e3:.0f} | {min(times[-1]) * 1e3:.0f}-"
          f"{max(times[-1]) * 1e3:.0f} | 1.00x | 1.00000 | {flops / t_ref / 1e9:.0f} | "
          f"{flops / t_ref / 1e9 / int8_peak:.0%} | | |")
    for build, run, t in zip(encoders, runs, times, strict=False):
        a = run().reshape(args.cameras, -1).double()
        cos = F.cosine_similarity(a, r, dim=-1).min().item()
        med = statistics.median(t)
        meta = metas.get(build, {})
        print(f"| {build} | {med * 1e3:.0f} | {min(t) * 1e3:.0f}-{max(t) * 1e3:.0f} | {t_ref / med:.2f}x "
              f"| {cos:.5f} | {flops / med / 1e9:.0f} | {flops / med / 1e9 / int8_peak:.0%} "
              f"| {meta.get('export_s', '')} | {meta.get('build_s', '')} |")
    print(f"\nload avg after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
