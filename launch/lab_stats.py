"""The statistics of the lab's report, in plain Python (no scipy here): the mean, the sample standard
deviation, Student's t distribution (its CDF through the regularised incomplete beta function, its quantile
by bisection of the CDF), the 95% t-interval of a mean, Welch's two-sample t-test, the verdict of a point
against the first one, and the power-law fit of loss against compute.

    t CDF:   F(t; v) = 1 - I_x(v/2, 1/2) / 2 for t > 0, x = v / (v + t^2)     (Abramowitz & Stegun 26.7.1)
    I_x(a, b) by the continued fraction of Numerical Recipes (Press et al., 3rd ed., sec. 6.4, `betacf`)
    Welch:   t = (m1 - m2) / sqrt(s1^2/n1 + s2^2/n2),
             v = (s1^2/n1 + s2^2/n2)^2 / ((s1^2/n1)^2/(n1-1) + (s2^2/n2)^2/(n2-1))   (Welch 1947)
"""

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence

ALPHA = 0.05  # the test's level: two-sided p below it marks a point better or worse


def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def sample_sd(xs: Sequence[float]) -> Optional[float]:
    """Standard deviation with n - 1 in the denominator (None for one value)."""
    if len(xs) < 2:
        return None
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz), Numerical Recipes `betacf`."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            return h
    raise ArithmeticError(f"incomplete beta I_{x}({a}, {b}) did not converge")


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom (df may be fractional, as Welch's)."""
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with t_cdf(t, df) = p, by bisection (to 1e-12 relative)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile: p={p} must be in (0, 1)")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo <= 1e-12 * hi:
            break
    return 0.5 * (lo + hi)


def interval95(xs: Sequence[float]) -> Optional[tuple]:
    """The 95% t-interval of the mean: mean +- t_{0.975, n-1} sd / sqrt(n) (None for one value)."""
    sd = sample_sd(xs)
    if sd is None:
        return None
    half = t_quantile(0.975, len(xs) - 1) * sd / math.sqrt(len(xs))
    return mean(xs) - half, mean(xs) + half


@dataclass
class Welch:
    t: float
    df: float
    p: float  # two-sided


def welch(a: Sequence[float], b: Sequence[float]) -> Optional[Welch]:
    """Welch's t-test of mean(a) != mean(b) (None unless both have two values or more)."""
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = sample_sd(a) ** 2 / len(a), sample_sd(b) ** 2 / len(b)
    diff = mean(a) - mean(b)
    if va + vb == 0.0:  # no spread at all: the means differ or they do not
        return Welch(math.copysign(math.inf, diff) if diff else 0.0, math.inf, 0.0 if diff else 1.0)
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return Welch(t, df, 2.0 * (1.0 - t_cdf(abs(t), df)))


def verdict(point: Sequence[float], reference: Sequence[float], alpha: float = ALPHA) -> tuple:
    """(better | worse | indistinguishable | None, the Welch test) of a loss against the reference's:
    better = a lower mean at two-sided p < alpha. None: fewer than two values on a side (no test)."""
    test = welch(point, reference)
    if test is None:
        return None, None
    if test.p >= alpha:
        return "indistinguishable", test
    return ("better" if mean(point) < mean(reference) else "worse"), test


@dataclass
class PowerLaw:
    """loss = a * compute^(-b), fitted by least squares on log loss against log compute."""

    a: float
    b: float
    r2: float

    def __call__(self, compute: float) -> float:
        return self.a * compute ** (-self.b)


def fit_power_law(compute: List[float], loss: List[float]) -> Optional[PowerLaw]:
    """The fit through two or more (compute, loss) pairs (None with fewer)."""
    if len(compute) < 2:
        return None
    xs, ys = [math.log(c) for c in compute], [math.log(v) for v in loss]
    mx, my = mean(xs), mean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    intercept = my - slope * mx
    residual = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys))
    total = sum((y - my) ** 2 for y in ys)
    return PowerLaw(math.exp(intercept), -slope, 1.0 - residual / total if total else 1.0)
