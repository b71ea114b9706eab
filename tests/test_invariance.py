"""find_scale_invariant is numerical: right on architectures where type-based guessing is wrong."""
import torch
import torch.nn as nn

from bnwd.invariance import audit, find_scale_invariant, format_audit
from bnwd.models import resnet20

X = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def test_conv_bn_invariant():
    m = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 2))
    r = find_scale_invariant(m, X)
    assert r["0.weight"] and not r["3.weight"] and not r["3.bias"] and not r["1.weight"]


def test_relu_between_conv_and_bn_still_invariant():
    """ReLU is positively homogeneous: relu(c z) = c relu(z) for c > 0, so conv -> ReLU -> BN is invariant."""
    m = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.ReLU(), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 2))
    assert find_scale_invariant(m, X)["0.weight"]


def test_conv_with_bias_before_bn_not_invariant():
    """conv(x; c w, b) = c conv(x; w) + b: scaling the kernel alone changes the BN input's shape."""
    m = nn.Sequential(nn.Conv2d(3, 4, 3, bias=True), nn.ReLU(), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 2))
    r = find_scale_invariant(m, X)
    assert not r["0.weight"] and not r["0.bias"]


class Skip(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(self.bn(x + self.conv(x)).mean((2, 3)))


def test_skip_added_before_bn_not_invariant():
    assert not find_scale_invariant(Skip(), X)["conv.weight"]


def test_linear_layernorm_invariant():
    m = nn.Sequential(nn.Flatten(), nn.Linear(192, 8, bias=False), nn.LayerNorm(8), nn.Linear(8, 2))
    r = find_scale_invariant(m, X)
    assert r["1.weight"] and not r["3.weight"]


def test_bn_affine_feeding_bn_depends_on_padding():
    """BN1 -> conv -> BN2. Without padding conv(gamma z + beta) = conv(gamma z) + K with K constant per
    channel, which BN2 removes: BN1's gamma and beta are both invariant. With zero padding the beta
    term is no longer constant at the borders and neither is. Type-based rules get one of these wrong."""
    for pad, expect in ((0, True), (1, False)):
        m = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3, padding=pad, bias=False), nn.BatchNorm2d(4),
                          nn.Flatten(), nn.LazyLinear(2))
        m(X)
        r = find_scale_invariant(m, X)
        assert r["0.weight"] is expect and r["0.bias"] is expect and r["1.weight"]


def test_resnet20_audit():
    """ResNet-20: exactly the 22 conv kernels are invariant; the dense layer is not; L2 roles follow."""
    m = resnet20()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    rows = audit(m, x, {n: 2e-4 for n, _ in m.named_parameters()})
    inv = {r["name"] for r in rows if r["invariant"]}
    convs = {n + ".weight" for n, mod in m.named_modules() if isinstance(mod, nn.Conv2d)}
    assert inv == convs and len(convs) == 22
    roles = {r["name"]: r["role"] for r in rows}
    assert roles["fc.weight"] == "regularizer" and roles["conv.weight"] == "effective-lr control"
    assert "22 of 68" in format_audit(rows)
