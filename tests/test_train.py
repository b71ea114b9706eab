"""Training loop: run directory contents, determinism, resume, faults (issue 2 and 5)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from fakes import crash_then_resume, metrics_rows

from bnwd.cli import main
from bnwd.errors import BnwdError, CheckpointError, ConfigError, DivergenceError
from bnwd.run import trainer as T
from bnwd.run.config import make_config

SMALL = {"epochs": 2.0, "lr_milestones": [1.0, 1.5], "train_subset": 0, "test_subset": 0}


def cfg(**kw):
    return make_config("smoke", {**SMALL, **kw})


metrics = metrics_rows


def test_run_dir_complete(tmp_path, fake_data):
    """A smoke run writes config.json (resolved), metrics.jsonl (required keys), summary.json (with
    the process's peak RSS) and a checkpoint."""
    out = tmp_path / "run"
    s = T.train(cfg(), out, dataset=fake_data, progress=False)
    conf = json.loads((out / "config.json").read_text())
    assert conf["variant"] == "baseline" and conf["resolved"]["conv_weight_decay"] == conf["weight_decay"]
    assert conf["steps_per_epoch"] == 400 // 64
    rows = metrics(out)
    for k in ("step", "epoch", "lr", "train_loss", "train_acc", "conv_sqsum", "rel_step_conv", "rel_step_conv_ema"):
        assert all(k in r for r in rows), k
    assert [r["step"] for r in rows] == sorted({r["step"] for r in rows})
    assert any("test_acc" in r for r in rows) and "test_acc" in rows[-1]
    assert s["finished"] and (out / "checkpoint.pt").exists()
    assert s["peak_rss_mb"] > 50  # this process holds torch at least
    assert rows[-1]["lr"] == pytest.approx(0.001)


def test_same_seed_same_metrics(tmp_path, fake_data):
    """CPU training is deterministic: the same seed gives identical metrics; another seed does not."""
    a, b, c = (tmp_path / n for n in "abc")
    T.train(cfg(), a, dataset=fake_data, progress=False)
    T.train(cfg(), b, dataset=fake_data, progress=False)
    T.train(cfg(seed=1), c, dataset=fake_data, progress=False)
    assert metrics(a) == metrics(b)
    assert metrics(a) != metrics(c)


def test_no_conv_l2_grows_conv_norm(tmp_path, fake_data):
    """Without conv L2 the conv weights only grow (steps are orthogonal to w); with it they shrink here."""
    T.train(cfg(variant="no_conv_l2", weight_decay=0.05), tmp_path / "n", dataset=fake_data, progress=False)
    T.train(cfg(conv_weight_decay=0.05, weight_decay=0.05), tmp_path / "b", dataset=fake_data, progress=False)
    n, b = metrics(tmp_path / "n"), metrics(tmp_path / "b")
    assert n[-1]["conv_sqsum"] > n[0]["conv_sqsum"] > b[0]["conv_sqsum"] > b[-1]["conv_sqsum"]


@pytest.mark.timeout(300)
def test_crash_then_resume_equals_uninterrupted(tmp_path, fake_data):
    """An exception mid-run (after metrics lines past the last checkpoint were written) then --resume
    gives exactly the metrics of an uninterrupted run, each sample point once."""
    ref = tmp_path / "ref"
    T.train(cfg(checkpoint_every=0.5), ref, dataset=fake_data, progress=False)
    assert crash_then_resume(cfg(checkpoint_every=0.5), tmp_path / "crash", 9, dataset=fake_data) == 8
    assert metrics(tmp_path / "crash") == metrics(ref)


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "over",
    [
        # lr_exact: the transform's state (s_t, s_{t-1}, velocity, lr_{t-1}, step) lives in the
        # optimizer's param groups, the BN eps_t = eps / s_t^2 follows on load, and the running
        # statistics rescaling resumes with them
        {"variant": "lr_exact"},
        # Adam: first and second moments and the bias-correction step count
        {"optimizer": "adam", "lr": 1e-3},
    ],
    ids=["lr_exact", "adam"],
)
def test_resume_is_exact(tmp_path, fake_data, over):
    """A run stopped by a crash at step 9 and resumed from its step-8 checkpoint writes the same
    metrics.jsonl, byte for byte, as the uninterrupted run: the checkpoint holds every piece of
    state the steps after it read (lr_scaled with its reference and bn098 shadow: test_bnstats)."""
    c = cfg(checkpoint_every=0.5, **over)
    T.train(c, tmp_path / "ref", dataset=fake_data, progress=False)
    assert crash_then_resume(c, tmp_path / "crash", 9, dataset=fake_data) == 8
    assert (tmp_path / "crash" / "metrics.jsonl").read_bytes() == (tmp_path / "ref" / "metrics.jsonl").read_bytes()
    rows = metrics(tmp_path / "ref")
    if over.get("variant") == "lr_exact":  # the transform acted: s_t < 1 and the factor 1 / s_t^2 > 1
        assert rows[-1]["decay_scale"] < 1 < rows[-1]["lr_factor"]


def test_adamw_decays_conv_weights_decoupled(tmp_path, fake_data):
    """optimizer=adamw: each step of a conv kernel is w' = (1 - lr lam) w - lr m^ / (sqrt(v^) + eps)
    with lam = conv_weight_decay applied to w itself (decoupled), not through the moments: with
    m^, v^ read back from the optimizer, w' + lr u = (1 - lr lam) w. Adam's coupled L2 puts lam w
    into the gradient instead, and the same identity fails there."""

    def residual(optimizer):
        t = T.Trainer(
            cfg(optimizer=optimizer, lr=1e-2, conv_weight_decay=0.05), tmp_path / optimizer, dataset=fake_data
        )
        conv, worst = t.conv, 0.0
        (b1, b2), eps, lam = conv["betas"], conv["eps"], conv["weight_decay"]
        assert lam == 0.05
        for step in range(3):
            lr = t.set_lr(step)
            before = [p.detach().clone() for p in conv["params"]]
            t.train_step(step)
            for p, w in zip(conv["params"], before):
                st = t.opt.state[p]
                k = float(st["step"])
                u = (st["exp_avg"] / (1 - b1**k)) / ((st["exp_avg_sq"] / (1 - b2**k)).sqrt() + eps)
                err = (p.detach() + lr * u - (1 - lr * lam) * w).abs().max() / (lr * lam * w.abs().max())
                worst = max(worst, float(err))
        t.monitor.remove()
        return worst  # in units of the decay term's size

    assert residual("adamw") < 1e-3
    assert residual("adam") > 0.5


def _cli(*args, env_extra=None):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return [sys.executable, "-m", "bnwd", *args], env


def test_sigkill_anywhere_then_resume(tmp_path, fake_data_dir, fake_data):
    """SIGKILL at an arbitrary point, then --resume: same metrics as an uninterrupted run, no duplicate,
    missing or half-written line."""
    over = ["epochs=12", "lr_milestones=6,9", "checkpoint_every=0.25", "train_subset=0", "test_subset=0"]
    ref = tmp_path / "ref"
    T.train(
        make_config(
            "smoke",
            {"epochs": 12, "lr_milestones": [6, 9], "checkpoint_every": 0.25, "train_subset": 0, "test_subset": 0},
        ),
        ref,
        dataset=fake_data,
        progress=False,
    )
    out = tmp_path / "killed"
    cmd, env = _cli(
        "train", "--preset", "smoke", "--data", str(fake_data_dir), "--out", str(out), "--no-progress", *over
    )
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and p.poll() is None:
        m = out / "metrics.jsonl"
        if m.exists() and len(m.read_text().splitlines()) >= 10:
            break
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (out / "summary.json").exists(), "run finished before it could be killed"
    r = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-500:]
    assert metrics(out) == metrics(ref)


def test_sigterm_checkpoints_and_says_how_to_resume(tmp_path, fake_data_dir):
    """SIGTERM stops at the next step boundary, writes a checkpoint and exits with a one-line hint."""
    out = tmp_path / "term"
    cmd, env = _cli(
        "train",
        "--preset",
        "smoke",
        "--data",
        str(fake_data_dir),
        "--out",
        str(out),
        "--no-progress",
        "epochs=40",
        "train_subset=0",
        "test_subset=0",
        "checkpoint_every=10",
    )
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        m = out / "metrics.jsonl"
        if m.exists() and len(m.read_text().splitlines()) >= 3:
            break
        time.sleep(0.01)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130
    assert "--resume" in err and "Traceback" not in err
    st = torch.load(out / "checkpoint.pt", weights_only=True)
    assert 0 < st["step"] < 40 * 6


def test_never_clobber(tmp_path, fake_data):
    """Another config in --out is refused (naming the difference) unless --force; the same config
    without --resume says to use --resume; --resume on a finished run leaves it untouched."""
    out = tmp_path / "run"
    T.train(cfg(), out, dataset=fake_data, progress=False)
    with pytest.raises(ConfigError, match="lr: 0.1 -> 0.05"):
        T.train(cfg(lr=0.05), out, dataset=fake_data, progress=False)
    with pytest.raises(ConfigError, match="--resume"):
        T.train(cfg(), out, dataset=fake_data, progress=False)
    before = (out / "metrics.jsonl").read_bytes(), (out / "checkpoint.pt").stat().st_mtime_ns
    T.train(cfg(), out, resume=True, dataset=fake_data, progress=False)
    assert before == ((out / "metrics.jsonl").read_bytes(), (out / "checkpoint.pt").stat().st_mtime_ns)
    T.train(cfg(lr=0.05), out, force=True, dataset=fake_data, progress=False)
    assert json.loads((out / "config.json").read_text())["lr"] == 0.05


def test_corrupt_checkpoint_refused(tmp_path, fake_data):
    """A truncated checkpoint is refused with a clear CheckpointError, not a traceback."""
    out = tmp_path / "run"
    T.train(cfg(), out, dataset=fake_data, progress=False)
    (out / "summary.json").unlink()
    data = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        T.train(cfg(), out, resume=True, dataset=fake_data, progress=False)


def test_checkpoint_from_other_config_refused(tmp_path, fake_data):
    """A checkpoint written by another config (copied into this run dir) is refused."""
    a, b = tmp_path / "a", tmp_path / "b"
    T.train(cfg(lr=0.05), a, dataset=fake_data, progress=False)
    T.train(cfg(), b, dataset=fake_data, progress=False)
    (b / "summary.json").unlink()
    (b / "checkpoint.pt").write_bytes((a / "checkpoint.pt").read_bytes())
    with pytest.raises(CheckpointError, match="another config"):
        T.train(cfg(), b, resume=True, dataset=fake_data, progress=False)


@pytest.mark.timeout(300)
def test_divergence_stops_with_step(tmp_path, fake_data, monkeypatch):
    """A NaN/inf loss stops the run at the next sample point, naming the step it first appeared at,
    before any checkpoint of the diverged weights: the last good checkpoint stays as it was.
    lr=1e30 diverges before the first checkpoint (the message says none exists yet); a NaN batch
    at step 9 (checkpoints every 4 steps) leaves the finite step-8 checkpoint and rows up to step 8."""
    with pytest.raises(DivergenceError, match=r"at step \d+ .*\(none yet\) is intact"):
        c = cfg(lr=1e30, lr_milestones=[10], epochs=4, checkpoint_every=4)  # a checkpoint at the end only
        T.train(c, tmp_path / "lr", dataset=fake_data, progress=False)
    real = T.TrainLoader.batch

    def poisoned(self, step):
        x, y = real(self, step)
        return (x * float("nan"), y) if step == 9 and self.seed == 0 else (x, y)

    monkeypatch.setattr(T.TrainLoader, "batch", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(DivergenceError, match=r"at step 9 \(epoch 1\.50\)"):
        T.train(cfg(checkpoint_every=0.5), out, dataset=fake_data, progress=False)
    st = torch.load(out / "checkpoint.pt", weights_only=True)
    assert st["step"] == 8
    assert all(torch.isfinite(v).all() for v in st["model"].values() if v.is_floating_point())
    assert [r["step"] for r in metrics(out)] == [2, 4, 6, 8]


def test_disk_full_keeps_previous_file(tmp_path, monkeypatch):
    """A failed write (disk full) raises a clear error and leaves the previous file intact."""
    f = tmp_path / "checkpoint.pt"
    T.atomic_write(f, b"old")

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(BnwdError, match="No space left"):
        T.atomic_write(f, b"new")
    assert f.read_bytes() == b"old"
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_unwritable_out_is_clear_error(tmp_path, fake_data):
    """An --out that cannot be created (a file is in the way) is a one-line error."""
    (tmp_path / "file").write_text("x")
    with pytest.raises(BnwdError, match="cannot create run directory"):
        T.train(cfg(), tmp_path / "file" / "run", dataset=fake_data, progress=False)


@pytest.mark.parametrize(
    "arg",
    [
        "batch_size=0",
        "momentum=1",
        "weight_decay=-1",
        "lr=-0.1",
        "epochs=abc",
        "bogus=1",
        "depth=21",
        "lr_milestones=x",
    ],
)
def test_bad_config_exit_2(arg, tmp_path, capsys):
    """Bad values and unknown keys: one line on stderr, exit code 2, nothing written."""
    assert main(["train", "--preset", "smoke", "--out", str(tmp_path / "r"), arg]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bnwd: ") and "\n" not in err
    assert not (tmp_path / "r").exists()


def test_bad_variant_and_preset_exit_2(tmp_path, capsys):
    assert main(["train", "--variant", "nope", "--preset", "smoke", "--out", str(tmp_path / "r")]) == 2
    assert main(["train", "--preset", "nope", "--out", str(tmp_path / "r")]) == 2
    assert "unknown preset" in capsys.readouterr().err


def test_cli_train_writes_run(tmp_path, fake_data_dir, capsys):
    """`bnwd train --preset smoke --data D --out RUN` end to end through the CLI."""
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--preset",
                "smoke",
                "--data",
                str(fake_data_dir),
                "--out",
                str(out),
                "--no-progress",
                "train_subset=0",
                "test_subset=0",
            ]
        )
        == 0
    )
    assert {p.name for p in out.iterdir()} >= {"config.json", "metrics.jsonl", "summary.json", "checkpoint.pt"}
    assert "test acc" in capsys.readouterr().out


def test_cli_corrupt_archive_one_line_error(tmp_path, capsys):
    """A truncated archive through the CLI: exit 1, one line naming the file, no traceback."""
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    rc = main(["train", "--preset", "smoke", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.startswith("bnwd: ") and "\n" not in err and "cifar-10-python.tar.gz" in err


@pytest.mark.timeout(600)
def test_compiled_step_matches_eager(tmp_path, fake_data):
    """compile=on runs the same maths as eager: over a few steps (lr_scaled, so the shadow BN
    hooks and the article factor run too) the metrics agree to float tolerance. In NCHW: eager
    channels_last BN on CPU has ~40x the rounding error of NCHW's (and of the compiled BN), so
    the two would part by 0.6% in a gradient norm after a few steps for reasons of kernels, not maths."""
    kw = dict(
        channels_last="off",
        variant="lr_scaled",
        lr_scaling="article",
        epochs=0.5,
        lr_milestones=[0.3, 0.4],
        width=8,
        sample_every=0.25,
        eval_every=0.25,
    )
    T.train(cfg(compile="off", **kw), tmp_path / "e", dataset=fake_data, progress=False)
    T.train(cfg(compile="on", **kw), tmp_path / "c", dataset=fake_data, progress=False)
    e, c = metrics(tmp_path / "e"), metrics(tmp_path / "c")
    assert [r.keys() for r in e] == [r.keys() for r in c] and "test_acc_bn098" in e[-1]
    # the Monitor's metrics (its hooks run eagerly around the compiled forward) are among those compared
    mon = {
        "conv_sqsum",
        "rel_step_conv",
        "angle_conv",
        "eff_lr_conv",
        "rel_step_ema/group/conv",
        "grad_sq_unit/group/conv",
    }
    assert mon <= e[-1].keys() and any(k.startswith("angle/conv/") for k in e[-1])
    for a, b in zip(e, c):
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=2e-3, abs=1e-6), k


def test_compile_auto_is_eager_on_cpu(tmp_path, fake_data):
    """compile=auto compiles on CUDA only (config.Config.compile): on CPU the forward is the model."""
    t = T.Trainer(cfg(), tmp_path / "r", dataset=fake_data, progress=False)
    assert not t.forward.compiled and t.forward.fn is t.model


def test_compile_auto_failure_falls_back_to_eager(tmp_path, fake_data, monkeypatch):
    """compile=auto: a forward that fails to compile (here: raises at its first call, as a compile
    error does) is replaced by the eager model with a warning, and the run equals an eager run."""
    for d in ("ref", "r"):
        (tmp_path / d).mkdir()
    t = T.Trainer(cfg(compile="off"), tmp_path / "ref", dataset=fake_data, progress=False)
    ref = t.run()
    t = T.Trainer(cfg(compile="auto"), tmp_path / "r", dataset=fake_data, progress=False)

    def broken(x):
        raise RuntimeError("inductor: simulated compile failure")

    t.forward.fn, t.forward.fallback = broken, True
    with pytest.warns(UserWarning, match="simulated compile failure"):
        s = t.run()
    assert t.forward.fn is t.model and s["final_test_acc"] == ref["final_test_acc"]
    assert metrics(tmp_path / "r") == metrics(tmp_path / "ref")
