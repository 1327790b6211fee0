"""Comparison statistics with the training seed as the unit: known answers, hand-computed references."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from s2_policy.data.store import ReplayStore
from s2_policy.evaluation.compare import StatsConfig, compare
from s2_policy.evaluation.stats import (
    fisher_exact,
    paired_bootstrap_diff,
    seeds_needed,
    t_interval,
    welch_power,
    welch_test,
)

REPO = Path(__file__).resolve().parents[1]
ENV_SEEDS = list(range(100_000, 100_050))


def hand_welch(a, b):
    """Welch's t-test of mean(b) - mean(a) from the textbook formulas (only the t tail from scipy)."""
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((x - ma) ** 2 for x in a) / (len(a) - 1)
    vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1)
    se2a, se2b = va / len(a), vb / len(b)
    t = (mb - ma) / math.sqrt(se2a + se2b)
    df = (se2a + se2b) ** 2 / (se2a**2 / (len(a) - 1) + se2b**2 / (len(b) - 1))
    return t, df, 2 * sps.t.sf(abs(t), df)


def write_results(root: Path, label: str, counts, n: int = 50, env_seeds=ENV_SEEDS,
                  flops: float = 7e8) -> None:
    """One result.json per training seed, as train_policy.py writes it (per-episode env seeds included)."""
    for seed, k in enumerate(counts):
        rng = np.random.default_rng(1000 * seed + len(label))
        ok = np.zeros(n, bool)
        ok[rng.choice(n, k, replace=False)] = True
        eps = [{"seed": s, "success": bool(o), "length": 10} for s, o in zip(env_seeds[:n], ok, strict=True)]
        res = {"label": label, "seed": seed, "task": "pick_marked_cube",
               "rollout": {"successes": k, "n_episodes": n, "success_rate": k / n, "episodes": eps},
               "encoder": {"flops_per_step": flops, "latency_ms_median": flops / 1e8, "n_tiles_per_image": 1},
               "trainable_params": 1234}
        d = root / f"{label}-{seed}"
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps(res))


def test_welch_t_interval_and_fisher_match_hand_computation():
    single, s2 = [14 / 50, 25 / 50, 25 / 50], [25 / 50, 33 / 50, 33 / 50]
    w = welch_test(single, s2)
    t, df, p = hand_welch(single, s2)
    assert (w.t, w.df, w.p) == pytest.approx((t, df, p), rel=1e-9)
    ref = sps.ttest_ind(s2, single, equal_var=False)                      # a second, independent reference
    assert (w.t, w.p) == pytest.approx((ref.statistic, ref.pvalue), rel=1e-9)
    assert w.diff == pytest.approx(0.18) and w.p == pytest.approx(0.1248, abs=1e-4) and w.p > 0.05
    w = welch_test([11 / 50, 12 / 50, 10 / 50], [35 / 50, 36 / 50, 34 / 50])
    assert w.p == pytest.approx(hand_welch([11, 12, 10], [35, 36, 34])[2], rel=1e-9) and w.p < 1e-4
    assert welch_test([0.5], [0.6, 0.7]) is None and welch_test([0.5, 0.5], [0.7, 0.7]) is None
    lo, hi = t_interval([0.28, 0.5, 0.5])
    half = 4.302653 * np.std([0.28, 0.5, 0.5], ddof=1) / math.sqrt(3)   # t_{0.975, 2} = 4.3027
    assert (lo, hi) == pytest.approx((0.426667 - half, 0.426667 + half), abs=1e-5)
    assert all(math.isnan(x) for x in t_interval([0.5]))


def test_seeds_needed_reaches_the_power_by_simulation():
    n = seeds_needed(0.10, 0.10, 0.10)
    assert welch_power(n, 0.10, 0.10, 0.10) >= 0.8 > welch_power(n - 1, 0.10, 0.10, 0.10)
    assert n == 17            # normal approximation alone: 16 (2 * (1.96 + 0.84)^2 = 15.7)
    rng = np.random.default_rng(0)   # independent check: Welch tests on simulated per-seed rates
    a, b = rng.normal(0.5, 0.1, (20_000, n)), rng.normal(0.6, 0.1, (20_000, n))
    hit = (sps.ttest_ind(b, a, axis=1, equal_var=False).pvalue < 0.05).mean()
    assert hit == pytest.approx(0.8, abs=0.02)
    assert seeds_needed(-0.10, 0.10, 0.10) == n and seeds_needed(0.0, 0.1, 0.1) is None
    assert seeds_needed(0.5, 0.0, 0.0) == 2
    with pytest.raises(ValueError, match="power"):
        seeds_needed(0.1, 0.1, 0.1, power=1.0)


def test_paired_bootstrap_pairs_env_seeds():
    rng = np.random.default_rng(0)
    hard = rng.random(60) < 0.5                          # env seeds that are hard for every policy
    a = np.tile(~hard, (4, 1)).astype(float)
    b = a.copy()
    b[:, np.flatnonzero(hard)[:6]] = 1                   # b also solves 6 hard seeds: +10 points, every seed
    lo, hi = paired_bootstrap_diff(a, b, n_boot=1000)
    assert 0.0 < lo <= 0.1 <= hi < 0.2                   # paired: the env-seed difficulty cancels
    with pytest.raises(ValueError, match="same env seeds"):
        paired_bootstrap_diff(a, b[:, :-1])


def test_seed_level_test_finds_no_difference_where_pooled_fisher_does(tmp_path):
    write_results(tmp_path / "runs", "single", [14, 25, 25])
    write_results(tmp_path / "runs", "s2", [25, 33, 33], flops=3.5e9)
    out = compare([str(tmp_path / "runs" / "**" / "result.json")], tmp_path / "cmp", baseline="single",
                  title="fine detail")
    base, s2 = out["rows"]
    assert base["label"] == "single" and base["p_vs_baseline"] is None and base["seeds_needed"] is None
    assert s2["seed_rates"] == [0.5, 0.66, 0.66] and s2["seeds"] == [0, 1, 2]
    assert s2["p_vs_baseline"] == pytest.approx(hand_welch([14, 25, 25], [25, 33, 33])[2], rel=1e-9)
    assert s2["p_vs_baseline"] > 0.1 and s2["primary_test"] == "welch_t_on_per_seed_rates"
    assert s2["p_pooled_fisher"] == pytest.approx(fisher_exact(91, 150, 64, 150))
    assert s2["p_pooled_fisher"] < 0.01    # episodes as the unit: "significant", wrongly
    assert s2["diff_vs_baseline"] == pytest.approx(0.18)
    sds = np.std([.28, .5, .5], ddof=1), np.std([.5, .66, .66], ddof=1)
    assert s2["seeds_needed"] == seeds_needed(0.18, *sds)
    assert 3 < s2["seeds_needed"] < 20
    assert s2["seed_ci95"] == pytest.approx([max(0, x) for x in t_interval([0.5, 0.66, 0.66])])
    assert s2["env_seeds_paired"] and s2["bootstrap_diff_ci95"][0] < 0.18 < s2["bootstrap_diff_ci95"][1]
    assert out["warnings"] == []
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| s2 | 3 | 25, 33, 33 of 50 | 60.7% [" in md and "| +18.0 pts | 0.125 |" in md
    assert "Welch" in md and "(secondary)" in md and "60.7% (91/150)" in md
    saved = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert saved["primary_test"] == "welch_t_on_per_seed_rates" and saved["stats"]["min_seeds"] == 3
    assert saved["rows"][1]["p_vs_baseline"] == pytest.approx(s2["p_vs_baseline"])
    assert (tmp_path / "cmp" / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_seed_level_test_finds_a_clear_difference(tmp_path):
    write_results(tmp_path, "single", [11, 12, 10])
    write_results(tmp_path, "s2", [35, 36, 34])
    s2 = compare([str(tmp_path / "**" / "result.json")], tmp_path / "cmp", baseline="single")["rows"][1]
    assert s2["p_vs_baseline"] == pytest.approx(hand_welch([11, 12, 10], [35, 36, 34])[2], rel=1e-9)
    assert s2["p_vs_baseline"] < 1e-4 and s2["seeds_needed"] == 2
    assert s2["bootstrap_diff_ci95"][0] > 0.3


def test_fewer_than_three_seeds_is_warned_in_table_and_log(tmp_path, caplog):
    write_results(tmp_path, "single", [14, 25])
    write_results(tmp_path, "s2", [30])
    with caplog.at_level(logging.WARNING, logger="s2_policy.evaluation.compare"):
        out = compare([str(tmp_path / "**" / "result.json")], tmp_path / "cmp", baseline="single",
                      stats=StatsConfig(difference=0.1))
    base, s2 = out["rows"]
    assert base["n_seeds"] == 2 and s2["n_seeds"] == 1 and len(out["warnings"]) == 2
    assert all("below 3" in w for w in out["warnings"])
    assert sum("below 3" in r.message for r in caplog.records) == 2
    assert s2["p_vs_baseline"] is None and s2["seeds_needed"] is None and s2["seed_ci95"] == [None, None]
    md = out["table"]
    assert "| single | 2 (< 3!) |" in md and "| s2 | 1 (< 3!) |" in md and "| n/a |" in md
    assert md.count("**warning**") == 2


def test_env_seeds_must_be_paired(tmp_path):
    write_results(tmp_path, "single", [14, 25, 25])
    write_results(tmp_path, "s2", [25, 33, 33], env_seeds=list(range(200_000, 200_050)))
    pattern = [str(tmp_path / "**" / "result.json")]
    with pytest.raises(ValueError, match="different env seeds.*allow_unpaired"):
        compare(pattern, tmp_path / "cmp", baseline="single")
    out = compare(pattern, tmp_path / "cmp", baseline="single", stats=StatsConfig(allow_unpaired=True))
    assert out["rows"][1]["bootstrap_diff_ci95"] is None and not out["rows"][1]["env_seeds_paired"]
    assert any(w.startswith("UNPAIRED") for w in out["warnings"]) and "UNPAIRED" in out["table"]
    assert out["rows"][1]["p_vs_baseline"] == pytest.approx(hand_welch([14, 25, 25], [25, 33, 33])[2])


def test_bad_inputs_are_refused(tmp_path):
    write_results(tmp_path / "a", "single", [14, 25, 25])
    write_results(tmp_path / "b", "single", [20])                  # training seed 0 a second time
    with pytest.raises(ValueError, match="training seed 0 twice"):
        compare([str(tmp_path / "**" / "result.json")], tmp_path / "cmp")
    with pytest.raises(FileNotFoundError, match="no result files"):
        compare([str(tmp_path / "none" / "*.json")], tmp_path / "cmp")
    with pytest.raises(ValueError, match="baseline"):
        compare([str(tmp_path / "a" / "**" / "result.json")], tmp_path / "cmp", baseline="large")
    with pytest.raises(ValueError, match="unknown compare stats keys"):
        StatsConfig.from_mapping({"min_seed": 3})
    with pytest.raises(ValueError, match="difference"):
        StatsConfig(difference=10)


def test_compare_command_line(tmp_path):
    write_results(tmp_path / "runs", "single", [14, 14, 21, 25, 25])
    write_results(tmp_path / "runs", "s2", [26, 28, 31, 32, 32])
    res = subprocess.run([sys.executable, "-m", "s2_policy.evaluation.compare",
                          f"results=[{tmp_path}/runs/**/result.json]", f"out_dir={tmp_path / 'cmp'}",
                          "baseline=single", "stats.bootstrap=200"],
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "| s2 | 5 | 26, 28, 31, 32, 32 of 50 |" in res.stdout
    p = hand_welch([14, 14, 21, 25, 25], [26, 28, 31, 32, 32])[2]
    assert f"| {p:.3g} |" in res.stdout and f"{p:.3g}" == "0.0117"
    saved = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert saved["stats"]["bootstrap"] == 200


def test_compare_refuses_results_evaluated_on_demonstration_seeds(tmp_path):
    """A result whose episodes ran on seeds its store records as demo seeds is refused."""
    store = tmp_path / "demos.zarr"
    ReplayStore.create(store, attrs={"episode_seeds": [ENV_SEEDS[3]], "failed_seeds": []})
    write_results(tmp_path / "runs", "single", [20, 21])
    path = tmp_path / "runs" / "single-1" / "result.json"
    res = json.loads(path.read_text())
    res["rollout"]["demo_store"] = str(store)
    path.write_text(json.dumps(res))
    with pytest.raises(ValueError, match="records as demonstration seeds"):
        compare([str(tmp_path / "runs" / "**" / "result.json")], tmp_path / "cmp")
    ReplayStore.open(store, mode="a").update_attrs({"episode_seeds": [7]})   # disjoint: accepted
    assert compare([str(tmp_path / "runs" / "**" / "result.json")], tmp_path / "cmp")["rows"]
