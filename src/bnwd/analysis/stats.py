"""The statistics behind the claims and the sweep's theory checks, written once.

t intervals (one sample, paired, Welch), the nested F test, and the seeds a 5% two-sided test
needs for 80% power. scipy (an optional extra) is imported where a quantile is needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

Z = 0.975  # two-sided 95%


class NoData(ValueError):
    """Nothing to estimate from: the values a statistic needs are missing (not a bug)."""


def t_quantile(df: float, q: float = Z) -> float:
    """The `q` quantile of Student's t with `df` degrees of freedom (default: two-sided 95%)."""
    from scipy.stats import t

    return float(t.ppf(q, df))


def t_halfwidth(sd: float, n: int) -> float:
    """Half-width of the 95% t interval of a mean of `n` values with standard deviation `sd`."""
    return t_quantile(n - 1) * sd / math.sqrt(n)


@dataclass
class Effect:
    estimate: float
    lo: float
    hi: float
    n: int  # samples behind the CI (seeds, or sample points / layers with one seed)
    method: str
    numbers: dict = field(default_factory=dict)
    spread: tuple[float, ...] = ()  # std(s) for the seeds-needed estimate
    paired: bool = False


def _finite(x) -> np.ndarray:
    return np.asarray([v for v in x if math.isfinite(v)], dtype=float)


def one_sample(x, method: str, numbers: dict | None = None) -> Effect:
    """Mean of `x` with a t interval (n - 1 degrees of freedom); NoData without a finite value."""
    a = _finite(x)
    n = len(a)
    if n == 0:
        raise NoData("no finite values")
    m = float(a.mean())
    if n < 2:
        return Effect(m, -math.inf, math.inf, n, method, numbers or {}, (), True)
    sd = float(a.std(ddof=1))
    h = t_halfwidth(sd, n)
    return Effect(m, m - h, m + h, n, method, numbers or {}, (sd,), True)


def paired(a, b, method: str, numbers: dict | None = None) -> Effect:
    """mean(a - b) over pairs, with the one-sample t interval of the differences."""
    if len(a) != len(b):
        raise ValueError(f"paired needs as many values on each side, got {len(a)} and {len(b)}")
    return one_sample([x - y for x, y in zip(a, b)], method, numbers)


def welch(a, b, method: str, numbers: dict | None = None) -> Effect:
    """mean(a) - mean(b) with Welch's t interval (Welch-Satterthwaite degrees of freedom)."""
    a, b = _finite(a), _finite(b)
    if not len(a) or not len(b):
        raise NoData("no finite values")
    d = float(a.mean() - b.mean())
    n = min(len(a), len(b))
    if len(a) < 2 or len(b) < 2:
        return Effect(d, -math.inf, math.inf, n, method, numbers or {})
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return Effect(d, d, d, n, method, numbers or {}, (0.0, 0.0))
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    h = t_quantile(df) * se
    return Effect(d, d - h, d + h, n, method, numbers or {}, (float(a.std(ddof=1)), float(b.std(ddof=1))))


def nested_f(ss_total: float, ss_reduced: float, ss_full: float, df_nested: int, df_within: int) -> tuple[float, float]:
    """F test of a full model of groups against a reduced one nested in it (between-group sums of
    squares `ss_full` >= `ss_reduced`, around the grand mean): F = ((ss_full - ss_reduced) /
    df_nested) / ((ss_total - ss_full) / df_within), and its p-value."""
    from scipy.stats import f as f_dist

    F = ((ss_full - ss_reduced) / df_nested) / ((ss_total - ss_full) / df_within)
    return F, float(f_dist.sf(F, df_nested, df_within))


SEEDS_CAP = 1000  # seeds_needed stops counting here: "at least this many"


def seeds_count(n: int) -> str:
    """A seeds-needed count; `SEEDS_CAP` reads "1000+": at least that many."""
    return f"{n}+" if n >= SEEDS_CAP else str(n)


def seeds_text(n: int, lo: int | None = None, hi: int | None = None) -> str:
    """A seeds-needed count with its range as a report prints it: "~84 seeds (29-1000+)", or
    "1000+ seeds" at the cap (no range)."""
    if n >= SEEDS_CAP:
        return f"{seeds_count(n)} seeds"
    return f"~{n} seeds" + (f" ({seeds_count(lo)}-{seeds_count(hi)})" if lo and hi else "")


def seeds_needed(e: Effect, distance: float, cap: int = SEEDS_CAP, power: float = 0.8) -> int | None:
    """Seeds (per variant for Welch) at which a 5% two-sided test has `power` against an effect of
    size `distance` at the measured spread (`cap` when not below it); None without a measured spread."""
    if not e.spread or not distance > 0 or not all(math.isfinite(s) for s in e.spread):
        return None
    from scipy.stats import t

    var = sum(s * s for s in e.spread)
    for n in range(2, cap + 1):
        df = n - 1 if e.paired else 2 * n - 2
        if (t.ppf(Z, df) + t.ppf(power, df)) * math.sqrt(var / n) <= distance:
            return n
    return cap


def seeds_needed_range(e: Effect, distance: float) -> tuple[int | None, int | None]:
    """`seeds_needed` at the ends of the 95% chi-square interval of the measured sd (k seeds:
    sd^2 (k-1) / chi2 quantiles), since a spread from few seeds is itself uncertain."""
    if not e.spread or e.n < 2:
        return None, None
    from scipy.stats import chi2

    k = e.n - 1
    lo = math.sqrt(k / chi2.ppf(Z, k))
    hi = math.sqrt(k / chi2.ppf(1 - Z, k))

    def scaled(f: float) -> Effect:
        return Effect(e.estimate, e.lo, e.hi, e.n, e.method, spread=tuple(s * f for s in e.spread), paired=e.paired)

    return seeds_needed(scaled(lo), distance), seeds_needed(scaled(hi), distance)
