"""Time per MAE training step (forward + backward + AdamW) of ``s2p-tiny`` vs ``s2p-small``, side by side.

Synthetic 64-px batches, the default recipe (75% masking, decoder dim 128 depth 2), bf16 autocast and fp32.
Architectures alternate step by step so that load from other processes hits both alike; medians reported.

    python benchmarks/pretrain_step_time.py --batch-size 64 --steps 8 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from s2_policy.pretrain.mae import MAEConfig, MaskedAutoencoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--archs", nargs="+", default=["s2p-tiny", "s2p-small"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, 64, 64)
    setups = {}
    for arch in args.archs:
        model = MaskedAutoencoder(MAEConfig(arch=arch))
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        setups[arch] = (model, opt)
    times: dict[tuple[str, bool], list[float]] = {(a, amp): [] for a in args.archs for amp in (True, False)}
    for i in range(args.steps + 1):  # step 0 is warm-up
        for (arch, amp), ts in times.items():
            model, opt = setups[arch]
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                loss, _, _ = model(x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i:
                ts.append(time.perf_counter() - t)
    base = statistics.median(times[(args.archs[0], True)])
    print(f"MAE step, batch {args.batch_size}, {args.threads} threads, median of {args.steps}\n")
    print(f"| arch | encoder params (M) | precision | s / step | images / s | vs {args.archs[0]} bf16 |")
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    for (arch, amp), ts in times.items():
        med = statistics.median(ts)
        n_params = sum(p.numel() for p in setups[arch][0].encoder.parameters()) / 1e6
        print(
            f"| {arch} | {n_params:.2f} | {'bf16 autocast' if amp else 'fp32'} | {med:.3f} "
            f"| {args.batch_size / med:.0f} | {med / base:.2f}x |"
        )


if __name__ == "__main__":
    main()
