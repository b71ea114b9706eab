import pytest
import torch

from bnwd.nn.models import NORM_TYPES, conv_sqsum, resnet, resnet20
from bnwd.nn.optim import group_of, param_groups


def test_resnet20_structure():
    """22 bias-free convs, each followed by BN; 1x1 projection in the first block of each stage; dense 64->10."""
    m = resnet20()
    convs = [x for x in m.modules() if isinstance(x, torch.nn.Conv2d)]
    assert len(convs) == 22
    assert all(c.bias is None for c in convs)
    assert sum(c.out_channels for c in convs) == 800
    projs = [c for c in convs if c.kernel_size == (1, 1)]
    assert [(p.in_channels, p.out_channels, p.stride) for p in projs] == [
        (16, 16, (1, 1)),
        (16, 32, (2, 2)),
        (32, 64, (2, 2)),
    ]
    assert (m.fc.in_features, m.fc.out_features) == (64, 10)
    assert torch.count_nonzero(m.fc.bias) == 0
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_init_sqsum_near_800():
    """Fan-in variance scaling gives E[w^2] = 1/fan_in, so sum(w^2) per conv ~ out_channels; total ~800."""
    vals = [conv_sqsum(resnet20()) for _ in range(3)]
    assert all(760 < v < 840 for v in vals), vals


def test_depth_6n_plus_2():
    """resnet(depth) builds any 6n+2 depth with 6n+1+3 convs and rejects other depths."""
    m = resnet(32)
    assert sum(isinstance(x, torch.nn.Conv2d) for x in m.modules()) == 6 * 5 + 1 + 3
    try:
        resnet(21)
    except ValueError as e:
        assert "6n+2" in str(e)
    else:
        raise AssertionError("depth 21 accepted")


def test_output_invariant_to_conv_scale_train_mode():
    """Conv -> BN: f(c w) = f(w) in training mode and grad(c w) = grad(w) / c (exact with BN eps -> 0)."""
    torch.manual_seed(0)
    m = resnet(8, width=4, bn_eps=1e-12).double().train()
    x = torch.randn(8, 3, 16, 16, dtype=torch.float64)
    w = m.stages[1][0].conv1.weight
    out0 = m(x)
    out0.sum().backward()
    g0 = w.grad.clone()
    with torch.no_grad():
        w.mul_(3.0)
    m.zero_grad()
    out1 = m(x)
    out1.sum().backward()
    assert torch.allclose(out0, out1, rtol=0, atol=1e-9)
    assert torch.allclose(w.grad * 3.0, g0, rtol=1e-7, atol=1e-12)
    # the head is not scale-invariant
    with torch.no_grad():
        m.fc.weight.mul_(2.0)
    assert not torch.allclose(m(x), out1, atol=1e-3)


@pytest.mark.parametrize("depth,width", [(8, 4), (20, 8), (20, 16), (32, 16)])
def test_conv_numels_without_a_model(depth, width):
    """`conv_numels` gives every conv kernel's size by name, as the built model has them."""
    from bnwd.nn.models import conv_numels, resnet

    m = resnet(depth, width=width)
    assert conv_numels(depth, width) == {n: p.numel() for n, p in m.named_parameters() if p.dim() == 4}


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_pointwise_conv_equals_strided_conv(fmt):
    """A 1x1 conv at stride 2 is the same conv at stride 1 on x[:, :, ::2, ::2]: PointwiseConv's
    output and its gradients (input and weight) equal nn.Conv2d's, in both layouts."""
    from bnwd.nn.models import PointwiseConv

    torch.manual_seed(0)
    a = PointwiseConv(8, 16, 1, stride=2, bias=False).to(memory_format=fmt)
    b = torch.nn.Conv2d(8, 16, 1, stride=2, bias=False)
    b.weight.data.copy_(a.weight.data)
    x = torch.randn(4, 8, 15, 15)  # odd size: the last row and column are kept by both
    xa = x.clone().contiguous(memory_format=fmt).requires_grad_()
    xb = x.clone().requires_grad_()
    ya, yb = a(xa), b(xb)
    assert ya.shape == yb.shape == (4, 16, 8, 8)
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(yb)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.weight.grad, b.weight.grad, rtol=1e-5, atol=1e-5)


def test_channels_last_shortcut_backward_does_not_hang():
    """The channels_last backward of bnwd's 1x1 stride-2 shortcut + BN finishes in a child
    process (oneDNN's strided 1x1 kernel, which hangs on some AVX2 CPUs, is never called)."""
    from fakes import benchmark_script

    assert benchmark_script("channels_last_hang").run(threads=2, k=1, stride=2, timeout=60.0, bnwd=True) == "ok"


def test_folded_copy_is_the_same_function_in_eval_mode():
    """`folded()` puts each eval-mode BN, g (x - mu) / sqrt(var + eps) + b, into the conv before
    it: the copy has no BN left and gives the model's eval outputs to float rounding, in both
    layouts (the strided 1x1 shortcuts included); the model itself is left as it was."""
    torch.manual_seed(0)
    m = resnet(8, width=8, bn_eps=1e-3)
    with torch.no_grad():
        for _ in range(3):
            m.train()(torch.randn(16, 3, 32, 32))  # running statistics away from 0 and 1
    before = {k: v.clone() for k, v in m.state_dict().items()}
    f = m.folded()
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in f.modules())
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(8, 3, 32, 32).contiguous(memory_format=fmt)
        torch.testing.assert_close(f(x), m.eval()(x), rtol=1e-4, atol=1e-5)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())


def test_groups_of_norm_layers_and_conv_biases():
    """Every normalization layer of NORM_TYPES (RMSNorm included) puts its affine parameters in
    `bn`; a conv's kernel is `conv`, its bias `head` (only the kernel is scale-invariant)."""
    norms = [torch.nn.BatchNorm2d(4), torch.nn.GroupNorm(2, 4), torch.nn.LayerNorm(4), torch.nn.InstanceNorm2d(4)]
    if hasattr(torch.nn, "RMSNorm"):
        norms.append(torch.nn.RMSNorm(4))
    for m in norms:
        assert isinstance(m, NORM_TYPES) and group_of(m) == "bn", type(m).__name__
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=True), *norms[:1], torch.nn.Linear(4, 2))
    named = {g["name"]: g["param_names"] for g in param_groups(model, 1e-4)}
    assert named == {"conv": ["0.weight"], "bn": ["1.weight", "1.bias"], "head": ["0.bias", "2.weight", "2.bias"]}
