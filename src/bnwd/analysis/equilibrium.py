"""The equilibrium theory (`bnwd.nn.theory`) applied to runs read back: the predicted angular
update at a config's learning rates, the conv layers' equilibrium sum of squares at each sample
point (from their measured gradient scale), and a run's measured and predicted equilibrium at
the end of its first lr stage (what a sweep compares).
"""

from __future__ import annotations

import math

import numpy as np

from bnwd.analysis.runs import Run, by_variant
from bnwd.nn import theory
from bnwd.nn.models import conv_numels


def equilibrium_angular_update(lr, cfg: dict) -> np.ndarray | None:
    """Equilibrium angular update per step of a scale-invariant weight at learning rate(s) `lr`.

    SGD+L2: sqrt(2 lr wd / (1 + momentum)); AdamW: sqrt(2 lr wd (1 - b1) / (1 + b1)), b1 =
    config `momentum` (0.9 by default). None for other optimizers or without weight decay.
    """
    lam = float(cfg.get("conv_weight_decay", cfg.get("weight_decay")) or 0.0)
    mu = float(cfg.get("momentum", 0.9))
    opt = cfg.get("optimizer", "sgd")
    lr = np.atleast_1d(np.asarray(lr, dtype=float))
    if lam <= 0 or opt not in ("sgd", "adamw") or not 0 <= mu < 1:
        return None
    fn = theory.sgd_equilibrium if opt == "sgd" else theory.adamw_equilibrium
    return np.array([fn(float(x), lam, mu)["angular_update"] if x > 0 else 0.0 for x in lr])


def lr_schedule(cfg: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """(epochs, lr) of the config's step schedule as step-line vertices (lr `lr` times
    `lr_gamma` after each milestone, `drawstyle="steps-post"`); None if the config lacks it."""
    try:
        lr0, E = float(cfg["lr"]), float(cfg["epochs"])
        gamma = float(cfg.get("lr_gamma", 0.1))
        ms = sorted(float(m) for m in cfg.get("lr_milestones") or [] if 0 < float(m) < E)
    except (KeyError, TypeError, ValueError):
        return None
    x = np.array([0.0, *ms, E])
    y = np.array([lr0 * gamma**k for k in range(len(ms) + 1)] + [lr0 * gamma ** len(ms)])
    return x, y


EQ_KEY = "conv_sqsum_eq"
_GSQ = "grad_sq_unit_ema/conv/"


def _conv_dims(cfg: dict) -> dict[str, int]:
    return conv_numels(int(cfg.get("depth", 20)), int(cfg.get("width", 16)))


def equilibrium_sqsum(run: Run) -> np.ndarray | None:
    """Per sample point, the sum over conv kernels of the equilibrium squared norm at that point's lr:
    where ||w||^2 would settle if lr and the gradient scale stayed as they are.

    SGD+L2: ||w*||^2 = sqrt(L lr / (wd (1 - mu) (2 - wd lr / (1 + mu)))) per layer, with
    L = ||g||^2 ||w||^2 the layer's measured squared gradient at unit norm (`grad_sq_unit_ema`);
    AdamW: ||w*||^2 = lr dim / (2 wd) (no gradient scale needed). None when the run has no
    conv weight decay, another optimizer, or (SGD) no `grad_sq_unit` metrics.
    """
    cfg = run.config
    lam, mu, opt = (
        float(cfg.get("conv_weight_decay", cfg.get("weight_decay")) or 0.0),
        float(cfg.get("momentum", 0.9)),
        cfg.get("optimizer", "sgd"),
    )
    if run.variant != "baseline" or not lam > 0 or not 0 <= mu < 1 or opt not in ("sgd", "adamw"):
        return None
    lr = run.metrics.get("lr")
    if lr is None:
        return None
    n = len(lr)
    total = np.zeros(n)
    if opt == "sgd":
        keys = [k for k in run.metrics if k.startswith(_GSQ)]
        if not keys:
            return None
        for k in keys:
            for i, (L, eta) in enumerate(zip(run.metrics[k], lr)):
                ok = np.isfinite(L) and np.isfinite(eta) and eta > 0
                total[i] += theory.sgd_equilibrium(eta, lam, mu, grad_sq_unit=float(L))["sq_norm"] if ok else np.nan
    else:
        dims = _conv_dims(cfg)
        for i, eta in enumerate(lr):
            total[i] = sum(eta * d / (2 * lam) for d in dims.values()) if np.isfinite(eta) and eta > 0 else np.nan
    return total


def with_equilibrium_sqsum(runs: list[Run]) -> list[Run]:
    """The baseline runs, each with `equilibrium_sqsum` as metric EQ_KEY; [] if any lacks it."""
    base = by_variant(runs).get("baseline") or []
    for r in base:
        if EQ_KEY not in r.metrics:
            eq = equilibrium_sqsum(r)
            if eq is None:
                return []
            r.metrics[EQ_KEY] = eq
    return base


def equilibrium_point(run: Run) -> dict[str, float | None]:
    """Measured and predicted equilibrium at the end of the first lr stage of one run: the conv
    layers' relative step against `theory.sgd_equilibrium`, their summed squared norm against
    `equilibrium_sqsum` (the last sample point before the first milestone). None where the run
    has no conv L2, another optimizer than SGD, or no such sample point."""
    cfg = run.config
    wd = (cfg.get("resolved") or {}).get("conv_weight_decay", cfg.get("conv_weight_decay"))
    out: dict[str, float | None] = {
        "rel_step_measured": None,
        "rel_step_predicted": None,
        "conv_sqsum_measured": None,
        "conv_sqsum_predicted": None,
    }
    if cfg.get("optimizer", "sgd") != "sgd" or not wd or not run.rows:
        return out
    ms = cfg.get("lr_milestones") or [cfg.get("epochs", 0)]
    stage1 = [i for i, r in enumerate(run.rows) if r["epoch"] <= ms[0] + 1e-9 and "rel_step_conv" in r]
    if not stage1:
        return out
    i = stage1[-1]
    r = run.rows[i]
    lr, mu = cfg["lr"], cfg["momentum"]
    out["rel_step_measured"] = r.get("rel_step_conv")
    out["rel_step_predicted"] = theory.sgd_equilibrium(lr, wd, mu)["relative_step"]
    out["conv_sqsum_measured"] = r.get("conv_sqsum")
    eq = equilibrium_sqsum(run)  # per sample point, from the measured grad_sq_unit of each layer
    if eq is not None:
        out["conv_sqsum_predicted"] = float(eq[i]) if math.isfinite(eq[i]) else None
    return out
