"""Figures of the article, drawn from run directories; seeds as mean with a +-1 std band."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import BnwdError

COLORS = {"baseline": "#ff7f0e", "no_conv_l2": "#1f77b4", "lr_scaled": "#2ca02c", "lr_scaled_bn098": "#9467bd",
          "lr_exact": "black"}
ORDER = list(COLORS)


@dataclass
class Run:
    path: Path
    config: dict
    rows: list[dict]
    summary: dict = field(default_factory=dict)

    @property
    def variant(self) -> str:
        return self.config.get("variant", "?")

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(epochs, values) over the sample points that have `key`."""
        pts = [(r["epoch"], r[key]) for r in self.rows if r.get(key) is not None]
        if not pts:
            return np.zeros(0), np.zeros(0)
        e, v = zip(*pts)
        return np.asarray(e, float), np.asarray(v, float)


def load_run(path: str | Path) -> Run:
    p = Path(path)
    if not (p / "config.json").exists() or not (p / "metrics.jsonl").exists():
        raise BnwdError(f"{p} is not a run directory (needs config.json and metrics.jsonl)")
    rows = []
    for line in (p / "metrics.jsonl").read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    if not rows:
        raise BnwdError(f"{p}/metrics.jsonl holds no sample points yet")
    summary = json.loads((p / "summary.json").read_text()) if (p / "summary.json").exists() else {}
    return Run(p, json.loads((p / "config.json").read_text()), rows, summary)


def load_runs(paths) -> list[Run]:
    return [load_run(p) for p in paths]


def by_variant(runs: list[Run]) -> dict[str, list[Run]]:
    out: dict[str, list[Run]] = {}
    for r in runs:
        out.setdefault(r.variant, []).append(r)
    return dict(sorted(out.items(), key=lambda kv: ORDER.index(kv[0]) if kv[0] in ORDER else 99))


def mean_std(runs: list[Run], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeds aligned on the first seed's epochs (interpolated if their sample points differ)."""
    e0, v0 = runs[0].series(key)
    if len(e0) == 0:
        return e0, v0, v0
    vals = [v0] + [np.interp(e0, *r.series(key)) for r in runs[1:] if len(r.series(key)[0])]
    a = np.vstack(vals)
    return e0, a.mean(0), a.std(0, ddof=1) if len(a) > 1 else np.zeros_like(e0)


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _curves(runs, key, variants, title, ylabel, log=False, scale=1.0, theory=False):
    plt = _plt()
    groups = by_variant(runs)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    drawn = 0
    for v in variants:
        if v not in groups:
            continue
        e, m, s = mean_std(groups[v], key)
        if len(e) < 2:
            continue
        n = len(groups[v])
        style = "--" if v == "lr_exact" else "-"
        ax.plot(e, m * scale, style, color=COLORS.get(v), lw=1.6, label=f"{v} ({n} seed{'s' if n > 1 else ''})")
        if n > 1:
            ax.fill_between(e, (m - s) * scale, (m + s) * scale, color=COLORS.get(v), alpha=0.2, lw=0)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    cfg = runs[0].config
    for ms in cfg.get("lr_milestones", []):
        ax.axvline(ms, color="grey", ls=":", lw=0.8)
    if theory and "baseline" in groups:
        _theory_line(ax, groups["baseline"][0])
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title + ("" if not any(len(g) > 1 for g in groups.values()) else "  (band: +-1 std over seeds)"), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def equilibrium_angular_update(lr: np.ndarray, cfg: dict) -> np.ndarray:
    """SGD+L2: sqrt(2 lr lam / (1 + mu)); AdamW: sqrt(2 lr lam (1 - b1) / (1 + b1)) (rad per step)."""
    lam, mu = cfg.get("weight_decay", 0.0), cfg.get("momentum", 0.9)
    if cfg.get("optimizer", "sgd") == "adamw":
        return np.sqrt(2 * lr * lam * (1 - mu) / (1 + mu))
    return np.sqrt(2 * lr * lam / (1 + mu))


def _theory_line(ax, run: Run) -> None:
    e, lr = run.series("lr")
    if len(e) and run.config.get("weight_decay", 0) > 0 and run.config.get("optimizer", "sgd") in ("sgd", "adamw"):
        ax.step(e, equilibrium_angular_update(lr, run.config), where="post", color="grey", ls="--", lw=1,
                label="equilibrium prediction (baseline's settings)")
        ax.legend(fontsize=8)


def plot_test_acc(runs, variants, title):
    return _curves(runs, "test_acc", variants, title, "test accuracy (%)", scale=100)


def plot_conv_sqsum(runs, variants, log):
    return _curves(runs, "conv_sqsum", variants, "sum of squared conv weights" + (" (log scale)" if log else ""),
                   "sum of squared conv weights", log=log)


def plot_rel_step(runs, variants, theory=True):
    return _curves(runs, "rel_step_conv_ema", variants,
                   "mean relative step size of conv layers (EMA, quarter-epoch half-life)",
                   "mean ||dw|| / ||w|| of conv layers, per step", log=True, theory=theory)


def plot_lr_factor(runs):
    plt = _plt()
    groups = by_variant(runs)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    drawn = 0
    for v in ("lr_scaled", "lr_scaled_bn098", "lr_exact"):
        if v in groups:
            e, m, _ = mean_std(groups[v], "lr_factor")
            if len(e) > 1:
                ax.plot(e, m, color=COLORS[v], label=f"{v}: conv lr factor used")
                drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    from .optim import article_lr_factor
    cfg = runs[0].config
    epochs = float(cfg.get("epochs", 150))
    x = np.linspace(0, epochs, 300)
    ax.plot(x, [1 / article_lr_factor(150 * t / epochs) for t in x], color="grey", ls=":",
            label="1 / article's piecewise-linear S_ref/S(0)" + ("" if epochs == 150 else f" (150 epochs squeezed to {epochs:g})"))
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("multiplier on conv gradients / lr")
    ax.set_title("learning-rate factor replacing conv L2: S(t) / S_ref(t)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def figures(runs: list[Run], theory: bool = True) -> dict[str, object]:
    a = ["baseline", "no_conv_l2"]
    return {
        "test_acc_1": plot_test_acc(runs, a, "test accuracy: L2 on conv layers vs not"),
        "test_acc_2": plot_test_acc(runs, a + ["lr_scaled"], "test accuracy: conv L2 replaced by lr scaling"),
        "test_acc_3": plot_test_acc(runs, ORDER, "test accuracy: + BN momentum fix (and exact transform)"),
        "conv_sqsum": plot_conv_sqsum(runs, a, log=False),
        "conv_sqsum_log": plot_conv_sqsum(runs, ORDER, log=True),
        "rel_step_1": plot_rel_step(runs, a, theory),
        "rel_step_2": plot_rel_step(runs, ORDER, theory),
        "lr_factor": plot_lr_factor(runs),
        "train_loss": _curves(runs, "train_loss", ORDER, "training loss (window mean)", "training loss", log=True),
    }


def plot_all(runs: list[Run], out_dir: str | Path, theory: bool = True) -> list[Path]:
    """Write every figure that has data as PNG and SVG; returns the PNG paths."""
    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures(runs, theory).items():
        if fig is None:
            continue
        fig.savefig(out / f"{name}.png", dpi=130)
        fig.savefig(out / f"{name}.svg")
        plt.close(fig)
        paths.append(out / f"{name}.png")
    return paths
