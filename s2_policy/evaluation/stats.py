"""Success-rate statistics: Wilson score intervals, seed-level intervals and tests, power, bootstrap.

Comparisons between configurations treat the training seed as the unit (docs/training.md, "Statistics"):
:func:`t_interval` and :func:`welch_test` on per-seed success rates, :func:`seeds_needed` for planning, and
:func:`paired_bootstrap_diff` as a secondary check. The episode-level helpers (:func:`wilson_interval`,
:func:`fisher_exact`) describe one evaluation run, where episodes are the unit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (well-behaved at 0 % and 100 %, unlike Wald)."""
    if n <= 0:
        raise ValueError(f"need at least one trial for a confidence interval, got n={n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n={n}], got {successes}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    z = sps.norm.ppf(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, float(centre - half))
    hi = 1.0 if successes == n else min(1.0, float(centre + half))
    return lo, hi


def fisher_exact(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided Fisher exact test p-value for success counts ``k1/n1`` vs ``k2/n2``."""
    if n1 <= 0 or n2 <= 0:
        raise ValueError(f"both groups need trials, got n1={n1}, n2={n2}")
    return float(sps.fisher_exact([[k1, n1 - k1], [k2, n2 - k2]])[1])


def two_proportion_z(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """Pooled two-proportion z-test: ``(z, two-sided p)``; ``(0, 1)`` when both rates are 0 or 1."""
    if n1 <= 0 or n2 <= 0:
        raise ValueError(f"both groups need trials, got n1={n1}, n2={n2}")
    p = (k1 + k2) / (n1 + n2)
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0
    z = (k1 / n1 - k2 / n2) / se
    return z, float(2 * sps.norm.sf(abs(z)))


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student-t confidence interval for the mean of ``values`` (one value per training seed).

    ``(nan, nan)`` with fewer than two values (no spread to estimate). Not clipped to [0, 1].
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    a = np.asarray(values, dtype=np.float64)
    if a.size < 2:
        return math.nan, math.nan
    half = float(sps.t.ppf(0.5 + confidence / 2, a.size - 1) * a.std(ddof=1) / math.sqrt(a.size))
    m = float(a.mean())
    return m - half, m + half


@dataclass(frozen=True)
class WelchResult:
    """Welch's unequal-variance t-test of ``mean(b) - mean(a)``: statistic, Welch-Satterthwaite df, p."""

    diff: float
    t: float
    df: float
    p: float


def welch_test(a: Sequence[float], b: Sequence[float]) -> WelchResult | None:
    """Two-sided Welch t-test between two sets of per-seed success rates (``b`` minus ``a``).

    ``None`` when it is undefined: fewer than two seeds in a group, or no seed-to-seed spread in either group.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.size < 2 or y.size < 2 or (x.std() == 0 and y.std() == 0):
        return None
    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    diff = float(y.mean() - x.mean())
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (x.size - 1) + vb**2 / (y.size - 1))   # Welch-Satterthwaite
    return WelchResult(diff, float(t), float(df), float(2 * sps.t.sf(abs(t), df)))


def welch_power(n: int, diff: float, sd_a: float, sd_b: float, alpha: float = 0.05) -> float:
    """Power of the two-sided Welch test at level ``alpha`` with ``n`` seeds per configuration, a true
    difference ``diff`` and per-seed standard deviations ``sd_a``, ``sd_b`` (noncentral t distribution,
    Welch-Satterthwaite degrees of freedom, normally distributed per-seed rates)."""
    if n < 2:
        raise ValueError(f"the Welch test needs at least 2 seeds per configuration, got n={n}")
    va, vb = sd_a**2 / n, sd_b**2 / n
    if va + vb == 0:
        return 1.0 if diff != 0 else alpha
    df = (va + vb) ** 2 / ((va**2 + vb**2) / (n - 1))
    tc, nc = sps.t.ppf(1 - alpha / 2, df), diff / math.sqrt(va + vb)
    return float(sps.nct.sf(tc, df, nc) + sps.nct.cdf(-tc, df, nc))


def seeds_needed(diff: float, sd_a: float, sd_b: float, alpha: float = 0.05, power: float = 0.8,
                 max_seeds: int = 10_000) -> int | None:
    """Fewest training seeds per configuration for which the two-sided Welch test at level ``alpha`` detects a
    true difference ``diff`` with probability >= ``power``, given per-seed standard deviations (usually the
    observed ones). Starts from the normal approximation ``(z_{1-alpha/2} + z_{power})^2 (sd_a^2 + sd_b^2) /
    diff^2`` and refines it with :func:`welch_power`. ``None`` when ``diff`` is 0 or over ``max_seeds``.
    """
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha and power must be in (0, 1), got alpha={alpha}, power={power}")
    if sd_a < 0 or sd_b < 0 or not (math.isfinite(sd_a) and math.isfinite(sd_b) and math.isfinite(diff)):
        raise ValueError(f"need a finite difference and finite standard deviations >= 0, got diff={diff}, "
                         f"sd_a={sd_a}, sd_b={sd_b}")
    if diff == 0:
        return None
    za, zb = sps.norm.ppf(1 - alpha / 2), sps.norm.ppf(power)
    n = max(2, math.ceil((za + zb) ** 2 * (sd_a**2 + sd_b**2) / diff**2))  # never above the t answer
    while n <= max_seeds and welch_power(n, diff, sd_a, sd_b, alpha) < power:
        n += 1
    return n if n <= max_seeds else None


def paired_bootstrap_diff(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, confidence: float = 0.95,
                          seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean success(b) - mean success(a)``, hierarchical and paired.

    ``a`` and ``b`` are 0/1 matrices ``(training seeds, env seeds)`` whose columns are the SAME env seeds in
    the same order. Each resample draws training seeds with replacement within each configuration, and one
    set of env seeds with replacement shared by both (the pairing): the interval reflects training-seed and
    env-seed variation without treating episodes as independent.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or a.shape[1] == 0:
        raise ValueError(f"need (seeds, env seeds) 0/1 matrices over the same env seeds, got {a.shape} and "
                         f"{b.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    n_env = a.shape[1]
    counts = rng.multinomial(n_env, np.full(n_env, 1 / n_env), size=n_boot)    # env-seed resample weights
    ra, rb = counts @ a.T / n_env, counts @ b.T / n_env                          # (n_boot, seeds) rates
    ia = rng.integers(0, a.shape[0], size=(n_boot, a.shape[0]))
    ib = rng.integers(0, b.shape[0], size=(n_boot, b.shape[0]))
    d = (np.take_along_axis(rb, ib, 1).mean(1) - np.take_along_axis(ra, ia, 1).mean(1))
    q = (1 - confidence) / 2
    lo, hi = np.quantile(d, [q, 1 - q])
    return float(lo), float(hi)
