"""`bnwd plan`: what weight decay does to each layer, and the lr schedule it implies, before training.

For a model, an optimizer (SGD with momentum, or AdamW), a learning-rate schedule and a step
count, the plan answers without data:

- which parameters' L2 is a *clock* (scale-invariant: a conv followed by BN; L2 only sets
  ||w||, hence the effective lr ~ lr/||w||^2) and which a *regularizer* (not scale-invariant:
  BN gamma/beta feeding a ReLU, the head, a conv without BN); decided numerically by
  `bnwd.nn.invariance.find_scale_invariant`, not from layer types;
- how fast each clock runs, per lr stage k (lr eta_k, L2 lam, momentum mu, N_k steps):

    SGD (exact conventions of `theory.sgd_equilibrium`, PyTorch b = mu b + g + lam w, w -= eta b):
      delta_k = sqrt(2 eta_k lam / (1 + mu))      equilibrium angular update, rad/step
                                                  (0.1, 2e-4, 0.9: 0.0046)
      tau_k   = (1 - mu) / (2 eta_k lam)          e-folding time of ||w||^2 in steps (2,500)
      R_k     = sum over the stage's steps of 2 eta_t lam / (1 - mu)
              = N_k / tau_k for a constant lr     relaxation times per stage (7.8 / 0.78 / 0.078)
    AdamW (decoupled decay w -= eta lam w; `theory.adamw_equilibrium`), LEADING-ORDER
    approximations (gradient noise uncorrelated across steps, v tracking E g^2, eps negligible):
      delta_k = sqrt(2 eta_k lam (1 - b1) / (1 + b1)),  tau_k = 1 / (2 eta_k lam),
      R_k     = sum of 2 eta_t lam;  equilibrium norm sqrt(eta dim / (2 lam)) (no gradient scale needed).

  A stage *reaches equilibrium* when R_k >= 3 (the deviation of ||w||^2 from its equilibrium
  has shrunk by e^-3 = 5%), *partly* for 1 <= R_k < 3, and *not* for R_k < 1 (the lr changes
  before the decay has acted). `equilibrium_until` is the last point with at least one
  relaxation time left in the run (sum of 2 eta_t lam / (1 - mu) over the remaining steps >= 1):
  after it the norms keep roughly what they have. With a gradient scale L = E||g||^2 ||w||^2
  (`grad_scale`, what `bnwd.Monitor` logs as grad_sq_unit) the SGD equilibrium norm per stage is
  `theory.sgd_equilibrium`'s (L eta / (lam (1 - mu) (2 - lam eta / (1 + mu))))^(1/4).
  Varying-lr stages (warmup, cosine) use their mean lr for delta, tau and the norm; R_k is the
  exact sum.

- the learning-rate schedule the decay implies for the clock layers. SGD + momentum, EXACT
  (`bnwd.nn.exact`): with s_t = `exact.decay_scales`(lrs, mu, lam) (the shrink of a zero-gradient
  weight, s_0 = 1), training the clock layers WITHOUT weight decay at

      lr~_t = lr_t / (s_t s_{t+1})           multiplier m_t = 1 / (s_t s_{t+1}) ~= 1 / s_t^2

  gives w~_t = w_t / s_t at every step: the same function (BN eps negligible, or eps / s_t^2).
  AdamW, approximate: decoupled decay shrinks by s_{t+1} = prod_{k<=t} (1 - eta_k lam); a run
  without decay at lr_t / s_{t+1} is the same function exactly only if Adam's update m/sqrt(v)
  were invariant to the gradient's scale (beta1 = beta2 = 0, eps = 0), so m_t = 1 / s_{t+1} is a
  leading-order statement. The multiplier curve needs no data.

`plan(model, example_input, ...)` builds bnwd's conv/bn/head groups (`optim.param_groups`) from
one L2 value or one per group and a named schedule (`schedule_lrs`); `plan_groups` takes any
groups with per-step lrs (the Lightning callback passes the trainer's optimizer). The `Plan`
has `.format()` (text tables), `.to_dict()` (JSON-safe) and `.figure(path)` (PNG).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from bnwd.errors import ConfigError
from bnwd.nn import theory
from bnwd.nn.exact import decay_scales
from bnwd.nn.invariance import find_scale_invariant
from bnwd.nn.optim import GROUPS, param_groups, parameter_group

SCHEDULES = ("step", "cosine", "constant", "points")
OPTIMIZERS = ("sgd", "adamw")
REACHED, PARTLY = 3.0, 1.0  # relaxation times per stage for "yes" / "partly"


def _num(x: Any, what: str, lo: float | None = 0.0, strict: bool = False) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number, got {x!r}") from None
    if not math.isfinite(v) or (lo is not None and (v <= lo if strict else v < lo)):
        raise ConfigError(f"{what} must be a finite number {'>' if strict else '>='} {lo:g}, got {x!r}")
    return v


def schedule_lrs(
    schedule: str | Sequence[tuple[int, float]] = "step",
    lr: float = 0.1,
    steps_per_epoch: int = 390,
    epochs: float = 150,
    milestones: Sequence[float] = (50, 100),
    gamma: float = 0.1,
    warmup_epochs: float = 0.0,
    min_lr: float = 0.0,
    stages: Sequence[float] | None = None,
) -> tuple[np.ndarray, list[int]]:
    """Per-step learning rates lr_0..lr_{T-1} (T = round(epochs * steps_per_epoch)) and stage starts.

    schedule: "step" (lr * gamma^k after the k-th of `milestones`, in epochs; torch MultiStepLR),
    "cosine" (from lr to `min_lr` over the steps after warmup), "constant", or "points" / a list
    of (step, lr) pairs (piecewise constant: lr from that step on; the first pair must be step 0).
    `warmup_epochs` > 0 multiplies the first W steps by (t + 1) / W (linear warmup; not for points).
    Stage starts (step indices, 0 first): the milestones (step), the pairs' steps (points), the end
    of warmup and, for cosine, quarters of the decay; `stages` (epochs) replaces them.
    """
    spe = _num(steps_per_epoch, "steps per epoch", 0, strict=True)
    if spe != int(spe):
        raise ConfigError(f"steps per epoch must be an integer, got {steps_per_epoch!r}")
    spe = int(spe)
    T = round(_num(epochs, "epochs", 0, strict=True) * spe)
    if T < 1:
        raise ConfigError(f"the run has no steps ({epochs} epochs x {spe} steps)")
    if T > 50_000_000:
        raise ConfigError(f"{T:,} steps is more than this planner handles (50,000,000)")
    warm = round(_num(warmup_epochs, "warmup epochs") * spe)
    if warm >= T:
        raise ConfigError(f"warmup ({warmup_epochs} epochs) must be shorter than the run ({epochs} epochs)")
    t = np.arange(T, dtype=np.float64)
    starts = {0}
    if not isinstance(schedule, str):
        pts = sorted((int(s), _num(v, "lr")) for s, v in schedule)
        if not pts or pts[0][0] != 0:
            raise ConfigError("a (step, lr) schedule must start at step 0")
        if warm:
            raise ConfigError("warmup does not combine with a (step, lr) schedule: write the warmup's steps")
        lrs = np.empty(T)
        for i, (s, v) in enumerate(pts):
            end = pts[i + 1][0] if i + 1 < len(pts) else T
            lrs[s:end] = v
            if s < T:
                starts.add(s)
        schedule = "points"
    else:
        lr = _num(lr, "lr", 0, strict=True)
        if schedule == "step":
            ms = sorted(_num(m, "milestone") for m in milestones)
            g = _num(gamma, "gamma", 0, strict=True)
            lrs = lr * g ** np.searchsorted(np.array([round(m * spe) for m in ms], dtype=np.float64), t, side="right")
            starts.update(round(m * spe) for m in ms if 0 < round(m * spe) < T)
        elif schedule == "cosine":
            lo = _num(min_lr, "min lr")
            if lo > lr:
                raise ConfigError(f"min lr {min_lr} is above lr {lr}")
            n = T - warm
            lrs = np.full(T, lr)
            lrs[warm:] = lo + (lr - lo) * 0.5 * (1 + np.cos(np.pi * np.arange(n) / n))
            starts.update(warm + round(q * n / 4) for q in (1, 2, 3))
        elif schedule == "constant":
            lrs = np.full(T, lr)
        elif schedule == "points":
            raise ConfigError("the points schedule needs its (step, lr) pairs (--points 0:0.1,19500:0.01)")
        else:
            raise ConfigError(f"unknown schedule {schedule!r}: one of {', '.join(SCHEDULES)}")
    if warm:
        lrs[:warm] *= (np.arange(warm) + 1) / warm
        starts.add(warm)
    if stages is not None:
        starts = {0} | {round(_num(e, "stage boundary") * spe) for e in stages}
        starts = {s for s in starts if s < T}
    return lrs, sorted(starts)


@dataclass
class Plan:
    """The result of `plan` / `plan_groups` (module docstring for every quantity).

    settings: optimizer, momentum/betas, steps_per_epoch, steps, epochs, schedule
    stages:   [{index, start, end, steps, epochs: (a, b)}]
    groups:   one row per parameter group: name, weight_decay, counts by role, and for groups with
              clock parameters per stage: lr, delta, tau_steps, tau_epochs, relaxation, equilibrium
    layers:   one row per parameter: name, shape, numel, group, invariant, weight_decay, role,
              norm (initial ||w||), eq_norm per stage (when known)
    curves:   {"lr": {group: per-step lr}, "multiplier": {group: per-step m_t}} (numpy)
    warnings: lines a user can act on
    """

    settings: dict
    stages: list[dict]
    groups: list[dict]
    layers: list[dict]
    curves: dict = field(repr=False)
    warnings: list[str]

    def to_dict(self, curve_points: int = 200) -> dict:
        """JSON-safe: everything, with the curves sampled at <= `curve_points` steps (and the last)."""
        T = self.settings["steps"]
        idx = np.unique(np.linspace(0, T - 1, min(curve_points, T)).round().astype(int))
        spe = self.settings["steps_per_epoch"]
        curves = {
            "step": idx.tolist(),
            "epoch": (idx / spe).tolist(),
            "lr": {g: v[idx].tolist() for g, v in self.curves["lr"].items()},
            "multiplier": {g: v[idx].tolist() for g, v in self.curves["multiplier"].items()},
        }
        return _jsonable(
            {
                "settings": self.settings,
                "stages": self.stages,
                "groups": self.groups,
                "layers": self.layers,
                "warnings": self.warnings,
                "curves": curves,
            }
        )

    def format(self, layers: bool = True) -> str:
        """Text: settings line, the per-group table, the per-layer table, warnings."""
        s = self.settings
        opt = (
            f"SGD momentum {s['momentum']:g}"
            if s["optimizer"] == "sgd"
            else f"AdamW betas ({s['betas'][0]:g}, {s['betas'][1]:g})"
        )
        out = [
            f"bnwd plan: {s['model']}, {opt}, {s['schedule']}, {s['epochs']:g} epochs x {s['steps_per_epoch']:,} "
            f"steps = {s['steps']:,} steps"
        ]
        if s["optimizer"] == "adamw":
            out.append("(AdamW: delta, tau, relaxation and the multiplier are leading-order approximations)")
        out.append("")
        out.append("per parameter group (delta: equilibrium angular update; tau: relaxation time of ||w||^2)")
        head = ("group", "L2", "clock/reg/none", "stage", "epochs", "lr", "delta rad/step", "tau steps")
        head += ("tau epochs", "relax.", "equilibrium")
        rows = []
        for g in self.groups:
            counts = f"{g['n_clock']}/{g['n_regularizer']}/{g['n_none']}"
            first = (g["name"], f"{g['weight_decay']:g}", counts)
            if not g["stages"]:
                what = "n/a (L2 regularizes)" if g["n_regularizer"] else "n/a"
                rows.append(first + ("-",) * 7 + (what,))
                continue
            for i, st in enumerate(g["stages"]):
                a, b = self.stages[i]["epochs"]
                rows.append(
                    (first if i == 0 else ("", "", ""))
                    + (
                        str(i + 1),
                        f"{a:.4g}-{b:.4g}",
                        _lr_text(st),
                        f"{st['delta']:.2g}",
                        f"{st['tau_steps']:,.0f}",
                        f"{st['tau_epochs']:.3g}",
                        f"{st['relaxation']:.2g}",
                        st["equilibrium"],
                    )
                )
        out += _table(head, rows)
        for g in self.groups:
            if g["stages"]:
                until = g["equilibrium_until_epoch"]
                out.append(
                    f"  {g['name']}: implied lr multiplier {self._mult_name()} reaches {g['final_multiplier']:.3g} by the end; "
                    + (
                        f"less than one relaxation time left after epoch {until:.3g} (the norms stop following "
                        "their equilibrium there)"
                        if until is not None
                        else "less than one relaxation time in the whole run: the norms never settle"
                    )
                )
        if layers:
            out.append("")
            out.append("per parameter (||w0||: initial norm; eq. norm: equilibrium norm per stage, when known)")
            lh = ("parameter", "shape", "group", "scale-inv", "L2", "role", "||w0||", "eq. norm per stage")
            lrows = [
                (
                    r["name"],
                    "x".join(str(x) for x in r["shape"]) or "scalar",
                    r["group"],
                    "yes" if r["invariant"] else "no",
                    f"{r['weight_decay']:g}",
                    r["role"],
                    f"{r['norm']:.3g}",
                    " / ".join(f"{v:.3g}" for v in r["eq_norm"]) if r.get("eq_norm") else "-",
                )
                for r in self.layers
            ]
            out += _table(lh, lrows)
        if self.warnings:
            out.append("")
            out += [f"note: {w}" for w in self.warnings]
        return "\n".join(out)

    def _mult_name(self) -> str:
        return "1/(s_t s_t+1)" if self.settings["optimizer"] == "sgd" else "1/s_t+1"

    def figure(self, path: str | None = None):
        """Nominal lr and the implied multiplier m_t of each clock group over training (a matplotlib
        Figure; saved as PNG when `path` is given)."""
        from matplotlib.figure import Figure

        spe = self.settings["steps_per_epoch"]
        fig = Figure(figsize=(7.2, 6.4))
        ax1, ax2 = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)
        ep = np.arange(self.settings["steps"]) / spe
        shown = set()
        for name, lrs in self.curves["lr"].items():
            key = tuple(lrs[:: max(1, len(lrs) // 50)])
            if key in shown:
                continue
            shown.add(key)
            ax1.plot(ep, lrs, label=f"nominal lr ({name})" if len(self.curves["lr"]) > 1 else "nominal lr")
        for name, m in self.curves["multiplier"].items():
            ax1.plot(ep, self.curves["lr"][name] * m, ls="--", label=f"lr x multiplier: no-decay equivalent ({name})")
            ax2.plot(ep, m, label=name)
        exact = "exact" if self.settings["optimizer"] == "sgd" else "leading order"
        ax1.set_yscale("log")
        ax1.set_ylabel("learning rate")
        ax1.set_title(f"{self.settings['model']}: nominal lr and its weight-decay equivalent", fontsize=10)
        ax1.legend(fontsize=7, loc="upper right")
        ax2.set_yscale("log")
        ax2.set_xlabel("epoch")
        ax2.set_ylabel(f"implied lr multiplier {self._mult_name()}")
        ax2.set_title(
            f"what the L2 on the clock layers does: a run without it at lr x this is the same function ({exact})",
            fontsize=8,
        )
        if self.curves["multiplier"]:
            ax2.legend(fontsize=7, loc="upper left")
        for ax in (ax1, ax2):
            for st in self.stages[1:]:
                ax.axvline(st["start"] / spe, color="grey", ls=":", lw=0.9)
            ax.grid(alpha=0.3, which="both")
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=130)
        return fig


def _lr_text(st: dict) -> str:
    a, b = st["lr_start"], st["lr_end"]
    return f"{a:.3g}" if math.isclose(a, b, rel_tol=1e-9) else f"{a:.3g}->{b:.3g}"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(x[i])) for x in [head, *rows]) for i in range(len(head))]
    return ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows]]


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    return x


def clock_stats(lr: float, weight_decay: float, optimizer: str = "sgd", momentum: float = 0.9) -> dict[str, float]:
    """delta (rad/step) and tau (steps) of a clock at lr `lr`; `momentum` is beta1 for AdamW.

    SGD: delta = sqrt(2 lr lam / (1 + mu)), tau = (1 - mu) / (2 lr lam)   (= theory.sgd_equilibrium)
    AdamW: delta = sqrt(2 lr lam (1 - b1) / (1 + b1)), tau = 1 / (2 lr lam)   (leading order;
    = theory.adamw_equilibrium). lr = 0 gives delta 0 and tau inf.
    """
    eta, lam, mu = float(lr), float(weight_decay), float(momentum)
    if optimizer == "sgd":
        return {"delta": math.sqrt(2 * eta * lam / (1 + mu)), "tau": (1 - mu) / (2 * eta * lam) if eta else math.inf}
    return {
        "delta": math.sqrt(2 * eta * lam * (1 - mu) / (1 + mu)),
        "tau": 1 / (2 * eta * lam) if eta else math.inf,
    }


def implied_multiplier(lrs: Sequence[float], weight_decay: float, optimizer: str = "sgd", momentum: float = 0.9):
    """m_t for steps 0..T-1: the factor on lr_t at which a run WITHOUT weight decay on the clock
    layers is the same function (module docstring). SGD: 1 / (s_t s_{t+1}) with s from
    `exact.decay_scales` (exact); AdamW: 1 / prod_{k<=t} (1 - lr_k lam) (leading order).
    Raises ConfigError when lr * weight_decay is so large that the decay scale reaches 0."""
    lrs = np.asarray(lrs, dtype=np.float64)
    if optimizer == "sgd":
        s = decay_scales(lrs, momentum, weight_decay)
        if not np.all(s > 0):
            raise ConfigError(
                f"lr x weight decay too large: the decay scale s_t reaches {s.min():.3g} (weights flip sign)"
            )
        return 1.0 / (s[:-1] * s[1:])
    f = 1.0 - lrs * weight_decay
    if not np.all(f > 0):
        raise ConfigError("lr x weight decay >= 1: AdamW's decay step flips the weights")
    return np.exp(-np.cumsum(np.log(f)))


def plan_groups(
    model: nn.Module,
    groups: Sequence[Mapping[str, Any]],
    invariant: Mapping[str, bool],
    *,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.999),
    steps_per_epoch: int,
    stage_starts: Sequence[int] = (0,),
    grad_scale: float | Mapping[str, float] | None = None,
    model_name: str = "model",
    schedule_name: str = "",
    notes: Sequence[str] = (),
) -> Plan:
    """The plan for explicit groups: each {"name", "params" (tensors of `model`), "weight_decay",
    "lrs" (per-step lrs, all groups the same length)}; `invariant`: {parameter name: bool} from
    `find_scale_invariant`. `momentum` is SGD's; AdamW uses `betas[0]`. `notes` are added to the
    warnings."""
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {optimizer!r}: one of {', '.join(OPTIMIZERS)}")
    mu = _num(momentum, "momentum") if optimizer == "sgd" else _num(betas[0], "beta1")
    if not mu < 1:
        raise ConfigError(f"{'momentum' if optimizer == 'sgd' else 'beta1'} must be in [0, 1), got {mu}")
    if optimizer == "adamw" and not 0 <= float(betas[1]) < 1:
        raise ConfigError(f"beta2 must be in [0, 1), got {betas[1]}")
    spe = _num(steps_per_epoch, "steps per epoch", 0, strict=True)
    if spe != int(spe):
        raise ConfigError(f"steps per epoch must be an integer, got {steps_per_epoch!r}")
    spe = int(spe)
    T = len(groups[0]["lrs"]) if groups else 0
    if T < 1 or any(len(g["lrs"]) != T for g in groups):
        raise ConfigError("every group needs the same non-empty per-step lr schedule")
    starts = sorted({0, *(int(s) for s in stage_starts if 0 <= int(s) < T)})
    bounds = [*starts, T]
    stages = [
        {"index": k + 1, "start": a, "end": b, "steps": b - a, "epochs": (a / spe, b / spe)}
        for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))
    ]
    names = {id(p): n for n, p in model.named_parameters()}
    module_group = {}
    for _mname, m in model.named_modules():
        for pname, p in m.named_parameters(recurse=False):
            module_group.setdefault(id(p), parameter_group(m, pname))
    grows, lrows, lr_curves, mult = [], [], {}, {}
    for gi, g in enumerate(groups):
        gname = str(g.get("name") or f"group {gi}")
        lam = _num(g.get("weight_decay", 0.0), f"weight decay of group {gname!r}")
        lrs = np.asarray(g["lrs"], dtype=np.float64)
        if np.any(lrs < 0) or not np.all(np.isfinite(lrs)):
            raise ConfigError(f"learning rates of group {gname!r} must be finite and >= 0")
        lr_curves[gname] = lrs
        counts = {"clock": 0, "regularizer": 0, "none": 0}
        for p in g["params"]:
            pname = names.get(id(p))
            if pname is None:
                raise ConfigError(f"a parameter of group {gname!r} is not a parameter of the model")
            inv = bool(invariant.get(pname, False))
            role = "none" if lam == 0 else ("clock" if inv else "regularizer")
            counts[role] += 1
            row = {
                "name": pname,
                "shape": list(p.shape),
                "numel": p.numel(),
                "group": gname,
                "bnwd_group": module_group.get(id(p), "head"),
                "invariant": inv,
                "weight_decay": lam,
                "role": role,
                "norm": float(p.detach().double().norm()),
            }
            lrows.append((row, lrs, lam))
        gstages, until, final = [], None, None
        if counts["clock"]:
            m = implied_multiplier(lrs, lam, optimizer, mu)
            mult[gname] = m
            final = float(m[-1])
            k = 2 * lrs * lam / (1 - mu) if optimizer == "sgd" else 2 * lrs * lam
            remaining = np.cumsum(k[::-1])[::-1]  # relaxation times from step t to the end
            ok = np.nonzero(remaining >= 1.0)[0]
            until = float((ok[-1] + 1) / spe) if len(ok) else None
            for st in stages:
                seg = lrs[st["start"] : st["end"]]
                mean = float(seg.mean())
                cs = clock_stats(mean, lam, optimizer, mu)
                relax = float(k[st["start"] : st["end"]].sum())
                gstages.append(
                    {
                        "lr_start": float(seg[0]),
                        "lr_end": float(seg[-1]),
                        "lr_mean": mean,
                        "delta": cs["delta"],
                        "tau_steps": cs["tau"],
                        "tau_epochs": cs["tau"] / spe,
                        "relaxation": relax,
                        "equilibrium": "yes" if relax >= REACHED else "partly" if relax >= PARTLY else "no",
                    }
                )
        grows.append(
            {
                "name": gname,
                "weight_decay": lam,
                "n_clock": counts["clock"],
                "n_regularizer": counts["regularizer"],
                "n_none": counts["none"],
                "stages": gstages,
                "equilibrium_until_epoch": until,
                "final_multiplier": final,
            }
        )
    layers = []
    for row, lrs, lam in lrows:
        if row["role"] == "clock":
            L = grad_scale.get(row["name"]) if isinstance(grad_scale, Mapping) else grad_scale
            eq = []
            for st in stages:
                eta = float(lrs[st["start"] : st["end"]].mean())
                if eta <= 0:
                    eq.append(None)
                elif optimizer == "adamw":
                    eq.append(theory.adamw_equilibrium(eta, lam, mu, betas[1], dim=row["numel"])["norm"])
                elif L is not None:
                    eq.append(theory.sgd_equilibrium(eta, lam, mu, grad_sq_unit=float(L))["norm"])
                else:
                    eq = None
                    break
            row["eq_norm"] = eq
        layers.append(row)
    settings = {
        "model": model_name,
        "optimizer": optimizer,
        "momentum": float(momentum) if optimizer == "sgd" else None,
        "betas": [float(b) for b in betas] if optimizer == "adamw" else None,
        "steps_per_epoch": spe,
        "steps": T,
        "epochs": T / spe,
        "schedule": schedule_name,
        "approximate": optimizer == "adamw",
        "grad_scale": None if isinstance(grad_scale, Mapping) else grad_scale,
    }
    p = Plan(settings, stages, grows, layers, {"lr": lr_curves, "multiplier": mult}, [])
    p.warnings = _warnings(p) + list(notes)
    return p


def _stage_list(g: dict) -> str:
    return " / ".join(f"{st['relaxation']:.2g}" for st in g["stages"])


def _warnings(p: Plan) -> list[str]:
    out = []
    reg = [r for r in p.layers if r["role"] == "regularizer"]
    clocks = [g for g in p.groups if g["n_clock"]]
    if reg:
        what = {"bn": "BN gamma/beta", "head": "the head", "conv": "conv kernels without a norm layer after them"}
        kinds = [what[k] for k in ("bn", "head", "conv") if any(r["bnwd_group"] == k for r in reg)]
        out.append(
            f"L2 on {', '.join(kinds[:-1]) + ' and ' + kinds[-1] if len(kinds) > 1 else kinds[0]} ({len(reg)} "
            "parameters) is a regularizer here: it penalizes the function, with strength = its coefficient"
        )
    for g in clocks:
        conv = [r for r in p.layers if r["group"] == g["name"] and r["role"] == "clock"]
        reached = [i + 1 for i, st in enumerate(g["stages"]) if st["equilibrium"] == "yes"]
        if not reached:
            when = "in no stage"
        elif len(reached) == len(g["stages"]):
            when = "in every stage"
        else:
            when = f"in stage{'s' if len(reached) > 1 else ''} {', '.join(map(str, reached))} only"
        out.append(
            f"on the {len(conv)} scale-invariant parameters of group {g['name']!r} L2 only sets the clock "
            f"(the effective lr), which reaches equilibrium {when} (relaxation times per stage {_stage_list(g)}); "
            "it does not regularize them, so tune it as an lr knob, separately from the other groups' L2"
        )
        total = sum(st["relaxation"] for st in g["stages"])
        if total < REACHED:
            out.append(
                f"group {g['name']!r}: the whole run lasts {total:.2g} relaxation times, so the clock never settles: "
                "the effective lr of these layers follows their initial norms (the init scale) and the gradient "
                "noise more than the weight decay"
            )
        late = [i + 1 for i, st in enumerate(g["stages"]) if st["equilibrium"] != "yes"]
        if late and reached:
            out.append(
                f"group {g['name']!r}: in stage{'s' if len(late) > 1 else ''} {', '.join(map(str, late))} the norms "
                "are still on their way to equilibrium when the lr changes or training ends (fewer than 3 relaxation "
                "times), so the effective lr there depends on where the earlier stages left the norms, not on lr and "
                "L2 alone; the figure (--figure) shows the lr a run without this L2 would need"
            )
    unclocked = [r for r in p.layers if r["invariant"] and r["weight_decay"] == 0]
    if unclocked:
        out.append(
            f"{len(unclocked)} scale-invariant parameters have no weight decay: their norms only grow, so their "
            "effective lr lr/||w||^2 decays on its own during training"
        )
    if p.settings["optimizer"] == "adamw":
        out.append(
            "AdamW: delta, tau, relaxation times and the multiplier are leading-order approximations "
            "(noise-dominated gradients, eps negligible); with Adam the effective lr goes as lr/||w||"
        )
    return out


def check_optimizer(
    optimizer: str, momentum: float, betas: Sequence[float], weight_decay: float | Mapping[str, float]
) -> float | dict[str, float]:
    """Refuse bad optimizer settings (ConfigError); return the weight decay as a float or {group: float}."""
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {optimizer!r}: one of {', '.join(OPTIMIZERS)}")
    if optimizer == "sgd" and not 0 <= _num(momentum, "momentum") < 1:
        raise ConfigError(f"momentum must be in [0, 1), got {momentum}")
    if optimizer == "adamw" and (len(betas) != 2 or not all(0 <= _num(b, "beta") < 1 for b in betas)):
        raise ConfigError(f"betas must be two numbers in [0, 1), got {tuple(betas)}")
    if isinstance(weight_decay, Mapping):
        unknown = set(weight_decay) - set(GROUPS)
        if unknown:
            raise ConfigError(
                f"unknown parameter group(s) {sorted(unknown)} in weight decay; groups are {list(GROUPS)}"
            )
        return {k: _num(v, f"weight decay of {k}") for k, v in weight_decay.items()}
    return _num(weight_decay, "weight decay")


def plan(
    model: nn.Module,
    example_input: Any = None,
    *,
    optimizer: str = "sgd",
    lr: float = 0.1,
    momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float | Mapping[str, float] = 2e-4,
    schedule: str | Sequence[tuple[int, float]] = "step",
    milestones: Sequence[float] = (50, 100),
    gamma: float = 0.1,
    warmup_epochs: float = 0.0,
    min_lr: float = 0.0,
    stages: Sequence[float] | None = None,
    steps_per_epoch: int = 390,
    epochs: float = 150,
    grad_scale: float | Mapping[str, float] | None = None,
    invariant: Mapping[str, bool] | None = None,
    model_name: str | None = None,
) -> Plan:
    """Plan a training run: the defaults are the article's (SGD 0.1/0.01/0.001 at epochs 50 and 100
    of 150, momentum 0.9, L2 2e-4 on everything, 390 steps per epoch).

    `weight_decay`: one value, or {"conv": .., "bn": .., "head": ..} (bnwd's groups, `optim.param_groups`;
    missing groups get 0). Schedule arguments: `schedule_lrs`. `invariant` ({parameter name: bool})
    skips the numerical test; otherwise `find_scale_invariant(model, example_input)` decides
    (example_input default: randn(8, 3, 32, 32)).
    """
    wd = check_optimizer(optimizer, momentum, betas, weight_decay)
    lrs, starts = schedule_lrs(schedule, lr, steps_per_epoch, epochs, milestones, gamma, warmup_epochs, min_lr, stages)
    if invariant is None:
        if example_input is None:
            example_input = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        invariant = find_scale_invariant(model, example_input)
    groups = [{**g, "lrs": lrs} for g in param_groups(model, wd)]
    if isinstance(schedule, str):
        name = {
            "step": f"lr {lr:g} x{gamma:g} at epochs {', '.join(f'{m:g}' for m in milestones)}",
            "cosine": f"cosine lr {lr:g} -> {min_lr:g}",
            "constant": f"constant lr {lr:g}",
        }[schedule]
    else:
        name = "lr " + ", ".join(f"{v:g} from step {s:,}" for s, v in schedule)
    if warmup_epochs:
        name += f", {warmup_epochs:g} epochs linear warmup"
    return plan_groups(
        model,
        groups,
        invariant,
        optimizer=optimizer,
        momentum=momentum,
        betas=betas,
        steps_per_epoch=int(steps_per_epoch),
        stage_starts=starts,
        grad_scale=grad_scale,
        model_name=model_name or type(model).__name__,
        schedule_name=name,
    )


class _Shadow(torch.optim.Optimizer):
    """An optimizer over one-element dummies with a copy of another's group settings: a copied
    LR scheduler steps it to read the lrs it will set, without touching the real run."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        groups = [
            {**{k: copy.deepcopy(v) for k, v in g.items() if k != "params"}, "params": [torch.zeros(1)]}
            for g in optimizer.param_groups
        ]
        super().__init__(groups, {})

    def step(self, closure=None):  # noqa: D102 - nothing to update
        return None


def lrs_from_torch(
    optimizer: torch.optim.Optimizer,
    scheduler: Any = None,
    steps: int = 1,
    interval: str = "step",
    frequency: int = 1,
    steps_per_epoch: int = 1,
) -> list[np.ndarray]:
    """The per-step lr of each param group over the next `steps` optimizer steps, read by stepping
    a copy of `scheduler` (any torch LRScheduler, SequentialLR, ...; `interval` "step" or "epoch",
    every `frequency` intervals, as Lightning's scheduler configs say) on a shadow optimizer. The
    real optimizer and scheduler are not touched. No scheduler: the current lrs, constant."""
    import warnings

    T = int(steps)
    if scheduler is None:
        return [np.full(T, float(g["lr"])) for g in optimizer.param_groups]
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        raise ConfigError("ReduceLROnPlateau sets the lr from a metric: its schedule cannot be planned")
    shadow = _Shadow(optimizer)
    sched = copy.deepcopy(scheduler, {id(optimizer): shadow})
    out = np.empty((len(optimizer.param_groups), T))
    every = max(1, int(frequency)) * (int(steps_per_epoch) if interval == "epoch" else 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in range(T):
            out[:, t] = [float(g["lr"]) for g in shadow.param_groups]
            if (t + 1) % every == 0:
                sched.step()
    return list(out)


def plan_optimizer(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    invariant: Mapping[str, bool],
    steps: int,
    steps_per_epoch: int,
    scheduler: Any = None,
    interval: str = "step",
    frequency: int = 1,
    grad_scale: float | Mapping[str, float] | None = None,
    model_name: str | None = None,
) -> Plan:
    """The plan of a real torch.optim.SGD or AdamW (its groups, weight decays and momentum or betas;
    the lrs its `scheduler` will set over the next `steps` steps). Stages start where the lr jumps
    by more than 1% when it does so at most min(20, steps/10) times, else at quarters of the run.
    The Lightning callback's plan. Other optimizers: ConfigError."""
    notes: list[str] = []
    if isinstance(optimizer, torch.optim.AdamW):
        kind, g0 = "adamw", optimizer.param_groups[0]
        mu, betas = 0.9, tuple(g0.get("betas", (0.9, 0.999)))
    elif isinstance(optimizer, torch.optim.SGD):
        kind, betas = "sgd", (0.9, 0.999)
        mus = {float(g.get("momentum", 0.0)) for g in optimizer.param_groups}
        if len(mus) > 1:
            raise ConfigError(f"the param groups have different momenta {sorted(mus)}: plan them one by one")
        (mu,) = mus
        if any(g.get("nesterov") or g.get("dampening") for g in optimizer.param_groups):
            notes.append(
                "nesterov / dampening: the multiplier is exact for plain heavy-ball momentum only; with these it, "
                "delta and tau are leading order"
            )
    else:
        raise ConfigError(f"plan covers torch.optim.SGD and AdamW, not {type(optimizer).__name__}")
    lrs = lrs_from_torch(optimizer, scheduler, steps, interval, frequency, steps_per_epoch)
    starts = {0}
    for v in lrs:
        jump = np.nonzero(~np.isclose(v[1:], v[:-1], rtol=0.01, atol=0))[0] + 1
        if len(jump) <= min(20, steps / 10):  # step-like: a stage between jumps of more than 1%
            starts.update(int(j) for j in jump)
        else:  # smooth (cosine, exponential, warmup): quarters of the run
            starts.update(round(q * steps / 4) for q in (1, 2, 3))
    groups = [
        {
            "name": g.get("name") or f"group {i}",
            "params": g["params"],
            "weight_decay": g.get("weight_decay", 0.0),
            "lrs": v,
        }
        for i, (g, v) in enumerate(zip(optimizer.param_groups, lrs))
    ]
    return plan_groups(
        model,
        groups,
        invariant,
        optimizer=kind,
        momentum=mu,
        betas=betas,
        steps_per_epoch=steps_per_epoch,
        stage_starts=sorted(starts),
        grad_scale=grad_scale,
        model_name=model_name or type(model).__name__,
        schedule_name=type(scheduler).__name__ if scheduler is not None else "constant lr",
        notes=notes,
    )
