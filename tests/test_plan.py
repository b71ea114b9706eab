"""`bnwd plan`: roles, clock speeds and the implied lr multiplier, against exact.py, theory.py,
the article's numbers and real training runs."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import tvlike
from test_exact import BATCHES, LR, MU, WD, XS, logits, net

from bnwd.analysis.article import ARTICLE_CONFIG, dimensionless
from bnwd.cli import main
from bnwd.errors import ConfigError
from bnwd.nn import theory
from bnwd.nn.exact import decay_scales
from bnwd.nn.models import resnet20
from bnwd.nn.optim import param_groups
from bnwd.nn.plan import clock_stats, implied_multiplier, lrs_from_torch, plan, plan_optimizer, schedule_lrs

pytestmark = pytest.mark.usefixtures("one_thread")
SRC = Path(__file__).resolve().parents[1] / "src"


def article_plan(**kw):
    """The article's settings on ResNet-20, with the conv kernels marked invariant (the numerical
    audit that says so is tests/test_invariance.py's; here it would only cost time)."""
    m = resnet20()
    convs = {n for n, mod in m.named_modules() if isinstance(mod, nn.Conv2d)}
    inv = {n: n.rsplit(".", 1)[0] in convs and n.endswith("weight") for n, _ in m.named_parameters()}
    return plan(m, invariant=inv, model_name="resnet20", **kw)


# --------------------------------------------------------------------------- the multiplier


def test_multiplier_is_decay_scales_closed_form():
    """m_t = 1/(s_t s_{t+1}) with s = exact.decay_scales; within a constant-lr stage s_t is the closed
    form A r1^t + B r2^t (r1, r2 the roots of x^2 - (1 + mu - lr lam) x + mu), s_0 = 1, s_1 = 1 - lr lam."""
    lrs, starts = schedule_lrs("step", 0.1, 390, 150, (50, 100), 0.1)
    assert starts == [0, 19_500, 39_000] and len(lrs) == 58_500
    m = implied_multiplier(lrs, 2e-4, "sgd", 0.9)
    s = decay_scales(lrs, 0.9, 2e-4)
    np.testing.assert_allclose(m, 1 / (s[:-1] * s[1:]), rtol=1e-15)
    a, mu = 0.1 * 2e-4, 0.9
    r1, r2 = np.roots([1, -(1 + mu - a), mu])
    A = (1 - a - r2) / (r1 - r2)
    t = np.arange(19_501)
    closed = A * r1**t + (1 - A) * r2**t
    np.testing.assert_allclose(s[:19_501], closed, rtol=1e-9)
    p = article_plan()
    np.testing.assert_array_equal(p.curves["multiplier"]["conv"], m)
    assert p.groups[0]["final_multiplier"] == pytest.approx(m[-1])
    # e^(sum of relaxation times) to leading order: 1/s_T^2 ~ exp(2 sum lr lam / (1 - mu))
    assert math.log(m[-1]) == pytest.approx(7.8 + 0.78 + 0.078, rel=0.01)
    # AdamW: 1 / prod (1 - lr lam)
    ma = implied_multiplier([0.1, 0.1, 0.01], 0.05, "adamw")
    np.testing.assert_allclose(ma, [1 / 0.995, 1 / 0.995**2, 1 / (0.995**2 * 0.9995)], rtol=1e-14)
    with pytest.raises(ConfigError, match="too large"):
        implied_multiplier([10.0] * 5, 1.0, "sgd", 0.9)


def _run(model, opt, lrs_for, steps):
    """Train `steps` steps on test_exact's batches, setting each group's lr from `lrs_for(group, t)`;
    train-mode logits of each step's batch (before the step)."""
    rec = []
    for t in range(steps):
        for g in opt.param_groups:
            g["lr"] = lrs_for(g, t)
        x, y = BATCHES[t % 4]
        opt.zero_grad()
        out = model(x)
        nn.functional.cross_entropy(out, y).backward()
        rec.append(out.detach().clone())
        opt.step()
    return torch.stack(rec)


def test_multiplier_matches_training_without_decay():
    """A real run with L2 on every group (float64 conv-BN net, BN eps 1e-14, 150 steps, 10x drop at
    step 80) against one with no L2 on the conv kernels and their lr multiplied by the plan's m_t
    (BN and head keep L2 and lr_t): the same train-mode logits at every step, to 1e-7, and the conv
    kernels differ by exactly s_T."""
    steps, spe = 150, 10
    p = plan(net(1e-14), XS, lr=LR, momentum=MU, weight_decay=WD, milestones=(8,), steps_per_epoch=spe, epochs=15)
    lrs, m = p.curves["lr"]["conv"], p.curves["multiplier"]["conv"]
    assert len(lrs) == steps and lrs[79] == LR and lrs[80] == pytest.approx(LR / 10)
    assert [g["name"] for g in p.groups if g["n_clock"]] == ["conv"]
    base, tr = net(1e-14), net(1e-14)
    ob = torch.optim.SGD(param_groups(base, WD), lr=LR, momentum=MU)
    ot = torch.optim.SGD(param_groups(tr, {"conv": 0.0, "bn": WD, "head": WD}), lr=LR, momentum=MU)
    rb = _run(base, ob, lambda g, t: lrs[t], steps)
    rt = _run(tr, ot, lambda g, t: lrs[t] * (m[t] if g["name"] == "conv" else 1.0), steps)
    diff = (rb - rt).abs().max().item()
    print(f"max |logit diff| over {steps} steps: {diff:.2e}; m_T = {m[-1]:.3f}")
    assert diff < 1e-7
    assert m[-1] > 2  # the decay really acted
    assert (logits(base) - logits(tr)).abs().max() < 1e-7
    s_T = decay_scales(lrs, MU, WD)[-1]
    for i in (0, 3):
        torch.testing.assert_close(tr[i].weight * s_T, base[i].weight, rtol=1e-8, atol=1e-12)
    # without the multiplier (no conv L2, nominal lr) the runs part
    n2 = net(1e-14)
    o2 = torch.optim.SGD(param_groups(n2, {"conv": 0.0, "bn": WD, "head": WD}), lr=LR, momentum=MU)
    assert (rb - _run(n2, o2, lambda g, t: lrs[t], steps)).abs().max().item() > 1e-3


def test_adamw_multiplier_exact_when_adam_is_scale_free():
    """AdamW's m_t = 1/prod(1 - lr lam) is exact when Adam's update ignores the gradient's scale
    (betas 0, eps ~ 0: the update is sign(g)): the same logits at every step. With the usual betas
    the statement is leading order only (the plan says so)."""
    steps, spe, lam = 60, 10, 0.5
    p = plan(
        net(1e-14),
        XS,
        optimizer="adamw",
        lr=1e-2,
        betas=(0.0, 0.0),
        weight_decay=lam,
        milestones=(3,),
        steps_per_epoch=spe,
        epochs=6,
    )
    assert p.settings["approximate"] and any("leading-order" in w for w in p.warnings)
    lrs, m = p.curves["lr"]["conv"], p.curves["multiplier"]["conv"]
    base, tr = net(1e-14), net(1e-14)
    kw = dict(lr=1e-2, betas=(0.0, 0.0), eps=1e-300)
    no_conv_l2 = {"conv": 0.0, "bn": lam, "head": lam}
    ob = torch.optim.AdamW(param_groups(base, lam), **kw)
    ot = torch.optim.AdamW(param_groups(tr, no_conv_l2), **kw)
    rb = _run(base, ob, lambda g, t: lrs[t], steps)
    rt = _run(tr, ot, lambda g, t: lrs[t] * (m[t] if g["name"] == "conv" else 1.0), steps)
    diff = (rb - rt).abs().max().item()
    print(f"AdamW betas 0: max |logit diff| {diff:.2e}; m_T = {m[-1]:.3f}")
    assert diff < 1e-7 and m[-1] > 1.1
    n2 = net(1e-14)
    rn = _run(n2, torch.optim.AdamW(param_groups(n2, no_conv_l2), **kw), lambda g, t: lrs[t], steps)
    assert (rb - rn).abs().max().item() > 1e-3


# --------------------------------------------------------------------------- delta, tau, relaxation


def test_article_numbers_and_theory():
    """delta, tau and relaxation times per stage equal theory's and the article's: 0.0046 rad/step
    and 2,500 steps at lr 0.1, wd 2e-4, momentum 0.9; relaxation times 7.8 / 0.78 / 0.078
    (= analysis.article.dimensionless of the article's config); equilibrium in stage 1 only."""
    p = article_plan()
    conv = {g["name"]: g for g in p.groups}["conv"]
    assert (conv["n_clock"], conv["n_regularizer"]) == (22, 0)
    assert {g["name"]: g["n_regularizer"] for g in p.groups} == {"conv": 0, "bn": 44, "head": 2}
    for st, lr in zip(conv["stages"], (0.1, 0.01, 0.001)):
        eq = theory.sgd_equilibrium(lr, 2e-4, 0.9)
        assert st["delta"] == pytest.approx(eq["angular_update"], rel=1e-12)
        assert st["tau_steps"] == pytest.approx(eq["steps_to_equilibrium"], rel=1e-12)
        assert st["tau_epochs"] == pytest.approx(eq["steps_to_equilibrium"] / 390, rel=1e-12)
    s1 = conv["stages"][0]
    assert s1["delta"] == pytest.approx(0.0046, abs=5e-5) and s1["tau_steps"] == pytest.approx(2500)
    relax = [st["relaxation"] for st in conv["stages"]]
    np.testing.assert_allclose(relax, [7.8, 0.78, 0.078], rtol=1e-9)
    np.testing.assert_allclose(relax, dimensionless(ARTICLE_CONFIG)["relaxation"], rtol=1e-9)
    assert [st["equilibrium"] for st in conv["stages"]] == ["yes", "no", "no"]
    assert [(s["start"], s["steps"]) for s in p.stages] == [(0, 19_500), (19_500, 19_500), (39_000, 19_500)]
    # delta^2 tau = (1 - mu)/(1 + mu) (docs/theory.md)
    assert s1["delta"] ** 2 * s1["tau_steps"] == pytest.approx(0.1 / 1.9)
    # the last 0.858 relaxation times start 0.142/7.8 of stage 1 before its end: epoch 49.09
    assert conv["equilibrium_until_epoch"] == pytest.approx(50 - 50 * (1 - 0.78 - 0.078) / 7.8, abs=0.01)
    text = p.format()
    assert "7.8" in text and "0.78" in text and "0.078" in text and "0.0046" in text and "2,500" in text
    w = " ".join(p.warnings)
    assert "BN gamma/beta and the head (46 parameters) is a regularizer" in w
    assert "22 scale-invariant parameters of group 'conv'" in w and "in stage 1 only" in w
    # a gradient scale gives theory's equilibrium norm per stage for every clock layer
    pg = article_plan(grad_scale=4.0)
    row = next(r for r in pg.layers if r["role"] == "clock")
    assert row["eq_norm"] == pytest.approx(
        [theory.sgd_equilibrium(lr, 2e-4, 0.9, grad_sq_unit=4.0)["norm"] for lr in (0.1, 0.01, 0.001)]
    )
    assert next(r for r in p.layers if r["role"] == "clock")["eq_norm"] is None


def test_adamw_leading_order_numbers():
    """AdamW: delta = sqrt(2 lr lam (1-b1)/(1+b1)), tau = 1/(2 lr lam) = theory.adamw_equilibrium's,
    equilibrium norm sqrt(lr dim / (2 lam)) per layer, labelled approximate."""
    p = article_plan(optimizer="adamw", lr=1e-3, betas=(0.9, 0.95), weight_decay={"conv": 0.05, "bn": 0.0})
    conv = {g["name"]: g for g in p.groups}["conv"]
    eq = theory.adamw_equilibrium(1e-3, 0.05, 0.9, 0.95)
    st = conv["stages"][0]
    assert st["delta"] == pytest.approx(eq["angular_update"]) and st["tau_steps"] == pytest.approx(1 / (2e-3 * 0.05))
    assert st["relaxation"] == pytest.approx(19_500 * 2 * 1e-3 * 0.05)
    assert clock_stats(1e-3, 0.05, "adamw", 0.9)["delta"] == pytest.approx(math.sqrt(2e-3 * 0.05 * 0.1 / 1.9))
    row = next(r for r in p.layers if r["role"] == "clock")
    assert row["eq_norm"][0] == pytest.approx(math.sqrt(1e-3 * row["numel"] / 0.1))
    assert {g["name"]: g["n_none"] for g in p.groups}["bn"] == 44  # no L2 on BN: role none
    assert p.settings["approximate"] and "leading-order" in p.format()


# --------------------------------------------------------------------------- roles


def test_torchvision_like_models_get_the_right_roles():
    """A torchvision-layout ResNet (Bottleneck blocks with downsample conv+BN, fc head; built in
    tests/tvlike.py, no download): every conv kernel is a clock, BN gamma/beta and fc regularizers.
    A net with a biased conv that feeds the head without a norm layer: that conv is a regularizer."""
    m = tvlike.tiny_resnet()
    p = plan(m, torch.randn(4, 3, 32, 32), weight_decay=1e-4, milestones=(30, 60), epochs=90, steps_per_epoch=100)
    roles = {r["name"]: r["role"] for r in p.layers}
    convs = {f"{n}.weight" for n, mod in m.named_modules() if isinstance(mod, nn.Conv2d)}
    assert len(convs) == 1 + 4 * 4 and any("downsample" in c for c in convs)
    assert {n for n, r in roles.items() if r == "clock"} == convs
    assert all(roles[n] == "regularizer" for n in roles if n not in convs)
    assert roles["fc.weight"] == roles["fc.bias"] == roles["layer1.0.downsample.1.weight"] == "regularizer"

    o = plan(tvlike.odd(), torch.randn(4, 3, 8, 8), weight_decay={"conv": 5e-4, "bn": 0.0, "head": 5e-4})
    roles = {r["name"]: r["role"] for r in o.layers}
    assert roles == {
        "stem.weight": "clock",
        "bn.weight": "none",
        "bn.bias": "none",
        "side.weight": "regularizer",
        "side.bias": "regularizer",
        "head.weight": "regularizer",
        "head.bias": "regularizer",
    }
    g = {x["name"]: x for x in o.groups}
    assert (g["conv"]["n_clock"], g["conv"]["n_regularizer"]) == (1, 1)  # the conv group holds both kinds
    assert "conv kernels without a norm layer after them" in " ".join(o.warnings)
    # an invariant parameter without L2: its norm only grows
    z = plan(tvlike.odd(), torch.randn(4, 3, 8, 8), weight_decay={"head": 5e-4})
    assert any("1 scale-invariant parameters have no weight decay" in w for w in z.warnings)


# --------------------------------------------------------------------------- schedules


def test_schedules():
    lrs, st = schedule_lrs("cosine", 0.1, 10, 10, warmup_epochs=2, min_lr=0.001)
    assert lrs[0] == pytest.approx(0.1 / 20) and lrs[19] == pytest.approx(0.1) and lrs[20] == pytest.approx(0.1)
    assert lrs[-1] == pytest.approx(0.001 + 0.099 * 0.5 * (1 + math.cos(math.pi * 79 / 80)))
    assert st == [0, 20, 40, 60, 80]
    lrs, st = schedule_lrs([(0, 0.1), (5, 0.01), (8, 0.02)], steps_per_epoch=5, epochs=2)
    assert lrs.tolist() == [0.1] * 5 + [0.01] * 3 + [0.02] * 2 and st == [0, 5, 8]
    lrs, st = schedule_lrs("constant", 0.3, 4, 2, stages=(1,))
    assert lrs.tolist() == [0.3] * 8 and st == [0, 4]
    lrs, st = schedule_lrs("step", 0.1, 10, 3, milestones=(1, 2), gamma=0.5, warmup_epochs=0.5)
    assert lrs[:5].tolist() == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1]) and lrs[25] == 0.025
    assert st == [0, 5, 10, 20]
    for kw, msg in [
        (dict(schedule="linear"), "unknown schedule"),
        (dict(lr=-0.1), "lr must be"),
        (dict(epochs=0), "epochs must be"),
        (dict(steps_per_epoch=2.5), "integer"),
        (dict(schedule=[(3, 0.1)]), "start at step 0"),
        (dict(schedule="cosine", min_lr=1.0), "above lr"),
        (dict(warmup_epochs=200), "shorter than the run"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            schedule_lrs(**kw)


def test_plan_from_torch_optimizer_and_scheduler():
    """`plan_optimizer` reads a real SGD's groups and what its scheduler will do, from a copy: the
    scheduler and optimizer are untouched, and the plan equals the named-schedule plan."""
    m = resnet20()
    opt = torch.optim.SGD(param_groups(m, 2e-4), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [19_500, 39_000], 0.1)
    lrs = lrs_from_torch(opt, sched, 58_500)
    assert sched.last_epoch == 0 and opt.param_groups[0]["lr"] == 0.1
    np.testing.assert_allclose(lrs[0], schedule_lrs("step", 0.1, 390, 150)[0], rtol=1e-12)
    ref = article_plan()
    inv = {r["name"]: r["invariant"] for r in ref.layers}
    p = plan_optimizer(m, opt, inv, 58_500, 390, scheduler=sched)
    assert [s["start"] for s in p.stages] == [0, 19_500, 39_000]
    assert [st["relaxation"] for st in p.groups[0]["stages"]] == pytest.approx([7.8, 0.78, 0.078])
    np.testing.assert_allclose(p.curves["multiplier"]["conv"], ref.curves["multiplier"]["conv"], rtol=1e-12)
    # epoch-interval schedulers and smooth ones
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    e = lrs_from_torch(opt, cos, 40, interval="epoch", steps_per_epoch=4)[0]
    assert e[0] == e[3] == 0.1 and e[4] < 0.1 and e[4] == e[7]
    pc = plan_optimizer(m, opt, inv, 40, 4, scheduler=cos, interval="epoch")
    assert [s["start"] for s in pc.stages] == [0, 10, 20, 30]
    nest = torch.optim.SGD(param_groups(m, 2e-4), lr=0.1, momentum=0.9, nesterov=True)
    assert any("nesterov" in w for w in plan_optimizer(m, nest, inv, 10, 1).warnings)
    with pytest.raises(ConfigError, match="Adam"):
        plan_optimizer(m, torch.optim.Adam(m.parameters()), inv, 10, 1)


# --------------------------------------------------------------------------- the command


def test_cli_default_is_the_article_json_and_figure(tmp_path, capsys):
    """`bnwd plan --json --figure F` with no other arguments: one JSON document on stdout with the
    article's numbers (roles from the numerical audit of ResNet-20), and a PNG."""
    fig = tmp_path / "plan.png"
    assert main(["plan", "--json", "--figure", str(fig)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    doc = json.loads(out)
    conv = {g["name"]: g for g in doc["groups"]}["conv"]
    assert conv["n_clock"] == 22 and [round(s["relaxation"], 3) for s in conv["stages"]] == [7.8, 0.78, 0.078]
    assert round(conv["stages"][0]["delta"], 4) == 0.0046
    assert doc["settings"]["steps"] == 58_500 and doc["settings"]["model"] == "resnet20"
    assert any("stage 1 only" in w for w in doc["warnings"])
    assert len(doc["curves"]["step"]) == len(doc["curves"]["multiplier"]["conv"]) <= 201
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_subprocess_json_is_the_only_stdout():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(Path(__file__).parent)])}
    args = ["plan", "--model", "tvlike:odd", "--input-shape", "4,3,8,8", "--schedule", "cosine", "--warmup-epochs"]
    r = subprocess.run(
        [sys.executable, "-m", "bnwd", *args, "5", "--epochs", "20", "--steps-per-epoch", "50", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)  # the whole of stdout is one document
    assert doc["settings"]["steps"] == 1000 and [s["start"] for s in doc["stages"]] == [0, 250, 438, 625, 812]


@pytest.mark.parametrize(
    "args",
    [
        ["--schedule", "linear"],
        ["--lr", "-0.1"],
        ["--lr", "nan"],
        ["--model", "no_such_pkg.mod:factory"],
        ["--model", "tvlike:odd", "--input-shape", "2,3"],
        ["--weight-decay", "conv=1e-4,fc=1e-4"],
        ["--optimizer", "lion"],
        ["--schedule", "points", "--points", "10:0.1"],
        ["--epochs", "0"],
        ["--momentum", "1.2"],
        ["--no-such-flag"],
    ],
)
def test_cli_bad_input_is_one_line_exit_2(args, tmp_path, capsys):
    fig = tmp_path / "f.png"
    try:
        rc = main(["plan", *args, "--figure", str(fig)])
    except SystemExit as e:  # argparse
        rc = e.code
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("bnwd: ")
    assert not fig.exists()
