"""Which parameters are scale-invariant: checked numerically, not guessed from names or types.

A parameter w is scale-invariant when f(c w) = f(w) for all c > 0 (training mode). Then
d/dc f(c w) = <grad f, w> = 0 at c = 1: the gradient is orthogonal to w, and g(c w) = g(w)/c.
We test both at a generic point, on a float64 copy of the model:
  - affine parameters of normalization layers and all biases are randomized (gamma = 1,
    beta = 0 at init could make some accidental structure look invariant);
  - normalization eps is set to 1e-12 on the copy: eps only breaks invariance by O(eps / var),
    and the question asked is structural (does a norm layer undo this scale?);
  - outputs with w -> c w for c in `scales` are compared to the original (relative change),
    and |cos(grad, w)| of a generic scalar loss (fixed random projection of the output) is reported.
"""
from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass

import torch
import torch.nn as nn

from .errors import ConfigError

TOL = 1e-7


@dataclass
class InvarianceResult:
    invariant: bool
    reason: str
    max_rel_change: float
    cos_grad_w: float


def _generic_copy(model: nn.Module, seed: int) -> nn.Module:
    m = copy.deepcopy(model).double().train()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)):
                mod.eps = 1e-12
                if getattr(mod, "weight", None) is not None:
                    mod.weight.copy_(1 + 0.3 * torch.randn(mod.weight.shape, generator=g, dtype=torch.float64))
            b = getattr(mod, "bias", None)
            if isinstance(b, nn.Parameter):
                b.copy_(0.3 * torch.randn(b.shape, generator=g, dtype=torch.float64))
    return m


def _out(m: nn.Module, x) -> torch.Tensor:
    y = m(x)
    return y if isinstance(y, torch.Tensor) else torch.cat([t.reshape(-1) for t in y])


def invariance_report(model: nn.Module, example_input: torch.Tensor, scales=(0.5, 2.0), seed: int = 0) -> dict[str, InvarianceResult]:
    """{name: InvarianceResult} for every trainable parameter (see the module docstring)."""
    m = _generic_copy(model, seed)
    x = example_input.double() if example_input.is_floating_point() else example_input
    params = dict(m.named_parameters())
    y0 = _out(m, x)
    proj = torch.randn(y0.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=y0.dtype)
    m.zero_grad()
    (y0 * proj).sum().backward()
    y0 = y0.detach()
    scale = y0.norm().clamp_min(1e-300)
    out = {}
    with torch.no_grad():
        for name, p in params.items():
            if not p.requires_grad:
                continue
            keep = p.detach().clone()
            change = 0.0
            for c in scales:
                p.mul_(c)
                change = max(change, float((_out(m, x) - y0).norm() / scale))
                p.copy_(keep)
            gr = p.grad
            cos = float((gr * keep).sum() / (gr.norm() * keep.norm()).clamp_min(1e-300)) if gr is not None else 0.0
            inv = change < TOL
            if inv:
                reason = f"output unchanged under w -> c w, c in {list(scales)} (max rel change {change:.1e}); grad orthogonal to w (cos {cos:+.1e})"
            else:
                reason = f"output changes under w -> c w (max rel change {change:.2g}); cos(grad, w) {cos:+.2g}"
            out[name] = InvarianceResult(inv, reason, change, cos)
    return out


def find_scale_invariant(model: nn.Module, example_input: torch.Tensor) -> dict[str, bool]:
    """{param_name: True if the training-mode output is unchanged when that parameter is scaled}."""
    return {k: v.invariant for k, v in invariance_report(model, example_input).items()}


def audit(model: nn.Module, example_input: torch.Tensor, weight_decay: dict[str, float] | None = None) -> list[dict]:
    """One row per parameter: name, shape, invariant, evidence, L2 coefficient and what that L2 does:
    on a scale-invariant weight it only controls the effective lr (lr / ||w||^2); elsewhere it regularizes."""
    rep = invariance_report(model, example_input)
    wd = weight_decay or {}
    rows = []
    for name, p in model.named_parameters():
        if name not in rep:
            continue
        r, l2 = rep[name], float(wd.get(name, 0.0))
        role = "none" if l2 == 0 else ("effective-lr control" if r.invariant else "regularizer")
        rows.append({"name": name, "shape": "x".join(map(str, p.shape)), "invariant": r.invariant, "evidence": r.reason,
                     "l2": l2, "role": role})
    return rows


def format_audit(rows: list[dict]) -> str:
    heads = ("parameter", "shape", "invariant", "L2", "L2 acts as", "evidence")
    table = [(r["name"], r["shape"], "yes" if r["invariant"] else "no", f"{r['l2']:g}", r["role"], r["evidence"]) for r in rows]
    widths = [max(len(h), *(len(t[i]) for t in table)) if table else len(h) for i, h in enumerate(heads[:-1])]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    lines = [fmt.format(*heads), fmt.format(*("-" * w for w in widths), "-" * 8)] + [fmt.format(*t) for t in table]
    n_inv = sum(r["invariant"] for r in rows)
    lines.append(f"\n{n_inv} of {len(rows)} parameters are scale-invariant; L2 on them only sets their effective "
                 "learning rate (lr / ||w||^2 with SGD).")
    return "\n".join(lines)


def load_factory(spec: str):
    """'resnet20', 'resnetN' (any 6n+2) or 'package.module:factory' -> a callable returning a model."""
    from . import models
    if spec == "resnet20":
        return models.resnet20
    if spec.startswith("resnet") and spec[6:].isdigit():
        return lambda: models.resnet(int(spec[6:]))
    if ":" not in spec:
        raise ConfigError(f"--model {spec!r}: use resnet20, resnetN or package.module:factory")
    mod, fn = spec.split(":", 1)
    try:
        f = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"--model {spec!r}: cannot load it ({e})") from None
    if not callable(f):
        raise ConfigError(f"--model {spec!r} is not callable")
    return f
