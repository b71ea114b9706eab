"""The exact weight-decay -> lr transform (design.md): w~_t = w_t / s_t, same train-mode function."""
import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from bnwd.errors import ConfigError
from bnwd.exact import WeightDecayAsLR, decay_scales

STEPS, DROP, LR, MU, WD = 300, 150, 0.1, 0.9, 5e-3


def net(eps, bn_momentum=0.1):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4, eps=eps, momentum=bn_momentum), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, bias=False), nn.BatchNorm2d(4, eps=eps, momentum=bn_momentum), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).double()


def groups(m):
    conv = [m[0].weight, m[3].weight]
    rest = [p for p in m.parameters() if all(p is not c for c in conv)]
    return [{"name": "conv", "params": conv, "weight_decay": WD}, {"name": "head", "params": rest, "weight_decay": WD}]


g = torch.Generator().manual_seed(1)
BATCHES = [(torch.randn(16, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (16,), generator=g)) for _ in range(4)]


def run(model, opt, stepper, steps, sched=None, start=0):
    for t in range(start, steps):
        x, y = BATCHES[t % 4]
        stepper.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        stepper.step()
        if sched:
            sched.step()


def pair(eps, **kw):
    base, tr = net(eps), net(eps)
    ob = torch.optim.SGD(groups(base), lr=LR, momentum=MU)
    ot = torch.optim.SGD(groups(tr), lr=LR, momentum=MU)
    wrap = WeightDecayAsLR(ot, ["conv"], model=tr, **kw)
    sb = torch.optim.lr_scheduler.MultiStepLR(ob, [DROP], 0.1)
    st = torch.optim.lr_scheduler.MultiStepLR(ot, [DROP], 0.1)
    run(base, ob, ob, STEPS, sb)
    run(tr, ot, wrap, STEPS, st)
    return base, tr, wrap


def logits(m, train=True):
    m.train(train)
    with torch.no_grad():
        return torch.cat([m(x) for x, _ in BATCHES])


def test_train_logits_match_with_tiny_eps():
    """BN eps ~ 0: baseline SGD+L2 and the wrapped run agree to 1e-7 after 300 steps with a 10x lr drop,
    and the conv weights satisfy w~ = w / s_t."""
    base, tr, wrap = pair(1e-14)
    assert (logits(base) - logits(tr)).abs().max() < 1e-7
    s = wrap.scale["conv"]
    assert s < 0.5  # the decay really acted
    assert torch.allclose(tr[0].weight * s, base[0].weight, rtol=1e-7, atol=1e-10)


def test_rescaled_eps_exact_at_1e5():
    """With eps_t = eps / s_t^2 in the following BN layers the transform is exact at eps 1e-5."""
    base, tr, _ = pair(1e-5, rescale_bn_eps=True)
    assert (logits(base) - logits(tr)).abs().max() < 1e-7
    base2, tr2, _ = pair(1e-5)
    assert (logits(base2) - logits(tr2)).abs().max() > 1e-7  # without it, eps makes them drift


def test_rescaled_bn_stats_match_in_eval_mode():
    """Running mean *= s_t/s_{t+1}, var *= (s_t/s_{t+1})^2 after each step: eval-mode outputs agree too."""
    base, tr, _ = pair(1e-14, rescale_bn_stats=True)
    assert (logits(base, False) - logits(tr, False)).abs().max() < 1e-7
    _, tr2, _ = pair(1e-14)
    assert (logits(base, False) - logits(tr2, False)).abs().max() > 1e-3


def test_decay_scales_matches_zero_gradient_sgd_and_wrapper():
    """decay_scales = SGD on a zero-gradient weight w_0 = 1 = the wrapper's online s_t."""
    lrs = [LR] * DROP + [LR / 10] * (STEPS - DROP)
    s = decay_scales(lrs, MU, WD)
    w = torch.ones(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([w], lr=LR, momentum=MU, weight_decay=WD)
    sim = [1.0]
    for lr in lrs:
        opt.param_groups[0]["lr"] = lr
        w.grad = torch.zeros_like(w)
        opt.step()
        sim.append(w.item())
    assert np.allclose(s, sim, rtol=1e-12, atol=0)
    _, _, wrap = pair(1e-14)
    assert wrap.scale["conv"] == pytest.approx(s[-1], rel=1e-12)
    assert len(s) == STEPS + 1 and s[1] == pytest.approx(1 - LR * WD)


@pytest.mark.parametrize("make", [lambda p: torch.optim.Adam(p), lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
                                  lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.1)])
def test_refuses_other_optimizers(make):
    m = net(1e-5)
    with pytest.raises(ConfigError):
        WeightDecayAsLR(make(groups(m)), ["conv"])


def test_unknown_group_refused():
    m = net(1e-5)
    with pytest.raises(ConfigError, match="unknown parameter group"):
        WeightDecayAsLR(torch.optim.SGD(groups(m), lr=0.1, momentum=0.9), ["nope"])


def test_state_dict_round_trip_resumes_exactly():
    """Stop at step 100, rebuild from state_dicts, continue: identical to an uninterrupted run."""
    _, ref, _ = pair(1e-14, rescale_bn_eps=True)
    m = net(1e-14)
    opt = torch.optim.SGD(groups(m), lr=LR, momentum=MU)
    wrap = WeightDecayAsLR(opt, ["conv"], model=m, rescale_bn_eps=True)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [DROP], 0.1)
    run(m, opt, wrap, 100, sched)
    sd, msd, ssd = copy.deepcopy(wrap.state_dict()), copy.deepcopy(m.state_dict()), sched.state_dict()
    m2 = net(1e-14)
    m2.load_state_dict(msd)
    opt2 = torch.optim.SGD(groups(m2), lr=LR, momentum=MU)
    wrap2 = WeightDecayAsLR(opt2, ["conv"], model=m2, rescale_bn_eps=True)
    wrap2.load_state_dict(sd)
    sched2 = torch.optim.lr_scheduler.MultiStepLR(opt2, [DROP], 0.1)
    sched2.load_state_dict(ssd)
    run(m2, opt2, wrap2, STEPS, sched2, start=100)
    assert torch.equal(logits(ref), logits(m2))
