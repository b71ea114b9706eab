"""Figures, summary and report from synthetic run directories (no training)."""

import csv
import json
import math
import re

import numpy as np
import pytest

from bnwd.analysis.claims import evaluate
from bnwd.analysis.equilibrium import equilibrium_angular_update
from bnwd.analysis.plots import (
    FIGURES,
    aggregate,
    by_variant,
    figures,
    load_run,
    load_runs,
    plot_all,
    plot_rel_step,
    plot_test_acc,
)
from bnwd.analysis.report import summarize, theory_by_stage, write_report, write_summary
from bnwd.analysis.stats import one_sample, seeds_needed, welch
from bnwd.errors import BnwdError

VARIANTS = ["baseline", "no_conv_l2", "lr_scaled", "lr_scaled_bn098", "lr_exact"]
LAYERS = ["conv1", "layer1.0.conv1"]

# Per-variant shape of the synthetic curves: final and first-stage test accuracy, final conv
# sqsum relative to the start, relative step relative to the baseline's, final train loss,
# test - train loss gap.
# Views of the BN statistics at each evaluation, as offsets from the run's own accuracy: lag =
# precise - own, b98 = bn098 - own, glag = comp - own.
GOOD = {
    "baseline": dict(acc=0.910, acc1=0.80, sq=0.8, rel=1.00, train=0.100, gap=0.250, lag=0.03, b98=0.02, glag=0.0),
    "no_conv_l2": dict(acc=0.895, acc1=0.78, sq=3.0, rel=0.50, train=0.125, gap=0.274),
    "lr_scaled": dict(acc=0.910, acc1=0.70, sq=500.0, rel=1.02, train=0.100, gap=0.250, lag=0.13, b98=0.125, glag=0.08),
    "lr_scaled_bn098": dict(acc=0.911, acc1=0.825, sq=500.0, rel=1.02, train=0.100, gap=0.250),
    "lr_exact": dict(acc=0.910, acc1=0.80, sq=600.0, rel=1.00, train=0.101, gap=0.250),
}
BAD = {
    "baseline": {**GOOD["baseline"], "lag": -0.02, "glag": 0.05},
    "no_conv_l2": dict(acc=0.925, acc1=0.82, sq=0.7, rel=1.30, train=0.090, gap=0.200),
    "lr_scaled": dict(acc=0.880, acc1=0.85, sq=1.2, rel=0.50, train=0.100, gap=0.250, lag=-0.02, b98=-0.08, glag=-0.02),
    "lr_scaled_bn098": dict(acc=0.880, acc1=0.77, sq=1.2, rel=0.50, train=0.100, gap=0.250),
    "lr_exact": dict(acc=0.910, acc1=0.80, sq=1.0, rel=1.00, train=0.300, gap=0.250),
}


def make_run(
    root,
    variant,
    seed,
    prof,
    epochs=12.0,
    milestones=(4.0, 8.0),
    spe=20,
    noise=0.001,
    finished=True,
    sample_every=5,
    wd=5e-3,
    lr0=0.1,
    optimizer="sgd",
):
    """A run directory with plausible curves: samples every `sample_every` steps, evaluations every epoch."""
    rng = np.random.default_rng(1000 * seed + VARIANTS.index(variant) if variant in VARIANTS else seed)
    d = root / f"{variant}-s{seed}"
    d.mkdir(parents=True)
    cfg = {
        "variant": variant,
        "seed": seed,
        "preset": "cpu",
        "epochs": epochs,
        "batch_size": 128,
        "lr": lr0,
        "lr_milestones": list(milestones),
        "lr_gamma": 0.1,
        "momentum": 0.9,
        "weight_decay": wd,
        "optimizer": optimizer,
        "lr_scaling": "reference",
        "width": 8,
        "depth": 20,
        "train_subset": 10000,
        "test_subset": 2000,
        "bn_momentum": 0.015,
        "steps_per_epoch": spe,
    }
    (d / "config.json").write_text(json.dumps(cfg))
    total = int(epochs * spe)
    s0 = 800.0
    rows = []
    for step in range(sample_every, total + 1, sample_every):
        e = step / spe
        u = e / epochs
        stage = sum(e >= m for m in milestones)
        lr = lr0 * 0.1**stage
        in1 = e <= milestones[0]  # the evaluation at the drop ends stage 1
        acc = (
            prof["acc1"] * min(1, e / 2) if in1 else prof["acc"] - 0.01 * (len(milestones) - stage)
        ) + noise * rng.normal()
        sq = s0 * prof["sq"] ** u * (1 + noise * rng.normal())
        eq = math.sqrt(2 * lr * wd / 1.9)
        rel = eq * prof["rel"] * (1 + 0.5 * math.exp(-e)) * (1 + noise * rng.normal())
        train = prof["train"] + 2.0 * math.exp(-e / 2) + noise * rng.normal()
        row = {
            "step": step,
            "epoch": e,
            "lr": lr,
            "lr_factor": (sq / s0 / 0.8**u) if variant.startswith("lr_") else 1.0,
            "train_loss": train,
            "train_acc": 1 - train / 3,
            "conv_sqsum": sq,
            "rel_step_conv": rel * 1.01,
            "rel_step_conv_ema": rel,
            "angle_conv": rel,
            "eff_lr_conv": lr / sq,
        }
        for k, name in enumerate(LAYERS):
            row[f"sqnorm/conv/{name}"] = sq / (2 + k)
        if step % spe == 0:
            row["test_acc"] = acc
            row["test_loss"] = train + prof["gap"] + noise * rng.normal()
            for view, k in (("precise", "lag"), ("bn098", "b98"), ("comp", "glag")):
                if k in prof:
                    row[f"test_acc_{view}"] = acc + prof[k] + noise * rng.normal()
                    row[f"test_loss_{view}"] = row["test_loss"]
        rows.append(row)
    with open(d / "metrics.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    last = rows[-1]
    summ = {
        "variant": variant,
        "seed": seed,
        "steps": total,
        "epochs": epochs,
        "final_test_acc": last["test_acc"],
        "final_test_loss": last["test_loss"],
        "final_train_loss": last["train_loss"],
        "final_train_acc": last["train_acc"],
        "final_conv_sqsum": last["conv_sqsum"],
        "initial_conv_sqsum": s0,
        "wall_s": 100.0 + seed,
        "images_per_s": 1000.0,
        "finished": finished,
    }
    (d / "summary.json").write_text(json.dumps(summ))
    return d


def make_runs(root, profiles=GOOD, seeds=(0, 1), variants=VARIANTS, **kw):
    return [load_run(make_run(root, v, s, profiles[v], **kw)) for v in variants for s in seeds]


def data_lines(ax):
    """Lines of the variants (and the theory line), not the milestone verticals."""
    return [ln for ln in ax.lines if len(ln.get_xdata()) > 1 and not ln.get_label().startswith("_")]


# ---------------------------------------------------------------- loading


def test_load_run_arrays_and_errors(tmp_path):
    d = make_run(tmp_path, "baseline", 0, GOOD["baseline"])
    with open(d / "metrics.jsonl", "a") as f:
        f.write('{"step": 999, "epo')  # a half-written last line is skipped
    r = load_run(d)
    assert r.variant == "baseline" and r.seed == 0 and r.summary["finished"]
    n = len(r.rows)
    assert n == 48 and all(len(a) == n for a in r.metrics.values())
    assert np.isnan(r.metrics["test_acc"]).sum() == n - 12  # evaluations once per epoch
    e, acc = r.series("test_acc")
    assert len(e) == 12 and np.all(np.isfinite(acc)) and e[-1] == 12.0

    with pytest.raises(BnwdError, match="not a run directory"):
        load_run(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BnwdError, match="not a run directory"):
        load_run(tmp_path / "empty")
    (tmp_path / "cfgonly").mkdir()
    (tmp_path / "cfgonly" / "config.json").write_text("{}")
    with pytest.raises(BnwdError, match="metrics"):
        load_run(tmp_path / "cfgonly")
    (tmp_path / "cfgonly" / "metrics.jsonl").write_text("garbage\n")
    with pytest.raises(BnwdError, match="no sample points"):
        load_run(tmp_path / "cfgonly")
    (tmp_path / "badcfg").mkdir()
    (tmp_path / "badcfg" / "config.json").write_text("{oops")
    (tmp_path / "badcfg" / "metrics.jsonl").write_text('{"epoch": 1}\n')
    with pytest.raises(BnwdError, match="config.json"):
        load_runs([d, tmp_path / "badcfg"])
    # the message is one line
    try:
        load_run(tmp_path / "empty")
    except BnwdError as err:
        assert "\n" not in str(err)


def test_aggregate_mean_std_and_interpolation(tmp_path):
    runs = make_runs(tmp_path / "a", variants=["baseline"], seeds=(0, 1, 2), noise=0.0)
    # replace the final values with known numbers
    for r, v in zip(runs, (1.0, 2.0, 4.0)):
        r.metrics["conv_sqsum"][-1] = v
    c = aggregate(runs, "conv_sqsum")
    assert c.mean[-1] == pytest.approx(7 / 3) and c.std[-1] == pytest.approx(np.std([1, 2, 4], ddof=1))
    assert c.n[-1] == 3 and len(c.epoch) == 48
    # a seed sampled at other steps is interpolated onto the reference epochs
    other = load_run(make_run(tmp_path / "b", "baseline", 5, GOOD["baseline"], sample_every=4, noise=0.0))
    c2 = aggregate([runs[1], other], "train_loss")
    assert len(c2.epoch) == len(other.series("train_loss")[0])  # the seed with more points is the reference
    # noise-free curves of the same shape: the interpolated mean equals the curve up to interpolation error
    assert np.allclose(c2.mean[2:], GOOD["baseline"]["train"] + 2 * np.exp(-c2.epoch[2:] / 2), atol=2e-3)
    # one seed: std 0
    c1 = aggregate(runs[:1], "train_loss")
    assert np.all(c1.std == 0)
    assert [r.seed for r in by_variant(runs[::-1])["baseline"]] == [0, 1, 2]


# ---------------------------------------------------------------- figures


def test_plot_all_writes_every_figure_with_data(tmp_path):
    runs = make_runs(tmp_path / "runs")
    out = tmp_path / "figs"
    paths = plot_all(runs, out)
    assert [p.stem for p in paths] == list(FIGURES)
    for name in FIGURES:
        assert (out / f"{name}.png").stat().st_size > 1000
        assert (out / f"{name}.svg").stat().st_size > 1000
    figs = figures(runs)
    for name, fig in figs.items():
        assert fig is not None, name
        for ax in fig.axes:
            assert data_lines(ax), f"{name} has no data"
    labels = lambda f: [ln.get_label() for ln in data_lines(f.axes[0])]
    assert labels(figs["test_acc_1"]) == ["baseline (2 seeds)", "no_conv_l2 (2 seeds)"]
    assert labels(figs["test_acc_2"]) == ["baseline (2 seeds)", "no_conv_l2 (2 seeds)", "lr_scaled (2 seeds)"]
    assert len(labels(figs["test_acc_3"])) == 5
    assert "equilibrium prediction (SGD+L2)" in labels(figs["rel_step_1"])
    assert figs["rel_step_2"].axes[0].get_yscale() == "log"
    assert len(figs["exact"].axes) == 3
    assert all(
        labels_of == ["baseline (2 seeds)", "lr_exact (2 seeds)"]
        for labels_of in ([ln.get_label() for ln in data_lines(ax)] for ax in figs["exact"].axes)
    )
    without_exact = [r for r in runs if r.variant != "lr_exact"]
    assert figures(without_exact)["exact"] is None
    assert figs["conv_sqsum"].axes[0].get_yscale() == "linear"
    assert figs["conv_sqsum_log"].axes[0].get_yscale() == "log"
    # accuracy drawn in percent; milestone lines at epochs 4 and 8
    acc = data_lines(figs["test_acc_1"].axes[0])[0].get_ydata()
    assert 50 < np.max(acc) < 100
    vlines = [ln for ln in figs["test_acc_1"].axes[0].lines if ln.get_label().startswith("_")]
    assert sorted(ln.get_xdata()[0] for ln in vlines) == [4.0, 8.0]
    # the theory line: sqrt(2 lr wd / (1 + mu)) at the first stage's lr
    th = [ln for ln in data_lines(figs["rel_step_1"].axes[0]) if ln.get_label().startswith("equilibrium")][0]
    assert th.get_ydata()[0] == pytest.approx(math.sqrt(2 * 0.1 * 5e-3 / 1.9))
    assert list(th.get_xdata()) == [0.0, 4.0, 8.0, 12.0]  # drops at the milestones
    assert th.get_ydata()[1] == pytest.approx(math.sqrt(2 * 0.01 * 5e-3 / 1.9))
    # the lr factor figure: lr-scaled runs on top, the baseline's S(t)/S(0) and the article's fit below
    assert len(figs["lr_factor"].axes) == 2
    assert any("article" in ln.get_label() for ln in data_lines(figs["lr_factor"].axes[1]))
    assert not any(
        ln.get_label().startswith("equilibrium") for ln in data_lines(plot_rel_step(runs, theory=False).axes[0])
    )


def test_figures_with_some_variants_only(tmp_path):
    runs = make_runs(tmp_path / "r", variants=["lr_scaled"], seeds=(0,))
    figs = figures(runs)
    for name in ("test_acc_1", "conv_sqsum", "rel_step_1"):
        assert figs[name] is None, name
    for name in ("test_acc_2", "test_acc_3", "conv_sqsum_log", "rel_step_2", "lr_factor", "train_loss"):
        assert data_lines(figs[name].axes[0]), name
    assert len(figs["lr_factor"].axes) == 1  # no baseline: no S(t)/S(0) panel
    paths = plot_all(runs, tmp_path / "f")
    assert {p.stem for p in paths} == {
        "test_acc_2",
        "test_acc_3",
        "conv_sqsum_log",
        "rel_step_2",
        "lr_factor",
        "train_loss",
        "bn_lag",  # lr_scaled has its views
    }
    assert len(figs["bn_lag"].axes) == 1 and len(data_lines(figs["bn_lag"].axes[0])) == 3
    assert plot_test_acc(runs, ["baseline"]) is None
    with pytest.raises(BnwdError):
        plot_all([], tmp_path / "g")


def test_equilibrium_prediction():
    cfg = {"weight_decay": 2e-4, "momentum": 0.9, "optimizer": "sgd"}
    assert equilibrium_angular_update(0.1, cfg)[0] == pytest.approx(0.0046, abs=1e-4)
    adamw = equilibrium_angular_update(1e-3, {"weight_decay": 0.05, "momentum": 0.9, "optimizer": "adamw"})[0]
    assert adamw == pytest.approx(math.sqrt(2 * 1e-3 * 0.05 * 0.1 / 1.9))
    assert equilibrium_angular_update(0.1, {**cfg, "optimizer": "adam"}) is None
    assert equilibrium_angular_update(0.1, {**cfg, "weight_decay": 0.0}) is None


# ---------------------------------------------------------------- summary and claims


def test_summarize_known_numbers(tmp_path):
    runs = make_runs(tmp_path, variants=["baseline", "no_conv_l2"], seeds=(0, 1, 2))
    for r, (acc, tr, te) in zip(
        runs,
        [(0.90, 0.1, 0.3), (0.91, 0.2, 0.5), (0.92, 0.3, 0.4), (0.80, 0.5, 0.5), (0.80, 0.5, 0.5), (0.86, 0.5, 1.1)],
    ):
        r.summary.update(plateau_test_acc=acc, final_train_loss=tr, final_test_loss=te)
    rows, stats = summarize(runs)
    assert len(rows) == 6 and rows[0]["gap"] == pytest.approx(0.2)
    assert set(rows[0]) == {
        "variant",
        "seed",
        "final_test_acc",
        "final_train_loss",
        "final_test_loss",
        "gap",
        "final_conv_sqsum",
        "epochs",
        "wall_s",
    }
    b = stats["baseline"]
    assert b["n"] == 3
    assert b["final_test_acc"]["mean"] == pytest.approx(0.91) and b["final_test_acc"]["std"] == pytest.approx(0.01)
    assert b["gap"]["mean"] == pytest.approx((0.2 + 0.3 + 0.1) / 3)
    assert b["gap"]["std"] == pytest.approx(np.std([0.2, 0.3, 0.1], ddof=1))
    assert b["wall_s"]["mean"] == pytest.approx(101.0) and b["epochs"]["std"] == 0.0
    assert stats["no_conv_l2"]["final_test_acc"]["mean"] == pytest.approx(0.82)
    _, one = summarize(runs[:1])
    assert one["baseline"]["final_test_acc"]["std"] == 0.0

    write_summary(runs, tmp_path / "out")
    rows_csv = list(csv.DictReader(open(tmp_path / "out" / "summary.csv")))
    assert [r["kind"] for r in rows_csv] == ["run"] * 6 + ["mean", "std"] * 2
    mean_b = [r for r in rows_csv if r["kind"] == "mean" and r["variant"] == "baseline"][0]
    assert float(mean_b["final_test_acc"]) == pytest.approx(0.91) and mean_b["n"] == "3"
    assert float(
        [r for r in rows_csv if r["kind"] == "std" and r["variant"] == "baseline"][0]["final_test_acc"]
    ) == pytest.approx(0.01)
    js = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert len(js["runs"]) == 6 and js["variants"]["baseline"]["final_test_acc"]["mean"] == pytest.approx(0.91)


def test_claims_shown_on_article_like_data(tmp_path):
    """Article-like synthetic runs, 3 seeds: every claim is shown, with an estimate inside its CI."""
    cl = evaluate(make_runs(tmp_path, GOOD, seeds=(0, 1, 2)))
    assert len(cl) == 18
    for c in cl:
        assert c["verdict"] == "shown", c
        assert c["ci"][0] <= c["estimate"] <= c["ci"][1] and c["n"] == 3
        assert c["kind"] in ("evidence", "check")
    byid = {c["id"]: c for c in cl}
    assert byid["no_conv_l2_accuracy_cost"]["estimate"] == pytest.approx(1.5, abs=0.3)  # points
    assert byid["lr_scaled_norm_explodes"]["estimate"] > 100  # x


def test_claims_not_shown_on_contrary_data(tmp_path):
    """Contrary runs: each claim's CI excludes the article's direction, the bn098 claim too (no claim
    is gated on another)."""
    cl = evaluate(make_runs(tmp_path, BAD, seeds=(0, 1)))
    got = {c["id"]: c["verdict"] for c in cl}
    assert set(got.values()) == {"not shown"}, got


def test_claim_within_seed_spread_is_undecided_with_seeds_needed(tmp_path):
    """A 0.1-point accuracy gap under 1-point seed noise: undecided, and it says how many seeds would decide it."""
    prof = {**GOOD, "no_conv_l2": {**GOOD["no_conv_l2"], "acc": 0.909}}
    cl = evaluate(make_runs(tmp_path, prof, seeds=(0, 1, 2), noise=0.01))
    c = next(c for c in cl if c["id"] == "no_conv_l2_accuracy_cost")
    assert c["verdict"] == "undecided" and c["seeds_needed"] > 3
    lo, hi = c["seeds_needed_range"]
    assert lo <= c["seeds_needed"] <= hi and hi > lo


def test_one_seed_decides_dynamics_not_accuracy(tmp_path):
    """With one seed the dynamics claims are decided over sample points or layers; the accuracy claims
    are undecided (a final accuracy is one number per seed)."""
    cl = {c["id"]: c for c in evaluate(make_runs(tmp_path, GOOD, seeds=(0,)))}
    for k in ("rel_step_collapse", "lr_scaled_tracks_rel_step"):
        assert cl[k]["verdict"] == "shown" and "sample points" in cl[k]["method"], cl[k]
    for k in ("lr_scaled_stage1_deficit", "bn098_removes_deficit", "baseline_lag_cost"):
        assert cl[k]["verdict"] == "shown" and "evaluations" in cl[k]["method"], cl[k]
    for k in cl:
        assert cl[k].get("indicative") is not False and "indicative" in cl[k].get("method", "indicative"), cl[k]
    assert "conv layers" in cl["conv_norm_growth"]["method"]
    for k in ("no_conv_l2_accuracy_cost", "no_conv_l2_underfits", "lr_scaled_recovers_accuracy"):
        assert cl[k]["verdict"] == "undecided" and "one seed" in cl[k]["reason"], cl[k]


def test_claims_missing_variants(tmp_path):
    cl = {c["id"]: c for c in evaluate(make_runs(tmp_path, GOOD, variants=["baseline", "no_conv_l2"], seeds=(0, 1)))}
    assert cl["conv_norm_growth"]["verdict"] == "shown"
    assert (
        cl["lr_scaled_tracks_rel_step"]["verdict"] == "not run"
        and "lr_scaled" in cl["lr_scaled_tracks_rel_step"]["reason"]
    )


def test_welch_interval_matches_scipy():
    """Welch's 95% interval for a difference of means equals scipy's ttest_ind(equal_var=False) interval."""
    from scipy.stats import ttest_ind

    a, b = [0.91, 0.915, 0.905, 0.92], [0.895, 0.89, 0.9]
    e = welch(a, b, "m")
    ci = ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (e.lo, e.hi) == pytest.approx((ci.low, ci.high), rel=1e-9)
    o = one_sample([1.0, 2.0, 3.0], "m")
    assert o.estimate == 2.0 and o.hi - o.estimate == pytest.approx(4.302652729911275 * 1 / math.sqrt(3), rel=1e-9)


def test_seeds_needed_gives_80_percent_power():
    """Paired: the smallest n with (t_.975(n-1) + t_.80(n-1)) sd / sqrt(n) <= effect; checked against
    scipy's noncentral t power of the one-sample t test at n (>= 0.8 up to the approximation) and
    n - 1 (< 0.8)."""
    from scipy.stats import nct, t

    e = one_sample([0.0, 1.0, 0.5, 0.2], "m")
    sd = e.spread[0]
    n = seeds_needed(e, 0.5)
    q = lambda df, p: t.ppf(p, df)  # noqa: E731
    assert (q(n - 1, 0.975) + q(n - 1, 0.8)) * sd / math.sqrt(n) <= 0.5
    assert (q(n - 2, 0.975) + q(n - 2, 0.8)) * sd / math.sqrt(n - 1) > 0.5

    def power(k):
        nc = 0.5 / (sd / math.sqrt(k))
        c = t.ppf(0.975, k - 1)
        return 1 - nct.cdf(c, k - 1, nc) + nct.cdf(-c, k - 1, nc)

    assert power(n) >= 0.78 and power(n - 1) < 0.8


def test_paired_claim_matches_scipy_ttest_rel(tmp_path):
    """A claim paired by seed is scipy's paired t test: its CI is ttest_rel's on the per-seed values."""
    from scipy.stats import ttest_rel

    runs = make_runs(tmp_path, GOOD, seeds=(0, 1, 2, 3), noise=0.01)
    c = next(c for c in evaluate(runs) if c["id"] == "no_conv_l2_accuracy_cost")
    by = {(r.variant, r.seed): r for r in runs}
    from bnwd.analysis.claims import final_acc

    a = [final_acc(by["baseline", s]) for s in range(4)]
    b = [final_acc(by["no_conv_l2", s]) for s in range(4)]
    ci = ttest_rel(a, b).confidence_interval(0.95)
    assert [x / 100 for x in c["ci"]] == pytest.approx([ci.low, ci.high], rel=1e-9)


def test_smoke_preset_verdicts_are_not_evidence(tmp_path):
    """Runs of the smoke preset: every decided claim says 'not evidence' and keeps its measured verdict."""
    runs = make_runs(tmp_path, GOOD, seeds=(0, 1))
    for r in runs:
        r.config["preset"] = "smoke"
    cl = evaluate(runs)
    decided = [c for c in cl if "estimate" in c]
    assert len(decided) == 18 and all(c["verdict"] == "not evidence" for c in decided)
    assert {c["measured"] for c in decided} >= {"shown"} and all("not evidence" in c["reason"] for c in decided)


def test_report(tmp_path):
    runs = make_runs(tmp_path / "runs", seeds=(0, 1))
    out = tmp_path / "out"
    figs = plot_all(runs, out / "figures")
    write_summary(runs, out)
    p = write_report(runs, out, figs, notes="Synthetic data.")
    text = p.read_text()
    assert p == out / "report.md"
    assert re.search(r"\| baseline \| 2 \| 9\d\.\d\d ± 0\.\d\d \|", text) and "| lr_exact | 2 |" in text
    for name in FIGURES:
        assert f"(figures/{name}.png)" in text
    assert "claims" in text and text.count("**shown**") >= 16 and (out / "claims.json").exists()
    assert (
        "width = 8" in text
        and "12 epochs instead of 150" in text
        and "training images: 10000 (article: all 50,000)" in text
    )
    assert "Synthetic data." in text and "Preset `cpu`" in text
    assert "## Theory next to measurement" in text and "| 1 | 0-4 | 0.1 | 80 | 100 | 0.02294 |" in text


def test_theory_by_stage(tmp_path):
    """Predicted relative step sqrt(2 lr wd / (1 + mu)) per lr stage, relaxation time
    (1 - mu) / (2 lr wd) steps; the synthetic baseline sits at 1 + 0.5 exp(-epoch) times the
    prediction, so its last-quarter mean is within 2% of it in every stage."""
    rows = theory_by_stage(make_runs(tmp_path / "runs", seeds=(0,)))
    assert [r["stage"] for r in rows] == [1, 2, 3] and [r["epochs"] for r in rows] == [(0, 4), (4, 8), (8, 12)]
    for r, lr in zip(rows, (0.1, 0.01, 0.001)):
        assert r["lr"] == pytest.approx(lr) and r["steps"] == 80
        assert r["predicted"] == pytest.approx(math.sqrt(2 * lr * 5e-3 / 1.9))
        assert r["steps_to_equilibrium"] == pytest.approx(0.1 / (2 * lr * 5e-3))
        assert set(r["measured"]) == {"baseline", "lr_exact", "lr_scaled", "lr_scaled_bn098"}
        assert r["measured"]["baseline"] / r["predicted"] == pytest.approx(1.0, abs=0.02)
    assert theory_by_stage(make_runs(tmp_path / "nowd", seeds=(0,), variants=["baseline"], wd=0.0)) == []


def test_equilibrium_sqsum_from_measured_gradient_scale(tmp_path):
    """SGD+L2: per layer ||w*||^2 = sqrt(L lr / (wd (1 - mu) (2 - wd lr / (1 + mu)))), L the logged
    grad_sq_unit_ema; the conv sum adds the layers. A run without those metrics, or not a baseline,
    gets no line."""
    from bnwd.analysis.equilibrium import equilibrium_sqsum
    from bnwd.analysis.runs import Run

    cfg = {"variant": "baseline", "weight_decay": 5e-3, "momentum": 0.9, "optimizer": "sgd"}
    rows = [
        {
            "epoch": 1.0,
            "step": 10,
            "lr": 0.1,
            "grad_sq_unit_ema/conv/a.weight": 2.0,
            "grad_sq_unit_ema/conv/b.weight": 8.0,
        },
        {
            "epoch": 2.0,
            "step": 20,
            "lr": 0.01,
            "grad_sq_unit_ema/conv/a.weight": 2.0,
            "grad_sq_unit_ema/conv/b.weight": 8.0,
        },
    ]
    eq = equilibrium_sqsum(Run(tmp_path, cfg, rows, {}))
    for got, lr in zip(eq, (0.1, 0.01)):
        one = lambda L, lr=lr: math.sqrt(L * lr / (5e-3 * 0.1 * (2 - 5e-3 * lr / 1.9)))
        assert got == pytest.approx(one(2.0) + one(8.0), rel=1e-12)
    assert eq[0] / eq[1] == pytest.approx(math.sqrt(10), rel=1e-4)  # ||w*||^2 goes as sqrt(lr)
    assert equilibrium_sqsum(Run(tmp_path, {**cfg, "variant": "no_conv_l2"}, rows, {})) is None
    assert (
        equilibrium_sqsum(Run(tmp_path, cfg, [{k: v for k, v in r.items() if "grad" not in k} for r in rows], {}))
        is None
    )


def test_equilibrium_sqsum_adamw_needs_no_gradient_scale(tmp_path):
    """AdamW: ||w*||^2 = lr dim / (2 wd) per layer, dims from the config's network (ResNet-8
    width 4 here): the sum over conv kernels is lr * (number of conv weights) / (2 wd)."""
    from bnwd.analysis.equilibrium import equilibrium_sqsum
    from bnwd.analysis.runs import Run
    from bnwd.nn.models import resnet

    cfg = {"variant": "baseline", "weight_decay": 0.05, "momentum": 0.9, "optimizer": "adamw", "depth": 8, "width": 4}
    n = sum(p.numel() for p in resnet(8, width=4).parameters() if p.dim() == 4)
    eq = equilibrium_sqsum(Run(tmp_path, cfg, [{"epoch": 1.0, "step": 5, "lr": 1e-3}], {}))
    assert eq[0] == pytest.approx(1e-3 * n / (2 * 0.05))
