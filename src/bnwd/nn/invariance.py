"""Which parameters are scale-invariant, decided numerically (not from names or layer types).

A parameter w is scale-invariant when the network's training-mode output satisfies
f(c w) = f(w) for every c > 0. Then (Euler / chain rule) the gradient of any loss is
orthogonal to w, <g(w), w> = d/dc L(c w)|_{c=1} = 0, and it scales as g(c w) = g(w) / c.
L2 weight decay on such a w cannot regularize (a smaller w is the same function); it only
controls ||w|| and hence the effective learning rate lr / ||w||^2 (docs/theory.md).

The test, on a float64 deep copy in training mode (batch statistics):

1. a generic point: every parameter is jittered, p += perturb * rms(p) * xi (xi standard
   normal; an all-zero p gets perturb * xi), so that special initial values do not create
   invariances the architecture does not have: with BN beta = 0, relu(c gamma x^) =
   c relu(gamma x^), so gamma of a BN feeding ReLU -> conv -> BN would look invariant at
   init and stop being so as soon as beta moves; a zero bias is trivially "unchanged" by
   scaling;
2. the eps of every normalization layer is set to `norm_eps` (1e-12): with eps a BN
   computes (x - m) / sqrt(v + eps), which is invariant to x -> c x only up to terms of
   order eps / v; at the default 1e-5 these are 1e-5-sized changes, too close to a small
   genuine dependence; at 1e-12 in float64 they sit at round-off level, so the verdict is
   "invariant up to the norm layers' eps", which is what matters for weight decay;
3. for each parameter and each c in `scales` (positive only: a ReLU is positively
   homogeneous, relu(c x) = c relu(x) for c > 0 but not c < 0, so conv -> ReLU -> BN is
   invariant for c > 0 only), w -> c w and compare the outputs (relative change
   ||f(cw) - f(w)|| / ||f(w)||); and check the gradient of a generic scalar loss (a fixed
   random projection of the outputs, sum(R * f), unless `loss_fn` is given) is
   orthogonal to w (|cos| tiny) and satisfies c g(c w) = g(w).

Invariant when all three hold to `rtol`. A parameter whose gradient is zero and whose
scaling changes nothing does not affect the output at all (e.g. BN beta before a
padding-free conv and another BN): it is reported invariant, with "no effect" evidence.
"""

from __future__ import annotations

import copy
import importlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from bnwd.errors import ConfigError
from bnwd.nn import models
from bnwd.nn.models import NORM_TYPES
from bnwd.nn.optim import parameter_group


@dataclass
class InvarianceResult:
    """Evidence for one parameter (or a set of parameters scaled jointly).

    invariant:        f(c w) = f(w) for every c in `scales`, grad orthogonal to w, c g(c w) = g(w)
    reason:           one line of evidence
    max_rel_change:   max over c of ||f(c w) - f(w)|| / ||f(w)|| (train-mode outputs)
    cos_grad_w:       <g, w> / (||g|| ||w||) at the generic point (0 when g = 0)
    grad_scale_ratio: c ||g(c w)|| / ||g(w)|| for the c farthest from 1 (1 for invariant)
    grad_rel_err:     max over c of ||c g(c w) - g(w)|| / ||g(w)||
    no_effect:        the output does not depend on the parameter at all (zero gradient)
    """

    invariant: bool
    reason: str
    max_rel_change: float
    cos_grad_w: float
    grad_scale_ratio: float
    grad_rel_err: float = math.nan
    no_effect: bool = False


def _floats(obj: Any) -> list[torch.Tensor]:
    """Floating tensors of a model output (tensor, tuple/list, dict, dataclass-like)."""
    if isinstance(obj, torch.Tensor):
        return [obj] if obj.is_floating_point() or obj.is_complex() else []
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in _floats(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _floats(v)]
    return []


def _to_double(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().double() if obj.is_floating_point() else obj
    if isinstance(obj, Mapping):
        return {k: _to_double(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_double(v) for v in obj)
    return obj


class _Probe:
    """A float64, train-mode, jittered, small-eps copy of a model with a generic scalar loss."""

    def __init__(
        self, model: nn.Module, example_input: Any, loss_fn: Callable | None, norm_eps: float, perturb: float, seed: int
    ):
        self.model = copy.deepcopy(model).double().train()
        self.inputs = _to_double(example_input)
        self.loss_fn, self.seed = loss_fn, seed
        for m in self.model.modules():
            if isinstance(m, NORM_TYPES):
                m.eps = norm_eps
        gen = torch.Generator().manual_seed(seed)
        self.named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        with torch.no_grad():
            if perturb:
                for _, p in self.named:
                    rms = p.detach().pow(2).mean().sqrt().item() if p.numel() else 0.0
                    noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.device)
                    p.add_(noise, alpha=perturb * (rms if rms > 0 else 1.0))
        self.params = dict(self.named)
        out = self._forward()
        gen_r = torch.Generator().manual_seed(seed + 1)
        self.proj = [torch.randn(o.shape, generator=gen_r, dtype=torch.float64).to(o.device) for o in out]

    def _forward(self) -> list[torch.Tensor]:
        with torch.random.fork_rng(devices=[]):  # same dropout masks at every call (CPU RNG)
            torch.manual_seed(self.seed)
            out = self.model(*self.inputs) if isinstance(self.inputs, tuple) else self.model(self.inputs)
        outs = _floats(out)
        if not outs:
            raise ConfigError("the model returned no floating-point tensor to compare")
        self._raw = out
        return outs

    def run(self, names: Sequence[str], c: float = 1.0, grads_for: Sequence[str] | None = None):
        """Outputs (flattened) and gradients w.r.t. `grads_for` with params `names` scaled by c."""
        ps = [self.params[n] for n in names]
        saved = [p.detach().clone() for p in ps]
        try:
            with torch.no_grad():
                for p in ps:
                    p.mul_(c)
            outs = self._forward()
            if self.loss_fn is not None:
                loss = self.loss_fn(self._raw)
            else:
                loss = sum((o * r).sum() for o, r in zip(outs, self.proj))
            targets = [self.params[n] for n in (grads_for if grads_for is not None else names)]
            gs = torch.autograd.grad(loss, targets, allow_unused=True)
            gs = [torch.zeros_like(t) if g is None else g.detach() for g, t in zip(gs, targets)]
            flat = torch.cat([o.detach().reshape(-1) for o in outs])
        finally:
            with torch.no_grad():
                for p, s in zip(ps, saved):
                    p.copy_(s)
        return flat, gs


def _judge(
    probe: _Probe,
    names: Sequence[str],
    base_out: torch.Tensor,
    base_g: torch.Tensor,
    scales: Sequence[float],
    rtol: float,
) -> InvarianceResult:
    if any(c <= 0 for c in scales):
        raise ConfigError(f"scales must be positive (scale invariance is about c > 0), got {tuple(scales)}")
    w = torch.cat([probe.params[n].detach().reshape(-1) for n in names])
    wn, gn = w.norm().item(), base_g.norm().item()
    on = max(base_out.norm().item(), 1e-300)
    changes, errs, ratios = [], [], []
    for c in scales:
        out, gs = probe.run(names, c)
        g = torch.cat([x.reshape(-1) for x in gs])
        changes.append(((out - base_out).norm().item() / on, c))
        errs.append((c * g - base_g).norm().item() / gn if gn > 0 else (0.0 if g.norm() == 0 else math.inf))
        ratios.append(c * g.norm().item() / gn if gn > 0 else 1.0)
    max_change, worst_c = max(changes)
    grad_err = max(errs)
    ratio = max(ratios, key=lambda r: abs(r - 1))
    cos = float(torch.dot(base_g, w).item() / (gn * wn)) if gn > 0 and wn > 0 else 0.0
    cs = ", ".join(f"{c:g}" for c in scales)
    if wn == 0:
        return InvarianceResult(
            False,
            "parameter is exactly zero, so scaling it changes nothing and decides nothing (use perturb > 0)",
            max_change,
            cos,
            ratio,
            grad_err,
        )
    # |dL/dc| at c = 1 relative to the size of the loss terms: zero for a parameter the output ignores
    loss_scale = sum(r.norm().item() for r in probe.proj) * on
    no_effect = max_change < rtol and gn * wn <= 1e-9 * loss_scale
    if no_effect:
        return InvarianceResult(
            True,
            f"no effect on the output: gradient ~0 (|g||w| = {gn * wn:.1e}) and max rel "
            f"change {max_change:.1e} under w -> c w (c in {cs}); trivially scale-invariant",
            max_change,
            cos,
            ratio,
            grad_err,
            no_effect=True,
        )
    if max_change >= rtol:
        return InvarianceResult(
            False,
            f"output changes by {max_change:.2g} (relative) under w -> {worst_c:g} w; |cos(grad, w)| = {abs(cos):.2g}",
            max_change,
            cos,
            ratio,
            grad_err,
        )
    if abs(cos) >= rtol or grad_err >= rtol:
        return InvarianceResult(
            False,
            f"output nearly unchanged under scaling (max rel change {max_change:.1e}) but "
            f"gradient not orthogonal (|cos| {abs(cos):.1e}) or not scaling as 1/c "
            f"(rel err {grad_err:.1e})",
            max_change,
            cos,
            ratio,
            grad_err,
        )
    return InvarianceResult(
        True,
        f"output unchanged under w -> c w for c in ({cs}) (max rel change "
        f"{max_change:.1e}); grad orthogonal (|cos| {abs(cos):.1e}) and scales as 1/c "
        f"(rel err {grad_err:.1e})",
        max_change,
        cos,
        ratio,
        grad_err,
    )


def invariance_report(
    model: nn.Module,
    example_input: Any,
    loss_fn: Callable | None = None,
    scales: Sequence[float] = (0.5, 2.0),
    rtol: float = 1e-6,
    norm_eps: float = 1e-12,
    perturb: float = 0.1,
    seed: int = 0,
) -> dict[str, InvarianceResult]:
    """{parameter name: InvarianceResult} for every trainable parameter of `model`.

    Numerical test (module docstring): on a float64 train-mode deep copy, jittered to a
    generic point (`perturb`), with every norm layer's eps set to `norm_eps`, a parameter w
    is invariant when for each c in `scales` (c > 0)

        ||f(c w) - f(w)|| / ||f(w)|| < rtol,   |cos(g, w)| < rtol,   ||c g(c w) - g(w)|| / ||g(w)|| < rtol,

    with g the gradient of `loss_fn(output)` or, by default, of sum(R * output) for a fixed
    random R. `example_input` is one batch (a tensor, or a tuple of positional inputs); BN in
    train mode needs more than one value per channel. `model` itself is not modified.
    """
    probe = _Probe(model, example_input, loss_fn, norm_eps, perturb, seed)
    names = [n for n, _ in probe.named]
    base_out, base_gs = probe.run(names, 1.0)
    base = {n: g.reshape(-1) for n, g in zip(names, base_gs)}
    return {n: _judge(probe, [n], base_out, base[n], scales, rtol) for n in names}


def find_scale_invariant(
    model: nn.Module,
    example_input: Any,
    loss_fn: Callable | None = None,
    scales: Sequence[float] = (0.5, 2.0),
    rtol: float = 1e-6,
    **kw,
) -> dict[str, bool]:
    """{parameter name: is it scale-invariant}: f(c w) = f(w) for c > 0 in training mode.

    The verdicts of `invariance_report` (same arguments; see it for the numerical criterion).
    """
    return {n: r.invariant for n, r in invariance_report(model, example_input, loss_fn, scales, rtol, **kw).items()}


def joint_invariance(
    model: nn.Module,
    example_input: Any,
    names: Sequence[str],
    loss_fn: Callable | None = None,
    scales: Sequence[float] = (0.5, 2.0),
    rtol: float = 1e-6,
    norm_eps: float = 1e-12,
    perturb: float = 0.1,
    seed: int = 0,
) -> InvarianceResult:
    """Is the parameter SET `names` invariant when scaled jointly, (w_1..w_k) -> c (w_1..w_k)?

    E.g. a conv with bias before BN: neither weight nor bias alone is invariant, but
    conv(x; c W, c b) = c conv(x; W, b), so the pair is; BN gamma and beta together scale
    the BN output, so (gamma, beta) of a BN feeding (ReLU ->) conv -> BN are jointly
    invariant. Same criterion as `invariance_report`, with w the concatenation.
    """
    probe = _Probe(model, example_input, loss_fn, norm_eps, perturb, seed)
    unknown = [n for n in names if n not in probe.params]
    if unknown:
        raise ConfigError(f"unknown parameter(s) {unknown}")
    base_out, gs = probe.run(list(names), 1.0)
    g = torch.cat([x.reshape(-1) for x in gs])
    return _judge(probe, list(names), base_out, g, scales, rtol)


def _group(model: nn.Module) -> dict[str, str]:
    out = {}
    for mname, m in model.named_modules():
        for pname, _p in m.named_parameters(recurse=False):
            out.setdefault(f"{mname}.{pname}" if mname else pname, parameter_group(m, pname))
    return out


def audit(
    model: nn.Module, example_input: Any, weight_decay: Mapping[str, float] | float | None = None, **kw
) -> list[dict]:
    """One row per trainable parameter: what its L2 coefficient actually does.

    `weight_decay`: L2 coefficient per parameter name or per group name (`conv`, `bn`,
    `head` as in bnwd.nn.optim.param_groups; a parameter name wins), or one float for all;
    None means no L2. Rows: name, shape, numel, group, invariant, evidence, weight_decay,
    role, where role is
      "effective-lr control": invariant and wd > 0 (L2 only sets ||w||, hence lr/||w||^2),
      "regularizer":          not invariant and wd > 0 (L2 really penalizes the function),
      "none":                 wd == 0 ("none (no effect on output)" for a parameter the output ignores).
    `kw` go to `invariance_report`.
    """
    wds = [weight_decay] if isinstance(weight_decay, (int, float)) else list((weight_decay or {}).values())
    if not all(float(w) >= 0 for w in wds):
        raise ConfigError(f"weight decay must be >= 0, got {weight_decay}")
    report = invariance_report(model, example_input, **kw)
    groups = _group(model)
    params = dict(model.named_parameters())
    rows = []
    for name, r in report.items():
        if weight_decay is None:
            wd = 0.0
        elif isinstance(weight_decay, (int, float)):
            wd = float(weight_decay)
        else:
            wd = float(weight_decay.get(name, weight_decay.get(groups.get(name, ""), 0.0)))
        if wd == 0:
            role = "none"
        elif r.no_effect:
            role = "none (no effect on output)"
        else:
            role = "effective-lr control" if r.invariant else "regularizer"
        rows.append(
            {
                "name": name,
                "shape": tuple(params[name].shape),
                "numel": params[name].numel(),
                "group": groups.get(name, "head"),
                "invariant": r.invariant,
                "evidence": r.reason,
                "weight_decay": wd,
                "role": role,
            }
        )
    return rows


def format_audit(rows: Sequence[Mapping[str, Any]]) -> str:
    """An aligned text table of `audit` rows, with a one-line summary at the end."""
    head = ("parameter", "shape", "group", "scale-inv", "L2", "role", "evidence")
    body = [
        (
            str(r["name"]),
            "x".join(str(s) for s in r["shape"]) or "scalar",
            str(r.get("group", "")),
            "yes" if r["invariant"] else "no",
            f"{r['weight_decay']:g}",
            str(r["role"]),
            str(r["evidence"]),
        )
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:-1], widths)) + "  " + row[-1] for row in [head, *body]]
    n_inv = sum(bool(r["invariant"]) for r in rows)
    n_lr = sum(r["role"] == "effective-lr control" for r in rows)
    lines.append(
        f"{n_inv} of {len(rows)} parameters scale-invariant; L2 acts as an effective-lr control on {n_lr} "
        "of them and as a regularizer on "
        f"{sum(r['role'] == 'regularizer' for r in rows)}"
    )
    return "\n".join(lines)


def load_factory(spec: str) -> Callable[[], nn.Module]:
    """Resolve a model spec to a zero-argument callable returning an nn.Module.

    "resnet20" (bnwd.nn.models.resnet20); "resnetN" for any depth N = 6n+2 (bnwd.nn.models.resnet);
    any other factory name in bnwd.nn.models; or "package.module:factory" (attribute path after
    the colon may be dotted). Raises ConfigError with the reason when it cannot be resolved.
    """
    spec = spec.strip()
    if ":" not in spec:
        m = re.fullmatch(r"resnet(\d+)", spec)
        if m and spec != "resnet20":
            depth = int(m.group(1))
            if depth < 8 or (depth - 2) % 6:
                raise ConfigError(f"ResNet depth must be 6n+2 (8, 14, 20, 32, 44, 56, 110, ...), got {depth}")
            return lambda: models.resnet(depth)
        fn = getattr(models, spec, None)
        if spec.startswith("_") or not callable(fn) or isinstance(fn, type) and not issubclass(fn, nn.Module):
            raise ConfigError(f"unknown model {spec!r}: use resnet20, resnetN (N = 6n+2) or package.module:factory")
        return fn
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise ConfigError(f"model spec {spec!r} must look like package.module:factory")
    try:
        obj: Any = importlib.import_module(mod_name)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's spec
        raise ConfigError(f"cannot import module {mod_name!r} for model spec {spec!r}: {e}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{mod_name!r} has no attribute {attr!r} (model spec {spec!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{spec!r} is not callable; it must be a function or class returning an nn.Module")

    def factory() -> nn.Module:
        try:
            model = obj()
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"calling {spec!r}() failed: {type(e).__name__}: {e}") from None
        if not isinstance(model, nn.Module):
            raise ConfigError(f"{spec!r}() returned {type(model).__name__}, not a torch.nn.Module")
        return model

    return factory
