"""Equilibrium predictions (docs/theory.md, "Equilibrium and relaxation") against its numbers and simulations."""

import numpy as np
import pytest

from bnwd.errors import ConfigError
from bnwd.nn.theory import adamw_equilibrium, predicted_curves, sgd_equilibrium


def test_design_number_and_fields():
    """lr 0.1, L2 2e-4, momentum 0.9: sqrt(2 * 0.1 * 2e-4 / 1.9) = 0.0046 rad per step."""
    eq = sgd_equilibrium(0.1, 2e-4, 0.9)
    assert eq["angular_update"] == pytest.approx(0.0046, abs=5e-5)
    assert eq["relative_step"] == eq["angular_update"]
    assert eq["rate"] == pytest.approx(1 - 2 * 2e-4 * 0.1 / 0.1)
    assert eq["steps_to_equilibrium"] == pytest.approx(0.1 / (2 * 0.1 * 2e-4))  # 2500 steps
    assert "norm" not in eq
    assert sgd_equilibrium(0.1, 2e-4, 0.9, grad_sq_unit=4.0)["norm"] == pytest.approx(
        (4.0 * 0.1 / (2e-4 * 0.1 * (2 - 2e-5 / 1.9))) ** 0.25
    )
    ad = adamw_equilibrium(1e-3, 0.05, 0.9, 0.999, dim=100)
    assert ad["angular_update"] == pytest.approx(np.sqrt(2 * 1e-3 * 0.05 * 0.1 / 1.9))
    assert ad["norm"] == pytest.approx(np.sqrt(1e-3 * 100 / 0.1))


def test_bad_arguments():
    for args in [(0.0, 1e-4, 0.9), (0.1, 0.0, 0.9), (0.1, 1e-4, 1.0)]:
        with pytest.raises(ConfigError):
            sgd_equilibrium(*args)
    with pytest.raises(ConfigError):
        adamw_equilibrium(1e-3, 0.1, 0.9, 1.5)
    with pytest.raises(ConfigError, match="unknown optimizer"):
        predicted_curves([0.1], 1e-4, 0.9, optimizer="lion")


def test_predicted_curves_follow_the_schedule():
    lrs = [0.1] * 5 + [0.01] * 5 + [0.0]
    c = predicted_curves(lrs, 2e-4, 0.9)
    assert c.shape == (11,) and c.dtype == np.float64
    assert c[0] == pytest.approx(sgd_equilibrium(0.1, 2e-4, 0.9)["angular_update"])
    assert c[5] == pytest.approx(c[0] / np.sqrt(10)) and c[-1] == 0
    a = predicted_curves(lrs, 0.05, 0.9, optimizer="adamw")
    assert a[0] == pytest.approx(adamw_equilibrium(0.1, 0.05, 0.9)["angular_update"])


def _orthogonal_noise(rng, w, sigma):
    """A scale-invariant loss's gradient: random, orthogonal to w, of size ~ 1/||w||."""
    n = np.linalg.norm(w)
    xi = rng.standard_normal(w.shape) * sigma
    return (xi - (xi @ w) / n**2 * w) / n


def test_sgd_momentum_simulation_reaches_equilibrium():
    """SGD + momentum + L2 on a weight with random orthogonal 1/||w|| gradients, started 3x above
    the equilibrium norm: ||w||^2 first shrinks at the predicted rate; after 30 e-folding times the
    angular update, the relative step and the norm match the predictions within 10%."""
    rng = np.random.default_rng(0)
    lr, lam, mu, d, sigma = 0.1, 5e-3, 0.9, 1000, 1.0
    eq = sgd_equilibrium(lr, lam, mu, grad_sq_unit=sigma**2 * (d - 1))
    w = rng.standard_normal(d)
    w *= 3 * eq["norm"] / np.linalg.norm(w)
    b = np.zeros(d)
    steps = int(30 * eq["steps_to_equilibrium"])  # 3000
    sq, angles, rel = [], [], []
    for _ in range(steps):
        b = mu * b + _orthogonal_noise(rng, w, sigma) + lam * w
        new = w - lr * b
        n, n_new = np.linalg.norm(w), np.linalg.norm(new)
        angles.append(np.arccos(np.clip(w @ new / (n * n_new), -1, 1)))
        rel.append(np.linalg.norm(new - w) / n)
        sq.append(n_new**2)
        w = new
    tail = slice(steps // 2, None)
    assert np.mean(angles[tail]) == pytest.approx(eq["angular_update"], rel=0.1)
    assert np.mean(rel[tail]) == pytest.approx(eq["relative_step"], rel=0.1)
    assert np.mean(np.sqrt(sq[tail])) == pytest.approx(eq["norm"], rel=0.1)
    # decay phase (after the momentum buffer has filled, far above equilibrium): per-step factor of ||w||^2
    slope = (np.log(sq[60]) - np.log(sq[20])) / 40
    assert np.exp(slope) == pytest.approx(eq["rate"], abs=0.1 * (1 - eq["rate"]))


def test_adamw_simulation_reaches_equilibrium():
    """AdamW (decoupled decay) on the same toy: angular update sqrt(2 lr lam (1-b1)/(1+b1)) and
    norm sqrt(lr dim / (2 lam)) within 10%."""
    rng = np.random.default_rng(1)
    lr, lam, b1, b2, d = 0.01, 0.1, 0.9, 0.99, 1000
    eq = adamw_equilibrium(lr, lam, b1, b2, dim=d)
    w = rng.standard_normal(d)
    w *= 0.3 * eq["norm"] / np.linalg.norm(w)
    m, v = np.zeros(d), np.zeros(d)
    angles, norms = [], []
    steps = int(8 * eq["steps_to_equilibrium"])  # 4000
    for t in range(1, steps + 1):
        g = _orthogonal_noise(rng, w, 1.0)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        new = w * (1 - lr * lam) - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + 1e-12)
        n, n_new = np.linalg.norm(w), np.linalg.norm(new)
        angles.append(np.arccos(np.clip(w @ new / (n * n_new), -1, 1)))
        norms.append(n_new)
        w = new
    tail = slice(steps // 2, None)
    assert np.mean(angles[tail]) == pytest.approx(eq["angular_update"], rel=0.1)
    assert np.mean(norms[tail]) == pytest.approx(eq["norm"], rel=0.1)
