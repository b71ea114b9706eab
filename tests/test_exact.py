"""The exact weight-decay -> lr transform (docs/theory.md): w~_t = w_t / s_t, same train-mode function.

Float64, a conv-BN-ReLU-conv-BN-ReLU-GAP-Linear net, 4 fixed batches cycled, 300 steps of SGD
(lr 0.1, momentum 0.9) with a 10x MultiStepLR drop at step 150, L2 5e-3 on every group; the
transformed run moves the conv groups' L2 into the learning rate, the head keeps its L2.
"""

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from bnwd.errors import ConfigError
from bnwd.nn import invariance, theory
from bnwd.nn.exact import decay_scales, following_norms, weight_decay_as_lr
from bnwd.nn.models import resnet
from bnwd.nn.monitor import Monitor
from bnwd.nn.optim import param_groups

STEPS, DROP, LR, MU, WD = 300, 150, 0.1, 0.9, 5e-3


pytestmark = pytest.mark.usefixtures("one_thread")


def net(eps, bn_momentum=0.1):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False),
        nn.BatchNorm2d(4, eps=eps, momentum=bn_momentum),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, bias=False),
        nn.BatchNorm2d(4, eps=eps, momentum=bn_momentum),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).double()


def groups(m):
    return param_groups(m, WD)  # conv: the two kernels; bn: gamma/beta; head: the Linear


_g = torch.Generator().manual_seed(1)
BATCHES = [
    (torch.randn(16, 3, 8, 8, generator=_g, dtype=torch.float64), torch.randint(0, 3, (16,), generator=_g))
    for _ in range(4)
]
XS = torch.cat([x for x, _ in BATCHES])


def train(model, stepper, sched, start, stop, record=None, eval_record=None):
    """Train steps [start, stop); record the train-mode logits of each step's batch (before the step)."""
    for t in range(start, stop):
        x, y = BATCHES[t % 4]
        stepper.zero_grad()
        out = model(x)
        nn.functional.cross_entropy(out, y).backward()
        if record is not None:
            record.append(out.detach().clone())
        stepper.step()
        sched.step()
        if eval_record is not None and t % 10 == 9:
            eval_record.append(logits(model, train=False))


def logits(m, train=True):
    """Outputs on all 64 images; train mode batch statistics without touching the running stats."""
    was = m.training
    state = copy.deepcopy({k: v for k, v in m.state_dict().items() if "running" in k or "num_batches" in k})
    m.train(train)
    with torch.no_grad():
        out = m(XS)
    m.load_state_dict(state, strict=False)
    m.train(was)
    return out


def pair(eps, **kw):
    """Baseline and transformed runs from the same weights on the same batches; per-step logits of both.
    The transformed run steps its own optimizer, with the `weight_decay_as_lr` handle attached."""
    base, tr = net(eps), net(eps)
    ob = torch.optim.SGD(groups(base), lr=LR, momentum=MU)
    ot = torch.optim.SGD(groups(tr), lr=LR, momentum=MU)
    wrap = weight_decay_as_lr(ot, ["conv"], model=tr, **kw)
    sb = torch.optim.lr_scheduler.MultiStepLR(ob, [DROP], 0.1)
    st = torch.optim.lr_scheduler.MultiStepLR(ot, [DROP], 0.1)
    rb, rt, eb, et = [], [], [], []
    train(base, ob, sb, 0, STEPS, rb, eb)
    train(tr, ot, st, 0, STEPS, rt, et)
    return (
        base,
        tr,
        wrap,
        (torch.stack(rb) - torch.stack(rt)).abs().max().item(),
        (torch.stack(eb) - torch.stack(et)).abs().max().item(),
    )


def test_train_logits_match_with_tiny_eps():
    """BN eps 1e-14: train-mode logits agree to 1e-7 at every one of 300 steps (10x lr drop), and the
    conv weights satisfy w~_t = w_t / s_t; the scheduler sets lr_t. The optimizer is stepped as
    usual and the handle's `.scale` gives s_t (what the trainer uses)."""
    base, tr, wrap, diff, _ = pair(1e-14)
    print(f"max |logit diff| over all steps, eps 1e-14: {diff:.2e}")
    assert diff < 1e-7
    assert (logits(base) - logits(tr)).abs().max() < 1e-7
    s = wrap.scale["conv"]
    assert s < 0.5  # the decay really acted
    for i in (0, 3):
        assert torch.allclose(tr[i].weight * s, base[i].weight, rtol=1e-8, atol=1e-12)
    # lr in the groups is the scheduler's lr_t (not lr~_t) between steps; the head kept its L2
    groups = wrap.optimizer.param_groups
    assert all(g["lr"] == pytest.approx(LR / 10) for g in groups)
    (conv,) = [g for g in groups if g["name"] == "conv"]
    assert conv["weight_decay"] == 0 and conv["wd_as_lr"] == WD and conv["wd_step"] == STEPS
    assert all(g["weight_decay"] == WD for g in groups if g["name"] != "conv")


def test_rescaled_eps_exact_at_1e5():
    """With eps_t = eps / s_t^2 in the following BN layers the transform is exact at eps 1e-5."""
    base, tr, wrap, diff, _ = pair(1e-5, rescale_bn_eps=True)
    print(f"max |logit diff| over all steps, eps 1e-5 rescaled: {diff:.2e}")
    assert diff < 1e-7
    s = wrap.scale["conv"]
    assert tr[1].eps == pytest.approx(1e-5 / s**2) and tr[4].eps == pytest.approx(1e-5 / s**2)
    *_, diff_plain, _ = pair(1e-5)
    print(f"  without eps rescaling: {diff_plain:.2e}")
    assert diff_plain > 10 * diff  # eps alone makes the plain transform inexact


def test_rescaled_bn_stats_match_in_eval_mode():
    """Running mean *= s_t/s_{t+1}, var *= (s_t/s_{t+1})^2 after each step: eval-mode outputs agree
    (BN momentum 0.1, eps 1e-5 rescaled), sampled every 10 steps."""
    base, tr, _, diff, ediff = pair(1e-5, rescale_bn_eps=True, rescale_bn_stats=True)
    print(f"max |logit diff| train {diff:.2e}, eval {ediff:.2e}")
    assert diff < 1e-7 and ediff < 1e-7
    *_, ediff_plain = pair(1e-5, rescale_bn_eps=True)
    print(f"  eval without stats rescaling: {ediff_plain:.2e}")
    assert ediff_plain > 1e-2


def test_decay_scales_matches_zero_gradient_sgd_recursion_and_wrapper():
    """decay_scales = the recursion of docs/theory.md = SGD on a zero-gradient weight w_0 = 1 = the transform's s_t."""
    lrs = [LR] * DROP + [LR / 10] * (STEPS - DROP)
    s = decay_scales(lrs, MU, WD)
    assert s.dtype == np.float64 and len(s) == STEPS + 1
    assert s[0] == 1 and s[1] == pytest.approx(1 - LR * WD, rel=1e-15)
    ref = [1.0, 1 - lrs[0] * WD]  # the r_t form, literally
    for t in range(1, STEPS):
        r = lrs[t] / lrs[t - 1]
        ref.append((1 + r * MU - lrs[t] * WD) * ref[t] - r * MU * ref[t - 1])
    assert np.allclose(s, ref, rtol=1e-12, atol=0)
    w = torch.ones(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([w], lr=LR, momentum=MU, weight_decay=WD)
    sim = [1.0]
    for lr in lrs:
        opt.param_groups[0]["lr"] = lr
        w.grad = torch.zeros_like(w)
        opt.step()
        sim.append(w.item())
    assert np.allclose(s, sim, rtol=1e-12, atol=0)
    # the transform's online s_t over a real run
    m = net(1e-5)
    opt = torch.optim.SGD(groups(m), lr=LR, momentum=MU)
    handle = weight_decay_as_lr(opt, ["conv"])
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [DROP], 0.1)
    online = [handle.scale["conv"]]
    for t in range(STEPS):
        x, y = BATCHES[t % 4]
        opt.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
        sched.step()
        online.append(handle.scale["conv"])
    assert np.allclose(online, s, rtol=1e-13, atol=0)
    # a zero learning rate is fine (no division by lr_{t-1})
    s0 = decay_scales([0.1, 0.0, 0.1], MU, WD)
    assert s0[2] == s0[1] and np.all(np.isfinite(s0))


@pytest.mark.parametrize(
    "make",
    [
        lambda p: torch.optim.Adam(p),
        lambda p: torch.optim.AdamW(p),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.1),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, maximize=True),
    ],
    ids=["adam", "adamw", "nesterov", "dampening", "maximize"],
)
def test_refuses_other_optimizers(make):
    m = net(1e-5)
    with pytest.raises(ConfigError):
        weight_decay_as_lr(make(groups(m)), ["conv"])


def test_misuse_refused():
    m = net(1e-5)
    with pytest.raises(ConfigError, match="unknown parameter group"):
        weight_decay_as_lr(torch.optim.SGD(groups(m), lr=0.1, momentum=0.9), ["nope"])
    with pytest.raises(ConfigError, match="model"):
        weight_decay_as_lr(torch.optim.SGD(groups(m), lr=0.1, momentum=0.9), ["conv"], rescale_bn_eps=True)

    # a conv whose output is added to its input before BN is not scale-invariant
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3)

        def forward(self, x):
            return self.bn(x + self.conv(x))

    s = Skip()
    opt = torch.optim.SGD(param_groups(s, WD), lr=0.1, momentum=0.9)
    with pytest.raises(ConfigError, match="not scale-invariant"):
        weight_decay_as_lr(opt, ["conv"], model=s, rescale_bn_eps=True)
    assert "wd_as_lr" not in opt.param_groups[0] and opt.param_groups[0]["weight_decay"] == WD  # left untouched
    # a second transform on the same group
    opt = torch.optim.SGD(groups(m), lr=0.1, momentum=0.9)
    weight_decay_as_lr(opt, ["conv"])
    with pytest.raises(ConfigError, match="already have the transform"):
        weight_decay_as_lr(opt, ["conv"])


def test_following_norms_on_resnet():
    """Every conv of our ResNet maps to the BN registered right after it (fx trace)."""
    m = resnet(8)
    convs = [(n, mod) for n, mod in m.named_modules() if isinstance(mod, nn.Conv2d)]
    found = following_norms(m, [c.weight for _, c in convs])
    mods = dict(m.named_modules())
    expect = {"conv": "bn", "conv1": "bn1", "conv2": "bn2", "proj": "proj_bn"}
    for name, c in convs:
        head, _, leaf = name.rpartition(".")
        bn_name = (head + "." if head else "") + expect[leaf]
        assert [x is mods[bn_name] for x in found[id(c.weight)]] == [True]


def test_state_dict_round_trip_resumes_exactly():
    """Stop at step 100, rebuild model/optimizer/transform/scheduler from state_dicts, continue:
    bit-identical to an uninterrupted run (eps and stats rescaling included). The transform's state
    travels in the optimizer's own state_dict; a state saved without the transform is refused."""
    kw = dict(rescale_bn_eps=True, rescale_bn_stats=True)

    def fresh():
        m = net(1e-5)
        opt = torch.optim.SGD(groups(m), lr=LR, momentum=MU)
        handle = weight_decay_as_lr(opt, ["conv"], model=m, **kw)
        return m, opt, handle, torch.optim.lr_scheduler.MultiStepLR(opt, [DROP], 0.1)

    ref, oref, href, sref = fresh()
    train(ref, oref, sref, 0, STEPS)
    m, opt, handle, sched = fresh()
    train(m, opt, sched, 0, 100)
    sd, msd, ssd = copy.deepcopy(opt.state_dict()), copy.deepcopy(m.state_dict()), copy.deepcopy(sched.state_dict())
    assert {g["name"]: g["wd_step"] for g in sd["param_groups"] if "wd_step" in g} == {"conv": 100}
    m2, opt2, handle2, sched2 = fresh()
    m2.load_state_dict(msd)
    opt2.load_state_dict(sd)
    sched2.load_state_dict(ssd)
    assert handle2.scale == handle.scale and m2[1].eps == m[1].eps != 1e-5
    train(m2, opt2, sched2, 100, STEPS)
    assert torch.equal(logits(ref), logits(m2))
    assert torch.equal(logits(ref, False), logits(m2, False))
    assert handle2.scale == href.scale
    # a plain SGD state (no transform) cannot continue a transformed run
    plain = torch.optim.SGD(groups(net(1e-5)), lr=LR, momentum=MU).state_dict()
    with pytest.raises(ConfigError, match="saved without"):
        opt2.load_state_dict(plain)


# --------------------------------------------------------------------------- hooks: Monitor, schedulers, lifecycle


def test_monitor_sees_applied_lr_whatever_the_attach_order():
    """bnwd.Monitor's post-hook reads lr~_t = lr_t / (s_t s_{t+1}) on the transformed group (the lr the
    optimizer applied) and lr_t on the others, with the Monitor attached before or after the transform,
    and both orders give identical samples. Between steps the groups hold the scheduler's lr_t. The
    Monitor's angles equal the baseline's (w~ = w / s points the same way) and its eff_lr is the
    baseline's times s_{t+1} / s_t."""
    steps, drop = 40, 20
    lrs = [LR] * drop + [LR * 0.1] * (steps - drop)  # MultiStepLR's lr_t, to the bit
    s = decay_scales(lrs, MU, WD)

    def run(model, monitor_first=None):
        opt = torch.optim.SGD(groups(model), lr=LR, momentum=MU)
        mon = Monitor(model, opt, layers="none") if monitor_first in (None, True) else None
        if monitor_first is not None:
            weight_decay_as_lr(opt, ["conv"])
        mon = mon or Monitor(model, opt, layers="none")
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, [drop], 0.1)
        seen = []
        for t in range(steps):
            train(model, opt, sched, t, t + 1)
            assert [g["lr"] for g in opt.param_groups] == sched.get_last_lr()
            seen.append((list(mon.lrs), mon.sample()))
        return [g["name"] for g in opt.param_groups], seen

    names, base = run(net(1e-14))
    _, after = run(net(1e-14), monitor_first=False)
    _, before = run(net(1e-14), monitor_first=True)
    assert after == before
    conv = names.index("conv")
    for t, ((lrs_b, b), (lrs_t, o)) in enumerate(zip(base, after)):
        assert lrs_b == [lrs[t]] * len(names)
        assert lrs_t[conv] == pytest.approx(lrs[t] / (s[t] * s[t + 1]), rel=1e-12)
        assert [x for i, x in enumerate(lrs_t) if i != conv] == [lrs[t]] * (len(names) - 1)
        assert o["angle/group/conv"] == pytest.approx(b["angle/group/conv"], rel=1e-6)
        assert o["eff_lr/group/conv"] == pytest.approx(b["eff_lr/group/conv"] * s[t + 1] / s[t], rel=1e-6)


def test_remove_undoes_the_attach_and_any_hook_sees_lr_tilde():
    """A post-hook registered BEFORE the transform still reads lr~_t during the step; `remove()` (here
    via the context manager) gives the groups their L2 back, drops the "wd_*" keys, restores BN eps and
    stops transforming, while `scale` keeps the last s_t."""
    m = net(1e-5)
    opt = torch.optim.SGD(groups(m), lr=LR, momentum=MU)
    conv = next(g for g in opt.param_groups if g["name"] == "conv")
    seen = []
    opt.register_step_post_hook(lambda o, a, k: seen.append(conv["lr"]))
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [DROP], 0.1)
    with weight_decay_as_lr(opt, ["conv"], model=m, rescale_bn_eps=True) as handle:
        train(m, opt, sched, 0, 5)
        assert m[1].eps == pytest.approx(1e-5 / handle.scale["conv"] ** 2)
    s = decay_scales([LR] * 5, MU, WD)
    assert seen == pytest.approx([LR / (s[t] * s[t + 1]) for t in range(5)], rel=1e-12)
    assert handle.scale == {"conv": pytest.approx(s[5], rel=1e-13)}
    assert conv["weight_decay"] == WD and not [k for k in conv if k.startswith("wd_")]
    assert m[1].eps == m[4].eps == 1e-5
    train(m, opt, sched, 5, 7)
    assert seen[5:] == [LR, LR]
    weight_decay_as_lr(opt, ["conv"]).remove()  # attachable again after remove()


def test_failed_step_does_not_advance_and_lr_comes_back():
    """A step whose closure raises leaves s_t as it was; the next step puts lr_t back first, so the run
    continues as if the failed step never happened."""
    m = net(1e-5)
    opt = torch.optim.SGD(groups(m), lr=LR, momentum=MU)
    handle = weight_decay_as_lr(opt, ["conv"])
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [DROP], 0.1)
    train(m, opt, sched, 0, 3)

    def closure():
        raise RuntimeError("closure failed")

    with pytest.raises(RuntimeError, match="closure failed"):
        opt.step(closure)
    train(m, opt, sched, 3, 5)
    assert handle.scale["conv"] == pytest.approx(decay_scales([LR] * 5, MU, WD)[5], rel=1e-13)
    assert all(g["lr"] == LR for g in opt.param_groups)


def test_library_errors_are_value_errors():
    """A bad argument to theory, exact or invariance raises ConfigError: `except ValueError` catches it,
    and the CLI still maps it to exit code 2."""
    m = net(1e-5)
    for bad in (
        lambda: theory.sgd_equilibrium(lr=-0.1, weight_decay=5e-4),
        lambda: weight_decay_as_lr(torch.optim.Adam(m.parameters()), ["conv"]),
        lambda: invariance.joint_invariance(m, XS[:2], ["no.such.parameter"]),
    ):
        with pytest.raises(ValueError) as e:
            bad()
        assert isinstance(e.value, ConfigError) and e.value.exit_code == 2


@pytest.mark.skipif(not hasattr(nn, "RMSNorm"), reason="torch without nn.RMSNorm")
def test_rmsnorm_with_default_eps_is_followed_and_transformed_exactly():
    """RMSNorm computes g * x / sqrt(mean(x^2) + eps), scale-invariant in x up to eps, like BN.
    Its eps=None means finfo(dtype).eps; the transform must rescale that eps to eps / s_t^2 as it
    does BN's, so 200 float64 steps of SGD with L2 on the linear layer before it, against the same
    run with that L2 moved into the learning rate, give the same function to 1e-10."""

    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 16, bias=False), nn.RMSNorm(16), nn.ReLU(), nn.Linear(16, 3)).double()

    def sgd(m):
        groups = [
            {"params": [m[0].weight], "name": "conv", "weight_decay": 5e-3},
            {"params": [*m[1].parameters(), *m[3].parameters()], "name": "head", "weight_decay": 0.0},
        ]
        return torch.optim.SGD(groups, lr=0.1, momentum=0.9)

    a, b = make(), make()
    oa, ob = sgd(a), sgd(b)
    h = weight_decay_as_lr(ob, ["conv"], model=b)
    assert following_norms(b, [b[0].weight]) == {id(b[0].weight): [b[1]]}
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (64,), generator=g)
    for _ in range(200):
        for m, o in ((a, oa), (b, ob)):
            o.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            o.step()
    assert h.scale["conv"] < 0.5  # the weights of the transformed run really are rescaled
    torch.testing.assert_close(b(x), a(x), rtol=0, atol=1e-10)
