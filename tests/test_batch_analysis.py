"""The sweep's theory checks against numbers computed by hand, the one retry policy of the
engine, its levels, and claims that tell missing data from a bug. No training."""

from __future__ import annotations

import math

import pytest

from bnwd.analysis import claims
from bnwd.analysis.stats import SEEDS_CAP, seeds_text
from bnwd.analysis.sweep import intrinsic_lr_check, theory_check
from bnwd.batch.engine import RunSpec, levels, retryable, run_local
from bnwd.errors import BnwdError, ConfigError, DataError, DivergenceError


def cells(logs: list[float]) -> list[dict]:
    """Grid cells whose measured / predicted relative step is exp(log)."""
    return [{"rel_step_measured_mean": math.exp(x), "rel_step_predicted_mean": 1.0} for x in logs]


def test_theory_check_agrees():
    """logs 0.01, 0.02, 0.03: mean 0.02, sd 0.01, t_.975(2) = 4.3027, half-width 4.3027 * 0.01 /
    sqrt(3) = 0.024841; interval exp(0.02 -+ 0.024841) = [0.99517, 1.04586], inside 1 +- 0.1."""
    r = theory_check(cells([0.01, 0.02, 0.03]))
    rel = r["rel_step"]
    assert rel["verdict"] == "agrees" and rel["cells"] == 3 and rel["band"] == 0.1
    assert rel["ratio"] == pytest.approx(1.0202013, rel=1e-7)
    assert rel["ci"] == pytest.approx([0.9951703, 1.0458619], rel=1e-7)
    assert r["conv_sqsum"] == {"cells": 0}  # no cell has both sqsum numbers


def test_theory_check_disagrees_and_undecided():
    """logs 0.5, 0.6, 0.7: interval exp(0.6 -+ 0.24841) = [1.4213, 2.3359], above 1: disagrees.
    logs -0.1, 0.1: mean 0, sd sqrt(0.02), t_.975(1) = 12.706, half-width 12.706 * 0.1 = 1.2706,
    interval [0.2807, 3.5631]: holds 1 but not within the band: undecided."""
    r = theory_check(cells([0.5, 0.6, 0.7]))["rel_step"]
    assert r["verdict"] == "disagrees" and r["ci"] == pytest.approx([1.4213203, 2.3359386], rel=1e-7)
    r = theory_check(cells([-0.1, 0.1]))["rel_step"]
    assert r["verdict"] == "undecided" and r["ratio"] == pytest.approx(1.0)
    assert r["ci"] == pytest.approx([0.2806574, 3.5630627], rel=1e-6)
    # a cell without a prediction is left out; one cell is too few for an interval
    assert theory_check([*cells([0.1]), {"rel_step_measured_mean": 1.0}])["rel_step"] == {"cells": 1}


GRID = {"lr": [0.1, 0.2], "weight_decay": [1e-3, 2e-3]}


def rows(acc: dict[tuple[float, float], tuple[float, float]]) -> list[dict]:
    return [
        {"status": "done", "lr": lr, "weight_decay": wd, "final_test_acc": a}
        for (lr, wd), pair in acc.items()
        for a in pair
    ]


def test_intrinsic_lr_check_no_difference_between_equal_products():
    """Cells (lr, wd) -> accuracies of two seeds: A (0.1, 1e-3) 0.80, 0.82; B (0.1, 2e-3) and
    C (0.2, 1e-3) (equal lr * wd = 2e-4) 0.85, 0.87 each; D (0.2, 2e-3) 0.90, 0.92. Grand mean
    0.86; SS_total = 0.0108; SS_cells = 2 (0.05^2 + 0 + 0 + 0.05^2) = 0.01; SS_products (1e-4,
    2e-4, 4e-4) = 0.01 too: F = (0 / 1) / (0.0008 / 4) = 0, p = 1; eta^2 = 0.01 / 0.0108."""
    acc = {(0.1, 1e-3): (0.80, 0.82), (0.1, 2e-3): (0.85, 0.87), (0.2, 1e-3): (0.85, 0.87), (0.2, 2e-3): (0.90, 0.92)}
    r = intrinsic_lr_check(rows(acc), GRID)["intrinsic_lr"]
    assert (r["products"], r["cells"], r["runs"], r["df"]) == (3, 4, 8, [1, 4])
    assert r["F"] == pytest.approx(0.0, abs=1e-9) and r["p"] == pytest.approx(1.0)
    assert r["eta2_product"] == pytest.approx(0.01 / 0.0108) and r["eta2_cell"] == pytest.approx(0.01 / 0.0108)
    assert r["verdict"] == "no difference detected between cells of equal lr*wd"


def test_intrinsic_lr_check_equal_products_that_differ():
    """Seeds at +-0.001 around cell means A 0.81, B 0.86, C 0.89, D 0.91: grand mean 0.8675;
    SS_cells = 2 (0.0575^2 + 0.0075^2 + 0.0225^2 + 0.0425^2) = 0.01135; SS_products = 2 * 0.0575^2
    + 4 * 0.0075^2 + 2 * 0.0425^2 = 0.01045; within cells 8 * 0.001^2 = 8e-6 on 4 df:
    F = 0.0009 / 2e-6 = 450 on (1, 4) df, p = 2.92e-5: B and C differ although lr * wd is equal."""
    acc = {
        (0.1, 1e-3): (0.809, 0.811),
        (0.1, 2e-3): (0.859, 0.861),
        (0.2, 1e-3): (0.889, 0.891),
        (0.2, 2e-3): (0.909, 0.911),
    }
    r = intrinsic_lr_check(rows(acc), GRID)["intrinsic_lr"]
    assert r["F"] == pytest.approx(450.0, rel=1e-6) and r["p"] == pytest.approx(2.9196e-5, rel=1e-3)
    assert r["verdict"] == "cells of equal lr*wd differ"
    assert r["eta2_product"] == pytest.approx(0.01045 / 0.011358, rel=1e-6)


def test_intrinsic_lr_check_needs_lr_and_a_weight_decay():
    acc = {(0.1, 1e-3): (0.80, 0.82), (0.2, 2e-3): (0.90, 0.92)}
    assert intrinsic_lr_check(rows(acc), {"lr": [0.1, 0.2]}) == {}
    assert intrinsic_lr_check(rows(acc)[:2], GRID) == {}  # fewer than three finished runs


# ---------------------------------------------------------------- the engine


def test_retry_policy_retries_only_what_can_pass():
    assert retryable(RuntimeError("CUDA error: an illegal memory access")) and retryable(OSError("disk"))
    for e in (ConfigError("x"), DivergenceError("nan"), DataError("bad"), BnwdError("x"), KeyError("k"), TypeError()):
        assert not retryable(e), e


@pytest.mark.parametrize("error, attempts", [(RuntimeError("flaky"), 2), (DivergenceError("loss is nan"), 1)])
def test_a_failed_run_is_retried_only_when_it_can_pass(error, attempts, tmp_path):
    """The serial path: a transient error gets a second attempt, a deterministic one none; both
    end reported, with RUN/failed.txt."""
    spec = RunSpec("r", "smoke", {}, 0)
    calls = []

    def fail(spec, out, data, force):
        calls.append(spec.name)
        raise error

    res = run_local([spec], tmp_path, None, 1, False, fn=fail)
    assert len(calls) == attempts and res["r"]["status"] == "failed"
    assert type(error).__name__ in (tmp_path / "runs" / "r" / "failed.txt").read_text()


def test_levels_follow_after():
    a, b, c = RunSpec("a", "smoke", {}, 0), RunSpec("b", "smoke", {}, 0, after="a"), RunSpec("c", "smoke", {}, 0)
    d = RunSpec("d", "smoke", {}, 0, after="b")
    assert [[s.name for s in lv] for lv in levels([d, b, a, c])] == [["a", "c"], ["b"], ["d"]]
    assert [[s.name for s in lv] for lv in levels([RunSpec("x", "smoke", {}, 0, after="elsewhere")])] == [["x"]]
    with pytest.raises(ConfigError, match="wait on each other"):
        levels([RunSpec("p", "smoke", {}, 0, after="q"), RunSpec("q", "smoke", {}, 0, after="p")])


# ---------------------------------------------------------------- claims: no data, or a bug


def test_claims_say_no_data_for_missing_views_and_raise_on_a_bug(tmp_path, monkeypatch):
    from test_plots_report import GOOD, make_runs

    prof = {v: {k: x for k, x in p.items() if k not in ("lag", "b98", "glag")} for v, p in GOOD.items()}
    runs = make_runs(tmp_path / "a", prof, variants=["baseline", "lr_scaled"])  # no BN views evaluated
    out = {c["id"]: c for c in claims.evaluate(runs)}
    assert out["baseline_lag_cost"]["verdict"] == "no data"
    assert "no common evaluation" in out["baseline_lag_cost"]["reason"]

    def bug(ctx):
        raise KeyError("test_acc_precise")

    c = claims.CLAIMS[1]
    monkeypatch.setattr(claims, "CLAIMS", (claims.Claim(c.id, c.text, c.needs, c.rule, c.kind, bug),))
    with pytest.raises(KeyError):
        claims.evaluate(runs)


def test_a_seed_count_at_the_cap_reads_as_at_least():
    """seeds_needed stops at SEEDS_CAP, which means "at least that many", never "about"."""
    assert seeds_text(84, 29, SEEDS_CAP) == f"~84 seeds (29-{SEEDS_CAP}+)"
    assert seeds_text(SEEDS_CAP, SEEDS_CAP, SEEDS_CAP) == f"{SEEDS_CAP}+ seeds"
    assert seeds_text(3) == "~3 seeds"
