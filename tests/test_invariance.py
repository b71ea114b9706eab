"""Numerical scale-invariance detection: what is true, case by case (see bnwd.nn.invariance)."""

import pytest
import torch
import torch.nn as nn

from bnwd.errors import ConfigError
from bnwd.nn.invariance import (
    InvarianceResult,
    audit,
    find_scale_invariant,
    format_audit,
    invariance_report,
    joint_invariance,
    load_factory,
)
from bnwd.nn.models import resnet20

pytestmark = pytest.mark.usefixtures("one_thread")


def img(n=6, c=3, hw=6, seed=0):
    return torch.randn(n, c, hw, hw, generator=torch.Generator().manual_seed(seed))


def seq(*layers):
    torch.manual_seed(0)
    return nn.Sequential(*layers)


def test_conv_relu_bn_is_invariant_for_positive_c_only():
    """conv -> ReLU -> BN: ReLU is positively homogeneous, so the kernel is invariant for c > 0
    (dropout after BN does not confuse it: the masks are the same at every call)."""
    m = seq(
        nn.Conv2d(3, 4, 3, bias=False), nn.ReLU(), nn.BatchNorm2d(4), nn.Dropout(0.3), nn.Flatten(), nn.Linear(64, 2)
    )
    r = invariance_report(m, img())
    assert r["0.weight"].invariant, r["0.weight"].reason
    assert r["0.weight"].max_rel_change < 1e-9 and abs(r["0.weight"].cos_grad_w) < 1e-9
    assert r["0.weight"].grad_scale_ratio == pytest.approx(1, abs=1e-9)
    assert "unchanged" in r["0.weight"].reason and "orthogonal" in r["0.weight"].reason
    assert not r["2.weight"].invariant and not r["5.weight"].invariant
    with pytest.raises(ConfigError, match="positive"):
        invariance_report(m, img(), scales=(-1.0,))


def test_conv_with_bias_before_norm():
    """Directly before BN a conv bias is a per-channel constant that BN's mean subtraction removes:
    the bias has no effect and the kernel alone is invariant. With a ReLU in between, or before a
    LayerNorm (the bias differs across the normalized features), neither the weight nor the bias
    alone is invariant, but the pair scaled jointly is: conv(x; cW, cb) = c conv(x; W, b)."""
    m = seq(nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2))
    r = invariance_report(m, img())
    assert r["0.weight"].invariant and not r["0.weight"].no_effect
    assert r["0.bias"].invariant and r["0.bias"].no_effect
    m = seq(nn.Conv2d(3, 4, 3, bias=True), nn.ReLU(), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 2))
    inv = find_scale_invariant(m, img())
    assert inv["0.weight"] is False and inv["0.bias"] is False
    assert inv["2.weight"] is False and inv["2.bias"] is False
    j = joint_invariance(m, img(), ["0.weight", "0.bias"])
    assert j.invariant, j.reason
    m = seq(nn.Linear(5, 6), nn.LayerNorm(6), nn.Linear(6, 2))
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    inv = find_scale_invariant(m, x)
    assert inv["0.weight"] is False and inv["0.bias"] is False
    assert joint_invariance(m, x, ["0.weight", "0.bias"]).invariant
    with pytest.raises(ConfigError, match="unknown"):
        joint_invariance(m, x, ["nope"])


class Skip(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3), nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(self.bn(x + self.conv(x)).relu().mean((2, 3)))


def test_skip_connection_before_bn_breaks_invariance():
    torch.manual_seed(0)
    r = invariance_report(Skip(), img())
    assert not r["conv.weight"].invariant
    assert "output changes by" in r["conv.weight"].reason


def test_linear_layernorm_invariant():
    m = seq(nn.Linear(5, 6, bias=False), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 2))
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    inv = find_scale_invariant(m, x)
    assert inv == {"0.weight": True, "1.weight": False, "1.bias": False, "3.weight": False, "3.bias": False}


def test_bn_affine_feeding_conv_and_bn():
    """BN1 -> conv -> BN2. Without padding conv(beta1) is spatially constant per channel and BN2
    removes it: gamma1 alone is invariant and beta1 has no effect. With zero padding the borders see
    beta1, so neither is; (gamma1, beta1) jointly is invariant either way. With ReLU between BN1 and
    the conv, gamma1 alone is not invariant once beta1 != 0 (at beta1 = 0 init it looks invariant:
    why the test point is jittered)."""
    x = img(8, 3, 6)
    for pad in (0, 1):
        m = seq(
            nn.BatchNorm2d(3),
            nn.Conv2d(3, 4, 3, padding=pad, bias=False),
            nn.BatchNorm2d(4),
            nn.Flatten(),
            nn.Linear(4 * (4 + 2 * pad) ** 2, 2),
        )
        r = invariance_report(m, x)
        assert r["1.weight"].invariant
        if pad == 0:
            assert r["0.weight"].invariant and not r["0.weight"].no_effect, r["0.weight"].reason
            assert r["0.bias"].invariant and r["0.bias"].no_effect, r["0.bias"].reason
            assert "no effect" in r["0.bias"].reason
        else:
            assert not r["0.weight"].invariant and not r["0.bias"].invariant
        assert joint_invariance(m, x, ["0.weight", "0.bias"]).invariant
    m = seq(
        nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 2)
    )
    r = invariance_report(m, x)
    assert not r["0.weight"].invariant and not r["0.bias"].invariant and r["2.weight"].invariant
    assert joint_invariance(m, x, ["0.weight", "0.bias"]).invariant
    at_init = invariance_report(m, x, perturb=0.0)  # gamma = 1, beta = 0: an accidental invariance
    assert at_init["0.weight"].invariant
    assert not at_init["0.bias"].invariant  # beta = 0 exactly: scaling it decides nothing
    assert "zero" in at_init["0.bias"].reason


def test_resnet20_conv_kernels_invariant_rest_not():
    """Our ResNet-20: the 22 conv kernels are invariant; every BN gamma/beta (they feed a ReLU with
    beta != 0, or the residual add) and the dense layer are not. The model is left untouched."""
    m = resnet20()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    r = invariance_report(m, img(8, 3, 16))
    convs = {n for n, mod in m.named_modules() if isinstance(mod, nn.Conv2d)}
    inv = {n for n, v in r.items() if v.invariant}
    assert inv == {f"{c}.weight" for c in convs} and len(inv) == 22
    assert len(r) == 22 + 2 * 22 + 2  # every conv has its BN
    assert all(v.max_rel_change < 1e-9 for n, v in r.items() if n in inv)
    assert all(v.max_rel_change > 1e-3 for n, v in r.items() if n not in inv)
    assert all(isinstance(v, InvarianceResult) and v.reason for v in r.values())
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert m.bn.eps == 1e-5 and next(m.parameters()).dtype == torch.float32


def test_audit_roles_and_table():
    m = seq(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2))
    rows = audit(m, img(), {"conv": 2e-4, "bn": 0.0, "2.weight": 1e-4, "head": 2e-4})
    by = {r["name"]: r for r in rows}
    assert by["0.weight"]["role"] == "effective-lr control" and by["0.weight"]["weight_decay"] == 2e-4
    assert by["1.weight"]["role"] == "none" and by["1.weight"]["group"] == "bn"
    assert by["4.weight"]["role"] == "regularizer" and by["4.bias"]["role"] == "regularizer"
    assert by["0.weight"]["shape"] == (4, 3, 3, 3) and by["0.weight"]["invariant"] is True
    assert all(r["evidence"] for r in rows)
    table = format_audit(rows)
    lines = table.splitlines()
    assert len(lines) == 1 + len(rows) + 1
    assert lines[0].startswith("parameter") and "4x3x3x3" in table and "effective-lr control" in table
    assert lines[1].index("4x3x3x3") == lines[0].index("shape")  # aligned
    assert "1 of 5 parameters scale-invariant" in lines[-1]
    assert all(r["role"] == "none" for r in audit(m, img()))  # no L2 given


def test_load_factory():
    assert load_factory("resnet20")().fc.in_features == 64
    assert sum(isinstance(x, nn.Conv2d) for x in load_factory("resnet8")().modules()) == 10
    assert isinstance(load_factory("torch.nn:Identity")(), nn.Identity)
    assert isinstance(load_factory("bnwd.nn.models:resnet20")(), nn.Module)
    for bad, msg in [
        ("nosuchmodel", "unknown model"),
        ("resnet21", "6n\\+2"),
        ("no_such_pkg.mod:f", "cannot import"),
        ("bnwd.nn.models:nope", "no attribute"),
        ("bnwd.nn.models:", "must look like"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            load_factory(bad)
    with pytest.raises(ConfigError, match="not a torch.nn.Module"):
        load_factory("builtins:dict")()
