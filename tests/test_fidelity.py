"""Fidelity to the article: its lr factor, the reference factor, Adam, the logged factor and eff lr,
the clock/regularizer split, the bn098 view, seeds, and the dimensionless numbers."""

import json
import math

import numpy as np
import pytest
import torch

from bnwd.analysis.article import ARTICLE_CONFIG, dimensionless
from bnwd.batch.engine import usable_cores
from bnwd.batch.reproduce import reproduce, resolve_seeds
from bnwd.errors import BnwdError, ConfigError
from bnwd.nn.bnstats import ShadowBNStats
from bnwd.nn.optim import article_epoch, article_piecewise
from bnwd.run import trainer as T
from bnwd.run.config import PRESET_VALUES, bn098_momentum, make_config, resolved

SMALL = {"epochs": 2.0, "lr_milestones": [1.0, 1.5], "train_subset": 0, "test_subset": 0}


def cfg(**kw):
    return make_config("smoke", {**SMALL, **kw})


def tf_factor(epoch: float, sqsum: float, initial: float) -> float:
    """The article's TensorFlow code, transcribed: the multiplier on the conv gradients."""
    e = epoch
    f = 1.0 - 0.05 * e if e < 10 else 0.5 - 0.0025 * (e - 10) if e < 50 else 0.4 + 0.006 * (e - 50)
    if e >= 100:
        f = 0.7 + 0.001 * (e - 100)
    return f * sqsum / initial


@pytest.mark.parametrize("e", [0.0, 3.0, 9.9, 10.0, 30.0, 50.0, 75.0, 100.0, 140.0])
def test_article_factor_matches_tf_code(e):
    """S(t) / S_ref(t) with S_ref = S(0) / p(epoch) is the TF code's p(epoch) * S(t) / S(0), not its inverse."""
    s0, s = 800.0, 1700.0
    ref = s0 / article_piecewise(article_epoch(e, [50, 100], 150))
    assert s / ref == pytest.approx(tf_factor(e, s, s0), rel=1e-12)


def test_article_stage_mapping():
    """Run stage k maps linearly onto the article's stage k: (2.3, 4.6, 6.9) -> (50, 100, 150)."""
    ms, E = [2.3, 4.6], 6.9
    for e, want in [(0, 0), (1.15, 25), (2.3, 50), (3.45, 75), (4.6, 100), (5.75, 125), (6.9, 150)]:
        assert article_epoch(e, ms, E) == pytest.approx(want, abs=1e-9)
    # unequal stages: (0,1) (1,3) (3,4)
    assert article_epoch(2.0, [1.0, 3.0], 4.0) == pytest.approx(75.0)
    with pytest.raises(ConfigError, match="two lr_milestones"):
        make_config("smoke", {"variant": "lr_scaled", "lr_scaling": "article", "lr_milestones": [1.0]})


class Capture:
    """Per step: raw conv gradients (tensor hooks at backward) and the gradients and lrs the
    optimizer is handed (its step pre-hook), plus the conv weights before the step."""

    def __init__(self, trainer):
        self.t, self.rows = trainer, []
        conv = trainer.conv["params"]
        self.raw = [None] * len(conv)
        for i, p in enumerate(conv):
            p.register_hook(lambda g, i=i: self.raw.__setitem__(i, g.detach().clone()))
        trainer.opt.register_step_pre_hook(self.pre)

    def pre(self, opt, args, kwargs):
        conv = self.t.conv
        self.rows.append(
            {
                "ratio": [float(p.grad.norm() / r.norm()) for p, r in zip(conv["params"], self.raw)],
                "sq": [float(p.detach().double().pow(2).sum()) for p in conv["params"]],
                "lr": float(conv["lr"]),
                "other_lr": float(next(g for g in opt.param_groups if g["name"] != "conv")["lr"]),
            }
        )


def run_steps(trainer, n):
    for s in range(n):
        trainer.set_lr(s)
        trainer.train_step(s)
        trainer.step = s + 1


@pytest.fixture(scope="module")
def baseline_ref(tmp_path_factory, fake_data):
    out = tmp_path_factory.mktemp("ref") / "baseline"
    T.train(cfg(), out, dataset=fake_data, progress=False)
    return out


@pytest.mark.parametrize("mode", ["article", "global", "layer"])
def test_applied_factor_is_s_over_s_ref(tmp_path, fake_data, baseline_ref, mode):
    """The conv gradients the optimizer sees are the raw ones times S(t) / S_ref(t): the article's
    p(mapped epoch) S / S(0); or S / interp(S_ref) of the reference run, summed or per layer."""
    over = {"variant": "lr_scaled"}
    if mode == "article":
        over["lr_scaling"] = "article"
    else:
        over.update(reference=str(baseline_ref), reference_mode=mode)
    c = cfg(**over)
    tr = T.Trainer(c, tmp_path, dataset=fake_data, progress=False)
    cap = Capture(tr)
    run_steps(tr, 10)
    rows = [json.loads(x) for x in (baseline_ref / "metrics.jsonl").read_text().splitlines()]
    for step, r in enumerate(cap.rows):
        e = step / tr.spe
        if mode == "article":
            want = [tf_factor(article_epoch(e, c.lr_milestones, c.epochs), sum(r["sq"]), tr.init_conv_sqsum)] * len(
                r["sq"]
            )
        elif mode == "global":
            ep = [0.0] + [x["epoch"] for x in rows]
            s_ref = np.interp(e, ep, [json.loads((baseline_ref / "summary.json").read_text())["initial_conv_sqsum"]]
                              + [x["conv_sqsum"] for x in rows])  # fmt: skip
            want = [sum(r["sq"]) / s_ref] * len(r["sq"])
        else:
            init = json.loads((baseline_ref / "summary.json").read_text())["initial_layer_sqnorm"]
            ep = [0.0] + [x["epoch"] for x in rows]
            want = [
                sq / np.interp(e, ep, [init[n]] + [x[f"sqnorm/conv/{n}"] for x in rows])
                for sq, n in zip(r["sq"], tr.conv["param_names"])
            ]
        assert r["ratio"] == pytest.approx(want, rel=1e-4)
    tr.monitor.remove()


def test_logged_factor_and_eff_lr_are_what_was_applied(tmp_path, fake_data, baseline_ref):
    """At a sample point, `lr_factor` is the mean factor the optimizer applied at the last step, and
    `eff_lr/conv/<layer>` = lr * factor / ||w||^2 (the gradient factor is part of the effective lr)."""
    c = cfg(variant="lr_scaled", reference=str(baseline_ref), reference_mode="layer")
    tr = T.Trainer(c, tmp_path, dataset=fake_data, progress=False)
    cap = Capture(tr)
    run_steps(tr, tr.sample_every)
    row = tr.sample_point(tr.step, cap.rows[-1]["lr"], False, tmp_path / "ckpt")
    last = cap.rows[-1]["ratio"]
    assert row["lr_factor"] == pytest.approx(float(np.mean(last)), rel=1e-4)
    for name, f in zip(tr.conv["param_names"], last):
        sq = row[f"sqnorm/conv/{name}"]
        assert row[f"eff_lr/conv/{name}"] == pytest.approx(row["lr"] * f / sq, rel=1e-4)
    tr.monitor.remove()


@pytest.mark.timeout(600)
def test_lr_scaled_reference_factor_is_s_over_s_ref_in_every_row(tmp_path, fake_data, baseline_ref):
    """`train` with lr_scaling=reference (global) logs in every row n (after step n) the factor of its
    last step, f = S_(n-1) / S_ref((n-1) / spe): S_(n-1) the run's sum of squared conv weights before
    that step, S_ref the baseline's, interpolated in epochs (its initial sum at epoch 0). The row has
    S_n, after the step; per conv layer ||wa|| <= ||wb|| + ||s|| = ||wb|| (1 + r) and ||wa|| >=
    ||wb|| (1 - r), with r = ||s|| / ||wb|| that layer's last relative step (rel_step_last), so with
    r the largest of them S_n / (1 + r)^2 <= f S_ref <= S_n / (1 - r)^2 (float32 slack 1e-5). A
    folder that is not a finished baseline is refused."""
    T.train(cfg(variant="lr_scaled", reference=str(baseline_ref)), tmp_path / "ls", dataset=fake_data, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "ls" / "metrics.jsonl").read_text().splitlines()]
    base = [json.loads(x) for x in (baseline_ref / "metrics.jsonl").read_text().splitlines()]
    s0 = json.loads((baseline_ref / "summary.json").read_text())["initial_conv_sqsum"]
    spe = json.loads((tmp_path / "ls" / "config.json").read_text())["steps_per_epoch"]
    assert rows and all("lr_factor" in r for r in rows)
    for r in rows:
        s_ref = np.interp(
            (r["step"] - 1) / spe, [0.0] + [b["epoch"] for b in base], [s0] + [b["conv_sqsum"] for b in base]
        )
        rel = max(v for k, v in r.items() if k.startswith("rel_step_last/conv/"))
        lo, hi = r["conv_sqsum"] / (1 + rel) ** 2, r["conv_sqsum"] / (1 - rel) ** 2
        assert lo * (1 - 1e-5) <= r["lr_factor"] * s_ref <= hi * (1 + 1e-5), (
            r["step"],
            r["lr_factor"],
            lo / s_ref,
            hi / s_ref,
        )
    assert max(abs(r["lr_factor"] - 1) for r in rows) > 1e-3  # the factor moved: it is not a constant 1
    with pytest.raises(ConfigError, match="not a finished baseline"):
        T.train(cfg(variant="lr_scaled", reference=str(tmp_path)), tmp_path / "x", dataset=fake_data, progress=False)


def test_adamw_lr_scaled_scales_the_conv_lr_by_sqrt_factor(tmp_path, fake_data):
    """With AdamW the factor sqrt(S / S_ref) multiplies the conv group's lr (a gradient factor would
    cancel in m / sqrt(v)); gradients are left alone."""
    kw = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05, "conv_weight_decay": 0.05}
    base = tmp_path / "b"
    T.train(cfg(**kw), base, dataset=fake_data, progress=False)
    # a conv init 2x smaller than the reference's: S / S_ref ~ 1/4, so the lr factor is ~ 1/2
    c = cfg(**kw, variant="lr_scaled", reference=str(base), conv_init_scale=0.5)
    tr = T.Trainer(c, tmp_path / "s", dataset=fake_data, progress=False)
    cap = Capture(tr)
    run_steps(tr, 8)
    ref = T.ReferenceNorms("reference", c, tr.init_conv_sqsum, tr.conv["param_names"])
    for step, r in enumerate(cap.rows):
        assert r["ratio"] == pytest.approx([1.0] * len(r["ratio"]), rel=1e-6)
        want = math.sqrt(sum(r["sq"]) / ref.at(step / tr.spe))
        assert r["lr"] / r["other_lr"] == pytest.approx(want, rel=1e-4)
    assert all(abs(r["lr"] / r["other_lr"] - 0.5) < 0.05 for r in cap.rows)
    tr.monitor.remove()


def test_adam_per_layer_reference_is_refused():
    with pytest.raises(ConfigError, match="reference_mode=global"):
        cfg(optimizer="adamw", variant="lr_scaled", reference="x", reference_mode="layer")


def test_conv_l2_is_a_clock_and_bn_dense_l2_a_regularizer(tmp_path, fake_data):
    """conv_weight_decay lands on the conv kernels of the baseline only; weight_decay on BN and the
    dense layer of every variant."""
    for variant, conv_wd in (("baseline", 3e-3), ("no_conv_l2", 0.0), ("lr_scaled", 0.0)):
        over = {"variant": variant, "conv_weight_decay": 3e-3, "weight_decay": 1e-4, "lr_scaling": "article"}
        tr = T.Trainer(cfg(**over), tmp_path / variant, dataset=fake_data, progress=False)
        wd = {g["name"]: g["weight_decay"] for g in tr.opt.param_groups}
        assert wd == {"conv": conv_wd, "bn": 1e-4, "head": 1e-4}
        tr.monitor.remove()


def test_bn098_view_equals_a_separate_bn098_run(tmp_path, fake_data):
    """One lr_scaled training with a second set of BN statistics at the 0.98-equivalent momentum gives
    the same metrics as training lr_scaled_bn098 separately with the same seed."""
    from bnwd.analysis.runs import write_bn098_view

    c = {"lr_scaling": "article", "eval_every": 0.25}
    T.train(cfg(variant="lr_scaled", **c), tmp_path / "s", dataset=fake_data, progress=False)
    view = write_bn098_view(tmp_path / "s", tmp_path / "v")
    T.train(cfg(variant="lr_scaled_bn098", **c), tmp_path / "sep", dataset=fake_data, progress=False)
    a = [json.loads(x) for x in (view / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "sep/metrics.jsonl").read_text().splitlines()]
    assert len(a) == len(b) and sum("test_acc" in r for r in a) >= 4
    assert not any(k.endswith(("_comp", "_precise", "_bn098")) for r in a for k in r)  # lr_scaled's other views
    for ra, rb in zip(a, b):
        assert ra["train_loss"] == rb["train_loss"] and ra["conv_sqsum"] == rb["conv_sqsum"]
        if "test_acc" in rb:
            assert ra["test_loss"] == pytest.approx(rb["test_loss"], rel=1e-4)
            assert abs(ra["test_acc"] - rb["test_acc"]) * 100 <= 1 + 1e-9  # at most one of the 100 test images
    s = [json.loads(x) for x in (tmp_path / "s/metrics.jsonl").read_text().splitlines()]
    assert any(abs(r["test_loss"] - r["test_loss_bn098"]) > 1e-4 for r in s if "test_loss" in r)
    vc = json.loads((view / "config.json").read_text())
    assert vc["variant"] == "lr_scaled_bn098" and vc["resolved"]["bn_momentum_used"] == bn098_momentum(0.05)


@pytest.mark.parametrize("m", [0.003, 0.065])
def test_shadow_bn_stats_follow_a_bn_at_the_second_momentum(m):
    """The shadow recovers each batch statistic from the BN's own update, b = (r' - (1 - m) r) / m,
    and averages it at momentum a: after 300 steps it equals the running statistics of a BN with
    momentum a fed the same batches, to 3e-5 relative even at the article's m = 0.003 (r's float32
    rounding, amplified by 1/m), in both memory layouts."""
    a = bn098_momentum(m)
    torch.manual_seed(0)
    for fmt in (torch.contiguous_format, torch.channels_last):
        bn, ref = torch.nn.BatchNorm2d(16, momentum=m), torch.nn.BatchNorm2d(16, momentum=a)
        shadow = ShadowBNStats(bn, a)
        for t in range(300):
            x = (torch.randn(32, 16, 8, 8) * (1 + t / 100) + 3).contiguous(memory_format=fmt)
            bn(x), ref(x)
        bn.eval()(x)  # eval forwards leave the shadow alone
        assert torch.allclose(shadow.mean[0], ref.running_mean.double(), rtol=3e-5, atol=0)
        assert torch.allclose(shadow.var[0], ref.running_var.double(), rtol=3e-5, atol=0)


@pytest.mark.timeout(600)
def test_reproduce_trains_three_runs_for_four(tmp_path, fake_data_dir):
    """`reproduce` writes four article runs per seed, lr_scaled_bn098 as a view of lr_scaled's training."""
    res = reproduce("smoke", data=str(fake_data_dir), out=str(tmp_path), progress=False, seed_list="3", jobs=3,
                    overrides={"train_subset": 0, "test_subset": 0})  # fmt: skip
    names = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert names == ["baseline-s3", "lr_scaled-s3", "lr_scaled_bn098-s3", "no_conv_l2-s3"]
    # jobs=3: the three trainings at once, threads split; lr_scaled reads its baseline as it trains
    cfgs = {n: json.loads((tmp_path / "runs" / n / "config.json").read_text()) for n in names}
    split = max(1, usable_cores() // 3)
    assert {n: c["threads"] for n, c in cfgs.items()} == dict.fromkeys(names, split)
    assert cfgs["lr_scaled-s3"]["reference_wait"] > 0 and cfgs["baseline-s3"]["reference_wait"] == 0
    assert not (tmp_path / "runs/lr_scaled_bn098-s3/checkpoint.pt").exists()
    claims = json.loads((tmp_path / "claims.json").read_text())
    assert {c["id"] for c in claims} >= {"no_conv_l2_accuracy_cost", "bn098_removes_deficit"}
    decided = [c for c in claims if "estimate" in c]  # a smoke run's verdicts are not evidence
    assert len(decided) >= 10 and all(c["verdict"] == "not evidence" for c in decided)
    assert res["report"].endswith("report.md")


def test_seeds_as_count_or_list():
    assert resolve_seeds(3) == [0, 1, 2] and resolve_seeds(None) == [0]
    assert resolve_seeds(None, "10,11,12") == [10, 11, 12] and resolve_seeds(None, "7") == [7]
    for bad in ("a,b", "-1", ","):
        with pytest.raises(ConfigError):
            resolve_seeds(None, bad)
    with pytest.raises(ConfigError, match="not both"):
        resolve_seeds(2, "1")
    with pytest.raises(ConfigError):
        resolve_seeds(0)


def test_article_dimensionless_numbers():
    """docs/theory.md: relaxation 7.8 / 0.78 / 0.078 per stage, BN window 0.133 (decay 0.997) and 0.02 (0.98)."""
    d = dimensionless(ARTICLE_CONFIG)
    assert d["stage_steps"] == [19500] * 3
    assert d["relaxation"] == pytest.approx([7.8, 0.78, 0.078])
    assert d["bn_window"] == pytest.approx(0.4 / 3, rel=1e-9) and d["bn_window_098"] == pytest.approx(0.02)


def test_cpu_preset_keeps_the_article_numbers():
    """The cpu preset (all 50,000 images: 390 steps per epoch) keeps relaxation times and BN windows
    within 1%, and the regularizer L2 unchanged."""
    c = make_config("cpu")
    assert c.train_subset == 0 and c.test_subset == 0 and c.weight_decay == 2e-4
    d = dimensionless({**c.to_dict(), "steps_per_epoch": 390})
    a = dimensionless(ARTICLE_CONFIG)
    assert d["relaxation"] == pytest.approx(a["relaxation"], rel=0.01)
    assert d["bn_window"] == pytest.approx(a["bn_window"], rel=0.01)
    assert d["bn_window_098"] == pytest.approx(a["bn_window_098"], rel=0.01)
    assert (
        resolved(c)["bn098_view"] is False
        and resolved(make_config("cpu", {"variant": "lr_scaled", "reference": "r"}))["bn098_view"]
    )
    assert PRESET_VALUES["blog"] == {}


def test_blog_preset_is_the_article():
    c = make_config("blog")
    assert (c.conv_weight_decay, c.weight_decay, c.bn_momentum, c.lr_scaling) == (2e-4, 2e-4, 0.003, "article")
    assert (c.epochs, c.lr_milestones, c.width, c.conv_init_scale) == (150.0, [50.0, 100.0], 16, 1.0)


# ---------------------------------------------------------------- lr_scaled beside its baseline


def fake_baseline(d, rows, finished=False):
    """A baseline run directory as `train` writes it: S(0) in config.json from the start."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps({"variant": "baseline", "initial_conv_sqsum": 10.0}))
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if finished:
        (d / "summary.json").write_text(json.dumps({"initial_conv_sqsum": 10.0, "finished": True}))


ROWS = [{"step": 4 * k, "epoch": k / 4, "conv_sqsum": 10.0 + k * k} for k in range(1, 9)]


@pytest.mark.timeout(60)
def test_reference_waits_for_the_rows_of_a_baseline_still_training(tmp_path):
    """S_ref(e) between sample points k and k+1 needs row k+1: `at` blocks until the training
    baseline appends it, then equals the interpolation over the finished run's rows."""
    import threading
    import time

    run = tmp_path / "baseline-s0"
    fake_baseline(run, ROWS[:3])
    fake_baseline(tmp_path / "done", ROWS, finished=True)
    follow = T.ReferenceNorms("reference", cfg(variant="lr_scaled", reference=str(run), reference_wait=30), 0.0, [])
    done = T.ReferenceNorms("reference", cfg(variant="lr_scaled", reference=str(tmp_path / "done")), 0.0, [])
    assert follow.at(0.6) == done.at(0.6) and not follow.finished

    def finish_later():
        for k in range(3, len(ROWS)):
            time.sleep(0.1)
            with open(run / "metrics.jsonl", "a") as f:
                f.write(json.dumps(ROWS[k]) + "\n")
        (run / "summary.json").write_text(json.dumps({"initial_conv_sqsum": 10.0, "finished": True}))

    writer = threading.Thread(target=finish_later)
    t0 = time.monotonic()
    writer.start()
    got = [follow.at(e) for e in (0.0, 0.8, 1.3, 1.9, 2.0)]  # 0.8 needs row 4, written ~0.1 s later
    writer.join()
    assert time.monotonic() - t0 > 0.5  # it waited for the last rows
    assert got == [done.at(e) for e in (0.0, 0.8, 1.3, 1.9, 2.0)] and follow.finished


@pytest.mark.timeout(60)
def test_reference_that_stops_writing_is_given_up_on(tmp_path):
    """An unfinished reference that writes nothing for reference_wait s ends the wait with its name."""
    import time

    run = tmp_path / "baseline-s0"
    fake_baseline(run, ROWS[:2])
    ref = T.ReferenceNorms("reference", cfg(variant="lr_scaled", reference=str(run), reference_wait=0.5), 0.0, [])
    t0 = time.monotonic()
    with pytest.raises(BnwdError, match=r"baseline-s0 is not finished and wrote nothing for 0.5 s"):
        ref.at(1.0)
    assert time.monotonic() - t0 < 5


@pytest.mark.timeout(60)
def test_reference_marked_failed_ends_the_wait_at_once(tmp_path):
    """`failed.txt` (written by the pool that gave up on the baseline) stops a reader with its reason."""
    run = tmp_path / "baseline-s0"
    fake_baseline(run, [])
    (run / "failed.txt").write_text("loss became NaN\n")
    with pytest.raises(BnwdError, match="failed \\(loss became NaN\\)"):
        T.ReferenceNorms("reference", cfg(variant="lr_scaled", reference=str(run), reference_wait=3600), 0.0, [])


def test_unfinished_reference_without_wait_is_refused(tmp_path):
    fake_baseline(tmp_path / "b", ROWS[:2])
    with pytest.raises(ConfigError, match="not a finished baseline run"):
        T.ReferenceNorms("reference", cfg(variant="lr_scaled", reference=str(tmp_path / "b")), 0.0, [])


@pytest.mark.timeout(600)
def test_lr_scaled_beside_its_baseline_equals_lr_scaled_after_it(tmp_path, fake_data_dir):
    """`reproduce --jobs 2` trains baseline and lr_scaled at once, lr_scaled reading the baseline's
    rows as they are written; with the same threads its metrics equal a serial reproduce's
    (lr_scaled after the finished baseline), line for line."""
    kw = dict(data=str(fake_data_dir), progress=False, seed_list="0", variants=["baseline", "lr_scaled"])
    ov = {"train_subset": 0, "test_subset": 0, "threads": 1, "bn098_view": False}
    reproduce("smoke", out=str(tmp_path / "serial"), overrides=ov, jobs=1, **kw)
    reproduce("smoke", out=str(tmp_path / "par"), overrides=ov, jobs=2, **kw)
    par = json.loads((tmp_path / "par/runs/lr_scaled-s0/config.json").read_text())
    assert par["reference_wait"] > 0 and par["reference"].endswith("par/runs/baseline-s0")
    for run in ("baseline-s0", "lr_scaled-s0"):
        a = (tmp_path / "serial/runs" / run / "metrics.jsonl").read_text()
        assert a and a == (tmp_path / "par/runs" / run / "metrics.jsonl").read_text(), run


@pytest.mark.timeout(120)
def test_a_stop_while_waiting_for_the_reference_checkpoints_a_whole_step(tmp_path, fake_data):
    """SIGINT/SIGTERM while lr_scaled waits for its baseline's next row ends the run at the step it
    waits before (no half step: the wait comes before the forward pass), with a checkpoint there."""
    import threading

    from bnwd.run.rundir import load_checkpoint

    run = tmp_path / "baseline-s0"
    fake_baseline(run, ROWS[:2])  # rows up to epoch 0.5
    c = cfg(variant="lr_scaled", reference=str(run), reference_wait=60, bn098_view=False)
    (tmp_path / "ls").mkdir()
    tr = T.Trainer(c, tmp_path / "ls", dataset=fake_data, progress=False)
    first_missing = next(s for s in range(tr.total_steps) if s / tr.spe > 0.5)
    wait_for = tr.reference.wait_for

    def signal_half_a_second_into_the_wait(epoch, stopped=None):
        # the baseline never writes the row this epoch needs: the run waits here, however slowly
        # a loaded machine got here (a fixed timer from the start could stop it before)
        if epoch > 0.5 and stopped is not None:
            threading.Timer(0.5, lambda: setattr(tr, "_stop_signal", "SIGTERM")).start()
        return wait_for(epoch, stopped)

    tr.reference.wait_for = signal_half_a_second_into_the_wait
    with pytest.raises(T.Interrupted, match=f"SIGTERM at step {first_missing}/"):
        tr.run()
    assert load_checkpoint(tmp_path / "ls" / "checkpoint.pt")["step"] == first_missing
