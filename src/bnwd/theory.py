"""Equilibrium of scale-invariant weights under weight decay (Wan et al. 2021; Kosson et al. 2024).

The gradient of a scale-invariant weight is orthogonal to it, so each step pushes ||w||
outwards (by Pythagoras) while weight decay pulls it in; the norm settles where the two
balance, and from then on the weight rotates by a fixed angle per step.
"""
from __future__ import annotations

import math


def sgd_equilibrium(lr: float, weight_decay: float, momentum: float, grad_sq_unit: float | None = None) -> dict:
    """SGD with momentum mu, lr eta, L2 lam:

    angular_update  = sqrt(2 eta lam / (1 + mu))                       rad per step
    norm            = (L eta / (lam (1 - mu) (2 - lam eta / (1 + mu))))^(1/4),
                      L = E||g||^2 ||w||^2 (squared gradient norm at unit weight norm)
    rate            = 1 - 2 lam eta / (1 - mu)   (per-step contraction of the distance to equilibrium)
    steps_to_equilibrium = (1 - mu) / (2 lam eta)   (1/e time of that contraction)
    rel_step        = angular_update (to first order ||dw||/||w|| equals the rotation angle)
    """
    eta, lam, mu = lr, weight_decay, momentum
    out = {"angular_update": math.sqrt(2 * eta * lam / (1 + mu)) if lam > 0 else 0.0,
           "rate": 1 - 2 * lam * eta / (1 - mu),
           "steps_to_equilibrium": (1 - mu) / (2 * lam * eta) if lam > 0 else math.inf}
    out["rel_step"] = out["angular_update"]
    if grad_sq_unit is not None and lam > 0:
        out["norm"] = (grad_sq_unit * eta / (lam * (1 - mu) * (2 - lam * eta / (1 + mu)))) ** 0.25
    return out


def adamw_equilibrium(lr: float, weight_decay: float, beta1: float, beta2: float = 0.999) -> dict:
    """AdamW (decoupled decay lam): angular_update = sqrt(2 eta lam (1 - b1) / (1 + b1)) rad per step;
    the norm equilibrates after ~1/(eta lam) steps. With Adam the effective lr of a scale-invariant
    weight is eta / ||w|| (the update does not scale with the gradient)."""
    ang = math.sqrt(2 * lr * weight_decay * (1 - beta1) / (1 + beta1)) if weight_decay > 0 else 0.0
    return {"angular_update": ang, "rel_step": ang,
            "steps_to_equilibrium": 1 / (lr * weight_decay) if weight_decay > 0 else math.inf}


def predicted_curve(lrs, weight_decay: float, momentum: float = 0.9, optimizer: str = "sgd") -> list[float]:
    """Per-step equilibrium angular update for a schedule (drawn as a reference line)."""
    if optimizer == "adamw":
        return [adamw_equilibrium(lr, weight_decay, momentum)["angular_update"] for lr in lrs]
    return [sgd_equilibrium(lr, weight_decay, momentum)["angular_update"] for lr in lrs]
