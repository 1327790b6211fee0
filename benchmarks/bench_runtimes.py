"""Deployment-runtime benchmark: every encoder runtime and precision against the official fp32 per-scale S2
(s2wrapper), the project's fp32 encoder and the PyTorch default, side by side in one run.

    python benchmarks/bench_runtimes.py --s2wrapper /path/to/scaling_on_scales --quiet-check
    python benchmarks/bench_runtimes.py --max-isa AVX512_CORE_BF16     # AMX off: AVX512-BF16/VNNI kernels
    python benchmarks/bench_runtimes.py --model s2p-tiny --repeats 20

Baselines (ViT-B/16 with random weights: timm ``vit_base_patch16_224``, no download; S2 [224, 448], 2
cameras, batch 1, CLS pooling):
- **s2wrapper fp32**: the official ``s2wrapper.forward`` (github.com/bfshi/scaling_on_scales, a local copy
  given by ``--s2wrapper``; it needs ``einops``: ``pip install -e '.[bench]'``), one backbone call per scale,
  after the project's preprocessing. Without ``--s2wrapper`` the project's own per-scale re-implementation
  (``bench_encoder.reference_features``) takes its place, and the table says so.
- **torch fp32**: the project's ``S2Encoder`` at fp32 (all tiles of all scales in one backbone call).
- **torch default**: ``S2Encoder`` at ``precision=auto`` (bf16 weights on CPUs with bf16 units).

Prints the CPU (model, vector extensions, any oneDNN ISA cap), its GEMM peaks (fp32, bf16, int8 via
``torch._int_mm``), then one row per build: median / min / max latency over ``--repeats`` timed calls after
``--warmup`` calls (all builds timed round robin, so load changes hit all alike), speed-ups over the three
baselines, cosine to the fp32 features on the timed frames (min over cameras) and the graph's agreement on its
check frames (mean cosine, what decides fingerprint sharing), the achieved rate (model FLOPs / median) and
that rate as a fraction of the int8 GEMM peak. The load that OTHER processes put on the CPU during the timed
calls is measured (``/proc/stat`` minus this process) and printed; ``--quiet-check`` refuses to report when
it is above ``--max-load`` (default 1 core), and refuses to start on a busy machine. Graphs are exported once
and cached (``--cache-dir``); int8 graphs are calibrated on synthetic frames (half of
``--calibration-frames``; the other half check the agreement).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

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
from machine import OthersLoad, cpu_model
from tqdm import tqdm

from s2_policy.encoders import EncoderConfig, build_encoder
from s2_policy.encoders.runtimes import FramePool, build_runtime_encoder
from s2_policy.runtime import configure_cpu

BUILDS = ["torch:int8", "onnxruntime:fp32", "onnxruntime:int8", "openvino:fp32", "openvino:bf16",
          "openvino:int8"]


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_base_patch16_224", choices=list(MODELS))
    ap.add_argument("--cameras", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--builds", nargs="+", default=BUILDS,
                    help="runtime:precision entries besides the baselines (torch:fp32, torch:auto)")
    ap.add_argument("--repeats", type=int, default=7, help="timed calls per build (>= 5)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls per build first")
    ap.add_argument("--s2wrapper", type=Path, default=None,
                    help="local checkout of github.com/bfshi/scaling_on_scales (holding s2wrapper/)")
    ap.add_argument("--calibration-frames", type=int, default=16)
    ap.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "s2_policy_bench_runtimes"))
    ap.add_argument("--quiet-check", action="store_true",
                    help="refuse to run on, or report from, a machine that other processes load")
    ap.add_argument("--max-load", type=float, default=1.0, help="cores other processes may keep busy")
    ap.add_argument("--max-isa", default=None,
                    help="cap oneDNN's kernels (torch and OpenVINO) at this ISA, e.g. AVX512_CORE_BF16 to "
                         "leave AMX unused (sets ONEDNN_MAX_CPU_ISA and restarts the script)")
    args = ap.parse_args()
    if args.repeats < 5:
        ap.error("--repeats must be >= 5 (the table reports medians)")
    return args


def s2wrapper_forward(path: Path | None):
    """The official ``s2wrapper.forward`` from a local checkout, or None without one."""
    if path is None:
        return None
    if not (path / "s2wrapper" / "core.py").is_file():
        raise SystemExit(f"--s2wrapper {path}: no s2wrapper/core.py there; pass the folder of a checkout of "
                         "github.com/bfshi/scaling_on_scales")
    sys.path.insert(0, str(path))
    try:
        import s2wrapper  # function-level: a user's local checkout, found only through --s2wrapper
    except ImportError as e:
        raise SystemExit(f"importing s2wrapper from {path} failed ({e}); it needs einops: "
                         "pip install -e '.[bench]'") from e
    return s2wrapper.forward


def main() -> None:
    args = parse_args()
    if args.max_isa and os.environ.get("ONEDNN_MAX_CPU_ISA") != args.max_isa:
        # oneDNN reads the cap once, when torch / OpenVINO load it: restart the process with it set
        env = {**os.environ, "ONEDNN_MAX_CPU_ISA": args.max_isa}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    configure_cpu(args.threads)
    if args.quiet_check:
        before = OthersLoad.sample(3.0)
        if before > args.max_load:
            raise SystemExit(f"--quiet-check: other processes keep {before:.2f} cores busy "
                             f"(> {args.max_load}); run again when the machine is quiet")
    s2_forward = s2wrapper_forward(args.s2wrapper)
    img_sizes, checkpoint = MODELS[args.model]
    base = EncoderConfig(backbone=args.model, img_sizes=img_sizes, checkpoint=checkpoint, pooling="cls",
                         runtime_cache_dir=args.cache_dir)
    fp32 = build_encoder(base, precision="fp32")
    side = max(img_sizes)
    frames = FramePool.synthetic(args.calibration_frames, (side, side))

    print(f"CPU: {cpu_model()}; {args.threads} threads; torch {torch.__version__}")
    int8_peak = int8_gemm_peak(fp32.device, repeats=10)
    bf16_peak, _ = gemm_peak(torch.bfloat16, fp32.device, repeats=10)
    fp32_peak, _ = gemm_peak(torch.float32, fp32.device, repeats=5)
    print(f"GEMM peaks: fp32 {fp32_peak:.0f} GFLOP/s, bf16 {bf16_peak:.0f} GFLOP/s, "
          f"int8 (torch._int_mm) {int8_peak:.0f} GOP/s\n")

    encoders = {"torch:fp32": fp32, "torch:auto": build_encoder(base, precision="auto")}
    for build in tqdm(args.builds, desc="building (export + calibration on first use)"):
        runtime, _, precision = build.partition(":")
        if runtime == "torch":
            encoders[build] = build_encoder(base, precision=precision)
        else:
            config = EncoderConfig.from_dict(base.to_dict(), runtime=runtime, precision=precision)
            encoders[build] = build_runtime_encoder(config, frames, reference=fp32)

    rng = np.random.default_rng(0)
    cams = [torch.from_numpy(rng.integers(0, 256, (1, side, side, 3), dtype=np.uint8))
            for _ in range(args.cameras)]
    shapes = tuple((side, side) for _ in cams)
    metas = {b: e.graph_meta(shapes) for b, e in encoders.items() if hasattr(e, "graph_meta")}
    tile = fp32.native_size[0]

    def preprocessed() -> torch.Tensor:
        return torch.cat([fp32.preprocess(f) for f in cams], dim=0)

    def run_s2wrapper() -> torch.Tensor:
        with torch.inference_mode():
            out = s2_forward(fp32.backbone.forward_features, preprocessed(), img_sizes=img_sizes,
                             max_split_size=tile, num_prefix_token=fp32.num_prefix_tokens)
            return out[:, 0]  # CLS averaged over each scale's tiles, scales concatenated

    def run_per_scale() -> torch.Tensor:
        with torch.inference_mode():
            return reference_features(fp32.backbone, preprocessed(), img_sizes, tile)

    baselines = {"s2wrapper fp32 (official, per scale)": run_s2wrapper} if s2_forward else {}
    baselines["project per-scale fp32 re-implementation"] = run_per_scale
    runs = {b: (lambda enc=enc: enc.encode_cameras(cams)) for b, enc in encoders.items()}
    fns = [*baselines.values(), *runs.values()]
    load = OthersLoad().start()
    times = timeit_interleaved(fns, [args.repeats] * len(fns), args.warmup, fp32.device)
    others = load.stop()
    med = {name: statistics.median(t) for name, t in zip([*baselines, *runs], times, strict=True)}
    spread = {name: (min(t), max(t)) for name, t in zip([*baselines, *runs], times, strict=True)}

    ref_name = next(iter(baselines))
    ref = next(iter(baselines.values()))().reshape(args.cameras, -1).double()
    flops = backbone_flops(fp32, args.cameras)
    tiles = args.cameras * fp32.plan.n_tiles
    lines = [f"### {args.model} S2 {img_sizes}, {args.cameras} cameras ({tiles} tiles, {flops / 1e9:.1f} "
             f"GFLOP), batch 1, median of {args.repeats} after {args.warmup} warm-up calls\n",
             f"Reference: {ref_name}. Other processes' load during the timed calls: {others:.2f} cores; "
             f"load average {os.getloadavg()[0]:.2f} (includes this benchmark).\n"]
    if s2_forward:
        ours = runs["torch:fp32"]().reshape(args.cameras, -1).double()
        per_scale = run_per_scale().reshape(args.cameras, -1).double()
        lines.append(f"fp32 agreement with s2wrapper: project encoder max |diff| "
                     f"{(ours - ref).abs().max().item():.2e}, per-scale re-implementation "
                     f"{(per_scale - ref).abs().max().item():.2e} "
                     f"(features up to {ref.abs().max().item():.1f})\n")
    lines += ["| build | median ms | min-max ms | vs reference | vs torch fp32 | vs torch default "
              "| cos to fp32 (min) | agreement (mean) | GFLOP/s | of int8 peak |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in [*baselines, *runs]:
        m, (lo, hi) = med[name], spread[name]
        if name in runs:
            out = runs[name]().reshape(args.cameras, -1).double()
            cos = f"{F.cosine_similarity(out, ref, dim=-1).min().item():.5f}"
        else:
            cos = "1.00000" if name == ref_name else ""
        agreement = metas.get(name, {}).get("agreement", {}).get("cosine_mean")
        lines.append(f"| {name} | {m * 1e3:.0f} | {lo * 1e3:.0f}-{hi * 1e3:.0f} | {med[ref_name] / m:.2f}x "
                     f"| {med['torch:fp32'] / m:.2f}x | {med['torch:auto'] / m:.2f}x | {cos} "
                     f"| {'' if agreement is None else f'{agreement:.5f}'} | {flops / m / 1e9:.0f} "
                     f"| {flops / m / 1e9 / int8_peak:.0%} |")
    if args.quiet_check and others > args.max_load:
        raise SystemExit(f"--quiet-check: other processes kept {others:.2f} cores busy during the timed "
                         f"calls (> {args.max_load}); no figures reported; run again when it is quiet.")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
