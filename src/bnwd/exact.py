"""The exact weight-decay -> learning-rate transform for scale-invariant weights.

SGD with momentum mu (PyTorch: b = mu b + g + lam w, w -= lr_t b) and L2 coefficient lam
on a group of scale-invariant weights (conv followed by BN). With a zero gradient that
optimizer shrinks a weight by the scalar sequence

    s_0 = 1,  s_1 = 1 - lr_0 lam,
    s_{t+1} = (1 + r_t mu - lr_t lam) s_t - r_t mu s_{t-1},   r_t = lr_t / lr_{t-1}.

Because g(c w) = g(w) / c for such weights, training the group WITHOUT weight decay at
lr~_t = lr_t / (s_t s_{t+1}) gives w~_t = w_t / s_t at every step: the same direction,
hence the same network function in training mode, for any schedule lr_t. It is exact
when BN's eps is negligible, and exact with eps if the BN after each weight uses
eps / s_t^2. The transformed pre-BN activations are 1/s_t times the baseline's, so BN
running statistics rescaled by s_t/s_{t+1} (mean) and its square (variance) after each
step make eval mode match too.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn

from .errors import ConfigError


def decay_scales(lrs: Sequence[float], momentum: float, weight_decay: float) -> np.ndarray:
    """s_0..s_T (length T+1, float64) of the recursion above for per-step learning rates lrs[0..T-1].

    s_t is what SGD with momentum `momentum` and L2 `weight_decay` makes of a weight w_0 = 1
    whose loss gradient is zero, starting from a zero momentum buffer.
    """
    lrs = np.asarray(lrs, dtype=np.float64)
    s = np.ones(len(lrs) + 1)
    s_prev, lr_prev = 1.0, (lrs[0] if len(lrs) else 1.0)
    for t, lr in enumerate(lrs):
        r = lr / lr_prev
        s[t + 1] = (1 + r * momentum - lr * weight_decay) * s[t] - r * momentum * s_prev
        s_prev, lr_prev = s[t], lr
    return s


def following_norms(model: nn.Module, params: Iterable[nn.Parameter]) -> dict[int, nn.modules.batchnorm._BatchNorm]:
    """For each conv weight (by id), the BN layer that consumes that conv's output.

    Traced with torch.fx when the model is traceable (a BN whose input node is the conv);
    otherwise the next BN in `named_modules()` order with as many features as the conv has
    output channels (right for models that register each conv just before its BN).
    """
    ids = {id(p) for p in params}
    convs = {name: m for name, m in model.named_modules()
             if isinstance(m, nn.modules.conv._ConvNd) and id(m.weight) in ids}
    found: dict[int, nn.modules.batchnorm._BatchNorm] = {}
    try:
        import torch.fx
        gm = torch.fx.symbolic_trace(model)
        mods = dict(gm.named_modules())
        for node in gm.graph.nodes:
            if node.op == "call_module" and node.target in convs:
                for user in node.users:
                    m = mods.get(user.target) if user.op == "call_module" else None
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        found[id(convs[node.target].weight)] = dict(model.named_modules())[user.target]
    except Exception:  # untraceable model: fall back to registration order
        found = {}
    if len(found) < len(convs):
        mods = list(model.named_modules())
        for i, (name, m) in enumerate(mods):
            if name in convs and id(m.weight) not in found:
                for _, nxt in mods[i + 1:]:
                    if isinstance(nxt, nn.modules.batchnorm._BatchNorm) and nxt.num_features == m.out_channels:
                        found[id(m.weight)] = nxt
                        break
    missing = [n for n, m in convs.items() if id(m.weight) not in found]
    if missing:
        raise ConfigError(f"no BatchNorm found after conv {missing[0]!r}; BN eps/statistics rescaling needs one")
    return found


class WeightDecayAsLR:
    """Wrap a torch.optim.SGD: the named groups lose their weight decay and get the exact
    equivalent learning rate lr_t / (s_t s_{t+1}) instead (see the module docstring).

    The lr the user's scheduler set is read at every `step()` and restored afterwards, so
    attach torch lr schedulers to the wrapped optimizer (`wrapper.optimizer`) as usual.
    The recursion's state lives in the optimizer's param groups (keys `wd_as_lr`, `s`,
    `s_prev`, `lr_prev`), so `state_dict`/`load_state_dict` resume exactly.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, groups: Sequence[str] = ("conv",), model: nn.Module | None = None,
                 rescale_bn_eps: bool = False, rescale_bn_stats: bool = False):
        if type(optimizer) is not torch.optim.SGD:
            raise ConfigError(f"WeightDecayAsLR needs torch.optim.SGD, got {type(optimizer).__name__}: the transform is derived for SGD with momentum")
        names = [g.get("name") for g in optimizer.param_groups]
        unknown = [g for g in groups if g not in names]
        if unknown:
            raise ConfigError(f"unknown parameter group(s) {unknown}; the optimizer's groups are {names}")
        self.optimizer = optimizer
        self.groups = [g for g in optimizer.param_groups if g.get("name") in groups]
        for g in self.groups:
            if g.get("nesterov") or g.get("dampening", 0) != 0 or g.get("maximize"):
                raise ConfigError("WeightDecayAsLR supports SGD with plain momentum only (no nesterov, dampening or maximize)")
            if "wd_as_lr" not in g:
                g["wd_as_lr"], g["weight_decay"] = g["weight_decay"], 0.0
                g["s"], g["s_prev"], g["lr_prev"] = 1.0, 1.0, None
        if (rescale_bn_eps or rescale_bn_stats) and model is None:
            raise ConfigError("rescale_bn_eps / rescale_bn_stats need model=")
        self.rescale_bn_eps, self.rescale_bn_stats = rescale_bn_eps, rescale_bn_stats
        self.bns: list[list[nn.modules.batchnorm._BatchNorm]] = []
        if model is not None and (rescale_bn_eps or rescale_bn_stats):
            follow = following_norms(model, [p for g in self.groups for p in g["params"]])
            self.bns = [list({id(follow[id(p)]): follow[id(p)] for p in g["params"] if id(p) in follow}.values()) for g in self.groups]
            self.eps0 = {id(bn): bn.eps for bns in self.bns for bn in bns}

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @property
    def state(self):
        return self.optimizer.state

    @property
    def scale(self) -> dict[str, float]:
        """Current s_t per wrapped group (the baseline's weights are s_t times ours)."""
        return {g.get("name"): g["s"] for g in self.groups}

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self, closure=None):
        lrs = []
        for g in self.groups:
            lr, lam, mu = g["lr"], g["wd_as_lr"], g["momentum"]
            lr_prev = g["lr_prev"] if g["lr_prev"] is not None else lr
            r = lr / lr_prev
            s_next = (1 + r * mu - lr * lam) * g["s"] - r * mu * g["s_prev"]
            lrs.append(lr)
            g["s_next"] = s_next
            g["lr"] = lr / (g["s"] * s_next)
        try:
            loss = self.optimizer.step(closure)
        finally:
            for g, lr in zip(self.groups, lrs):
                g["lr"] = lr
        for i, g in enumerate(self.groups):
            ratio = g["s"] / g["s_next"]
            g["s_prev"], g["s"], g["lr_prev"] = g["s"], g.pop("s_next"), g["lr"]
            for bn in (self.bns[i] if self.bns else []):
                if self.rescale_bn_stats and bn.track_running_stats and bn.running_mean is not None:
                    bn.running_mean.mul_(ratio)
                    bn.running_var.mul_(ratio * ratio)
            self._set_eps(i)
        return loss

    def _set_eps(self, i: int) -> None:
        if self.rescale_bn_eps and self.bns:
            for bn in self.bns[i]:
                bn.eps = self.eps0[id(bn)] / self.groups[i]["s"] ** 2

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.optimizer.load_state_dict(state_dict)
        names = {g.get("name") for g in self.groups}
        self.groups = [g for g in self.optimizer.param_groups if g.get("name") in names]
        for i in range(len(self.groups)):
            self._set_eps(i)
