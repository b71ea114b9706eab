"""The article's experiment as numbers: its settings (`ARTICLE_CONFIG`) and the dimensionless
numbers a reduced preset must keep of it (`dimensionless`; docs/theory.md, "Shrinking the
experiment"), from resolved configs as config.json holds them.
"""

from __future__ import annotations

import math

from bnwd.run.config import Config, bn098_momentum

# The article's settings are the blog preset's (config.Config defaults), plus what its data gave.
ARTICLE_CONFIG = {**Config().to_dict(), "steps_per_epoch": 390, "n_test": 10_000}


def dimensionless(cfg: dict) -> dict:
    """What a reduced preset must keep of the article (docs/theory.md),
    from a resolved config (config.json; `steps_per_epoch` and `n_test` from the run):

      stage_steps      N_k, steps per lr stage
      relaxation       N_k * 2 lr_k lam_conv / (1 - mu): e-folding times of ||w||^2 per stage
      bn_window        (1 / bn_momentum) * 2 lr_0 lam_conv / (1 - mu): the BN moving-average
                       window in relaxation units, at the configured momentum
      bn_window_098    the same at the article's fix (decay 0.98, `config.bn098_momentum`)
      regularizer_l2   L2 on BN gamma/beta and the dense layer (a real regularizer)
      angular_update   sqrt(2 lr_0 lam_conv / (1 + mu)): the equilibrium angular update per step in
                       stage 1 (rad); a preset with fewer steps per stage cannot keep it
      n_test           test images
    """
    spe = float(cfg["steps_per_epoch"])
    E, ms = float(cfg["epochs"]), sorted(float(m) for m in cfg["lr_milestones"])
    bounds = [0.0] + [m for m in ms if 0 < m < E] + [E]
    lam, mu, lr0 = float(cfg["conv_weight_decay"]), float(cfg["momentum"]), float(cfg["lr"])
    steps, relax = [], []
    for k in range(len(bounds) - 1):
        n = round(bounds[k + 1] * spe) - round(bounds[k] * spe)
        lr = lr0 * float(cfg["lr_gamma"]) ** k
        steps.append(n)
        relax.append(n * 2 * lr * lam / (1 - mu))
    rate = 2 * lr0 * lam / (1 - mu)
    return {
        "stage_steps": steps,
        "relaxation": relax,
        "bn_window": rate / float(cfg["bn_momentum"]),
        "bn_window_098": rate / bn098_momentum(float(cfg["bn_momentum"])),
        "regularizer_l2": float(cfg["weight_decay"]),
        # rad per step in stage 1 at equilibrium; with mu fixed, delta^2 times the relaxation time
        # (1 - mu) / (2 lr lam) is (1 - mu) / (1 + mu): fewer steps per relaxation time, larger steps
        "angular_update": math.sqrt(2 * lr0 * lam / (1 + mu)),
        "n_test": int(cfg.get("n_test") or 10_000),
    }
