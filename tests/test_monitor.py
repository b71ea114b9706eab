"""Monitor: hand-computed norms, steps, angles, effective lr; windows, EMA, hooks, state."""

import math

import pytest
import torch
import torch.nn as nn

from bnwd.nn.monitor import Monitor


class Tiny(nn.Module):
    """conv(3->4, no bias) - BN - ReLU - GAP - Linear: the conv kernel is scale-invariant."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def setup(opt_cls=torch.optim.SGD, dtype=torch.float64, **kw):
    torch.manual_seed(0)
    m = Tiny().to(dtype)
    rest = [(n, p) for n, p in m.named_parameters() if n != "conv.weight"]
    groups = [
        {"name": "conv", "params": [m.conv.weight], "param_names": ["conv.weight"]},
        {"name": "rest", "params": [p for _, p in rest], "param_names": [n for n, _ in rest]},
    ]
    return m, opt_cls(groups, **kw)


def batch(seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, 3, 8, 8, generator=g, dtype=dtype)


def one_step(m, opt, seed):
    opt.zero_grad()
    m(batch(seed, m.conv.weight.dtype)).pow(2).sum().backward()
    opt.step()


def angle(a, b):
    """Hand angle, accurate for tiny angles: 2 atan2(|ua - ub|, |ua + ub|)."""
    ua, ub = a / a.norm(), b / b.norm()
    return 2 * math.atan2((ua - ub).norm().item(), (ua + ub).norm().item())


def snap(m):
    return {n: p.detach().clone() for n, p in m.named_parameters()}


def test_hand_computed_single_step():
    """||w||^2, ||dw||/||w||, angle(w_before, w_after), lr/||w||^2, per layer and per group."""
    m, opt = setup(lr=0.1, momentum=0.9, weight_decay=1e-2)
    mon = Monitor(m, opt, layers="all")
    before = snap(m)
    one_step(m, opt, 0)
    after = snap(m)
    r = mon.sample()
    w0, w1 = before["conv.weight"], after["conv.weight"]
    sq1 = w1.pow(2).sum().item()
    assert r["step"] == 1
    assert r["sqnorm/conv/conv.weight"] == pytest.approx(sq1, rel=1e-13)
    assert r["conv_sqsum"] == pytest.approx(sq1, rel=1e-13)
    assert r["conv_sqsum_rel"] == pytest.approx(sq1 / w0.pow(2).sum().item(), rel=1e-13)
    rel = ((w1 - w0).norm() / w0.norm()).item()
    for k in (
        "rel_step/conv/conv.weight",
        "rel_step_last/conv/conv.weight",
        "rel_step_ema/conv/conv.weight",
        "rel_step_conv",
        "rel_step_conv_ema",
        "rel_step/group/conv",
    ):
        assert r[k] == pytest.approx(rel, rel=1e-10), k
    for k in ("angle/conv/conv.weight", "angle_conv", "angle_conv_ema", "angle/group/conv"):
        assert r[k] == pytest.approx(angle(w0, w1), rel=1e-9), k
    assert r["eff_lr/conv/conv.weight"] == pytest.approx(0.1 / sq1, rel=1e-13)
    assert r["eff_lr_conv"] == pytest.approx(0.1 / sq1, rel=1e-13)
    assert r["eff_lr_rel/conv/conv.weight"] == pytest.approx(w0.pow(2).sum().item() / sq1, rel=1e-13)
    # every other parameter, and the "rest" group as one concatenated vector
    names = [n for n in before if n != "conv.weight"]
    assert math.isnan(r["rel_step/rest/bn.bias"])  # zero-initialised: no relative step defined
    for n in (n for n in names if n != "bn.bias"):
        assert r[f"rel_step/rest/{n}"] == pytest.approx(
            ((after[n] - before[n]).norm() / before[n].norm()).item(), rel=1e-10
        )
        assert r[f"angle/rest/{n}"] == pytest.approx(angle(before[n], after[n]), rel=1e-9)
    cb, ca = (torch.cat([d[n].reshape(-1) for n in names]) for d in (before, after))
    assert r["sqnorm/group/rest"] == pytest.approx(ca.pow(2).sum().item(), rel=1e-13)
    assert r["rel_step/group/rest"] == pytest.approx(((ca - cb).norm() / cb.norm()).item(), rel=1e-10)
    assert r["angle/group/rest"] == pytest.approx(angle(cb, ca), rel=1e-9)
    assert r["eff_lr/group/rest"] == pytest.approx(0.1 / ca.pow(2).sum().item(), rel=1e-13)


def test_plain_sgd_relative_step_is_lr_grad_over_norm():
    """Plain SGD: dw = -lr g, so rel = lr ||g|| / ||w||; g is orthogonal to a scale-invariant w."""
    m, opt = setup(lr=0.05)
    m.bn.eps = 1e-14  # exact scale invariance
    mon = Monitor(m, opt)
    w = m.conv.weight.detach().clone()
    opt.zero_grad()
    m(batch(1)).pow(2).sum().backward()
    g = m.conv.weight.grad.clone()
    opt.step()
    r = mon.sample()
    assert (g * w).sum().abs().item() < 1e-9 * g.norm().item() * w.norm().item()  # scale invariance
    assert r["rel_step_conv"] == pytest.approx(0.05 * g.norm().item() / w.norm().item(), rel=1e-10)
    # orthogonal step: tan(angle) = ||dw|| / ||w||
    assert r["angle_conv"] == pytest.approx(math.atan(0.05 * g.norm().item() / w.norm().item()), rel=1e-9)


def test_angle_accurate_for_tiny_and_radial_steps():
    """A 1e-9 relative step has angle 1e-9 (no acos cancellation); a pure decay step has angle 0."""
    m, opt = setup(lr=1e-9)
    mon = Monitor(m, opt)
    w0 = m.conv.weight.detach().clone()
    one_step(m, opt, 2)
    r = mon.sample()
    assert 0 < r["angle_conv"] == pytest.approx(angle(w0, m.conv.weight.detach()), rel=1e-6)
    # zero gradient + weight decay: w <- (1 - lr wd) w, a purely radial step
    m, opt = setup(lr=0.1, weight_decay=1e-3)
    mon = Monitor(m, opt)
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    r = mon.sample()
    assert r["rel_step_conv"] == pytest.approx(1e-4, rel=1e-9)
    assert abs(r["angle_conv"]) < 1e-10
    assert r["conv_sqsum_rel"] == pytest.approx((1 - 1e-4) ** 2, rel=1e-12)


def test_window_mean_ema_last_and_ready():
    """Window mean = mean of the per-step values since the last sample; the EMA with half-life h
    (decay 0.5^(1/h)) is bias-corrected: sum_i d^(n-i) (1-d) x_i / (1 - d^n), and carries on."""
    m, opt = setup(lr=0.05, momentum=0.9, weight_decay=5e-3)
    mon = Monitor(m, opt, sample_every=4, halflife=3.0)
    rels, angs, readies = [], [], []
    d = 0.5 ** (1 / 3)
    for i in range(8):
        w0 = m.conv.weight.detach().clone()
        one_step(m, opt, i)
        w1 = m.conv.weight.detach()
        rels.append(((w1 - w0).norm() / w0.norm()).item())
        angs.append(angle(w0, w1))
        readies.append(mon.ready)
        if mon.ready:
            r = mon.sample()
            n = len(rels)
            assert r["step"] == n
            assert r["rel_step_conv"] == pytest.approx(sum(rels[-4:]) / 4, rel=1e-10)
            assert r["angle_conv"] == pytest.approx(sum(angs[-4:]) / 4, rel=1e-9)
            assert r["rel_step_conv_last"] == pytest.approx(rels[-1], rel=1e-10)
            ema = 0.0
            for v in rels:
                ema = d * ema + (1 - d) * v
            assert r["rel_step_conv_ema"] == pytest.approx(ema / (1 - d**n), rel=1e-10)
            assert r["rel_step_ema/conv/conv.weight"] == pytest.approx(ema / (1 - d**n), rel=1e-10)
    assert readies == [False, False, False, True] * 2
    assert mon.step == 8


def test_monitor_only_reads():
    """Training with and without the monitor: bit-identical weights, grads, optimizer state, RNG."""
    runs = []
    for use in (False, True):
        m, opt = setup(lr=0.1, momentum=0.9, weight_decay=1e-3, dtype=torch.float32)
        torch.manual_seed(1)
        mon = Monitor(m, opt, sample_every=2, layers="all") if use else None
        for i in range(5):
            one_step(m, opt, i)
            if mon and mon.ready:
                mon.sample()
        runs.append(
            (
                snap(m),
                [p.grad.clone() for p in m.parameters()],
                [opt.state[p]["momentum_buffer"].clone() for p in m.parameters()],
                torch.rand(3),
            )
        )
    (w_a, g_a, s_a, r_a), (w_b, g_b, s_b, r_b) = runs
    assert all(torch.equal(w_a[k], w_b[k]) for k in w_a)
    assert all(torch.equal(a, b) for a, b in zip(g_a + s_a, g_b + s_b))
    assert torch.equal(r_a, r_b)


def test_remove_and_context_manager_detach():
    m, opt = setup(lr=0.1)
    mon = Monitor(m, opt)
    one_step(m, opt, 0)
    mon.remove()
    one_step(m, opt, 1)
    assert mon.step == 1
    with Monitor(m, opt) as mon2:
        one_step(m, opt, 2)
    one_step(m, opt, 3)
    assert mon2.step == 1 and not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks


def test_state_dict_round_trip_continues_identically():
    """Saving model, optimizer and monitor mid-window and resuming gives the same samples."""

    def run(split=None):
        m, opt = setup(lr=0.1, momentum=0.9, weight_decay=1e-3)
        mon = Monitor(m, opt, sample_every=3, halflife=2)
        out = []
        for i in range(7):
            if i == split:
                st = {"m": m.state_dict(), "o": opt.state_dict(), "mon": mon.state_dict()}
                mon.remove()
                m, opt = setup(lr=0.5)  # fresh objects, different init lr; state comes from the checkpoint
                m.load_state_dict(st["m"])
                opt.load_state_dict(st["o"])
                mon = Monitor(m, opt, sample_every=3, halflife=2)
                mon.load_state_dict(st["mon"])
            one_step(m, opt, i)
            if mon.ready:
                out.append(mon.sample())
        out.append(mon.sample())  # a partial window
        return out

    assert run() == run(split=4)


def test_load_state_dict_rejects_other_parameters():
    m, opt = setup(lr=0.1)
    st = Monitor(m, opt).state_dict()
    lin = nn.Linear(2, 2)
    with pytest.raises(ValueError):
        Monitor(lin, torch.optim.SGD(lin.parameters(), lr=0.1)).load_state_dict(st)


def test_adam_effective_lr_is_lr_over_norm():
    """With Adam the step does not scale with the gradient, so eff lr = lr / ||w||."""
    m, opt = setup(torch.optim.Adam, lr=1e-3)
    mon = Monitor(m, opt)
    n0 = m.conv.weight.detach().norm().item()
    w0 = m.conv.weight.detach().clone()
    one_step(m, opt, 0)
    r = mon.sample()
    n1 = m.conv.weight.detach().norm().item()
    assert mon.power == 1
    assert r["eff_lr_conv"] == pytest.approx(1e-3 / n1, rel=1e-12)
    assert r["eff_lr_rel_conv"] == pytest.approx(n0 / n1, rel=1e-12)
    assert r["rel_step_conv"] == pytest.approx(((m.conv.weight.detach() - w0).norm() / n0).item(), rel=1e-10)


def test_skips_parameters_without_grad():
    """A parameter the optimizer skips (grad None) does not enter the window or the EMA."""
    m, opt = setup(lr=0.1, momentum=0.9)
    mon = Monitor(m, opt, layers="all", sample_every=2)
    one_step(m, opt, 0)
    w0 = m.conv.weight.detach().clone()
    opt.zero_grad(set_to_none=True)
    m.fc(torch.randn(5, 4, dtype=torch.float64)).sum().backward()  # only fc gets grads
    opt.step()
    assert torch.equal(m.conv.weight.detach(), w0)
    r = mon.sample()
    assert r["rel_step_conv_last"] > 0  # the skipped step left the last value alone
    assert r["rel_step/conv/conv.weight"] == pytest.approx(r["rel_step_conv_last"], rel=1e-12)  # 1 valid step
    assert all(math.isfinite(v) for k, v in r.items() if "fc" in k)
    opt.zero_grad(set_to_none=True)
    opt.step()  # no grads at all: counted as a step, nothing else changes
    r2 = mon.sample()
    assert r2["step"] == 3 and math.isnan(r2["rel_step_conv"]) and r2["rel_step_conv_ema"] == r["rel_step_conv_ema"]


def test_zero_norm_parameter_is_skipped_not_inf():
    """rel and angle of a zero tensor (zero-initialised bias at step 1) are undefined: excluded."""
    m, opt = setup(lr=0.1)
    nn.init.zeros_(m.fc.bias)
    mon = Monitor(m, opt, layers="all")
    one_step(m, opt, 0)
    r = mon.sample()
    assert math.isnan(r["rel_step/rest/fc.bias"]) and math.isfinite(r["rel_step/group/rest"])
    one_step(m, opt, 1)
    r = mon.sample()
    assert math.isfinite(r["rel_step/rest/fc.bias"]) and r["rel_step_ema/rest/fc.bias"] == r["rel_step/rest/fc.bias"]


def test_names_groups_and_layers_option():
    """Without "name"/"param_names": group{i} and model.named_parameters(); conv kernels by identity."""
    torch.manual_seed(0)
    m = Tiny()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    keys = {lay: None for lay in ("auto", "conv", "all", "none")}
    mons = {lay: Monitor(m, opt, layers=lay) for lay in keys}
    one_step(m, opt, 0)
    for lay, mon in mons.items():
        keys[lay] = set(mon.sample())
    assert mons["auto"].keys == [
        "group0/conv.weight",
        "group0/bn.weight",
        "group0/bn.bias",
        "group0/fc.weight",
        "group0/fc.bias",
    ]
    assert mons["auto"].is_conv == [True, False, False, False, False]
    agg = {
        "step",
        "conv_sqsum",
        "conv_sqsum_rel",
        "rel_step_conv",
        "rel_step_conv_last",
        "rel_step_conv_ema",
        "angle_conv",
        "angle_conv_last",
        "angle_conv_ema",
        "eff_lr_conv",
        "eff_lr_rel_conv",
    }
    metrics = (
        "sqnorm",
        "rel_step",
        "rel_step_last",
        "rel_step_ema",
        "angle",
        "angle_last",
        "angle_ema",
        "eff_lr",
        "eff_lr_rel",
        "grad_sq_unit",
        "grad_sq_unit_ema",
    )
    conv = {f"{k}/group0/conv.weight" for k in metrics}
    group = {f"{k}/group/group0" for k in metrics}
    assert keys["conv"] == agg | conv
    assert keys["auto"] == agg | conv | group
    assert keys["none"] == agg | group
    assert len(keys["all"]) == len(agg | group) + 5 * len(metrics)
    with pytest.raises(ValueError):
        Monitor(m, opt, layers="bogus")


def test_grad_sq_unit_is_invariant_to_weight_scale():
    """grad_sq_unit = ||g||^2 ||w||^2 with g the loss gradient (before weight decay). For a
    scale-invariant kernel g(c w) = g(w) / c, so it is the same for w and 10 w: the L of the
    equilibrium norm, a property of the direction only (exactly so with BN eps -> 0)."""
    vals = []
    for c in (1.0, 10.0):
        m, opt = setup(lr=0.1, momentum=0.9, weight_decay=1e-2)
        m.bn.eps = 1e-14
        with torch.no_grad():
            m.conv.weight.mul_(c)
        mon = Monitor(m, opt, layers="all")
        opt.zero_grad()
        m(batch(0)).pow(2).sum().backward()
        hand = m.conv.weight.grad.norm().item() ** 2 * m.conv.weight.norm().item() ** 2
        opt.step()
        s = mon.sample()
        assert s["grad_sq_unit/conv/conv.weight"] == pytest.approx(hand, rel=1e-10)
        assert s["grad_sq_unit_ema/conv/conv.weight"] == pytest.approx(hand, rel=1e-10)
        vals.append(hand)
    assert vals[1] == pytest.approx(vals[0], rel=1e-8)


def test_channels_last_parameters_read_like_contiguous():
    """A channels_last conv kernel is read through a flat view in memory order (norms ignore the
    order of elements): the same steps give the same metrics as with contiguous kernels, and the
    view follows the optimizer's in-place updates."""
    out = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        m, opt = setup(lr=0.1, momentum=0.9, weight_decay=1e-2)
        m.to(memory_format=fmt)
        assert m.conv.weight.is_contiguous(memory_format=fmt)
        mon = Monitor(m, opt, layers="all")
        g = torch.Generator().manual_seed(1)
        for _ in range(3):
            for p in m.parameters():
                p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype).contiguous(
                    memory_format=fmt if p.dim() == 4 else torch.contiguous_format
                )
            opt.step()
        out.append(mon.sample())
    assert out[0].keys() == out[1].keys()
    for k, v in out[0].items():
        assert out[1][k] == pytest.approx(v, rel=1e-12, nan_ok=True), k
    assert out[0]["rel_step_conv"] > 0


def test_momentum_stats_against_an_oracle_and_the_uncorrelated_limit():
    """MomentumStats: A = sum ||b||^2 / sum ||g||^2 over the window and the mean lag-1 gradient
    cosine equal a hand computation from the optimizer's buffers; for i.i.d. gradients (no decay)
    b = sum_k mu^k g_(t-k), so A -> 1 / (1 - mu^2) (5.26 at mu = 0.9) and the cosine -> 0."""
    from bnwd.nn.monitor import MomentumStats

    torch.manual_seed(0)
    w = [torch.nn.Parameter(torch.zeros(40, 25)), torch.nn.Parameter(torch.zeros(40))]
    opt = torch.optim.SGD([{"params": w, "name": "conv", "param_names": ["a", "b"]}], lr=0.01, momentum=0.9)
    ms = MomentumStats(opt, "conv")
    bsq, gsq, cos, prev = 0.0, 0.0, [], None
    for t in range(3000):
        for p in w:
            p.grad = torch.randn_like(p)
        opt.step()
        g = torch.cat([p.grad.reshape(-1) for p in w]).double()
        if t >= 1000:  # past the buffer's transient
            bsq += sum(float(opt.state[p]["momentum_buffer"].double().square().sum()) for p in w)
            gsq += float(g.square().sum())
            cos.append(float(g @ prev / (g.norm() * prev.norm())))
        if t == 999:
            ms.sample()  # the window starts here
        prev = g
    s = ms.sample()
    assert s["mbuf_ratio_conv"] == pytest.approx(bsq / gsq, rel=1e-6)  # float32 norms
    assert s["mbuf_ratio_conv"] == pytest.approx(1 / (1 - 0.81), rel=0.05)
    assert abs(s["grad_cos_lag1_conv"]) < 0.01 and len(cos) == 2000
    assert s["grad_cos_lag1_conv"] == pytest.approx(sum(cos) / len(cos), abs=1e-6)
    assert s["mbuf_norm/conv/b"] == pytest.approx(float(opt.state[w[1]]["momentum_buffer"].norm()), rel=1e-6)
    ms.remove()
    opt.step()
    assert ms.sample() == {}
