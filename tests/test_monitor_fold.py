"""The Monitor's device buffer (BUFFER = 64 steps of raw norms, folded into the window, last and EMA
accumulators when full and at every sample) against a straightforward float64 oracle over 150 steps.

The oracle keeps float64 snapshots of every parameter before (wb) and after (wa) each optimizer step
and of the gradient g the optimizer is handed, and recomputes, per unit u (each parameter, and each
parameter group taken as one concatenated vector of its parameters updated in that step):

    s       = wa - wb
    rel     = ||s|| / ||wb||
    angle   = atan2(||wb x wa||, wb . wa),  ||wb x wa||^2 = ||wb||^2 ||wa||^2 - (wb . wa)^2
    gsq     = ||g||^2 ||wb||^2                                     (grad_sq_unit)

A step is valid for u when u was updated (its ``.grad`` was not None; a group: any member was) and
||wb|| > 0. Over the valid steps x_1..x_n of a metric:

    window mean  = (sum of the x_i since the last sample) / (their count)    NaN if none
    last         = x_n
    EMA          = e_n / w_n,  e_i = d e_(i-1) + (1 - d) x_i,  w_i = d w_(i-1) + (1 - d),
                   e_0 = w_0 = 0, d = 0.5^(1 / halflife)   (so e_n / w_n = sum_i d^(n-i) (1-d) x_i
                   / (1 - d^n), the bias-corrected EMA)

and after the last step sqnorm = ||wa||^2 (a group: over all its parameters), eff_lr = lr * 1 /
sqnorm (SGD, power 2), eff_lr_rel = eff_lr / (lr_0 / ||w_0||^2) (0 for a
zero-initialised bias, whose lr_0 / ||w_0||^2 is inf); the conv aggregates are the sum of
the conv kernels' sqnorm (and its ratio to the initial sum) and the NaN-skipping mean over conv
kernels of each per-kernel value.

sample_every = 70 with 150 steps: the buffer folds by itself at steps 64 and 134 and at the samples
at 70 (6 steps into the second buffer), 140 (6 steps into the third) and 150, so sample boundaries
fall inside buffers and full buffers span sample windows. The lr drops at step 100; the BN bias is
skipped (grad None) at some steps; the head bias starts at 0 (no valid step at step 1).
"""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bnwd.nn.monitor import BUFFER, Monitor

STEPS, EVERY, HALFLIFE = 150, 70, 30.0


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 3)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def groups(m):
    named = dict(m.named_parameters())
    spec = {
        "conv": (["conv1.weight", "conv2.weight"], 5e-3),
        "bn": (["bn1.weight", "bn1.bias", "bn2.weight", "bn2.bias"], 0.0),
        "head": (["fc.weight", "fc.bias"], 1e-3),
    }
    return [
        {"name": g, "params": [named[n] for n in ns], "param_names": ns, "weight_decay": wd}
        for g, (ns, wd) in spec.items()
    ]


class Oracle:
    """The metrics of the module docstring from float64 snapshots, one step at a time."""

    def __init__(self, opt, decay):
        self.opt, self.d = opt, decay
        self.units = {}  # key suffix -> indices into the flat parameter list
        self.params, groups = [], {}
        for g in opt.param_groups:
            groups[f"group/{g['name']}"] = []
            for n, p in zip(g["param_names"], g["params"]):
                self.units[f"{g['name']}/{n}"] = [len(self.params)]
                groups[f"group/{g['name']}"].append(len(self.params))
                self.params.append(p)
        self.units.update(groups)
        self.group_lr = {k: self._lr_of(k) for k in self.units}
        self.w0 = {k: self._sq([p.detach().double() for p in self.params], v) for k, v in self.units.items()}
        self.lr0 = {k: f() for k, f in self.group_lr.items()}
        self.win = {k: [] for k in self.units}
        self.last = {k: [math.nan] * 3 for k in self.units}
        self.e = {k: [0.0] * 3 for k in self.units}
        self.w = dict.fromkeys(self.units, 0.0)

    def _lr_of(self, key):
        name = key.split("/")[-1] if key.startswith("group/") else key.split("/")[0]
        g = next(g for g in self.opt.param_groups if g["name"] == name)
        return lambda: float(g["lr"])

    @staticmethod
    def _sq(ts, idx):
        return sum(float(ts[i].square().sum()) for i in idx)

    def before(self):
        self.wb = [p.detach().double().clone() for p in self.params]
        self.g = [None if p.grad is None else p.grad.detach().double().clone() for p in self.params]

    def after(self):
        wa = [p.detach().double().clone() for p in self.params]
        self.wa = wa
        for k, idx in self.units.items():
            upd = [i for i in idx if self.g[i] is not None]
            if not upd:
                continue
            bb = self._sq(self.wb, upd)
            if bb == 0:
                continue
            aa = self._sq(wa, upd)
            ss = sum(float((wa[i] - self.wb[i]).square().sum()) for i in upd)
            ba = sum(float((self.wb[i] * wa[i]).sum()) for i in upd)
            gg = sum(float(self.g[i].square().sum()) for i in upd)
            x = [math.sqrt(ss / bb), math.atan2(math.sqrt(max(bb * aa - ba * ba, 0.0)), ba), gg * bb]
            self.win[k].append(x)
            self.last[k] = x
            self.e[k] = [self.d * e + (1 - self.d) * v for e, v in zip(self.e[k], x)]
            self.w[k] = self.d * self.w[k] + (1 - self.d)

    def sample(self, step):
        out = {"step": step}
        conv = [k for k in self.units if k.startswith("conv/")]
        per = {}
        for k, idx in self.units.items():
            xs = self.win[k]
            mean = [sum(c) / len(xs) for c in zip(*xs)] if xs else [math.nan] * 3
            ema = [e / self.w[k] for e in self.e[k]] if self.w[k] > 0 else [math.nan] * 3
            sq = self._sq(self.wa, idx)
            lr = self.group_lr[k]()
            eff = lr / sq
            per[k] = {
                "sqnorm": sq,
                "rel_step": mean[0],
                "rel_step_last": self.last[k][0],
                "rel_step_ema": ema[0],
                "angle": mean[1],
                "angle_last": self.last[k][1],
                "angle_ema": ema[1],
                "eff_lr": eff,
                "eff_lr_rel": eff * self.w0[k] / self.lr0[k],
                "grad_sq_unit": mean[2],
                "grad_sq_unit_ema": ema[2],
            }
            out.update({f"{m}/{k}": v for m, v in per[k].items()})
            self.win[k] = []

        def m(key):
            xs = [per[k][key] for k in conv if per[k][key] == per[k][key]]
            return sum(xs) / len(xs) if xs else math.nan

        out["conv_sqsum"] = sum(per[k]["sqnorm"] for k in conv)
        out["conv_sqsum_rel"] = out["conv_sqsum"] / sum(self.w0[k] for k in conv)
        for key, name in [
            ("rel_step", "rel_step_conv"),
            ("rel_step_last", "rel_step_conv_last"),
            ("rel_step_ema", "rel_step_conv_ema"),
            ("angle", "angle_conv"),
            ("angle_last", "angle_conv_last"),
            ("angle_ema", "angle_conv_ema"),
            ("eff_lr", "eff_lr_conv"),
            ("eff_lr_rel", "eff_lr_rel_conv"),
        ]:
            out[name] = m(key)
        return out


def close(got: dict, want: dict, rel: float) -> list[str]:
    bad = []
    for k, w in want.items():
        g = got[k]
        if math.isnan(w) or math.isnan(g):
            if not (math.isnan(w) and math.isnan(g)):
                bad.append(f"{k}: {g} vs {w}")
        elif g != pytest.approx(w, rel=rel, abs=1e-300):
            bad.append(f"{k}: {g} vs {w} ({abs(g - w) / abs(w):.1e})")
    return bad


def test_fold_of_the_device_buffer_matches_a_float64_oracle(one_thread):
    """Every key of every sample (the three at 70, 140 and 150 steps) within 1e-5 relative of the
    oracle of the module docstring (the monitor takes s = wa - wb in float32, the oracle in float64:
    the BN group's last angle, 9e-6 rad, differs by 1e-6 relative; most keys by < 1e-8, while an
    off-by-one step in a window or an EMA would show at the percent level); a monitor restored from the first one's state in the middle of a
    buffer (step 97) then samples the same floats bit for bit."""
    assert BUFFER == 64 and STEPS > 2 * BUFFER and EVERY % BUFFER and (2 * EVERY) % BUFFER
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(groups(model), lr=0.2, momentum=0.9)
    mon = Monitor(model, opt, sample_every=EVERY, halflife=HALFLIFE, layers="all")
    oracle = Oracle(opt, mon.decay)
    x, y = torch.randn(16, 3, 6, 6), torch.arange(16) % 3
    got, want, twin, twin_got = [], [], None, []
    for step in range(1, STEPS + 1):
        if step == 101:
            for g in opt.param_groups:
                g["lr"] *= 0.1
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x + 0.05 * torch.randn_like(x)), y).backward()
        if step % 17 == 4:
            model.bn2.bias.grad = None  # skipped by the optimizer: no valid step for it
        oracle.before()
        opt.step()
        oracle.after()
        if step == 97:
            twin = Monitor(model, opt, sample_every=EVERY, halflife=HALFLIFE, layers="all")
            twin.load_state_dict(mon.state_dict())
        if mon.ready or step == STEPS:
            got.append(mon.sample())
            want.append(oracle.sample(step))
            if twin is not None:
                twin_got.append(twin.sample())
    assert [s["step"] for s in got] == [70, 140, 150]
    for g, w in zip(got, want):
        assert set(g) == set(w)
        bad = close(g, w, rel=1e-5)
        assert not bad, "\n".join(bad[:20])
    # the skipped BN bias and the zero-initialised head bias: valid steps are counted, not zero-filled
    assert not math.isnan(got[0]["rel_step/bn/bn2.bias"]) and not math.isnan(got[0]["rel_step/head/fc.bias"])
    assert len(twin_got) == 2
    for g, t in zip(got[1:], twin_got):
        assert list(g) == list(t)
        assert all(g[k] == t[k] or (g[k] != g[k] and t[k] != t[k]) for k in g)
    mon.remove()
    twin.remove()


def test_state_of_another_version_is_refused():
    """Only version-5 states load (version 4, without the buffer, is gone): a clear ValueError."""
    lin = nn.Linear(3, 2)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    mon = Monitor(lin, opt)
    st = mon.state_dict()
    assert st["version"] == 5
    for v in (4, None):
        with pytest.raises(ValueError, match=f"version \\(5\\); got version {v!r}"):
            mon.load_state_dict({**st, "version": v})
    mon.load_state_dict(st)
