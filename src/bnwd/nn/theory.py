"""Equilibrium predictions for scale-invariant weights under weight decay (docs/theory.md).

A scale-invariant weight w (conv followed by BN) has a gradient orthogonal to w whose size
goes as 1/||w||: ||g(w)||^2 = L / ||w||^2, with L = E ||g||^2 ||w||^2 the squared gradient
norm at unit weight norm. Each step pushes ||w|| outwards (Pythagoras: the orthogonal step
adds ||lr g||^2 to ||w||^2), weight decay pulls it inwards (a factor (1 - lr lam) per step).
The norm settles where the two balance, and there the weight rotates by a fixed angle per
step that depends only on lr, lam and the momentum, not on the loss (Wan et al. 2021,
"Spherical Motion Dynamics", arXiv 2006.08419; Kosson et al. 2024, "Rotational
Equilibrium", arXiv 2305.17212). Derivation sketch for plain SGD (mu = 0):

    ||w'||^2 = (1 - lr lam)^2 ||w||^2 + lr^2 L / ||w||^2
    => ||w*||^4 = lr L / (lam (2 - lr lam)),   tan(theta) = lr ||g|| / ((1 - lr lam) ||w||)
    => theta^2 ~= lr^2 L / ||w*||^4 = lr lam (2 - lr lam) ~= 2 lr lam.

With heavy-ball momentum mu the balance can be taken exactly. PyTorch's recursion
b_t = mu b_(t-1) + g_t + lam w_t, w_(t+1) = w_t - lr b_t with g orthogonal to w gives, at
stationarity (E||w_(t+1)||^2 = E||w_t||^2, so 2 E[w.b] = lr E||b||^2, and
E[w_t.b_t] = mu (E[w.b] - lr E||b||^2) + lam E||w||^2):

    E||w||^2 = lr (1 + mu) E||b||^2 / (2 lam),   E||dw||^2 / E||w||^2 = 2 lr lam / (1 + mu),

whatever the correlations of the gradients. So a measured angular update equal to
sqrt(2 lr lam / (1 + mu)) checks an implementation; it cannot test the physics. The norm
does depend on the correlations, through A = E||b||^2 / E||g||^2 (measured by
`monitor.MomentumStats`): E||w||^4 = lr A L (1 + mu) / (2 lam). For gradients uncorrelated
across steps A = 1 / (1 - mu^2) (ignoring lam w in b), and the same balance gives
the formulas of `sgd_equilibrium`: over many steps momentum multiplies the random walk's
outward push by 1/(1 - mu) (hence the norm), while the per-step update has mean square
lr^2 ||g||^2 / (1 - mu^2) (hence the angle). For AdamW the per-coordinate normalization
makes the update size independent of ||w|| (`adamw_equilibrium`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from bnwd.errors import ConfigError


def _check(lr: float, weight_decay: float, momentum: float, name: str = "momentum") -> None:
    if not lr > 0 or not weight_decay > 0:
        raise ConfigError(f"equilibrium needs lr > 0 and weight_decay > 0, got lr={lr}, weight_decay={weight_decay}")
    if not 0 <= momentum < 1:
        raise ConfigError(f"{name} must be in [0, 1), got {momentum}")


def sgd_equilibrium(
    lr: float, weight_decay: float, momentum: float = 0.9, grad_sq_unit: float | None = None
) -> dict[str, float]:
    """Equilibrium of a scale-invariant weight under SGD with momentum mu, lr eta, L2 lam.

    PyTorch convention b = mu b + g + lam w, w -= eta b; gradients orthogonal to w,
    uncorrelated across steps, with E||g||^2 ||w||^2 = L (`grad_sq_unit`). Returns

      angular_update   sqrt(2 eta lam / (1 + mu))   radians per step (0.1, 2e-4, 0.9 -> 0.0046);
      relative_step    ||w_{t+1} - w_t|| / ||w_t|| at equilibrium: equal to angular_update to
                       first order (the step is almost tangential; its radial part is O(eta lam));
      rate             1 - 2 lam eta / (1 - mu): the per-step factor by which ||w||^2 shrinks
                       when the gradient push is negligible (far above equilibrium; the
                       decay (1 - eta lam/(1-mu))^2 of the momentum-averaged update);
      steps_to_equilibrium  1 / (1 - rate) = (1 - mu) / (2 eta lam): the e-folding time of
                       ||w||^2 under that decay, i.e. equilibrium takes O(1/(eta lam)) steps
                       (near equilibrium the deviation of ||w||^4 relaxes about twice as fast);
      intrinsic_lr     eta lam (Li, Lyu & Arora 2020);
      norm             (L eta / (lam (1 - mu) (2 - lam eta / (1 + mu))))^(1/4), when L is given
                       (and sq_norm, its square).
    """
    _check(lr, weight_decay, momentum)
    eta, lam, mu = float(lr), float(weight_decay), float(momentum)
    ang = math.sqrt(2 * eta * lam / (1 + mu))
    k = 2 * lam * eta / (1 - mu)
    out = {
        "angular_update": ang,
        "relative_step": ang,
        "rate": 1 - k,
        "steps_to_equilibrium": 1 / k,
        "intrinsic_lr": eta * lam,
    }
    if grad_sq_unit is not None:
        if not grad_sq_unit >= 0:
            raise ConfigError(f"grad_sq_unit must be >= 0, got {grad_sq_unit}")
        sq = math.sqrt(grad_sq_unit * eta / (lam * (1 - mu) * (2 - lam * eta / (1 + mu))))
        out.update(norm=math.sqrt(sq), sq_norm=sq)
    return out


def adamw_equilibrium(
    lr: float, weight_decay: float, beta1: float = 0.9, beta2: float = 0.999, dim: int | None = None
) -> dict[str, float]:
    """Equilibrium of a scale-invariant weight under AdamW (decoupled decay: w -= eta lam w).

    Adam divides each coordinate by its RMS gradient, so (for noise-dominated gradients,
    uncorrelated across steps, beta2 short enough that v tracks E g^2 as ||w|| moves, eps
    negligible) the update u = lr m / sqrt(v) does not depend on ||w||: the effective lr of a
    scale-invariant weight goes as eta / ||w||, not eta / ||w||^2. Per step each coordinate
    of m / sqrt(v) has mean square (1 - b1) / (1 + b1), while over many steps the momentum
    averages out and the weight random-walks by eta^2 per coordinate and step. The norm
    settles where that outward push balances the decay, 2 eta lam ||w||^2 = eta^2 dim:

      angular_update   ||u|| / ||w|| = sqrt(2 eta lam (1 - b1) / (1 + b1)) radians per step
                       (= relative_step);
      rate             1 - 2 eta lam: the per-step shrink of ||w||^2 by the decay alone;
      steps_to_equilibrium  1 / (2 eta lam);
      norm             sqrt(eta dim / (2 lam)), when `dim` (number of entries of w) is given
                       (Kosson et al. 2024).
    `beta2` only enters through the assumption above and is accepted for completeness.
    """
    _check(lr, weight_decay, beta1, "beta1")
    if not 0 <= beta2 < 1:
        raise ConfigError(f"beta2 must be in [0, 1), got {beta2}")
    eta, lam, b1 = float(lr), float(weight_decay), float(beta1)
    ang = math.sqrt(2 * eta * lam * (1 - b1) / (1 + b1))
    out = {
        "angular_update": ang,
        "relative_step": ang,
        "rate": 1 - 2 * eta * lam,
        "steps_to_equilibrium": 1 / (2 * eta * lam),
        "intrinsic_lr": eta * lam,
    }
    if dim is not None:
        out["norm"] = math.sqrt(eta * dim / (2 * lam))
    return out


def predicted_curves(
    lrs_per_step: Sequence[float], weight_decay: float, momentum: float = 0.9, optimizer: str = "sgd"
) -> np.ndarray:
    """Per-step equilibrium angular update (radians/step) for a learning-rate schedule.

    sgd:   sqrt(2 lr_t lam / (1 + mu));    adamw: sqrt(2 lr_t lam (1 - b1) / (1 + b1)), b1 = `momentum`.
    This is the instantaneous equilibrium value, a reference line to draw next to the measured
    ||dw|| / ||w||: after an lr change the measured value jumps with lr_t (the norm has not
    moved yet) and then relaxes to this line over O(1/(lr_t lam)) steps. Steps with lr 0 give 0.
    """
    lrs = np.asarray(lrs_per_step, dtype=np.float64).reshape(-1)
    if np.any(lrs < 0):
        raise ConfigError("learning rates must be >= 0")
    if not weight_decay >= 0 or not 0 <= momentum < 1:
        raise ConfigError(f"need weight_decay >= 0 and momentum in [0, 1), got {weight_decay}, {momentum}")
    if optimizer == "sgd":
        return np.sqrt(2 * lrs * weight_decay / (1 + momentum))
    if optimizer == "adamw":
        return np.sqrt(2 * lrs * weight_decay * (1 - momentum) / (1 + momentum))
    raise ConfigError(f"unknown optimizer {optimizer!r} for equilibrium predictions: sgd or adamw")


predicted_curve = predicted_curves  # alias
