"""The article's claims, each decided by a 95% confidence interval over seeds.

A claim is a small named function in `CLAIMS` (module-level table): it names the variants it
needs and returns an `Effect`: the estimate, its 95% CI, how it was computed and the numbers
behind it. The verdict follows from the CI alone:

- directional claim ("X > threshold"): **shown** if the whole CI is beyond the threshold in
  the article's direction, **not shown** if the whole CI is on the other side, **undecided**
  otherwise;
- equivalence claim ("X within +-margin"): shown if the CI lies inside the margin, not shown
  if it lies outside, undecided otherwise.

Each claim is either **evidence** (it could have come out otherwise: accuracies, the BN-lag
costs) or an implementation **check** (a quantity built to match, e.g. lr_scaled's relative
step, which its lr factor sets to the baseline's; it cannot fail unless the code is wrong).

Statistics. Per seed, a claim reduces each run to one number (a final accuracy; the mean over
the stage-1 evaluations, from half an epoch on, of a per-evaluation paired difference between
two views of the same weights and test images, or between two runs of that seed, which share
the initialization and the data order); then a one-sample t interval over seeds. Claims over
two variants without a seed pairing use Welch's interval. With one seed there is no spread over
seeds: the dynamics claims then use a t interval over sample points (or conv layers) of that
seed, labelled **indicative** (sample points are autocorrelated, so the interval is too narrow),
and the accuracy claims are undecided.

Seeds needed: for an undecided claim, the seeds at which a two-sided 5% test has 80% power
against the claim's stated minimum effect, n = min {n : (t_.975(n-1) + t_.80(n-1)) sd / sqrt(n)
<= effect}, with the range that the 95% chi-square interval of the measured sd gives (a standard
deviation from 2 seeds is uncertain by a factor ~30 either way, and n by its square).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bnwd.analysis.runs import Run, by_variant
from bnwd.analysis.stats import (
    SEEDS_CAP,
    Effect,
    NoData,
    one_sample,
    seeds_count,
    seeds_needed,
    seeds_needed_range,
    seeds_text,
)
from bnwd.run.rundir import plateau

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


def paired_by_seed(ctx: Ctx, a: str, b: str, diff: Callable[[Run, Run], float], what: str) -> Effect:
    sa, sb = ctx.seeds(a), ctx.seeds(b)
    common = [s for s in sa if s in sb]
    d = [diff(sa[s], sb[s]) for s in common]
    return one_sample(d, f"t over {len(d)} seed(s) of the paired {what}", {"per seed": d, "seeds": common})


# ---------------------------------------------------------------- the BN statistics views

STAGE1_FROM = 0.5  # epochs: the stage-1 window starts past the initial transient


def _views(r: Run, a: str, b: str, lo: float, hi: float) -> np.ndarray:
    """Per evaluation with lo <= epoch <= hi: test_acc_<a> - test_acc_<b> (own = test_acc), the
    two views of the same weights on the same test images."""
    return _across(r, a, r, b, lo, hi)


def _across(ra: Run, va: str, rb: Run, vb: str, lo: float, hi: float) -> np.ndarray:
    """Per evaluation with lo <= epoch <= hi: view va of run ra - view vb of run rb (two runs of
    one seed, evaluated at the same steps)."""
    ka, kb = ("test_acc" if v == "own" else f"test_acc_{v}" for v in (va, vb))
    ea, xa = ra.series(ka)
    eb, xb = rb.series(kb)
    da, db = dict(zip(np.round(ea, 9), xa)), dict(zip(np.round(eb, 9), xb))
    sel = sorted(e for e in set(da) & set(db) if lo - 1e-9 <= e <= hi + 1e-9)
    if not sel:
        raise NoData(f"no common evaluation of {ra.variant} {ka} and {rb.variant} {kb} in epochs {lo:g}-{hi:g}")
    return np.array([da[e] - db[e] for e in sel])


def view_gap(v: str, a: str, b: str) -> Callable[[Ctx], Effect]:
    """Within each run of variant v: mean over the stage-1 evaluations of view a - view b; t over seeds."""

    def f(ctx: Ctx) -> Effect:
        lo, hi = STAGE1_FROM, ctx.m0
        runs = ctx.g[v]
        what = f"{a} - {b} test accuracy of {v}, stage-1 evaluations at epochs {lo:g}-{hi:.3g}"
        if len(runs) == 1:
            d = _views(runs[0], a, b, lo, hi)
            return one_sample(d, f"indicative (one seed): t over {len(d)} autocorrelated evaluations of {what}")
        per = [float(np.mean(_views(r, a, b, lo, hi))) for r in runs]
        seeds = [r.seed for r in runs]
        return one_sample(
            per, f"t over {len(per)} seeds of the per-seed mean {what}", {"per seed": per, "seeds": seeds}
        )

    return f


def cross_gap(va: str, a: str, vb: str, b: str) -> Callable[[Ctx], Effect]:
    """View a of variant va - view b of variant vb, paired by seed: per seed the mean over the
    stage-1 evaluations of the per-evaluation difference; t over seeds."""

    def f(ctx: Ctx) -> Effect:
        lo, hi = STAGE1_FROM, ctx.m0
        sa, sb = ctx.seeds(va), ctx.seeds(vb)
        common = [s for s in sa if s in sb]
        what = f"{a}({va}) - {b}({vb}) test accuracy, stage-1 evaluations at epochs {lo:g}-{hi:.3g}"
        if len(common) == 1:
            d = _across(sa[common[0]], a, sb[common[0]], b, lo, hi)
            return one_sample(d, f"indicative (one seed): t over {len(d)} autocorrelated evaluations of {what}")
        per = [float(np.mean(_across(sa[s], a, sb[s], b, lo, hi))) for s in common]
        return one_sample(per, f"t over {len(per)} seeds, paired by seed, of the per-seed mean {what}",
                          {"per seed": per, "seeds": common})  # fmt: skip

    return f


# ---------------------------------------------------------------- the claims


@dataclass
class Claim:
    id: str
    text: str
    needs: tuple[str, ...]
    rule: str  # how the verdict is read from the CI, in words
    kind: str  # "evidence" (could have come out otherwise) or "check" (holds by construction)
    compute: Callable[[Ctx], Effect]
    threshold: float = 0.0  # directional: effect > threshold (or < when direction is -1)
    direction: int = 1
    margin: float | None = None  # equivalence: |effect| < margin
    min_effect: float = 0.01  # the effect the seeds-needed estimate is powered for (claim units)
    accuracy: bool = False  # one number per seed: undecided with one seed
    scale: float = 1.0  # display: effect * scale
    unit: str = ""
    log: bool = False  # effect is a log ratio; shown as exp(effect)


def final_acc(r: Run) -> float:
    """A run's final test accuracy: the mean over its last lr stage's plateau (`runs.plateau`)."""
    v = r.summary.get("plateau_test_acc")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    e, a = r.series("test_acc")
    if not len(a):
        return math.nan
    rows = [{"epoch": x, "test_acc": y} for x, y in zip(e, a)]
    return plateau(rows, r.config.get("lr_milestones") or [], r.epochs)


def paired(a: str, b: str, per_seed: Callable[[Run], float], what: str) -> Callable[[Ctx], Effect]:
    """per_seed(run of a) - per_seed(run of b), paired by seed (two runs of one seed share the
    initialization and the data order); t over seeds."""

    def f(ctx: Ctx) -> Effect:
        return paired_by_seed(ctx, a, b, lambda x, y: per_seed(x) - per_seed(y), what)

    return f


def _norm_ratio(a: str) -> Callable[[Ctx], Effect]:
    def f(ctx: Ctx) -> Effect:
        if not ctx.single(a, "baseline"):
            g = lambda r: math.log(_final(r, "conv_sqsum"))  # noqa: E731
            return paired_by_seed(ctx, a, "baseline", lambda x, y: g(x) - g(y), "log final conv sqsum ratio")
        d = _layer_log_ratio(ctx.g[a][0], ctx.g["baseline"][0])
        return one_sample(d, f"indicative (one seed): t over {len(d)} conv layers of log(final sqnorm {a} / baseline)")

    return f


def _rel_step(a: str, lo: Callable[[Ctx], float]) -> Callable[[Ctx], Effect]:
    def f(ctx: Ctx) -> Effect:
        key = "rel_step_conv_ema"
        if not ctx.single(a, "baseline"):

            def diff(x: Run, y: Run) -> float:
                return float(np.mean(_paired_points(x, y, key, lo(ctx), ctx.end + 1, True)))

            return paired_by_seed(ctx, a, "baseline", diff, f"mean log rel. step ratio from epoch {lo(ctx):.3g}")
        d = _paired_points(ctx.g[a][0], ctx.g["baseline"][0], key, lo(ctx), ctx.end + 1, True)
        return one_sample(d, f"indicative (one seed): t over {len(d)} sample points of log rel. step {a} / baseline")

    return f


def _exact(ctx: Ctx) -> Effect:
    def diff(a: Run, b: Run) -> float:
        return float(np.mean(_paired_points(a, b, "train_loss", 0.0, ctx.end + 1, True)))

    if not ctx.single("lr_exact", "baseline"):
        return paired_by_seed(ctx, "lr_exact", "baseline", diff, "mean log train-loss ratio")
    d = _paired_points(ctx.g["lr_exact"][0], ctx.g["baseline"][0], "train_loss", 0.0, ctx.end + 1, True)
    return one_sample(d, f"indicative (one seed): t over {len(d)} sample points of log train loss lr_exact / baseline")


LAG = "stage-1 evaluations from epoch 0.5, mean per seed"
PTS = dict(scale=100, unit=" points", min_effect=0.01)
EQ_MARGIN = 0.02  # accuracy: "the same" within 2 points, less than half the lag costs at stake (~5-14 points)

CLAIMS: tuple[Claim, ...] = (
    # ---- the BN-lag finding (evidence), on the same weights and test images
    Claim("lr_scaled_stage1_deficit",
          "lr_scaled has a lower stage-1 test accuracy than the baseline (the article: BN moving averages lag)",
          ("baseline", "lr_scaled"), f"shown if the CI of own(baseline) - own(lr_scaled) is above 0 ({LAG})",
          "evidence", cross_gap("baseline", "own", "lr_scaled", "own"), **PTS),
    Claim("baseline_lag_cost", "The baseline's own BN statistics cost stage-1 test accuracy (they lag)",
          ("baseline",), f"shown if the CI of precise - own in the baseline is above 0 ({LAG})", "evidence",
          view_gap("baseline", "precise", "own"), **PTS),
    Claim("lr_scaled_lag_cost", "lr_scaled's own BN statistics cost stage-1 test accuracy",
          ("lr_scaled",), f"shown if the CI of precise - own in lr_scaled is above 0 ({LAG})", "evidence",
          view_gap("lr_scaled", "precise", "own"), **PTS),
    Claim("bn098_removes_deficit", "A shorter BN moving-average window (decay 0.98) raises lr_scaled's stage-1 accuracy",
          ("lr_scaled",), f"shown if the CI of bn098 - own in lr_scaled is above 0 ({LAG})", "evidence",
          view_gap("lr_scaled", "bn098", "own"), **PTS),
    Claim("bn098_matches_precise", "With decay 0.98 lr_scaled's statistics are as good as recomputed ones",
          ("lr_scaled",), f"shown if the CI of precise - bn098 in lr_scaled lies within ±{100 * EQ_MARGIN:g} points ({LAG})",
          "evidence", view_gap("lr_scaled", "precise", "bn098"), margin=EQ_MARGIN, **PTS),
    Claim("growth_adds_lag", "In lr_scaled the weights' growth is what makes the statistics lag",
          ("lr_scaled",), f"shown if the CI of comp - own in lr_scaled is above 0 ({LAG})", "evidence",
          view_gap("lr_scaled", "comp", "own"), **PTS),
    Claim("growth_lag_control", "In the baseline (norms held by L2) compensating weight growth changes little",
          ("baseline",), f"shown if the CI of comp - own in the baseline lies within ±{100 * EQ_MARGIN:g} points ({LAG})",
          "evidence", view_gap("baseline", "comp", "own"), margin=EQ_MARGIN, **PTS),
    Claim("training_replicated", "lr_scaled trains the same network as the baseline (precise statistics agree)",
          ("baseline", "lr_scaled"),
          f"shown if the CI of precise(lr_scaled) - precise(baseline) lies within ±{100 * EQ_MARGIN:g} points "
          f"(paired by seed; {LAG})", "evidence", cross_gap("lr_scaled", "precise", "baseline", "precise"),
          margin=EQ_MARGIN, **PTS),
    Claim("bn098_overshoots_baseline", "lr_scaled with decay 0.98 beats the baseline's own statistics in stage 1",
          ("baseline", "lr_scaled"),
          f"shown if the CI of bn098(lr_scaled) - own(baseline) is above 0 (paired by seed; {LAG})", "evidence",
          cross_gap("lr_scaled", "bn098", "baseline", "own"), **PTS),
    # ---- final accuracies and losses (evidence), paired by seed
    Claim("no_conv_l2_accuracy_cost", "Removing L2 from the conv layers lowers the final test accuracy",
          ("baseline", "no_conv_l2"),
          "shown if the CI of baseline - no_conv_l2 (plateau accuracy, paired by seed) is above 0 (article: +1.5 points)",
          "evidence", paired("baseline", "no_conv_l2", final_acc, "final (plateau) test accuracy difference"),
          accuracy=True, **PTS),
    Claim("no_conv_l2_underfits", "Without conv L2 the final train loss is higher (underfitting)",
          ("baseline", "no_conv_l2"), "shown if the CI of no_conv_l2 - baseline is above 0 (article: +0.025)",
          "evidence", paired("no_conv_l2", "baseline", lambda r: _final(r, "train_loss"), "final train loss difference"),
          accuracy=True, min_effect=0.025),
    Claim("no_conv_l2_overfits", "Without conv L2 the test - train loss gap is larger (overfitting)",
          ("baseline", "no_conv_l2"), "shown if the CI of no_conv_l2 - baseline is above 0 (article: +0.024)",
          "evidence", paired("no_conv_l2", "baseline", lambda r: _final(r, "gap"), "final test - train loss gap difference"),
          accuracy=True, min_effect=0.024),
    Claim("lr_scaled_recovers_accuracy", "lr_scaled recovers the baseline's final test accuracy",
          ("baseline", "lr_scaled"),
          "shown if the CI of lr_scaled - baseline (plateau accuracy, paired by seed) lies within ±0.75 points "
          "(half the article's L2 effect)", "evidence",
          paired("lr_scaled", "baseline", final_acc, "final (plateau) test accuracy difference"),
          margin=0.0075, accuracy=True, scale=100, unit=" points", min_effect=0.0075),
    # ---- implementation checks: these hold by construction when the code is right
    Claim("conv_norm_growth", "Without conv L2 the conv weights end larger than the baseline's",
          ("baseline", "no_conv_l2"), "shown if the CI of the final conv sqsum ratio is above 1", "check",
          _norm_ratio("no_conv_l2"), log=True, unit="x", min_effect=math.log(1.1)),
    Claim("rel_step_collapse", "Without conv L2 the conv layers' relative step falls below the baseline's",
          ("baseline", "no_conv_l2"), "shown if the CI of the rel. step ratio (from half of lr stage 1 on) is below 1",
          "check", _rel_step("no_conv_l2", lambda c: c.m0 / 2), direction=-1, log=True, unit="x",
          min_effect=math.log(1.1)),
    Claim("lr_scaled_tracks_rel_step", "lr_scaled tracks the baseline's relative step size (its lr factor is built to)",
          ("baseline", "lr_scaled"), "shown if the CI of the rel. step ratio lies within 0.9-1.1", "check",
          _rel_step("lr_scaled", lambda c: 0.25), margin=math.log(1.1), log=True, unit="x"),
    Claim("lr_scaled_norm_explodes", "With lr scaling instead of L2 the conv weights grow far beyond the baseline's",
          ("baseline", "lr_scaled"), "shown if the CI of the final conv sqsum ratio is above 10x", "check",
          _norm_ratio("lr_scaled"), threshold=math.log(10), log=True, unit="x", min_effect=math.log(10)),
    Claim("lr_exact_tracks_baseline",
          "(beyond the article) The exact weight-decay -> lr transform tracks the baseline's train loss",
          ("baseline", "lr_exact"), "shown if the CI of the train-loss ratio lies within 0.9-1.1", "check", _exact,
          margin=math.log(1.1), log=True, unit="x"),
)  # fmt: skip


def verdict(c: Claim, e: Effect) -> str:
    """'shown' | 'not shown' | 'undecided', from the CI alone."""
    if c.margin is not None:
        if -c.margin < e.lo and e.hi < c.margin:
            return "shown"
        if e.lo > c.margin or e.hi < -c.margin:
            return "not shown"
        return "undecided"
    lo, hi = (e.lo - c.threshold, e.hi - c.threshold) if c.direction > 0 else (c.threshold - e.hi, c.threshold - e.lo)
    if lo > 0:
        return "shown"
    if hi < 0:
        return "not shown"
    return "undecided"


def _show(c: Claim, x: float) -> float:
    return math.exp(x) if c.log else x * c.scale


def _distance(c: Claim, e: Effect) -> float:
    """The effect the seeds-needed estimate is powered for: the claim's minimum effect for a
    directional claim; for an equivalence claim, the room between the estimate and the margin."""
    if c.margin is not None:
        return max(c.margin - abs(e.estimate), 0.0)
    return c.min_effect


NOT_EVIDENCE = {
    "smoke": "smoke preset: a few steps on a few hundred images cover a tiny fraction of the article's "
    "relaxation times; these verdicts test the pipeline, they are not evidence"
}


def evaluate(runs: list[Run]) -> list[dict]:
    """Every claim: id, claim, kind, verdict, estimate and 95% CI (in the claim's display unit), n,
    method, rule, seeds_needed (with its range) and the numbers. Runs of a preset in
    `NOT_EVIDENCE` get the verdict 'not evidence', with the measured one kept as `measured`."""
    ctx = Ctx.of(runs)
    presets = {str(r.config.get("preset")) for r in runs}
    caveat = next((NOT_EVIDENCE[p] for p in sorted(presets) if p in NOT_EVIDENCE), None)
    out = []
    for c in CLAIMS:
        item: dict = {"id": c.id, "claim": c.text, "kind": c.kind, "rule": c.rule}
        missing = [v for v in c.needs if v not in ctx.g]
        if missing:
            item.update(verdict="not run", reason=f"needs {', '.join(missing)}")
            out.append(item)
            continue
        single = ctx.single(*c.needs)
        if single and c.accuracy:
            item.update(
                verdict="undecided", reason="one seed: a final number has no spread to compare with; run >= 2 seeds"
            )
            out.append(item)
            continue
        try:
            e = c.compute(ctx)
        except NoData as err:  # the runs lack the values the claim reads (any other error is a bug)
            item.update(verdict="no data", reason=str(err))
            out.append(item)
            continue
        v = verdict(c, e)
        need, rng = (None, (None, None))
        if v == "undecided" and not single:
            d = _distance(c, e)
            need, rng = seeds_needed(e, d), seeds_needed_range(e, d)
            item["powered_for"] = _show(c, d) if not c.log else math.exp(d)
        item.update(
            verdict=v,
            estimate=_show(c, e.estimate),
            ci=[_show(c, e.lo), _show(c, e.hi)],
            unit=c.unit,
            n=e.n,
            method=e.method,
            indicative=single,
            seeds_needed=need,
            seeds_needed_range=list(rng),
            numbers=e.numbers,
        )
        if caveat:
            item.update(measured=v, verdict="not evidence", reason=caveat)
        out.append(item)
    return out


def describe(item: dict) -> str:
    """One line for the report."""
    tag = f"[{item.get('kind', '')}] " if item.get("kind") else ""
    if "estimate" not in item:
        return f"**{item['verdict']}** {tag}— {item['claim']} ({item.get('reason', '')})"

    def f(x: float) -> str:
        return "∞" if x == math.inf else "-∞" if x == -math.inf else f"{x:.3g}"

    u = item["unit"]
    lo, hi = item["ci"]
    s = f"**{item['verdict']}** {tag}— {item['claim']}: {f(item['estimate'])}{u}, 95% CI [{f(lo)}, {f(hi)}]{u}"
    s += f" ({item['method']}; {item['rule']})"
    if item.get("measured"):
        s += f"; measured verdict {item['measured']}, but {item['reason']}"
    elif item.get("seeds_needed"):
        lo_n, hi_n = item.get("seeds_needed_range") or (None, None)
        pf = item.get("powered_for")
        s += f"; {seeds_text(item['seeds_needed'])} would decide it with 80% power"
        if pf is not None:
            s += f" against {f(pf)}{u}"
        if lo_n and hi_n and item["seeds_needed"] < SEEDS_CAP:
            s += f" ({seeds_count(lo_n)}-{seeds_count(hi_n)} over the 95% range of the measured spread)"
    return s
