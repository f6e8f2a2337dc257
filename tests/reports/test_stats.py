"""Welch's test, its interval and the claim verdicts on hand-computed cases."""
import math

import pytest

from sparsetrain.reports.stats import MIN_SEEDS, non_inferiority, superiority, too_few, welch

scipy_stats = pytest.importorskip("scipy.stats")


def test_equal_variances_textbook_case():
    # means 3 and 2, variances 2.5 each, n = 5: se = sqrt(0.5 + 0.5) = 1, t = 1, df = 8
    c = welch([1, 2, 3, 4, 5], [0, 1, 2, 3, 4])
    assert c.diff == 1.0 and c.se == pytest.approx(1.0) and c.t == pytest.approx(1.0)
    assert c.df == pytest.approx(8.0)
    assert c.p_greater == pytest.approx(0.17330, abs=5e-5)  # P(T_8 > 1), t tables
    assert c.p_greater + c.p_less == pytest.approx(1.0)
    half = 2.306004  # t_{0.975, 8}, t tables
    assert (c.ci_low, c.ci_high) == (pytest.approx(1 - half, abs=1e-5), pytest.approx(1 + half, abs=1e-5))


def test_unequal_variances_welch_satterthwaite():
    # a: mean 12, var 4 (n 3); b: mean 10, var 2/3 (n 4): se^2 = 4/3 + 1/6 = 1.5
    c = welch([10, 12, 14], [9, 10, 11, 10])
    assert c.se == pytest.approx(math.sqrt(1.5))
    assert c.t == pytest.approx(2 / math.sqrt(1.5))
    assert c.df == pytest.approx(1.5 ** 2 / ((4 / 3) ** 2 / 2 + (1 / 6) ** 2 / 3))  # 2.50515...
    ref = scipy_stats.ttest_ind([10, 12, 14], [9, 10, 11, 10], equal_var=False, alternative="greater")
    assert c.p_greater == pytest.approx(ref.pvalue) and c.t == pytest.approx(ref.statistic)


def test_lower_is_better_flips_the_direction():
    c = welch([100, 101, 102], [110, 111, 112], higher_is_better=False)  # A's perplexity is lower
    assert c.diff == pytest.approx(10.0) and c.mean_a == pytest.approx(101.0)
    assert superiority(c) == "confirmed"


def test_superiority_verdicts():
    up = [98.0, 98.1, 98.2, 97.9, 98.0]
    assert superiority(welch(up, [97.0, 97.1, 97.2, 96.9, 97.0])) == "confirmed"
    assert superiority(welch([97.0, 97.1, 97.2, 96.9, 97.0], up)) == "not confirmed"
    assert superiority(welch(up, [98.05, 97.95, 98.15, 97.9, 98.0])) == "inconclusive"


def test_non_inferiority_uses_the_interval_and_the_margin():
    # A lower by 0.04 with a small spread: the interval sits inside (-0.3, 0]: confirmed
    a, b = [97.66, 97.60, 97.70, 97.64, 97.65], [97.70, 97.69, 97.71, 97.70, 97.70]
    c = welch(a, b)
    assert c.diff < 0 and c.ci_low > -0.3
    assert non_inferiority(c, 0.3) == "confirmed"
    assert non_inferiority(c, 0.001) == "not confirmed"  # the whole interval (-0.094, -0.006) below -0.001
    wide = welch([95.0, 97.0, 96.0, 98.0, 94.0], b)  # spread of points: the interval crosses -0.3
    assert non_inferiority(wide, 0.3) == "inconclusive"


def test_zero_spread_on_both_sides():
    c = welch([10.0] * 5, [10.0] * 5)
    assert (c.p_greater, c.ci_low, c.ci_high) == (0.5, 0.0, 0.0) and superiority(c) == "inconclusive"
    assert superiority(welch([11.0] * 5, [10.0] * 5)) == "confirmed"
    assert non_inferiority(welch([9.5] * 5, [10.0] * 5), 0.3) == "not confirmed"


def test_too_few_seeds():
    assert too_few([1.0] * (MIN_SEEDS - 1), [1.0] * MIN_SEEDS) == f"inconclusive (n<{MIN_SEEDS})"
    assert too_few([1.0] * MIN_SEEDS, [1.0] * MIN_SEEDS) is None
    with pytest.raises(ValueError, match="at least 2"):
        welch([1.0], [1.0, 2.0])
