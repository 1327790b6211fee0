"""Success-rate statistics: Wilson score intervals and tests between two configurations."""

from __future__ import annotations

import math

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
