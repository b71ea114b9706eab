"""Parameter groups, learning-rate schedules and optimizers.

Groups are a pure function of the model (timm style): each a dict with a `"name"`
(`conv`, `bn`, `head`), its `params`, their `param_names` and its own L2 coefficient.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping

import torch
import torch.nn as nn

GROUPS = ("conv", "bn", "head")


def group_of(module: nn.Module) -> str:
    """`conv` for conv kernels, `bn` for normalization affine params, `head` for the rest."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
        return "bn"
    return "head"


def param_groups(model: nn.Module, weight_decay: float | Mapping[str, float] = 0.0) -> list[dict]:
    """Split `model`'s trainable parameters into named groups `conv`, `bn`, `head`.

    `weight_decay` is one L2 coefficient for all groups or a mapping group -> coefficient
    (missing groups get 0). Conv biases (none in our ResNet) go to `head`: only the kernel
    of a conv followed by BN is scale-invariant. Empty groups are dropped.
    """
    wd = {g: float(weight_decay) for g in GROUPS} if isinstance(weight_decay, (int, float)) else dict(weight_decay)
    unknown = set(wd) - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown parameter group(s) {sorted(unknown)}; groups are {list(GROUPS)}")
    buckets: dict[str, list[tuple[str, nn.Parameter]]] = {g: [] for g in GROUPS}
    seen: set[int] = set()
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            g = group_of(module)
            if g == "conv" and pname != "weight":
                g = "head"
            buckets[g].append((f"{mname}.{pname}" if mname else pname, p))
    return [
        {"name": g, "params": [p for _, p in ps], "param_names": [n for n, _ in ps], "weight_decay": wd.get(g, 0.0)}
        for g, ps in buckets.items()
        if ps
    ]


def step_lr(step: int, steps_per_epoch: int, base_lr: float, milestones: Iterable[float], gamma: float = 0.1) -> float:
    """Piecewise-constant schedule: `base_lr * gamma^k` after the k-th milestone (in epochs).

    The article: base 0.1, milestones (50, 100), gamma 0.1 -> 0.1 / 0.01 / 0.001.
    Evaluated from the step count, so resuming needs no scheduler state.
    """
    epoch = step / steps_per_epoch
    return base_lr * gamma ** bisect.bisect_right(sorted(milestones), epoch)


def article_lr_factor(epoch: float | torch.Tensor):
    """The article's hand-fitted piecewise-linear S_ref(t)/S(0) of the baseline run (150 epochs).

    1 - 0.05 e (e < 10); 0.5 - 0.0025 (e - 10) (e < 50); 0.4 + 0.006 (e - 50) (e < 100);
    0.7 + 0.001 (e - 100) after. The conv gradients get multiplied by S(t) / (S(0) * this).
    """
    e = epoch
    if isinstance(e, torch.Tensor):
        return torch.where(
            e < 10,
            1 - 0.05 * e,
            torch.where(
                e < 50, 0.5 - 0.0025 * (e - 10), torch.where(e < 100, 0.4 + 0.006 * (e - 50), 0.7 + 0.001 * (e - 100))
            ),
        )
    if e < 10:
        return 1.0 - 0.05 * e
    if e < 50:
        return 0.5 - 0.0025 * (e - 10)
    if e < 100:
        return 0.4 + 0.006 * (e - 50)
    return 0.7 + 0.001 * (e - 100)


def make_optimizer(
    groups: list[dict], name: str, lr: float, momentum: float = 0.9, betas: tuple[float, float] = (0.9, 0.999)
) -> torch.optim.Optimizer:
    """`sgd`: torch SGD with momentum, L2 via `weight_decay` (= TF MomentumOptimizer + L2 loss
    `wd * sum(w^2)/2`); `adam`: Adam with coupled L2; `adamw`: decoupled weight decay."""
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=betas)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas)
    raise ValueError(f"unknown optimizer {name!r}: sgd, adam or adamw")
