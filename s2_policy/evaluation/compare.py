"""Compare configurations: ``python -m s2_policy.evaluation.compare results='[multirun/**/result.json]'``.

Reads result JSONs (written by ``train_policy.py`` or ``evaluate``) and groups them by ``label`` (one
configuration, several training seeds). The training seed is the unit of the comparison (docs/training.md,
"Statistics"): per configuration the per-seed success rates, their mean with a Student-t 95 % interval over
seeds, and against the baseline Welch's t-test on the per-seed rates (``p_vs_baseline``) plus the number of
seeds per configuration that difference needs for 80 % power. Secondary, labelled columns: the pooled
success count with Fisher's exact test (episodes as the unit: overstates certainty when training seeds
differ) and a hierarchical bootstrap interval of the difference that resamples training seeds and pairs env
seeds. Every configuration must have been evaluated on the same env seeds (refused otherwise, unless
``stats.allow_unpaired``); fewer than ``stats.min_seeds`` seeds is warned about in the table and the log.
Writes ``comparison.{md,png,json}``. Run the sweep first, e.g.
``python train_policy.py -m task=pick_marked_cube s2=single,s2 seed=0,1,2,3,4``.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf

from s2_policy.atomic import atomic_path, atomic_write_json, atomic_write_text
from s2_policy.cli import user_errors
from s2_policy.evaluation.seeds import recorded_demo_seeds
from s2_policy.evaluation.stats import (
    fisher_exact,
    paired_bootstrap_diff,
    seeds_needed,
    t_interval,
    welch_test,
    wilson_interval,
)

log = logging.getLogger(__name__)

PRIMARY_TEST = "welch_t_on_per_seed_rates"


@dataclass
class StatsConfig:
    """How configurations are compared (``configs/compare.yaml``, ``stats`` block).

    Args:
        confidence: level of the t-interval over seeds and of the bootstrap interval.
        alpha: significance level the power calculation plans for.
        power: probability of detecting the difference that "seeds needed" plans for.
        difference: success-rate difference (e.g. 0.1 = 10 points) "seeds needed" is computed for; ``None``
            uses each configuration's observed difference to the baseline.
        min_seeds: fewer training seeds per configuration than this is warned about (table and log).
        bootstrap: resamples of the secondary paired bootstrap (0 turns it off).
        bootstrap_seed: its random seed (the interval is reproducible).
        allow_unpaired: compare results evaluated on different env seeds (warn instead of refusing).
    """

    confidence: float = 0.95
    alpha: float = 0.05
    power: float = 0.8
    difference: float | None = None
    min_seeds: int = 3
    bootstrap: int = 2000
    bootstrap_seed: int = 0
    allow_unpaired: bool = False

    def __post_init__(self) -> None:
        for name in ("confidence", "alpha", "power"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"stats.{name} must be in (0, 1), got {getattr(self, name)}")
        if self.difference is not None and not 0 < abs(self.difference) <= 1:
            raise ValueError(f"stats.difference must be a success-rate difference in (0, 1] (0.1 = 10 "
                             f"points) or null for the observed one, got {self.difference}")
        if self.min_seeds < 2:
            raise ValueError(f"stats.min_seeds must be >= 2 (a t-interval needs two seeds), got "
                             f"{self.min_seeds}")
        if self.bootstrap < 0:
            raise ValueError(f"stats.bootstrap must be >= 0 resamples (0 = off), got {self.bootstrap}")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> StatsConfig:
        """Build from a (hydra) mapping; unknown keys are an error so typos do not pass silently."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg or {}) - names)
        if unknown:
            raise ValueError(f"unknown compare stats keys {unknown}; valid keys: {sorted(names)}")
        return cls(**dict(cfg or {}))


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
        if not r["rollout"]:
            raise ValueError(f"{p} holds no evaluation (trained with evaluation off); leave it out")
        r["_path"] = p
        _refuse_demo_seeds(r)
        out.append(r)
    return out


def _refuse_demo_seeds(r: Mapping[str, Any]) -> None:
    """A result evaluated on seeds its demonstration store records as demo seeds is not a test result."""
    store = r["rollout"].get("demo_store")
    recorded = recorded_demo_seeds(store) if store else None
    seeds = {int(e["seed"]) for e in r["rollout"].get("episodes") or []}
    bad = sorted(seeds & recorded) if recorded else []
    if bad:
        raise ValueError(f"{r['_path']} was evaluated on env seeds {bad[:5]} that {store} records as "
                         "demonstration seeds; evaluate again on the task's test seeds")


def _env_outcomes(r: Mapping[str, Any]) -> dict[int, bool] | None:
    """``{env seed: success}`` of a result's episodes, or ``None`` when it does not record them."""
    eps = r["rollout"].get("episodes")
    if not eps:
        return None
    out = {int(e["seed"]): bool(e["success"]) for e in eps}
    if len(out) != len(eps):
        raise ValueError(f"{r.get('_path', r['label'])} evaluates an env seed twice; each episode needs its "
                         f"own env seed")
    return out


def _span(seeds: Sequence[int]) -> str:
    s = sorted(seeds)
    contiguous = s == list(range(s[0], s[0] + len(s)))
    return f"{s[0]}..{s[-1]} ({len(s)})" if contiguous else f"{len(s)} seeds from {s[0]} to {s[-1]}"


def check_pairing(results: Sequence[Mapping[str, Any]],
                  allow_unpaired: bool = False) -> tuple[bool, list[str]]:
    """Whether every result was evaluated on the same env seeds: ``(paired, warnings)``.

    Different env seeds across results raise ``ValueError`` unless ``allow_unpaired`` (then a warning);
    results without per-episode seeds cannot be checked (a warning, and not paired).
    """
    outcomes = [(r, _env_outcomes(r)) for r in results]
    unknown = [r.get("_path", r["label"]) for r, o in outcomes if o is None]
    known = [(r, o) for r, o in outcomes if o is not None]
    warnings = []
    if unknown:
        warnings.append(f"{len(unknown)} result(s) record no per-episode env seeds ({unknown[0]} ...): "
                        f"env-seed pairing could not be checked and the paired bootstrap is skipped")
    if known:
        ref_r, ref = known[0]
        odd = [(r, o) for r, o in known if set(o) != set(ref)]
        if odd:
            r, o = odd[0]
            msg = (f"configurations were evaluated on different env seeds: {r['label']} (seed "
                   f"{r.get('seed')}, {r.get('_path', '')}) on {_span(list(o))}, {ref_r['label']} (seed "
                   f"{ref_r.get('seed')}) on {_span(list(ref))}; {len(odd)} of {len(known)} results differ. "
                   f"Evaluate every configuration on the same env seeds (eval.seed_start, eval.n_episodes), "
                   f"or set stats.allow_unpaired=true")
            if not allow_unpaired:
                raise ValueError(msg)
            warnings.append("UNPAIRED: " + msg)
    return not unknown and bool(known) and len({frozenset(o) for _, o in known}) == 1, warnings


def _finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def summarize(results: Sequence[Mapping[str, Any]], baseline: str | None = None,
              stats: StatsConfig | None = None) -> list[dict[str, Any]]:
    """One row per label, baseline first: per-seed rates, mean and t-interval over seeds, Welch p-value vs the
    baseline (``p_vs_baseline``), seeds needed for the difference, secondary pooled Fisher p and bootstrap
    interval, costs, and the row's ``warnings``."""
    st = stats or StatsConfig()
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in results:
        groups.setdefault(r["label"], []).append(r)
    if baseline is not None and baseline not in groups:
        raise ValueError(f"baseline {baseline!r} is not among the labels {sorted(groups)}")
    for label, rs in groups.items():
        seen: dict[Any, str] = {}
        for r in rs:
            s = r.get("seed")
            if s is not None and s in seen:
                raise ValueError(f"{label!r} has training seed {s} twice ({seen[s]} and {r.get('_path')}): "
                                 f"each training seed counts once; drop one file or give them different "
                                 f"labels")
            seen[s] = r.get("_path", "")
    base = baseline or next(iter(groups))
    paired, shared_warnings = check_pairing(results, st.allow_unpaired)
    env_order = sorted(_env_outcomes(results[0]) or {}) if paired else []

    rows = []
    for label, rs in groups.items():
        rs = sorted(rs, key=lambda r: (r.get("seed") is None, r.get("seed") or 0))
        ks = [int(r["rollout"]["successes"]) for r in rs]
        ns = [int(r["rollout"]["n_episodes"]) for r in rs]
        rates = [k / n for k, n in zip(ks, ns, strict=True)]
        k, n = sum(ks), sum(ns)
        lo, hi = t_interval(rates, st.confidence)
        enc = rs[0].get("encoder", {})
        warnings = []
        if len(rs) < st.min_seeds:
            warnings.append(f"{label}: only {len(rs)} training seed(s), below {st.min_seeds}: the interval "
                            f"over seeds and the test are unreliable (undefined with 1); run more seeds")
        latency = np.median([r.get("encoder", {}).get("latency_ms_median", math.nan) for r in rs])
        rows.append({
            "label": label, "task": rs[0].get("task"), "n_seeds": len(rs),
            "seeds": [r.get("seed") for r in rs], "seed_successes": ks, "seed_episodes": ns,
            "seed_rates": rates,
            "seed_mean": float(np.mean(rates)),
            "seed_std": float(np.std(rates, ddof=1)) if len(rs) > 1 else None,
            "seed_ci95": [_finite_or_none(max(lo, 0.0)), _finite_or_none(min(hi, 1.0))],
            "successes": k, "episodes": n, "success_rate": k / n,
            "pooled_wilson_ci95": list(wilson_interval(k, n)), "env_seeds_paired": paired,
            "gflops_per_step": _finite_or_none(enc.get("flops_per_step", math.nan) / 1e9),
            "latency_ms": _finite_or_none(float(latency)), "tiles_per_image": enc.get("n_tiles_per_image"),
            "trainable_params": rs[0].get("trainable_params"),
            "warnings": warnings,
            "_matrix": (np.array([[_env_outcomes(r)[s] for s in env_order] for r in rs], float)
                        if paired else None),
        })
    rows.sort(key=lambda r: r["label"] != base)    # baseline first, the rest in the order found
    b = rows[0]
    b["warnings"] = shared_warnings + b["warnings"]
    for r in rows:
        r.update(baseline=base, primary_test=PRIMARY_TEST, diff_vs_baseline=None, welch_t=None, welch_df=None,
                 p_vs_baseline=None, seeds_needed=None, seeds_needed_for=None, p_pooled_fisher=None,
                 bootstrap_diff_ci95=None)
        if r is b:
            continue
        r["diff_vs_baseline"] = r["seed_mean"] - b["seed_mean"]
        w = welch_test(b["seed_rates"], r["seed_rates"])
        if w is not None:
            r.update(welch_t=w.t, welch_df=w.df, p_vs_baseline=w.p)
        elif r["n_seeds"] >= 2 and b["n_seeds"] >= 2:
            r["warnings"].append(f"{r['label']}: every seed of it and of {base} has the same success rate: "
                                 f"Welch's test is undefined (no seed-to-seed spread)")
        diff = st.difference if st.difference is not None else r["diff_vs_baseline"]
        if r["seed_std"] is not None and b["seed_std"] is not None:
            r["seeds_needed"] = seeds_needed(diff, b["seed_std"], r["seed_std"], st.alpha, st.power)
            r["seeds_needed_for"] = diff
        r["p_pooled_fisher"] = fisher_exact(r["successes"], r["episodes"], b["successes"], b["episodes"])
        if paired and st.bootstrap:
            r["bootstrap_diff_ci95"] = list(paired_bootstrap_diff(b["_matrix"], r["_matrix"], st.bootstrap,
                                                                  st.confidence, st.bootstrap_seed))
    for r in rows:
        del r["_matrix"]
    return rows


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _p(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def markdown_table(rows: Sequence[Mapping[str, Any]], stats: StatsConfig | None = None) -> str:
    """The comparison as a markdown table, a note on the statistics, and the warnings."""
    st = stats or StatsConfig()
    base = rows[0]["baseline"]
    conf = f"{st.confidence:.0%}"
    head = (f"| configuration | seeds | successes per seed | mean over seeds [{conf} t-CI] | "
            f"diff vs {base} | **p vs {base}** (Welch, per-seed rates) | "
            f"seeds needed ({st.power:.0%} power) | "
            f"pooled success (secondary) | pooled Fisher p (secondary) | "
            f"bootstrap {conf} CI of diff (secondary) | "
            "encoder GFLOPs/step | encoder latency ms/step | tiles/image | trainable params |")
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        n_eps = set(r["seed_episodes"])
        ks, ns = r["seed_successes"], r["seed_episodes"]
        per_seed = (", ".join(map(str, ks)) + f" of {n_eps.pop()}" if len(n_eps) == 1 else
                    ", ".join(f"{k}/{n}" for k, n in zip(ks, ns, strict=True)))
        lo, hi = r["seed_ci95"]
        ci = f"[{_pct(lo)}, {_pct(hi)}]" if lo is not None else "[n/a]"
        seeds = f"{r['n_seeds']}" + (f" (< {st.min_seeds}!)" if r["n_seeds"] < st.min_seeds else "")
        diff = "-" if r["diff_vs_baseline"] is None else f"{r['diff_vs_baseline'] * 100:+.1f} pts"
        boot = r["bootstrap_diff_ci95"]
        boot_s = "-" if boot is None else f"[{boot[0] * 100:+.1f}, {boot[1] * 100:+.1f}] pts"
        need = "-" if r is rows[0] else ("n/a" if r["seeds_needed"] is None else str(r["seeds_needed"]))
        p = _p(r["p_vs_baseline"]) if r is rows[0] or r["p_vs_baseline"] is not None else "n/a"
        lines.append(f"| {r['label']} | {seeds} | {per_seed} | {r['seed_mean']:.1%} {ci} | {diff} | {p} | "
                     f"{need} | {r['success_rate']:.1%} ({r['successes']}/{r['episodes']}) | "
                     f"{_p(r['p_pooled_fisher'])} | {boot_s} | {_num(r['gflops_per_step'], '.2f')} | "
                     f"{_num(r['latency_ms'], '.1f')} | "
                     f"{r['tiles_per_image'] or '-'} | {r['trainable_params'] or '-'} |")
    planned = ("the observed difference" if st.difference is None else
               f"a difference of {st.difference * 100:.1f} points")
    lines += ["", f"The training seed is the unit: p is Welch's two-sided t-test on per-seed success rates "
              f"against {base}; seeds needed = training seeds per configuration for {st.power:.0%} power at "
              f"alpha {st.alpha:g} to detect {planned}, from the observed per-seed SDs. Secondary: pooled "
              "Fisher treats episodes of different training seeds as independent (overstates certainty); the "
              "bootstrap resamples training seeds and, paired across configurations, env seeds."]
    warnings = [w for r in rows for w in r["warnings"]]
    if warnings:
        lines += [""] + [f"- **warning**: {w}" for w in warnings]
    return "\n".join(lines) + "\n"


def bar_chart(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str = "") -> Path:
    """Bar chart PNG: mean success over seeds with its t-interval, one dot per training seed (atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.arange(len(rows))
    mean = np.array([r["seed_mean"] for r in rows])
    ci = np.array([[np.nan if v is None else v for v in r["seed_ci95"]] for r in rows], float)
    err = np.nan_to_num(np.stack([mean - ci[:, 0], ci[:, 1] - mean]), nan=0.0)
    fig = Figure(figsize=(max(5.0, 1.8 + 1.6 * len(rows)), 3.6), dpi=120)   # no pyplot: no global backend
    ax = fig.subplots()
    ax.bar(x, mean, yerr=err, capsize=6, color="#4C72B0", alpha=0.85)
    for i, r in enumerate(rows):
        jitter = np.linspace(-0.15, 0.15, len(r["seed_rates"])) if len(r["seed_rates"]) > 1 else [0.0]
        ax.plot(i + np.asarray(jitter), r["seed_rates"], "o", color="black", ms=3.5, zorder=3)
        if r["gflops_per_step"] is not None:
            ax.text(i, 0.02, f"{r['gflops_per_step']:.1f} GF", ha="center", va="bottom", fontsize=8,
                    color="white")
    ax.set_xticks(x, [r["label"] for r in rows], rotation=15, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success (seed mean, t-CI)")
    ax.text(0.99, 0.98, "dots: training seeds", transform=ax.transAxes, ha="right", va="top", fontsize=7)
    ax.set_title(title or (rows[0].get("task") or ""), fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    return path


def compare(patterns: Sequence[str], out_dir: str | os.PathLike, baseline: str | None = None,
            title: str = "", stats: StatsConfig | None = None) -> dict[str, Any]:
    """Load, summarise, write ``comparison.{md,png,json}`` in ``out_dir``; returns rows, table, paths and
    warnings (also logged)."""
    st = stats or StatsConfig()
    rows = summarize(load_results(patterns), baseline, st)
    warnings = [w for r in rows for w in r["warnings"]]
    for w in warnings:
        log.warning(w)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows, st)
    md = out / "comparison.md"
    atomic_write_text(md, f"# {title}\n\n{table}" if title else table)
    png = bar_chart(rows, out / "comparison.png", title)
    js = atomic_write_json(out / "comparison.json", {"stats": asdict(st), "primary_test": PRIMARY_TEST,
                                                     "rows": rows, "warnings": warnings})
    return {"rows": rows, "table": table, "markdown": str(md), "png": str(png), "json": str(js),
            "warnings": warnings}


@hydra.main(config_path="../../configs", config_name="compare", version_base="1.3")
@user_errors
def main(cfg: DictConfig) -> None:
    """Hydra entry point (see ``configs/compare.yaml``)."""
    patterns = [hydra.utils.to_absolute_path(p) if not os.path.isabs(p) else p
                for p in OmegaConf.to_container(cfg.results, resolve=True)]
    stats = StatsConfig.from_mapping(OmegaConf.to_container(cfg.stats, resolve=True))
    res = compare(patterns, hydra.utils.to_absolute_path(cfg.out_dir), cfg.baseline, cfg.title or "", stats)
    print(res["table"])
    print(f"table: {res['markdown']}  chart: {res['png']}  json: {res['json']}")


if __name__ == "__main__":
    main()
