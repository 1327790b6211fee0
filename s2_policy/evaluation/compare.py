"""Compare configurations: ``python -m s2_policy.evaluation.compare results='[multirun/**/result.json]'``.

Reads result JSONs (written by ``train_policy.py`` or ``evaluate``), groups them by ``label`` (one
configuration, several training seeds), and writes a markdown table and a bar chart PNG: pooled success rate
with its Wilson 95 % interval, mean +- std over seeds, encoder FLOPs and latency per control step, trainable
parameters, and a two-sided Fisher exact test of each configuration against the baseline (the paper's
Table 10 layout). To produce the results, run the sweep first, e.g.
``python train_policy.py -m task=pick_marked_cube s2=single,s2 seed=0,1,2``.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from s2_policy.atomic import atomic_path, atomic_write_text
from s2_policy.evaluation.stats import fisher_exact, wilson_interval


def load_results(patterns: Sequence[str]) -> list[dict[str, Any]]:
    """Every result JSON matching the glob ``patterns`` (recursive ``**`` allowed), sorted by path."""
    paths = sorted({p for pat in patterns for p in glob.glob(str(pat), recursive=True)})
    if not paths:
        raise FileNotFoundError(f"no result files match {list(patterns)}; run train_policy.py (or "
                                f"s2_policy.jobs.evaluate) first, or fix the glob")
    out = []
    for p in paths:
        with open(p) as f:
            r = json.load(f)
        if "rollout" not in r or "label" not in r:
            raise ValueError(f"{p} is not a result file (needs 'label' and 'rollout' entries)")
        r["_path"] = p
        out.append(r)
    return out


def summarize(results: Sequence[Mapping[str, Any]], baseline: str | None = None) -> list[dict[str, Any]]:
    """One row per label: pooled counts, Wilson CI, per-seed mean/std, costs, p-value vs the baseline."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in results:
        groups.setdefault(r["label"], []).append(r)
    if baseline is not None and baseline not in groups:
        raise ValueError(f"baseline {baseline!r} is not among the labels {sorted(groups)}")
    base = baseline or next(iter(groups))
    rows = []
    for label, rs in groups.items():
        k = sum(int(r["rollout"]["successes"]) for r in rs)
        n = sum(int(r["rollout"]["n_episodes"]) for r in rs)
        rates = [float(r["rollout"]["success_rate"]) for r in rs]
        enc = rs[0].get("encoder", {})
        rows.append({"label": label, "n_seeds": len(rs), "seeds": [r.get("seed") for r in rs],
                     "successes": k, "episodes": n, "success_rate": k / n, "ci95": wilson_interval(k, n),
                     "seed_mean": float(np.mean(rates)),
                     "seed_std": float(np.std(rates, ddof=1)) if len(rs) > 1 else 0.0,
                     "gflops_per_step": enc.get("flops_per_step", float("nan")) / 1e9,
                     "latency_ms": float(np.median([r.get("encoder", {}).get("latency_ms_median", np.nan)
                                                    for r in rs])),
                     "tiles_per_image": enc.get("n_tiles_per_image"),
                     "trainable_params": rs[0].get("trainable_params"), "task": rs[0].get("task")})
    rows.sort(key=lambda r: r["label"] != base)    # baseline first, the rest in the order found
    b = rows[0]
    for r in rows:
        r["baseline"] = base
        r["p_vs_baseline"] = None if r is b else fisher_exact(r["successes"], r["episodes"], b["successes"],
                                                                b["episodes"])
    return rows


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The comparison as a markdown table."""
    head = ("| configuration | seeds | success (pooled) | Wilson 95% CI | mean +- std over seeds | "
            "encoder GFLOPs/step | encoder latency ms/step | tiles/image | trainable params | "
            f"p vs {rows[0]['baseline']} (Fisher) |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lo, hi = r["ci95"]
        p = "-" if r["p_vs_baseline"] is None else f"{r['p_vs_baseline']:.3g}"
        lines.append(f"| {r['label']} | {r['n_seeds']} | {r['success_rate']:.1%} "
                     f"({r['successes']}/{r['episodes']}) | [{lo:.1%}, {hi:.1%}] | "
                     f"{r['seed_mean']:.1%} +- {r['seed_std']:.1%} | "
                     f"{r['gflops_per_step']:.2f} | {r['latency_ms']:.1f} | {r['tiles_per_image'] or '-'} | "
                     f"{r['trainable_params'] or '-'} | {p} |")
    return "\n".join(lines) + "\n"


def bar_chart(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str = "") -> Path:
    """Bar chart PNG of pooled success with Wilson 95 % error bars and per-seed dots (atomic write)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.arange(len(rows))
    rate = np.array([r["success_rate"] for r in rows])
    err = np.array([[r["success_rate"] - r["ci95"][0], r["ci95"][1] - r["success_rate"]] for r in rows]).T
    fig, ax = plt.subplots(figsize=(max(5.0, 1.8 + 1.6 * len(rows)), 3.6), dpi=120)
    ax.bar(x, rate, yerr=err, capsize=6, color="#4C72B0", alpha=0.85)
    ax.set_xticks(x, [r["label"] for r in rows], rotation=15, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate (Wilson 95% CI)")
    ax.set_title(title or (rows[0].get("task") or ""), fontsize=9)
    for i, r in enumerate(rows):
        ax.text(i, 0.02, f"{r['gflops_per_step']:.1f} GF", ha="center", va="bottom", fontsize=8,
                color="white")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return path


def compare(patterns: Sequence[str], out_dir: str | os.PathLike, baseline: str | None = None,
            title: str = "") -> dict[str, Any]:
    """Load, summarise, write ``comparison.{md,png,json}`` in ``out_dir``; returns rows, table, paths."""
    rows = summarize(load_results(patterns), baseline)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows)
    md = out / "comparison.md"
    atomic_write_text(md, f"# {title}\n\n{table}" if title else table)
    png = bar_chart(rows, out / "comparison.png", title)
    from s2_policy.evaluation.evaluate import write_json

    write_json(rows, out / "comparison.json")
    return {"rows": rows, "table": table, "markdown": str(md), "png": str(png)}


@hydra.main(config_path="../../configs", config_name="compare", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point (see ``configs/compare.yaml``)."""
    patterns = [hydra.utils.to_absolute_path(p) if not os.path.isabs(p) else p
                for p in OmegaConf.to_container(cfg.results, resolve=True)]
    res = compare(patterns, hydra.utils.to_absolute_path(cfg.out_dir), cfg.baseline, cfg.title or "")
    print(res["table"])
    print(f"table: {res['markdown']}  chart: {res['png']}")


if __name__ == "__main__":
    main()
