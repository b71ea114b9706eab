"""ResNet v1 for CIFAR as in TensorFlow's official/resnet (the article's network).

Every conv is bias-free and followed by BN, so every conv kernel is scale-invariant.
The first block of every stage has a 1x1 projection shortcut (stride 1 in stage 1 too).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

#: Normalization layers whose output is invariant to a positive scaling of their input (up to their
#: eps): BatchNorm and InstanceNorm (`_NormBase`), GroupNorm, LayerNorm and, where torch has it,
#: RMSNorm. Their affine parameters form the `bn` group (`optim.group_of`).
NORM_TYPES: tuple[type, ...] = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
if hasattr(nn, "RMSNorm"):
    NORM_TYPES = NORM_TYPES + (nn.RMSNorm,)

# TF truncated_normal cuts at 2 std; its variance is 0.87962566^2 of the untruncated one.
_TRUNC_STD = 0.87962566103423978


def variance_scaling_(w: torch.Tensor) -> torch.Tensor:
    """Fan-in variance scaling (TF `variance_scaling_initializer()`): E[w^2] = 1/fan_in.

    So a conv with `out` output channels starts with sum(w^2) ~= out, and ResNet-20's
    22 convs (sum of out_channels = 800) start near the article's `initial_conv2d_sqsum`.
    """
    fan_in = w[0].numel()
    std = math.sqrt(1.0 / fan_in) / _TRUNC_STD
    with torch.no_grad():
        return nn.init.trunc_normal_(w, 0.0, std, -2 * std, 2 * std)


class PointwiseConv(nn.Conv2d):
    """A 1x1 conv. At stride s on CPU it convolves every s-th pixel at stride 1: the same function.

    Why: oneDNN's channels_last backward of a strided 1x1 conv hangs or segfaults on some AVX2
    CPUs (`benchmarks/channels_last_hang.py`); the stride-1 kernel does not, and channels_last
    is the faster layout for the 3x3 convs. Same parameters, state dict and hooks as nn.Conv2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sh, sw = self.stride
        if x.device.type != "cpu" or (sh, sw) == (1, 1):
            return super().forward(x)
        return F.conv2d(x[:, :, ::sh, ::sw], self.weight, self.bias)


def conv(cin: int, cout: int, k: int, stride: int) -> nn.Conv2d:
    # TF conv2d_fixed_padding: 'SAME' at stride 1, explicit (k-1)//2 pad at stride 2;
    # both equal PyTorch padding=(k-1)//2 for odd k (3x3 -> 1, 1x1 -> 0).
    cls = PointwiseConv if k == 1 else nn.Conv2d
    c = cls(cin, cout, k, stride=stride, padding=(k - 1) // 2, bias=False)
    variance_scaling_(c.weight)
    return c


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, + shortcut (optionally 1x1 conv + BN), ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, project: bool, bn_momentum: float, bn_eps: float):
        super().__init__()
        self.conv1 = conv(cin, cout, 3, stride)
        self.bn1 = nn.BatchNorm2d(cout, eps=bn_eps, momentum=bn_momentum)
        self.conv2 = conv(cout, cout, 3, 1)
        self.bn2 = nn.BatchNorm2d(cout, eps=bn_eps, momentum=bn_momentum)
        if project:
            self.proj = conv(cin, cout, 1, stride)
            self.proj_bn = nn.BatchNorm2d(cout, eps=bn_eps, momentum=bn_momentum)
        else:
            self.proj = self.proj_bn = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.proj is None else self.proj_bn(self.proj(x))
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + shortcut)


class ResNetV1(nn.Module):
    """CIFAR ResNet v1 of depth 6n+2: stem conv3x3-BN-ReLU, 3 stages of n blocks, GAP, dense."""

    def __init__(
        self, depth: int = 20, width: int = 16, num_classes: int = 10, bn_momentum: float = 0.003, bn_eps: float = 1e-5
    ):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"ResNet v1 depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...), got {depth}")
        n = (depth - 2) // 6
        self.depth, self.width = depth, width
        self.conv = conv(3, width, 3, 1)
        self.bn = nn.BatchNorm2d(width, eps=bn_eps, momentum=bn_momentum)
        stages, cin = [], width
        for i, stride in enumerate((1, 2, 2)):
            cout = width * 2**i
            blocks = [
                BasicBlock(cin if j == 0 else cout, cout, stride if j == 0 else 1, j == 0, bn_momentum, bn_eps)
                for j in range(n)
            ]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, num_classes)
        nn.init.xavier_uniform_(self.fc.weight)  # TF dense default: Glorot uniform, zero bias
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        x = self.stages(x)
        return self.fc(x.mean(dim=(2, 3)))

    def folded(self) -> ResNetV1:
        """An inference copy with every BN folded into the conv before it: in eval mode BN is the
        affine map y = g (x - mu) / sqrt(var + eps) + b, so conv-then-BN is one conv with weight
        w g / sqrt(var + eps) and bias b - g mu / sqrt(var + eps). The same function up to float
        rounding, one pass over each activation fewer (evaluation 1.19x faster on 2 CPU cores at
        width 8). Built from the current weights and running statistics; the model is untouched."""
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        m = copy.deepcopy(self).eval()
        for owner, c, b in m._conv_bn_slots():
            setattr(owner, c, fuse_conv_bn_eval(getattr(owner, c), getattr(owner, b)))
            setattr(owner, b, nn.Identity())
        return m

    def _conv_bn_slots(self) -> list[tuple[nn.Module, str, str]]:
        """(owner, conv attribute, BN attribute) of every conv-BN pair, in `modules()` order of the BNs."""
        slots = [(self, "conv", "bn")]
        for block in self.modules():
            if isinstance(block, BasicBlock):
                slots += [(block, "conv1", "bn1"), (block, "conv2", "bn2")]
                if block.proj is not None:
                    slots.append((block, "proj", "proj_bn"))
        return slots

    def bn_inputs(self) -> list[nn.Conv2d]:
        """The conv that feeds each BN layer, aligned with the BN layers in `modules()` order
        (each BN channel c normalizes the output of filter c of that conv)."""
        slots = {id(getattr(o, b)): getattr(o, c) for o, c, b in self._conv_bn_slots()}
        return [slots[id(m)] for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def resnet(depth: int = 20, **kw) -> ResNetV1:
    """TF-official CIFAR ResNet v1 of any depth 6n+2 (`width`, `bn_momentum`, `bn_eps` optional)."""
    return ResNetV1(depth, **kw)


def resnet20(**kw) -> ResNetV1:
    """The article's network: ResNet-20 v1, 22 bias-free convs each followed by BN, dense 64->10."""
    return ResNetV1(20, **kw)


def conv_numels(depth: int = 20, width: int = 16) -> dict[str, int]:
    """Entries of each conv kernel of `resnet(depth, width=width)`, by parameter name, without
    building the model (for plots of finished runs)."""
    out = {"conv.weight": 3 * 9 * width}
    cin = width
    for i in range(3):
        cout = width * 2**i
        for j in range((depth - 2) // 6):
            c = cin if j == 0 else cout
            out[f"stages.{i}.{j}.conv1.weight"] = c * 9 * cout
            out[f"stages.{i}.{j}.conv2.weight"] = cout * 9 * cout
            if j == 0:
                out[f"stages.{i}.{j}.proj.weight"] = c * cout
        cin = cout
    return out


def conv_sqsum(model: nn.Module) -> float:
    """Sum of squared conv kernel entries (the article's `conv2d_sqsum`)."""
    return float(
        sum(m.weight.detach().float().pow(2).sum() for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd))
    )
