"""Verdicts on "A beats B" claims from a stated test, over per-seed results.

* **Superiority** ("A > B"): one-sided Welch t-test (unequal variances) of H0: mean(A) <= mean(B)
  at level ``alpha`` (default 0.05). Confirmed when p < alpha; "not confirmed" when the mirrored
  test (B > A) is significant at the same level; inconclusive otherwise.
* **Non-inferiority** ("A >= B" with a margin m fixed before the runs): confirmed when the lower
  end of the two-sided 95 % Welch confidence interval of mean(A) - mean(B) lies above -m (a
  one-sided test at 2.5 %); not confirmed when its upper end lies below -m; inconclusive otherwise.

Both need at least ``MIN_SEEDS`` seeds per side; with fewer the verdict is "inconclusive (n<5)"
whatever the numbers (the interval is still shown). For metrics where lower is better
(perplexity) the comparison runs on the negated values, so "A > B" reads "A is better than B".

When both sides have zero spread (every seed identical, e.g. all collapsed to chance) the
standard error is 0: the interval is the single point mean(A) - mean(B) and the one-sided p-value
is 0 if that difference is positive, 1 if negative and 0.5 if it is 0.

Welch's statistic t = (mean_a - mean_b) / sqrt(var_a/n_a + var_b/n_b) with the Welch-Satterthwaite
degrees of freedom; the t distribution is scipy's (``pip install sparsetrain[stats]``).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Optional, Sequence

from ..errors import ConfigError

#: seeds per side below which no claim is decided
MIN_SEEDS = 5
#: level of the one-sided superiority test
ALPHA = 0.05
#: confidence level of the interval of the difference (two-sided)
CI_LEVEL = 0.95


def _t_dist():
    try:
        from scipy import stats
    except ImportError:  # pragma: no cover - scipy is in the stats and all extras
        raise ConfigError("the statistical verdicts need scipy; install it with "
                          "`pip install sparsetrain[stats]`") from None
    return stats.t


@dataclass(frozen=True)
class Comparison:
    """Welch comparison of A against B (higher is better after ``sign``)."""

    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    diff: float  # mean(A) - mean(B), in the metric's direction of "better"
    se: float
    df: float
    t: float
    p_greater: float  # one-sided p of H0: A <= B
    p_less: float  # one-sided p of H0: A >= B
    ci_low: float  # two-sided CI_LEVEL interval of diff
    ci_high: float


def welch(a: Sequence[float], b: Sequence[float], higher_is_better: bool = True,
          level: float = CI_LEVEL) -> Comparison:
    """Welch's t-test and confidence interval of mean(A) - mean(B); needs >= 2 values per side."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"Welch's test needs at least 2 values per side, got {len(a)} and {len(b)}")
    sign = 1.0 if higher_is_better else -1.0
    xa, xb = [sign * float(v) for v in a], [sign * float(v) for v in b]
    ma, mb = statistics.fmean(xa), statistics.fmean(xb)
    va, vb = statistics.variance(xa) / len(xa), statistics.variance(xb) / len(xb)
    diff, se = ma - mb, math.sqrt(va + vb)
    if se == 0.0:
        p = 0.0 if diff > 0 else 1.0 if diff < 0 else 0.5
        return Comparison(len(xa), len(xb), sign * ma, sign * mb, diff, 0.0, math.inf,
                          math.copysign(math.inf, diff) if diff else 0.0, p, 1.0 - p if diff else 0.5, diff, diff)
    df = (va + vb) ** 2 / (va ** 2 / (len(xa) - 1) + vb ** 2 / (len(xb) - 1))
    t = diff / se
    dist = _t_dist()
    half = float(dist.ppf(0.5 + level / 2, df)) * se
    return Comparison(len(xa), len(xb), sign * ma, sign * mb, diff, se, df, t,
                      float(dist.sf(t, df)), float(dist.cdf(t, df)), diff - half, diff + half)


def too_few(a: Sequence[float], b: Sequence[float], min_seeds: int = MIN_SEEDS) -> Optional[str]:
    """The verdict when a side has fewer than ``min_seeds`` values, else None."""
    if min(len(a), len(b)) < min_seeds:
        return f"inconclusive (n<{min_seeds})"
    return None


def superiority(c: Comparison, alpha: float = ALPHA) -> str:
    """Verdict on "A > B" from a :func:`welch` comparison (seed count checked by the caller)."""
    if c.p_greater < alpha:
        return "confirmed"
    if c.p_less < alpha:
        return "not confirmed"
    return "inconclusive"


def non_inferiority(c: Comparison, margin: float) -> str:
    """Verdict on "A >= B" within ``margin`` (in the metric's units) from the interval of ``c``."""
    if c.ci_low > -margin:
        return "confirmed"
    if c.ci_high < -margin:
        return "not confirmed"
    return "inconclusive"
