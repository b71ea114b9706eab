"""Monitor: hand-computed norms, steps, angles, effective lr; windows, EMA, hooks, state."""
import math

import pytest
import torch
import torch.nn as nn

from bnwd.monitor import Monitor


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def setup(opt_cls=torch.optim.SGD, **kw):
    torch.manual_seed(0)
    m = Tiny().double()
    groups = [{"name": "conv", "params": [m.conv.weight], "param_names": ["conv.weight"]},
              {"name": "rest", "params": [p for n, p in m.named_parameters() if n != "conv.weight"],
               "param_names": [n for n, p in m.named_parameters() if n != "conv.weight"]}]
    return m, opt_cls(groups, **kw)


def one_step(m, opt, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 3, 8, 8, generator=g, dtype=torch.float64)
    opt.zero_grad()
    m(x).pow(2).sum().backward()
    opt.step()


def test_hand_computed_single_step():
    """||w||^2, ||dw||/||w||, angle(w_before, w_after) and lr/||w||^2 match a hand computation."""
    m, opt = setup(lr=0.1, momentum=0.9, weight_decay=1e-2)
    mon = Monitor(m, opt, sample_every=1, layers="all")
    w0 = m.conv.weight.detach().clone()
    one_step(m, opt, 0)
    w1 = m.conv.weight.detach()
    r = mon.sample()
    cos = (w0 * w1).sum() / (w0.norm() * w1.norm())
    assert r["sqnorm/conv/conv.weight"] == pytest.approx(w1.pow(2).sum().item(), rel=1e-12)
    assert r["conv_sqsum"] == pytest.approx(w1.pow(2).sum().item(), rel=1e-12)
    assert r["rel_step/conv/conv.weight"] == pytest.approx(((w1 - w0).norm() / w0.norm()).item(), rel=1e-10)
    assert r["rel_step_conv"] == pytest.approx(((w1 - w0).norm() / w0.norm()).item(), rel=1e-10)
    assert r["angle/conv/conv.weight"] == pytest.approx(math.acos(min(1.0, cos.item())), rel=1e-5)
    assert r["eff_lr/conv/conv.weight"] == pytest.approx(0.1 / w1.pow(2).sum().item(), rel=1e-12)
    assert r["eff_lr_rel/conv/conv.weight"] == pytest.approx((w0.pow(2).sum() / w1.pow(2).sum()).item(), rel=1e-12)
    fcw = [k for k in r if k.startswith("rel_step/rest/")]
    assert len(fcw) == 4  # bn weight/bias, fc weight/bias


def test_window_mean_and_ema():
    """Window mean = mean of the per-step values since the last sample; EMA with half-life h
    (decay 0.5^(1/h)) is bias-corrected: sum_i d^(n-i) (1-d) x_i / (1 - d^n)."""
    m, opt = setup(lr=0.05, momentum=0.9)
    mon = Monitor(m, opt, sample_every=4, halflife=2.0)
    vals = []
    for i in range(4):
        w0 = m.conv.weight.detach().clone()
        one_step(m, opt, i)
        vals.append(((m.conv.weight.detach() - w0).norm() / w0.norm()).item())
        assert mon.ready == (i == 3)
    r = mon.sample()
    assert r["rel_step_conv"] == pytest.approx(sum(vals) / 4, rel=1e-10)
    d = 0.5 ** 0.5
    ema = 0.0
    for v in vals:
        ema = d * ema + (1 - d) * v
    assert r["rel_step_conv_ema"] == pytest.approx(ema / (1 - d ** 4), rel=1e-10)
    assert r["rel_step_conv_last"] == pytest.approx(vals[-1], rel=1e-10)


def test_monitor_only_reads():
    """Training with and without the monitor gives bit-identical weights."""
    runs = []
    for use in (False, True):
        m, opt = setup(lr=0.1, momentum=0.9, weight_decay=1e-3)
        mon = Monitor(m, opt, sample_every=2) if use else None
        for i in range(5):
            one_step(m, opt, i)
            if mon and mon.ready:
                mon.sample()
        runs.append([p.detach().clone() for p in m.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_remove_detaches():
    m, opt = setup(lr=0.1)
    mon = Monitor(m, opt)
    one_step(m, opt, 0)
    mon.remove()
    one_step(m, opt, 1)
    assert mon.step == 1


def test_state_dict_round_trip():
    """A monitor restored from state_dict continues with identical samples."""
    m, opt = setup(lr=0.1, momentum=0.9)
    mon = Monitor(m, opt, sample_every=3, halflife=2)
    for i in range(2):
        one_step(m, opt, i)
    st = mon.state_dict()
    mon.remove()
    mon2 = Monitor(m, opt, sample_every=3, halflife=2)
    mon2.load_state_dict(st)
    one_step(m, opt, 2)
    assert mon2.ready and mon2.step == 3
    r = mon2.sample()
    assert math.isfinite(r["rel_step_conv_ema"])


def test_adam_effective_lr_is_lr_over_norm():
    """With Adam the step does not scale with the gradient, so eff lr = lr / ||w||."""
    m, opt = setup(torch.optim.Adam, lr=1e-3)
    mon = Monitor(m, opt)
    one_step(m, opt, 0)
    r = mon.sample()
    assert r["eff_lr_conv"] == pytest.approx(1e-3 / m.conv.weight.detach().norm().item(), rel=1e-10)
