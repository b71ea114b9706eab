import numpy as np
import pytest

from bnwd.theory import adamw_equilibrium, sgd_equilibrium


def test_design_number():
    """lr 0.1, L2 2e-4, momentum 0.9: sqrt(2 * 0.1 * 2e-4 / 1.9) = 0.0046 rad per step."""
    assert sgd_equilibrium(0.1, 2e-4, 0.9)["angular_update"] == pytest.approx(0.0046, abs=5e-5)
    assert adamw_equilibrium(1e-3, 0.05, 0.9)["angular_update"] == pytest.approx(np.sqrt(2 * 1e-3 * 0.05 * 0.1 / 1.9))


def test_simulated_scale_invariant_weight_reaches_equilibrium():
    """A weight whose gradient is random, orthogonal to w and scales as 1/||w|| (a scale-invariant loss)
    under SGD + momentum + L2 settles at the predicted angular update and norm."""
    rng = np.random.default_rng(0)
    lr, lam, mu, d = 0.1, 5e-3, 0.9, 200
    w = rng.standard_normal(d) * 0.1
    b = np.zeros(d)
    angles, norms = [], []
    L = 0.0
    for t in range(6000):
        n = np.linalg.norm(w)
        xi = rng.standard_normal(d) * 0.05
        g = (xi - (xi @ w) / n**2 * w) / n
        L = np.sum(g**2) * n**2
        b = mu * b + g + lam * w
        w_new = w - lr * b
        if t > 4000:
            angles.append(np.arccos(np.clip(w @ w_new / (n * np.linalg.norm(w_new)), -1, 1)))
            norms.append(np.linalg.norm(w_new))
        w = w_new
    eq = sgd_equilibrium(lr, lam, mu, grad_sq_unit=(0.05**2) * (d - 1))
    assert np.mean(angles) == pytest.approx(eq["angular_update"], rel=0.15)
    assert np.mean(norms) == pytest.approx(eq["norm"], rel=0.15)
