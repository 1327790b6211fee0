"""Real-time benchmark: tile-batched vs naive S2 encoding, and the full camera -> action loop.

    python benchmarks/bench_realtime.py [--backbone s2p-nano] [--threads 1] [--precision auto] [--seconds 10]
    python benchmarks/bench_realtime.py --backbone s2p-nano --threads 1 --runtime openvino   # + a runtime

Prints markdown tables:
1. encoder latency, tile-batched (every tile of every scale of every camera in ONE backbone call) vs naive
   (one backbone call per camera per scale), same encoder, 1-3 cameras, measured interleaved;
2. where the time of one control step goes (preprocess, tiling, backbone, merge/pool, head);
3. the closed loop on synthetic 30 fps cameras and a dry-run robot: MLP head at 30 Hz, diffusion head
   (DDIM, few steps) at 10 Hz: achieved rate, capture->action latency p50/p95/p99, deadline misses.
Targets (issue): MLP 30 Hz with p99 <= 33 ms; diffusion 10 Hz with p99 <= 100 ms.
With ``--runtime`` (onnxruntime | openvino, at ``--runtime-precision``) tables 3 and 4 add rows for the
exported-graph encoder, run in the same process after the torch rows (tables 1-2 stay PyTorch). Runtimes
compute on their own threads, so their CPU columns undercount: compare wall times and latencies.
Policies have random weights: latency does not depend on what they learnt.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch
from tqdm import tqdm

from s2_policy.encoders import EncoderConfig, build_encoder
from s2_policy.encoders.checkpoint import WEIGHTS_DIR
from s2_policy.encoders.runtimes import FramePool, build_runtime_encoder
from s2_policy.policies import LinearNormalizer, Policy
from s2_policy.realtime.batcher import TileBatcher, encode_naive
from s2_policy.realtime.cameras import SyntheticCamera
from s2_policy.realtime.loop import ControlLoop, LoopConfig
from s2_policy.realtime.robot import DryRunRobot
from s2_policy.realtime.safety import SafetyConfig
from s2_policy.realtime.telemetry import Telemetry, percentiles
from s2_policy.runtime import configure_cpu, set_realtime_priority

CAMS = ["front", "wrist", "side"]
FRAME = (128, 128)


def make_policy(encoder, head: str, n_cams: int, ddim_steps: int) -> Policy:
    rng = np.random.default_rng(0)
    norm = LinearNormalizer().fit({"state": rng.normal(size=(64, 4)), "action": rng.uniform(-1, 1, (64, 4))})
    cfg = {"head": head, "horizon": 16, "n_obs_steps": 2, "n_action_steps": 8,
           "diffusion": {"num_inference_steps": ddim_steps}}
    return Policy(cfg, encoder.out_dim, CAMS[:n_cams], 4, 4, norm, encoder=encoder).eval()


def timed(fn) -> tuple[float, float]:
    """(wall, CPU time of this thread) of one call, seconds. With one torch thread all the work runs on the
    calling thread, so the CPU time is what the call costs on an idle core however busy the machine is."""
    w, c = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - w, time.thread_time() - c


def bench_batching(encoder, rounds: int) -> list[str]:
    rows = ["| cameras | tiles | batched wall p50 / p99 (ms) | naive wall p50 / p99 (ms) | "
            "naive / batched (wall) | batched CPU p50 (ms) | naive CPU p50 (ms) | naive / batched (CPU) |",
            "|" + " --- |" * 8]
    rng = np.random.default_rng(0)
    for k in (1, 2, 3):
        frames = [rng.integers(0, 256, (*FRAME, 3), dtype=np.uint8) for _ in range(k)]
        batcher = TileBatcher(encoder, [FRAME] * k, warmup=3)
        for _ in range(3):
            encode_naive(encoder, frames)
        tb, tn = [], []
        for _ in tqdm(range(rounds), desc=f"batched vs naive, {k} camera(s)", leave=False):
            tb.append(timed(lambda: batcher.encode(frames)))  # noqa: B023 (called at once)
            tn.append(timed(lambda: encode_naive(encoder, frames)))  # noqa: B023
        b, n = percentiles(np.array(tb)[:, 0] * 1e3), percentiles(np.array(tn)[:, 0] * 1e3)
        bc, nc = (float(np.median(np.array(t)[:, 1])) * 1e3 for t in (tb, tn))
        rows.append(f"| {k} | {batcher.n_tiles} | {b['p50']:.1f} / {b['p99']:.1f} | {n['p50']:.1f} / "
                    f"{n['p99']:.1f} | {n['p50'] / b['p50']:.2f}x | {bc:.1f} | {nc:.1f} | {nc / bc:.2f}x |")
    return rows


def bench_breakdown(encoder, policies: list[Policy], rounds: int) -> list[str]:
    """Median time of each stage of one 2-camera step, each stage timed on its own."""
    rng = np.random.default_rng(1)
    frames = [torch.from_numpy(rng.integers(0, 256, (1, *FRAME, 3), dtype=np.uint8)) for _ in range(2)]
    plan, p = encoder.plan, encoder.num_prefix_tokens
    with torch.inference_mode():
        x = torch.cat([encoder.preprocess(f) for f in frames])
        tiles = plan.tile(x)
        outs = [encoder.backbone.forward_features(t.to(encoder.compute_dtype)).float() for t in tiles]
        feats = torch.randn(1, policies[0].n_obs_steps, 2, encoder.out_dim)
        state = np.zeros((1, policies[0].n_obs_steps, 4), np.float32)
        stages = {
            "preprocess (crop/resize/normalise, 2 cams)": lambda: [encoder.preprocess(f) for f in frames],
            "S2 tiling (bicubic per scale + cut)": lambda: plan.tile(x),
            f"backbone, one call ({tiles[0].shape[0]} tiles, {encoder.compute_dtype})":
                lambda: [encoder.backbone.forward_features(t.to(encoder.compute_dtype)) for t in tiles],
            "merge + pool": lambda: plan.merge_prefix(outs, 2, p),
        }
        for pol in policies:
            name = pol.config.head
            if name == "diffusion":
                name += f", DDIM {pol.core.head.num_inference_steps} steps"
            stages[f"head ({name})"] = lambda pol=pol: pol.predict_from_features(feats, state)
        times = {name: [] for name in stages}
        for _ in range(rounds):
            for name, fn in stages.items():
                times[name].append(timed(fn))
    rows = ["| stage | wall p50 (ms) | CPU p50 (ms) |", "| --- | --- | --- |"]
    total = np.zeros(2)
    for name, ts in times.items():
        med = np.median(np.array(ts), axis=0) * 1e3
        if "diffusion" not in name:
            total += med
        rows.append(f"| {name} | {med[0]:.2f} | {med[1]:.2f} |")
    rows.append(f"| **sum, MLP step** | **{total[0]:.2f}** | **{total[1]:.2f}** |")
    return rows


def bench_variants(encoders: dict, rounds: int) -> list[str]:
    """Tile-batched 2-camera encode step for several encoder builds, measured interleaved."""
    rng = np.random.default_rng(2)
    frames = [rng.integers(0, 256, (*FRAME, 3), dtype=np.uint8) for _ in range(2)]
    batchers = {name: TileBatcher(enc, [FRAME, FRAME], warmup=3) for name, enc in encoders.items()}
    times = {name: [] for name in batchers}
    for _ in range(rounds):
        for name, b in batchers.items():
            times[name].append(timed(lambda b=b: b.encode(frames)))
    rows = ["| encoder build | wall p50 (ms) | CPU p50 (ms) | CPU speed-up vs row 1 |", "|" + " --- |" * 4]
    first = None
    for name, ts in times.items():
        wall, cpu = np.median(np.array(ts), axis=0) * 1e3
        first = first or cpu
        rows.append(f"| {name} | {wall:.1f} | {cpu:.1f} | {first / cpu:.2f}x |")
    return rows


def bench_loop(encoder, head: str, rate_hz: float, seconds: float, ddim_steps: int,
               async_inference: bool) -> dict:
    policy = make_policy(encoder, head, 2, ddim_steps)
    cams = {n: SyntheticCamera(n, *FRAME, fps=30, seed=i).start() for i, n in enumerate(CAMS[:2])}
    try:
        time.sleep(0.2)
        batcher = TileBatcher(encoder, [FRAME, FRAME], warmup=3)
        period = 1.0 / rate_hz
        # infer every tick: the full step runs each period (the worst case for compute) and every action
        # is fresh, so capture->action latency is the loop's reaction time, not the age of a chunk's tail
        cfg = LoopConfig(rate_hz=rate_hz, infer_every=1, duration_s=seconds, print_every_s=1e9,
                         async_inference=async_inference,
                         safety=SafetyConfig(stale_s=0.5, max_step_s=10 * period))
        robot = DryRunRobot(4, np.zeros(4))
        loop = ControlLoop(policy, batcher, cams, robot, cfg, Telemetry(period, printer=None))
        summary = loop.run()
    finally:
        for c in cams.values():
            c.stop()
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--backbone", default="s2p-tiny", help="project ViT: s2p-nano | s2p-tiny | s2p-small")
    ap.add_argument("--checkpoint", default=None,
                    help="encoder weights (default: builtin:<backbone>-mae.pth when shipped, else random)")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "int8"])
    ap.add_argument("--rt-priority", type=int, default=None,
                    help="run under SCHED_FIFO at this priority (1-99; needs root or CAP_SYS_NICE)")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--ddim-steps", type=int, default=4)
    ap.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    ap.add_argument("--runtime", default=None, choices=["onnxruntime", "openvino"],
                    help="also run the encode step and the closed loop with this deployment runtime")
    ap.add_argument("--runtime-precision", default="auto", choices=["auto", "fp32", "bf16", "int8"],
                    help="the runtime's precision (int8: calibrated on synthetic frames)")
    args = ap.parse_args()
    configure_cpu(args.threads)
    if args.rt_priority:
        set_realtime_priority(args.rt_priority)
    checkpoint = args.checkpoint
    if checkpoint is None and (WEIGHTS_DIR / f"{args.backbone}-mae.pth").exists():
        checkpoint = f"builtin:{args.backbone}-mae.pth"
    cfg = EncoderConfig(backbone=args.backbone, checkpoint=checkpoint, scales=[1, 2],
                        precision=args.precision)
    encoder = build_encoder(cfg)
    # compile only for the closed loop: tables 1-2 call the backbone eagerly on both paths (a fair comparison)
    loop_encoder = build_encoder(cfg, compile=True) if args.compile else encoder
    load = os.getloadavg()[0]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load avg {load:.1f}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; encoder {args.backbone} "
          f"S2 [64, 128] ({encoder.compute_dtype}, weights {checkpoint}), "
          f"camera frames {FRAME[0]}x{FRAME[1]}; closed loop "
          f"{'with' if args.compile else 'without'} torch.compile; "
          f"scheduling {'SCHED_FIFO ' + str(args.rt_priority) if args.rt_priority else 'normal'}\n")
    if torch.get_num_threads() != 1:
        print("note: with more than one torch thread the CPU columns count the calling thread only; "
              "use --threads 1 for idle-core-equivalent CPU times\n")
    print("### Tile-batched vs naive encoding\n")
    print("\n".join(bench_batching(encoder, args.rounds)) + "\n")
    print("### Where the time of one 2-camera step goes\n")
    heads = [make_policy(encoder, h, 2, args.ddim_steps) for h in ("mlp", "diffusion")]
    print("\n".join(bench_breakdown(encoder, heads, args.rounds)))
    print("\n### Encode step (2 cameras, 10 tiles) by encoder build\n")
    variants = {f"{p}, eager": build_encoder(cfg, precision=p) for p in ("fp32", "bf16")}
    if args.compile:
        variants[f"{loop_encoder.compute_dtype}, torch.compile"] = loop_encoder
    loop_encoders = {"torch": loop_encoder}
    if args.runtime:
        rt_cfg = EncoderConfig.from_dict(cfg.to_dict(), runtime=args.runtime,
                                         precision=args.runtime_precision)
        pool = FramePool.synthetic(32, encoder.input_size) if args.runtime_precision == "int8" else None
        rt_encoder = build_runtime_encoder(rt_cfg, pool)
        name = f"{args.runtime} {rt_encoder.precision}"
        variants[f"{name}, exported graph"] = loop_encoders[name] = rt_encoder
    print("\n".join(bench_variants(variants, args.rounds)))
    print("\n### Closed loop: 2 synthetic 30 fps cameras, dry-run robot\n")
    rows = ["| encoder | head | inference | target | ticks/s | actions/s | latency p50 / p95 / p99 (ms) | "
            "encode p50 | policy p50 | step CPU p50 / p99 | deadline misses | late actions | budget met |",
            "|" + " --- |" * 13]
    runs = [(enc_name, enc, *case) for enc_name, enc in loop_encoders.items() for case in (
        ("mlp", 30.0, 33.0, "sync"), ("mlp", 30.0, 33.0, "async"),
        ("diffusion", 10.0, 100.0, "sync"), ("diffusion", 10.0, 100.0, "async"))]
    for enc_name, enc, head, hz, budget, mode in runs:
        s = bench_loop(enc, head, hz, args.seconds, args.ddim_steps, mode == "async")
        lat, t = s["timing_ms"]["latency_ms"], s["timing_ms"]
        name = head if head == "mlp" else f"diffusion (DDIM {args.ddim_steps})"
        met = s["achieved_hz"] >= 0.95 * hz and lat["p99"] <= budget
        rows.append(f"| {enc_name} | {name} | {mode} | {hz:.0f} Hz, p99 <= {budget:.0f} ms | "
                    f"{s['achieved_hz']:.1f} | "
                    f"{s['actions_sent'] / args.seconds:.1f} | "
                    f"{lat['p50']:.1f} / {lat['p95']:.1f} / {lat['p99']:.1f} | {t['encode_ms']['p50']:.1f} | "
                    f"{t['policy_ms']['p50']:.1f} | {t['compute_cpu_ms']['p50']:.1f} / "
                    f"{t['compute_cpu_ms']['p99']:.1f} | {s['deadline_misses']}/{s['steps']} | "
                    f"{s['late_actions']} | {'yes' if met else 'no'} |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
