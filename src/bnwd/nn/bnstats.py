"""Views of the BN statistics: the same weights evaluated with other running statistics.

In training mode BN normalizes with the batch's statistics; its running averages are used only
at evaluation. So a trained network can be evaluated with several sets of statistics, on the
same weights and the same test images, and the differences between those evaluations isolate
the cost of the running averages' lag (the article's BN-lag finding):

- ``own``: the run's running statistics (momentum m);
- ``bn098``: a shadow set at the article's fix, TF decay 0.98 (`config.bn098_momentum`);
- ``comp``: norm-compensated statistics. BN channel c is invariant to the scale of the filter
  w_c that feeds it, so its batch mean scales with ||w_c|| and its variance with ||w_c||^2. The
  shadow keeps EMAs, at the run's own momentum m, of mean_c / ||w_c|| and var_c / ||w_c||^2, and
  multiplies them back by the current ||w_c|| at evaluation. This removes exactly the part of the
  lag that comes from the filters' growth (or shrinkage) and keeps the part that comes from
  their rotation; with constant norms it equals ``own``;
- ``precise``: statistics recomputed at the current weights from N augmented training batches
  (a cumulative average, `torch.optim.swa_utils.update_bn`), on a copy of the model and from a
  batch stream of its own: no lag at all, up to the sampling error of N batches.

The shadows need no pass over the activations. A BN forward in training mode moves its running
statistic by r' = (1 - m) r + m b, where b is the batch statistic PyTorch just computed (the
variance unbiased), so b = (r' - (1 - m) r) / m, from r (kept by a forward pre-hook) and r'
(read by a forward hook); each shadow then moves by s' = (1 - a) s + a b'. O(channels) per BN
per step. Float64 keeps the 1/m amplification of r's float32 rounding at the 1e-6 level.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
import torch.nn as nn
from torch.optim.swa_utils import update_bn

VIEWS = ("own", "bn098", "comp", "precise")


def filter_norms(conv: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """||w_c|| of every output channel c of a conv kernel."""
    return conv.weight.detach().flatten(1).to(dtype).norm(dim=1)


class ShadowBNStats:
    """Running BN statistics kept beside the model's own, at momentum `momentum`.

    With `convs` (the conv feeding each BN, aligned with the model's BN modules in
    `model.modules()` order) the shadow is norm-compensated (the ``comp`` view): it averages
    mean / ||w_c|| and var / ||w_c||^2 and `swapped()` multiplies back by the current norms."""

    def __init__(self, model: nn.Module, momentum: float, convs: list[nn.Module] | None = None):
        self.momentum = momentum
        self.bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for bn in self.bns:
            if bn.momentum is None or not bn.track_running_stats:
                raise ValueError(f"{bn}: a shadow needs running statistics with a fixed momentum")
        if convs is not None and len(convs) != len(self.bns):
            raise ValueError(f"{len(convs)} convs for {len(self.bns)} BN layers")
        self.convs = convs
        dev = self.bns[0].running_mean.device if self.bns else torch.device("cpu")
        self.dtype = torch.float32 if dev.type == "mps" else torch.float64
        self.mean, self.var = [], []
        for i, bn in enumerate(self.bns):
            n = self._norms(i)
            self.mean.append(bn.running_mean.detach().to(self.dtype, copy=True) / n)
            self.var.append(bn.running_var.detach().to(self.dtype, copy=True) / (n * n))
        self.prev = [torch.zeros_like(m) for m in self.mean] + [torch.zeros_like(v) for v in self.var]
        self.handles = []
        for i, bn in enumerate(self.bns):
            self.handles.append(bn.register_forward_pre_hook(self._keep(i)))
            self.handles.append(bn.register_forward_hook(self._update(i)))

    def _norms(self, i: int) -> torch.Tensor | float:
        return 1.0 if self.convs is None else filter_norms(self.convs[i], self.dtype)

    def _keep(self, i: int):
        n = len(self.bns)

        def pre_hook(module, args):
            if module.training:
                with torch.no_grad():
                    self.prev[i].copy_(module.running_mean)
                    self.prev[n + i].copy_(module.running_var)

        return pre_hook

    def _update(self, i: int):
        n = len(self.bns)

        def hook(module, args, output):
            if not module.training:
                return
            m, a = module.momentum, self.momentum
            with torch.no_grad():
                # the filter that produced this batch: the conv ran just before, with these weights
                w = self._norms(i)
                for s, r, r0, scale in ((self.mean[i], module.running_mean, self.prev[i], w),
                                        (self.var[i], module.running_var, self.prev[n + i], w * w)):  # fmt: skip
                    b = (r.to(self.dtype) - (1 - m) * r0) / m
                    s.lerp_(b / scale, a)

        return hook

    @contextlib.contextmanager
    def swapped(self):
        """The model's running statistics replaced by this shadow's (restored on exit)."""
        saved = [(bn.running_mean.clone(), bn.running_var.clone()) for bn in self.bns]
        try:
            for i, (bn, m, v) in enumerate(zip(self.bns, self.mean, self.var)):
                n = self._norms(i)
                bn.running_mean.copy_(m * n)
                bn.running_var.copy_(v * n * n)
            yield
        finally:
            for bn, (m, v) in zip(self.bns, saved):
                bn.running_mean.copy_(m)
                bn.running_var.copy_(v)

    def state_dict(self) -> dict:
        return {
            "momentum": self.momentum,
            "compensated": self.convs is not None,
            "mean": [m.cpu() for m in self.mean],
            "var": [v.cpu() for v in self.var],
        }

    def load_state_dict(self, st: dict) -> None:
        if len(st["mean"]) != len(self.bns):
            raise ValueError(f"shadow BN state has {len(st['mean'])} layers, the model {len(self.bns)}")
        if bool(st.get("compensated", False)) != (self.convs is not None):
            raise ValueError("shadow BN state is of another kind (norm-compensated or not)")
        self.mean = [m.to(b.running_mean.device, self.dtype) for m, b in zip(st["mean"], self.bns)]
        self.var = [v.to(b.running_var.device, self.dtype) for v, b in zip(st["var"], self.bns)]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@torch.no_grad()
def precise_stats(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Replace `model`'s running BN statistics by their cumulative average over `batches`
    (training-mode forwards, no gradients): the ``precise`` view. `model` should be a copy; its
    BN momenta and training mode are restored. Returns `model`."""
    update_bn(batches, model)
    return model
