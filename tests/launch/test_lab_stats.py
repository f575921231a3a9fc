"""The lab's statistics against closed forms and hand-computed answers: the t CDF for 1 and 2 degrees of
freedom (Cauchy and its closed form) and the normal limit, table quantiles, Welch's statistic and degrees of
freedom, the verdicts on synthetic losses whose answer is known, the power-law fit on an exact power law."""

import math
import random

import pytest

from launch.lab_stats import (fit_power_law, incomplete_beta, interval95, mean, sample_sd, t_cdf, t_quantile, verdict,
                              welch)


@pytest.mark.parametrize("t", [-7.0, -1.3, 0.0, 0.4, 2.5, 30.0])
def test_t_cdf_matches_closed_forms(t):
    assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)  # Cauchy
    assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)
    assert t_cdf(t, 1e7) == pytest.approx(0.5 * (1 + math.erf(t / math.sqrt(2))), abs=1e-6)  # the normal limit


def test_incomplete_beta_closed_form():
    for x in (0.01, 0.3, 0.77, 0.99):  # I_x(a, 1) = x^a and I_x(1, b) = 1 - (1 - x)^b
        assert incomplete_beta(2.5, 1, x) == pytest.approx(x**2.5, rel=1e-12)
        assert incomplete_beta(1, 3.5, x) == pytest.approx(1 - (1 - x) ** 3.5, rel=1e-12)


@pytest.mark.parametrize("df, expected", [(1, 12.7062047), (2, 4.3026527), (4, 2.7764451), (10, 2.2281389),
                                          (30, 2.0422725)])
def test_t_quantile_matches_the_table(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-6)
    assert t_quantile(0.025, df) == pytest.approx(-expected, abs=1e-6)


def test_interval_and_welch_by_hand():
    a, b = [1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 4.0, 6.0, 8.0, 10.0]
    assert mean(a) == 3.0 and sample_sd(a) == pytest.approx(math.sqrt(2.5)) and sample_sd([1.0]) is None
    lo, hi = interval95(a)
    assert (lo, hi) == pytest.approx((3 - 2.7764451 * math.sqrt(2.5 / 5), 3 + 2.7764451 * math.sqrt(2.5 / 5)))
    test = welch(a, b)  # var/n: 0.5 and 2.0
    assert test.t == pytest.approx(-3 / math.sqrt(2.5))
    assert test.df == pytest.approx(2.5**2 / (0.5**2 / 4 + 2.0**2 / 4))
    assert test.p == pytest.approx(2 * t_cdf(-3 / math.sqrt(2.5), test.df))


def test_verdicts_on_synthetic_losses():
    rng = random.Random(0)
    noise = [rng.gauss(0, 0.01) for _ in range(3)]
    reference = [5.0 + e for e in noise]
    assert verdict([4.5 + e for e in reversed(noise)], reference)[0] == "better"  # 50 sd lower
    assert verdict([5.5 + e for e in reversed(noise)], reference)[0] == "worse"
    assert verdict([5.0 + e for e in reversed(noise)], reference)[0] == "indistinguishable"  # the same values
    # a shift of one sd with 3 seeds each is not detectable at 5%: noise of sd 0.5, difference 0.5
    wide = [5.0, 5.5, 4.5]
    kind, test = verdict([x - 0.5 for x in [5.3, 4.6, 5.1]], wide)
    assert kind == "indistinguishable" and test.p > 0.05
    assert verdict([4.0], reference) == (None, None)  # one seed: no test
    assert verdict([4.0, 4.0], [5.0, 5.0])[0] == "better"  # no spread, different means
    assert verdict([4.0, 4.0], [4.0, 4.0])[0] == "indistinguishable"


def test_power_law_fit_recovers_an_exact_law():
    compute = [1e12, 3e12, 1e13, 4e13]
    fit = fit_power_law(compute, [20.0 * c**-0.05 for c in compute])
    assert fit.b == pytest.approx(0.05) and fit.a == pytest.approx(20.0) and fit.r2 == pytest.approx(1.0)
    assert fit(1e14) == pytest.approx(20.0 * 1e14**-0.05)
    assert fit_power_law([1e12], [3.0]) is None
