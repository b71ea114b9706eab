"""Parameter groups, learning-rate schedules and optimizers.

Groups are a pure function of the model (timm style): each a dict with a `"name"`
(`conv`, `bn`, `head`), its `params`, their `param_names` and its own L2 coefficient.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn as nn

from bnwd.nn.models import NORM_TYPES

GROUPS = ("conv", "bn", "head")


def group_of(module: nn.Module) -> str:
    """`conv` for conv kernels, `bn` for normalization affine params, `head` for the rest."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(module, NORM_TYPES):
        return "bn"
    return "head"


def parameter_group(module: nn.Module, pname: str) -> str:
    """The group of `module`'s own parameter `pname`: `group_of(module)`, except that a conv's
    parameters other than its kernel (a bias) are `head`."""
    g = group_of(module)
    return "head" if g == "conv" and pname != "weight" else g


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
            buckets[parameter_group(module, pname)].append((f"{mname}.{pname}" if mname else pname, p))
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


ARTICLE_STAGES = (0.0, 50.0, 100.0, 150.0)  # the article's lr stages, in epochs


def article_piecewise(epoch: float) -> float:
    """The article's hand-fitted piecewise-linear `p(epoch)`, its fit of S(0) / S_ref(epoch)
    (the baseline's initial over current sum of squared conv weights; 150-epoch schedule):

        1 - 0.05 e (e < 10); 0.5 - 0.0025 (e - 10) (e < 50); 0.4 + 0.006 (e - 50) (e < 100);
        0.7 + 0.001 (e - 100) after.

    The article's TF code multiplies the conv gradients by `p(epoch) * S(t) / 800`.
    """
    e = float(epoch)
    if e < 10:
        return 1.0 - 0.05 * e
    if e < 50:
        return 0.5 - 0.0025 * (e - 10)
    if e < 100:
        return 0.4 + 0.006 * (e - 50)
    return 0.7 + 0.001 * (e - 100)


def article_epoch(epoch: float, milestones: Sequence[float], epochs: float) -> float:
    """Map a run's epoch onto the article's 150-epoch schedule, lr stage k onto stage k, linearly.

    A run with milestones (m1, m2) and `epochs` E has stages [0, m1), [m1, m2), [m2, E]; the
    article's are [0, 50), [50, 100), [100, 150]. With the blog preset this is the identity.
    """
    m = sorted(float(x) for x in milestones)
    if len(m) != 2:
        raise ValueError(f"the article's schedule has two lr drops; got milestones {list(milestones)}")
    bounds = (0.0, m[0], m[1], float(epochs))
    k = min(max(bisect.bisect_right(bounds, float(epoch)) - 1, 0), 2)
    lo, hi = bounds[k], bounds[k + 1]
    a_lo, a_hi = ARTICLE_STAGES[k], ARTICLE_STAGES[k + 1]
    return a_lo + (a_hi - a_lo) * (float(epoch) - lo) / (hi - lo)


def lr_factor(sq: torch.Tensor, sq_ref: torch.Tensor | float, adam: bool = False) -> torch.Tensor:
    """The article's replacement of conv L2: the factor `S(t) / S_ref(t)` by which the conv layers'
    gradients are multiplied, so that their effective lr, lr * factor / S, is the baseline's lr / S_ref.

    `sq`: current sum(s) of squared conv weights (one value, or one per layer); `sq_ref`: the
    baseline's at the same point. For Adam-type optimizers the effective lr goes as lr / ||w||,
    and a gradient factor cancels in m / sqrt(v): the factor `sqrt(S / S_ref)` must scale the
    conv group's *learning rate* instead (`adam=True` returns that square root).
    """
    f = sq / sq_ref
    return f.sqrt() if adam else f


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
