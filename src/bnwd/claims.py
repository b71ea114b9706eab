"""The article's claims, each decided by a 95% confidence interval.

A claim is a small named function in `CLAIMS` (module-level table): it names the variants it
needs, the claims it depends on, and returns an `Effect`: the estimate, its 95% CI, how it
was computed and the numbers behind it. The verdict follows from the CI alone:

- directional claim ("X > threshold"): **shown** if the whole CI is beyond the threshold in
  the article's direction, **not shown** if the whole CI is on the other side, **undecided**
  otherwise, with the seeds that would make the CI half-width smaller than the measured
  distance to the threshold;
- equivalence claim ("X within +-margin"): shown if the CI lies inside the margin, not shown
  if it lies outside, undecided otherwise.

Where there are several seeds per variant, a claim's per-seed values are compared with
Welch's t interval (two variants) or a one-sample t interval of per-seed paired
differences (the same training, e.g. `lr_scaled` vs its bn098 view). With one seed, the
dynamics claims use what varies inside the run (sample points or conv layers; sample points
are autocorrelated, so those intervals are too narrow, and the method says so), and the
accuracy claims are undecided: a final accuracy is one number per seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .runs import Run, by_variant

Z = 0.975  # two-sided 95%


def t_quantile(df: float) -> float:
    from scipy.stats import t

    return float(t.ppf(Z, df))


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


def one_sample(x, method: str, numbers: dict | None = None) -> Effect:
    """Mean of `x` with a t interval (n - 1 degrees of freedom)."""
    a = np.asarray([v for v in x if math.isfinite(v)], dtype=float)
    n = len(a)
    if n == 0:
        raise ValueError("no finite values")
    m = float(a.mean())
    if n < 2:
        return Effect(m, -math.inf, math.inf, n, method, numbers or {}, (), True)
    sd = float(a.std(ddof=1))
    h = t_quantile(n - 1) * sd / math.sqrt(n)
    return Effect(m, m - h, m + h, n, method, numbers or {}, (sd,), True)


def welch(a, b, method: str, numbers: dict | None = None) -> Effect:
    """mean(a) - mean(b) with Welch's t interval (Welch-Satterthwaite degrees of freedom)."""
    a = np.asarray([v for v in a if math.isfinite(v)], dtype=float)
    b = np.asarray([v for v in b if math.isfinite(v)], dtype=float)
    if not len(a) or not len(b):
        raise ValueError("no finite values")
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


def seeds_needed(e: Effect, distance: float, cap: int = 1000) -> int | None:
    """Seeds per variant for a 95% CI half-width below `distance` at the measured spread
    (t quantile at the df that many seeds would give); None without a measured spread."""
    if not e.spread or not distance > 0 or not all(math.isfinite(s) for s in e.spread):
        return None
    var = sum(s * s for s in e.spread)
    for n in range(2, cap + 1):
        df = n - 1 if e.paired else 2 * n - 2
        if t_quantile(df) * math.sqrt(var / n) < distance:
            return n
    return cap


# ---------------------------------------------------------------- what a claim reads from runs


@dataclass
class Ctx:
    """The runs by variant, and the windows the claims use (in epochs)."""

    g: dict[str, list[Run]]
    m0: float  # first lr drop
    end: float  # last epoch

    @classmethod
    def of(cls, runs: list[Run]) -> Ctx:
        g = by_variant(runs)
        cfg = (g.get("baseline") or runs)[0].config
        end = float(cfg.get("epochs") or max(float(r.metrics["epoch"][-1]) for r in runs))
        ms = sorted(float(m) for m in (cfg.get("lr_milestones") or []) if 0 < float(m) < end)
        return cls(g, ms[0] if ms else end, end)

    def seeds(self, v: str) -> dict:
        return {r.seed: r for r in self.g[v]}

    def final(self, v: str, key: str) -> list[float]:
        return [_final(r, key) for r in self.g[v]]

    def single(self, *vs: str) -> bool:
        return any(len(self.g[v]) < 2 for v in vs)


def _final(r: Run, key: str) -> float:
    s = r.summary
    if key == "gap":
        return _final(r, "test_loss") - _final(r, "train_loss")
    v = s.get(f"final_{key}")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    a = r.metrics.get(key)
    if a is None or not np.isfinite(a).any():
        return math.nan
    return float(a[np.isfinite(a)][-1])


def _window(r: Run, key: str, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values) of `key` at the sample points with lo < epoch < hi."""
    e, v = r.series(key)
    sel = (e > lo + 1e-9) & (e < hi - 1e-9)
    return e[sel], v[sel]


def _paired_points(a: Run, b: Run, key: str, lo: float, hi: float, log: bool) -> np.ndarray:
    """Pointwise a - b (or log(a / b)) at a's sample points inside (lo, hi)."""
    ea, va = _window(a, key, lo, hi)
    eb, vb = b.series(key)
    if not len(ea) or not len(eb):
        return np.zeros(0)
    vb = np.interp(ea, eb, vb)
    d = np.log(va / vb) if log else va - vb
    return d[np.isfinite(d)]


def _layer_log_ratio(a: Run, b: Run) -> np.ndarray:
    """log(final sqnorm of a / of b) per conv layer (keys sqnorm/conv/...)."""
    keys = [k for k in a.metrics if k.startswith("sqnorm/conv/") and k in b.metrics]
    return np.array([math.log(_final(a, k) / _final(b, k)) for k in keys])


def compare(ctx: Ctx, a: str, b: str, per_seed: Callable[[Run], float], what: str) -> Effect:
    """Across seeds: Welch on per-seed values of variants a and b."""
    xa, xb = [per_seed(r) for r in ctx.g[a]], [per_seed(r) for r in ctx.g[b]]
    nums = {f"{a} per seed": xa, f"{b} per seed": xb}
    return welch(xa, xb, f"Welch t over seeds ({len(xa)} vs {len(xb)}) of {what}", nums)


def paired_by_seed(ctx: Ctx, a: str, b: str, diff: Callable[[Run, Run], float], what: str) -> Effect:
    sa, sb = ctx.seeds(a), ctx.seeds(b)
    common = [s for s in sa if s in sb]
    d = [diff(sa[s], sb[s]) for s in common]
    return one_sample(d, f"t over {len(d)} seed(s) of the paired {what}", {"per seed": d, "seeds": common})


def dynamics(ctx: Ctx, a: str, b: str, key: str, lo: float, hi: float, log: bool, what: str) -> Effect:
    """A dynamics comparison of a against b over the window (lo, hi): Welch over seeds of the
    per-seed window means when both have >= 2 seeds, else a t interval over the sample points
    of the first seed (paired pointwise)."""
    if not ctx.single(a, b):
        f = (lambda r: float(np.mean(np.log(_window(r, key, lo, hi)[1])))) if log else None
        f = f or (lambda r: float(np.mean(_window(r, key, lo, hi)[1])))
        return compare(ctx, a, b, f, f"{'mean log ' if log else 'mean '}{what}, epochs {lo:.3g}-{hi:.3g}")
    ra, rb = ctx.g[a][0], ctx.g[b][0]
    d = _paired_points(ra, rb, key, lo, hi, log)
    return one_sample(
        d,
        f"one seed: t over {len(d)} sample points (autocorrelated: the interval is too narrow) of "
        f"{'log ' if log else ''}{what} {a} vs {b}, epochs {lo:.3g}-{hi:.3g}",
    )


# ---------------------------------------------------------------- the claims


@dataclass
class Claim:
    id: str
    text: str
    needs: tuple[str, ...]
    rule: str  # how the verdict is read from the CI, in words
    kind: str  # "dynamics" (decidable within one run) or "accuracy" (needs seeds)
    compute: Callable[[Ctx], Effect]
    threshold: float = 0.0  # directional: effect > threshold (or < when direction is -1)
    direction: int = 1
    margin: float | None = None  # equivalence: |effect| < margin
    depends_on: tuple[str, ...] = ()
    scale: float = 1.0  # display: effect * scale
    unit: str = ""
    log: bool = False  # effect is a log ratio; shown as exp(effect)


def _acc_cost(ctx: Ctx) -> Effect:
    return compare(ctx, "baseline", "no_conv_l2", lambda r: _final(r, "test_acc"), "final test accuracy")


def _underfit(ctx: Ctx) -> Effect:
    return compare(ctx, "no_conv_l2", "baseline", lambda r: _final(r, "train_loss"), "final train loss")


def _overfit(ctx: Ctx) -> Effect:
    return compare(ctx, "no_conv_l2", "baseline", lambda r: _final(r, "gap"), "final test - train loss")


def _recovers(ctx: Ctx) -> Effect:
    return compare(ctx, "lr_scaled", "baseline", lambda r: _final(r, "test_acc"), "final test accuracy")


def _norm_ratio(a: str) -> Callable[[Ctx], Effect]:
    def f(ctx: Ctx) -> Effect:
        if not ctx.single(a, "baseline"):
            return compare(ctx, a, "baseline", lambda r: math.log(_final(r, "conv_sqsum")), "log final conv sqsum")
        d = _layer_log_ratio(ctx.g[a][0], ctx.g["baseline"][0])
        return one_sample(d, f"one seed: t over {len(d)} conv layers of log(final sqnorm {a} / baseline)")

    return f


def _rel_step_collapse(ctx: Ctx) -> Effect:
    return dynamics(ctx, "no_conv_l2", "baseline", "rel_step_conv_ema", ctx.m0 / 2, ctx.end + 1, True, "rel. step")


def _tracks(ctx: Ctx) -> Effect:
    return dynamics(ctx, "lr_scaled", "baseline", "rel_step_conv_ema", 0.25, ctx.end + 1, True, "rel. step")


def _deficit(ctx: Ctx) -> Effect:
    return dynamics(ctx, "baseline", "lr_scaled", "test_acc", 0.0, ctx.m0, False, "test accuracy in lr stage 1")


def _bn098(ctx: Ctx) -> Effect:
    if not ctx.single("lr_scaled_bn098", "lr_scaled"):

        def diff(a: Run, b: Run) -> float:
            return float(np.mean(_paired_points(a, b, "test_acc", 0.0, ctx.m0, False)))

        return paired_by_seed(ctx, "lr_scaled_bn098", "lr_scaled", diff, "stage-1 test accuracy difference")
    return dynamics(ctx, "lr_scaled_bn098", "lr_scaled", "test_acc", 0.0, ctx.m0, False, "test accuracy in stage 1")


def _exact(ctx: Ctx) -> Effect:
    def diff(a: Run, b: Run) -> float:
        return float(np.mean(_paired_points(a, b, "train_loss", 0.0, ctx.end + 1, True)))

    if not ctx.single("lr_exact", "baseline"):
        return paired_by_seed(ctx, "lr_exact", "baseline", diff, "mean log train-loss ratio")
    return dynamics(ctx, "lr_exact", "baseline", "train_loss", 0.0, ctx.end + 1, True, "train loss")


CLAIMS: tuple[Claim, ...] = (
    Claim("conv_norm_growth", "Without conv L2 the conv weights end larger than the baseline's",
          ("baseline", "no_conv_l2"), "shown if the CI of the final conv sqsum ratio is above 1", "dynamics",
          _norm_ratio("no_conv_l2"), log=True, unit="x"),
    Claim("rel_step_collapse", "Without conv L2 the conv layers' relative step falls below the baseline's",
          ("baseline", "no_conv_l2"), "shown if the CI of the rel. step ratio (from half of lr stage 1 on) is below 1",
          "dynamics", _rel_step_collapse, direction=-1, log=True, unit="x"),
    Claim("lr_scaled_tracks_rel_step", "lr_scaled tracks the baseline's relative step size",
          ("baseline", "lr_scaled"), "shown if the CI of the rel. step ratio lies within 0.9-1.1", "dynamics",
          _tracks, margin=math.log(1.1), log=True, unit="x"),
    Claim("lr_scaled_stage1_deficit",
          "lr_scaled has a lower test accuracy than the baseline in lr stage 1 (BN moving averages lag)",
          ("baseline", "lr_scaled"), "shown if the CI of baseline - lr_scaled (stage-1 evaluations) is above 0",
          "dynamics", _deficit, scale=100, unit=" points"),
    Claim("bn098_removes_deficit", "A shorter BN moving-average window (decay 0.98) removes that deficit",
          ("lr_scaled", "lr_scaled_bn098"),
          "shown if the CI of lr_scaled_bn098 - lr_scaled (stage-1 evaluations) is above 0", "dynamics", _bn098,
          depends_on=("lr_scaled_stage1_deficit",), scale=100, unit=" points"),
    Claim("lr_scaled_norm_explodes", "With lr scaling instead of L2 the conv weights grow far beyond the baseline's",
          ("baseline", "lr_scaled"), "shown if the CI of the final conv sqsum ratio is above 10x", "dynamics",
          _norm_ratio("lr_scaled"), threshold=math.log(10), log=True, unit="x"),
    Claim("no_conv_l2_accuracy_cost", "Removing L2 from the conv layers lowers the final test accuracy",
          ("baseline", "no_conv_l2"), "shown if the CI of baseline - no_conv_l2 is above 0 (article: +1.5 points)",
          "accuracy", _acc_cost, scale=100, unit=" points"),
    Claim("no_conv_l2_underfits", "Without conv L2 the final train loss is higher (underfitting)",
          ("baseline", "no_conv_l2"), "shown if the CI of no_conv_l2 - baseline is above 0 (article: +0.025)",
          "accuracy", _underfit),
    Claim("no_conv_l2_overfits", "Without conv L2 the test - train loss gap is larger (overfitting)",
          ("baseline", "no_conv_l2"), "shown if the CI of no_conv_l2 - baseline is above 0 (article: +0.024)",
          "accuracy", _overfit),
    Claim("lr_scaled_recovers_accuracy", "lr_scaled recovers the baseline's final test accuracy",
          ("baseline", "lr_scaled"),
          "shown if the CI of lr_scaled - baseline lies within +-0.75 points (half the article's L2 effect)",
          "accuracy", _recovers, margin=0.0075, scale=100, unit=" points"),
    Claim("lr_exact_tracks_baseline",
          "(beyond the article) The exact weight-decay -> lr transform tracks the baseline's train loss",
          ("baseline", "lr_exact"), "shown if the CI of the train-loss ratio lies within 0.9-1.1", "dynamics", _exact,
          margin=math.log(1.1), log=True, unit="x"),
)  # fmt: skip


def verdict(c: Claim, e: Effect) -> tuple[str, int | None]:
    """('shown' | 'not shown' | 'undecided', seeds needed when undecided)."""
    if c.margin is not None:
        if -c.margin < e.lo and e.hi < c.margin:
            return "shown", None
        if e.lo > c.margin or e.hi < -c.margin:
            return "not shown", None
        return "undecided", seeds_needed(e, max(c.margin - abs(e.estimate), 0.0))
    lo, hi = (e.lo - c.threshold, e.hi - c.threshold) if c.direction > 0 else (c.threshold - e.hi, c.threshold - e.lo)
    if lo > 0:
        return "shown", None
    if hi < 0:
        return "not shown", None
    return "undecided", seeds_needed(e, abs(e.estimate - c.threshold))


def _show(c: Claim, x: float) -> float:
    return math.exp(x) if c.log else x * c.scale


def evaluate(runs: list[Run]) -> list[dict]:
    """Every claim whose variants were run: id, claim, verdict, estimate and 95% CI (in the
    claim's display unit), n, method, rule, depends_on, seeds_needed and the numbers."""
    ctx = Ctx.of(runs)
    out: dict[str, dict] = {}
    for c in CLAIMS:
        item: dict = {"id": c.id, "claim": c.text, "kind": c.kind, "rule": c.rule, "depends_on": list(c.depends_on)}
        missing = [v for v in c.needs if v not in ctx.g]
        blocked = [d for d in c.depends_on if out.get(d, {}).get("verdict") != "shown"]
        if missing:
            item.update(verdict="not run", reason=f"needs {', '.join(missing)}")
        elif blocked:
            item.update(verdict="not asked", reason=f"depends on {', '.join(blocked)}, which is not shown")
        else:
            try:
                e = c.compute(ctx)
            except (KeyError, IndexError, ValueError, ZeroDivisionError) as err:
                item.update(verdict="no data", reason=f"{type(err).__name__}: {err}")
            else:
                v, need = verdict(c, e)
                if ctx.single(*c.needs):
                    need = None  # a spread over sample points or layers says nothing about seeds
                item.update(
                    verdict=v,
                    estimate=_show(c, e.estimate),
                    ci=[_show(c, e.lo), _show(c, e.hi)],
                    unit=c.unit,
                    n=e.n,
                    method=e.method,
                    seeds_needed=need,
                    numbers=e.numbers,
                )
                if v == "undecided" and ctx.single(*c.needs):
                    item["reason"] = (
                        "one seed: a final number has no spread to compare with; run >= 2 seeds"
                        if c.kind == "accuracy"
                        else "one seed: the spread over sample points is not a spread over seeds; run >= 2 seeds"
                    )
        out[c.id] = item
    return list(out.values())


def describe(item: dict) -> str:
    """One line for the report."""
    if "estimate" not in item:
        return f"**{item['verdict']}** — {item['claim']} ({item.get('reason', '')})"

    def f(x: float) -> str:
        return "∞" if x == math.inf else "-∞" if x == -math.inf else f"{x:.3g}"

    u = item["unit"]
    lo, hi = item["ci"]
    s = f"**{item['verdict']}** — {item['claim']}: {f(item['estimate'])}{u}, 95% CI [{f(lo)}, {f(hi)}]{u}"
    s += f" ({item['method']}; {item['rule']})"
    if item.get("seeds_needed"):
        s += f"; ~{item['seeds_needed']} seeds per variant would decide it at this spread"
    elif item.get("reason"):
        s += f"; {item['reason']}"
    if item["depends_on"]:
        s += f" [asked because {', '.join(item['depends_on'])} is shown]"
    return s
