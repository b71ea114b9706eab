"""Figures of the article, drawn from run directories.

Runs of one variant (several seeds) are drawn as their mean with a shaded +-1 standard
deviation band (ddof=1). Seeds are aligned on `step` when they share their sample points,
otherwise interpolated onto the epochs of the seed with the most sample points.

Figures are built with `matplotlib.figure.Figure` (no pyplot, no global backend, nothing to
close) and saved as PNG (dpi 130) and SVG. Each `plot_*` function returns the Figure, or
None when none of its variants has data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bnwd.analysis.equilibrium import EQ_KEY, equilibrium_angular_update, lr_schedule, with_equilibrium_sqsum
from bnwd.analysis.runs import Curve, Run, aggregate, by_variant, load_run, load_runs, mean_std  # noqa: F401 (re-exported)
from bnwd.errors import BnwdError
from bnwd.nn.optim import article_epoch, article_piecewise

# Variant -> (color, line style). Baseline orange and no_conv_l2 blue as in the article.
COLORS = {
    "baseline": "#ff7f0e",
    "no_conv_l2": "#1f77b4",
    "lr_scaled": "#2ca02c",
    "lr_scaled_bn098": "#9467bd",
    "lr_exact": "black",
}
STYLES = {"lr_exact": "--"}
ORDER = list(COLORS)
ARTICLE_EPOCHS = 150.0
DPI = 130

PAIR = ["baseline", "no_conv_l2"]
ALL = ORDER

# Figure name -> one-line caption (the report prints these under the figures).
CAPTIONS = {
    "test_acc_1": "Test accuracy, L2 on all layers (baseline) vs no L2 on the conv kernels (article: 91% vs 89.5%).",
    "test_acc_2": "Test accuracy with the conv L2 replaced by a conv learning-rate factor (lr_scaled).",
    "test_acc_3": "Test accuracy with BN decay 0.98 (lr_scaled_bn098), which lets the BN moving averages keep up.",
    "conv_sqsum": "Sum of squared conv weights: without conv L2 the weights grow much faster. Dashed: where "
    "the baseline's norm would settle at the current lr and measured gradient scale (equilibrium theory).",
    "conv_sqsum_log": "Sum of squared conv weights, log scale: with lr scaling they grow to extreme values.",
    "rel_step_1": "Mean over conv layers of ||step|| / ||w|| (EMA, quarter-epoch half-life): without conv L2 it decays.",
    "rel_step_2": "Relative step size of all runs: lr scaling reproduces the baseline's.",
    "lr_factor": "Conv learning-rate factor of the runs without conv L2, and the baseline's S(t)/S(0) it stands in for.",
    "train_loss": "Training loss (mean over each sample window).",
    "bn_lag": "What the BN moving averages cost: each view of the BN statistics minus the run's own, on the same "
    "weights and test images. precise: recomputed at the current weights (no lag); bn098: the article's "
    "decay 0.98; comp: averages of the statistics divided by the filter norms (removes the lag from weight growth).",
    "exact": "Baseline (conv L2) vs lr_exact (no conv L2, the exact lr transform, BN statistics rescaled): "
    "train loss, relative step and test accuracy. The two are the same dynamics up to rounding, but early "
    "training is chaotic (rounding differences grow ~3x per step, `benchmarks/chaos.py`), so they agree "
    "as two seeds do, statistically rather than pointwise.",
}


# ---------------------------------------------------------------- loading


# ---------------------------------------------------------------- drawing


def _new_figure(nrows: int = 1, height: float = 4.3):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.2, height * nrows if nrows > 1 else height))
    axes = [fig.add_subplot(nrows, 1, i + 1) for i in range(nrows)]
    return fig, axes


def _ref_config(runs: list[Run]) -> dict:
    g = by_variant(runs)
    return (g.get("baseline") or runs)[0].config


def _setting(runs: list[Run]) -> str:
    cfg = _ref_config(runs)
    bits = []
    if cfg.get("preset"):
        bits.append(f"preset {cfg['preset']}")
    if cfg.get("epochs") is not None:
        bits.append(f"{float(cfg['epochs']):g} epochs")
    if cfg.get("optimizer", "sgd") != "sgd":
        bits.append(str(cfg["optimizer"]))
    return ", ".join(bits)


def _milestones(ax, runs: list[Run]) -> None:
    cfg = _ref_config(runs)
    E = float(cfg.get("epochs") or math.inf)
    for m in cfg.get("lr_milestones") or []:
        if 0 < float(m) < E:
            ax.axvline(float(m), color="grey", ls=":", lw=0.9, zorder=0)


def _finish(fig, ax, title: str, ylabel: str, runs: list[Run], log: bool, band: bool, note: str = "") -> None:
    from matplotlib.patches import Patch

    _milestones(ax, runs)
    if log:
        ax.set_yscale("log")
        _tidy_log(ax)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    setting = _setting(runs)
    sub = "; ".join(x for x in (setting, note or "dotted: lr drops") if x)
    ax.set_title(f"{title}\n({sub})", fontsize=10)
    ax.grid(alpha=0.3, lw=0.6)
    handles, labels = ax.get_legend_handles_labels()
    if band:
        handles.append(Patch(color="grey", alpha=0.25, lw=0))
        labels.append("shaded: mean +-1 std over seeds")
    ax.legend(handles, labels, fontsize=8)
    fig.tight_layout()


def _label(v: str, n: int) -> str:
    return f"{v} ({n} seed{'s' if n != 1 else ''})"


def _draw_variants(
    ax, runs: list[Run], key: str, variants: list[str], scale: float = 1.0, log: bool = False
) -> tuple[int, bool]:
    """Mean line and +-1 std band per variant; returns (curves drawn, any band drawn)."""
    groups = by_variant(runs)
    drawn, band = 0, False
    for v in variants:
        if v not in groups:
            continue
        c = aggregate(groups[v], key)
        m, s = c.mean * scale, c.std * scale
        keep = np.isfinite(m) & ((m > 0) if log else True)
        if keep.sum() < 1:
            continue
        e, m, s = c.epoch[keep], m[keep], s[keep]
        color = COLORS.get(v)
        ax.plot(
            e,
            m,
            STYLES.get(v, "-"),
            color=color,
            lw=1.5,
            marker="." if len(e) < 3 else None,
            label=_label(v, len(groups[v])),
        )
        if len(groups[v]) > 1 and len(e) > 1:
            lo = np.maximum(m - s, m * 0.05) if log else m - s
            ax.fill_between(e, lo, m + s, color=color or "grey", alpha=0.2, lw=0)
            band = True
        drawn += 1
    return drawn, band


def _curves(
    runs: list[Run],
    key: str,
    variants: list[str],
    title: str,
    ylabel: str,
    log: bool = False,
    scale: float = 1.0,
    extra: Callable | None = None,
):
    fig, (ax,) = _new_figure()
    drawn, band = _draw_variants(ax, runs, key, variants, scale, log)
    if not drawn:
        return None
    if extra is not None:
        extra(ax)
    _finish(fig, ax, title, ylabel, runs, log, band)
    return fig


# ---------------------------------------------------------------- theory lines (`analysis.equilibrium`)


def _theory_line(ax, runs: list[Run]) -> bool:
    base = by_variant(runs).get("baseline")
    if not base:
        return False
    run = base[0]
    sched = lr_schedule(run.config)
    if sched is not None:
        e, lr = sched
        where = "post"
    else:  # the logged lr of each sample window (the window ending at that sample)
        e, lr = run.series("lr")
        where = "pre"
    if len(e) < 2:
        return False
    pred = equilibrium_angular_update(lr, run.config)
    if pred is None:
        return False
    opt = run.config.get("optimizer", "sgd")
    ax.step(
        e,
        pred,
        where=where,
        color="grey",
        ls="--",
        lw=1.1,
        label="equilibrium prediction (SGD+L2)" if opt == "sgd" else "equilibrium prediction (AdamW)",
    )
    return True


def _sqsum_theory_line(ax, runs: list[Run]) -> bool:
    base = with_equilibrium_sqsum(runs)
    if not base:
        return False
    c = aggregate(base, EQ_KEY)
    ok = np.isfinite(c.mean) & (c.mean > 0)
    if ok.sum() < 2:
        return False
    opt = base[0].config.get("optimizer", "sgd")
    ax.plot(
        c.epoch[ok],
        c.mean[ok],
        color="grey",
        ls="--",
        lw=1.1,
        label="baseline's equilibrium at the current lr" + (" and gradient scale" if opt == "sgd" else " (AdamW)"),
    )
    return True


def _tidy_log(ax) -> None:
    """Plain tick labels on a log axis that spans less than a decade (no 1.02 x 10^0)."""
    from matplotlib.ticker import FuncFormatter

    lo, hi = ax.get_ylim()
    if lo > 0 and hi / lo < 10:
        d = int(math.ceil(math.log10(hi / (hi - lo)))) + 3
        f = FuncFormatter(lambda y, _: f"{y:.{d}g}")
        ax.yaxis.set_major_formatter(f)
        ax.yaxis.set_minor_formatter(f)


# ---------------------------------------------------------------- the figures


def plot_test_acc(runs: list[Run], variants: list[str] | None = None, title: str | None = None):
    return _curves(runs, "test_acc", variants or ALL, title or "Test accuracy", "test accuracy (%)", scale=100.0)


def plot_conv_sqsum(runs: list[Run], variants: list[str] | None = None, log: bool = False, theory: bool = True):
    title = "Sum of squared conv weights" + (" (log scale)" if log else "")
    extra = (lambda ax: _sqsum_theory_line(ax, runs)) if theory else None
    return _curves(
        runs,
        "conv_sqsum",
        variants or (ALL if log else PAIR),
        title,
        "sum of squared conv weights",
        log=log,
        extra=extra,
    )


def plot_rel_step(runs: list[Run], variants: list[str] | None = None, theory: bool = True):
    extra = (lambda ax: _theory_line(ax, runs)) if theory else None
    return _curves(
        runs,
        "rel_step_conv_ema",
        variants or ALL,
        "Mean relative step size of conv layers (EMA, quarter-epoch half-life)",
        "mean ||Δw||/||w|| of conv layers, per step",
        log=True,
        extra=extra,
    )


def plot_train_loss(runs: list[Run], variants: list[str] | None = None):
    return _curves(
        runs,
        "train_loss",
        variants or ALL,
        "Training loss (mean over each sample window)",
        "training loss (cross-entropy)",
        log=True,
    )


def plot_exact(runs: list[Run]):
    """Baseline vs lr_exact in three panels (train loss, relative step, test accuracy): the
    exact transform trains the same network as conv L2, so the curves should coincide."""
    groups = by_variant(runs)
    if "baseline" not in groups or "lr_exact" not in groups:
        return None
    pair = ["baseline", "lr_exact"]
    fig, axes = _new_figure(3, height=3.2)
    panels = (
        ("train_loss", "training loss", True, 1.0, "Training loss"),
        ("rel_step_conv_ema", "mean ||Δw||/||w|| (conv)", True, 1.0, "Relative step size of conv layers (EMA)"),
        ("test_acc", "test accuracy (%)", False, 100.0, "Test accuracy"),
    )
    for ax, (key, ylabel, log, scale, title) in zip(axes, panels):
        _, band = _draw_variants(ax, runs, key, pair, scale, log)
        _finish(fig, ax, f"{title}: conv L2 vs the exact lr transform", ylabel, runs, log, band)
    return fig


def _article_curve(cfg: dict) -> tuple[np.ndarray, np.ndarray]:
    """The article's fit of the baseline's S(t)/S(0), i.e. 1 / p(epoch), its three 50-epoch lr
    stages mapped onto the run's stages one by one (`optim.article_epoch`)."""
    E = float(cfg.get("epochs") or ARTICLE_EPOCHS)
    ms = cfg.get("lr_milestones") or [50.0, 100.0]
    x = np.linspace(0.0, E, 400)
    if len(ms) != 2:
        return x, np.array([1.0 / article_piecewise(float(t) * ARTICLE_EPOCHS / E) for t in x])
    return x, np.array([1.0 / article_piecewise(article_epoch(float(t), ms, E)) for t in x])


def plot_lr_factor(runs: list[Run]):
    """Top: the conv lr factor the runs without conv L2 used (log y). Bottom: the baseline's
    measured S(t)/S(0) and the article's piecewise-linear fit of it (the article's figure).
    A panel without data is left out; None when neither has data."""
    groups = by_variant(runs)
    scaled = [
        v
        for v in ("lr_scaled", "lr_scaled_bn098", "lr_exact")
        if v in groups and any(r.has("lr_factor") for r in groups[v])
    ]
    base = groups.get("baseline")
    base_ok = bool(base) and any(r.has("conv_sqsum") for r in base)
    panels = int(bool(scaled)) + int(base_ok)
    if not panels:
        return None
    cfg = _ref_config(runs)
    E = float(cfg.get("epochs") or ARTICLE_EPOCHS)
    mapped = abs(E - ARTICLE_EPOCHS) > 1e-9
    fig, axes = _new_figure(panels, height=3.6)
    i = 0
    if scaled:
        ax = axes[i]
        i += 1
        _, band = _draw_variants(ax, runs, "lr_factor", scaled, log=True)
        ax.axhline(1.0, color="grey", lw=0.8)
        modes = sorted({str(r.config.get("lr_scaling", "?")) for v in scaled if v != "lr_exact" for r in groups[v]})
        _finish(
            fig,
            ax,
            "Conv learning-rate factor replacing conv L2" + (f" (lr_scaling: {', '.join(modes)})" if modes else ""),
            "multiplier on conv gradients",
            runs,
            True,
            band,
        )
    if base_ok:
        ax = axes[i]
        c = aggregate(base, "conv_sqsum")
        s0 = [r.summary.get("initial_conv_sqsum") for r in base]
        s0 = [x for x in s0 if isinstance(x, (int, float)) and x > 0]
        known = bool(s0)
        s0 = float(np.mean(s0)) if known else float(c.mean[0])
        x0, y0 = (np.r_[0.0, c.epoch], np.r_[1.0, c.mean / s0]) if known and c.epoch[0] > 0 else (c.epoch, c.mean / s0)
        ax.plot(
            x0,
            y0,
            color=COLORS["baseline"],
            lw=1.5,
            label=f"baseline S(t)/S(0), measured ({len(base)} seed{'s' if len(base) != 1 else ''})",
        )
        x, y = _article_curve(cfg)
        ax.plot(
            x,
            y,
            color="grey",
            ls="--",
            lw=1.2,
            label="article's fit (150 epochs)" + (f", mapped onto {E:g}" if mapped else ""),
        )
        _finish(
            fig,
            ax,
            "Baseline's S(t)/S(0) and the article's piecewise-linear fit of it",
            "S(t) / S(0)",
            runs,
            False,
            False,
            note="article's curve: its lr stages mapped onto this run's" if mapped else "",
        )
    return fig


LAG_VIEWS = (  # (view, label, color): the cost of the run's own statistics, in accuracy points
    ("precise", "precise - own: all of the lag (statistics recomputed at the current weights)", "black"),
    ("bn098", "bn098 - own: what decay 0.98 recovers", "#9467bd"),
    ("comp", "comp - own: the part from weight growth (norm-compensated statistics)", "#2ca02c"),
)


def lag_runs(runs: list[Run], view: str) -> list[Run]:
    """Copies of `runs` with the key `lag_<view>` = test_acc_<view> - test_acc (own), NaN where the
    view was not evaluated."""
    out = []
    for r in runs:
        a, own = r.metrics.get(f"test_acc_{view}"), r.metrics.get("test_acc")
        if a is None or own is None:
            continue
        m = dict(r.metrics)
        m[f"lag_{view}"] = a - own
        out.append(Run(r.path, r.config, r.rows, r.summary, m))
    return out


def plot_bn_lag(runs: list[Run]):
    """The BN-lag cost against epochs, one panel per variant with views: precise - own, bn098 -
    own and comp - own test accuracy (points), mean +-1 std over seeds, lr drops dotted."""
    groups = by_variant(runs)
    vs = [
        v for v in ("baseline", "no_conv_l2", "lr_scaled", "lr_exact") if v in groups and lag_runs(groups[v], "precise")
    ]
    if not vs:
        return None
    fig, axes = _new_figure(len(vs), height=3.0)
    for ax, v in zip(axes, vs):
        band = False
        for view, label, color in LAG_VIEWS:
            rs = lag_runs(groups[v], view)
            c = aggregate(rs, f"lag_{view}") if rs else None
            if c is None or not len(c.epoch):
                continue
            ok = np.isfinite(c.mean)
            e, m, sd = c.epoch[ok], 100 * c.mean[ok], 100 * c.std[ok]
            if len(e) > 2:  # views at stage 1 and the end only: no line across the evaluations without them
                gap = np.flatnonzero(np.diff(e) > 1.5 * np.min(np.diff(e))) + 1
                e, m, sd = (np.insert(x.astype(float), gap, np.nan) for x in (e, m, sd))
            ax.plot(e, m, "-", marker=".", color=color, lw=1.3, label=label)
            if len(rs) > 1:
                ax.fill_between(e, m - sd, m + sd, color=color, alpha=0.18, lw=0)
                band = True
        ax.axhline(0.0, color="grey", lw=0.8)
        n = len(groups[v])
        _finish(
            fig,
            ax,
            f"{v} ({n} seed{'s' if n != 1 else ''}): test accuracy of a view minus the run's own",
            "points",
            runs,
            False,
            band,
        )
    return fig


FIGURES = (
    "test_acc_1",
    "test_acc_2",
    "test_acc_3",
    "conv_sqsum",
    "conv_sqsum_log",
    "rel_step_1",
    "rel_step_2",
    "lr_factor",
    "train_loss",
    "exact",
    "bn_lag",
)


def _builders(runs: list[Run], theory: bool) -> dict[str, Callable]:
    three = ["baseline", "no_conv_l2", "lr_scaled"]
    has_exact = "lr_exact" in by_variant(runs)
    return {
        "test_acc_1": lambda: plot_test_acc(runs, PAIR, "Test accuracy: L2 on all layers vs no L2 on conv layers"),
        "test_acc_2": lambda: plot_test_acc(runs, three, "Test accuracy: conv L2 replaced by a conv lr factor"),
        "test_acc_3": lambda: plot_test_acc(
            runs, ALL, "Test accuracy: + BN decay 0.98" + (" (and the exact transform)" if has_exact else "")
        ),
        "conv_sqsum": lambda: plot_conv_sqsum(runs, PAIR, log=False, theory=theory),
        "conv_sqsum_log": lambda: plot_conv_sqsum(runs, ALL, log=True, theory=theory),
        "rel_step_1": lambda: plot_rel_step(runs, PAIR, theory),
        "rel_step_2": lambda: plot_rel_step(runs, ALL, theory),
        "lr_factor": lambda: plot_lr_factor(runs),
        "train_loss": lambda: plot_train_loss(runs, ALL),
        "exact": lambda: plot_exact(runs),
        "bn_lag": lambda: plot_bn_lag(runs),
    }


def figures(runs: list[Run], theory: bool = True) -> dict[str, object]:
    """Every figure by name (a matplotlib Figure, or None where none of its variants has data)."""
    return {name: fn() for name, fn in _builders(runs, theory).items()}


def save_figure(fig, out_dir: str | Path, name: str) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / f"{name}.png", dpi=DPI)
    fig.savefig(out / f"{name}.svg")
    return out / f"{name}.png"


def plot_all(runs: list[Run], out_dir: str | Path, theory: bool = True) -> list[Path]:
    """Write every figure that has data as OUT/NAME.png and OUT/NAME.svg; returns the PNG paths."""
    if not runs:
        raise BnwdError("no runs to plot")
    paths = []
    for name, fn in _builders(runs, theory).items():
        fig = fn()  # one figure at a time: built, saved, dropped
        if fig is not None:
            paths.append(save_figure(fig, out_dir, name))
    return paths


# ---------------------------------------------------------------- sweeps (`bnwd sweep`)

_WD_KEYS = ("conv_weight_decay", "weight_decay")


def _cell_label(cell: dict, keys: list[str]) -> str:
    return ", ".join(f"{k}={cell[k]:g}" if isinstance(cell[k], float) else f"{k}={cell[k]}" for k in keys)


def plot_sweep_heatmap(summary: dict):
    """Mean final test accuracy over seeds per grid cell (first two axes; the others' cells averaged),
    with lines of constant lr * wd when the axes are lr and a weight decay."""
    grid, cells = summary["grid"], summary["cells"]
    keys = list(grid)
    if not any(c.get("final_test_acc_mean") is not None for c in cells):
        return None
    fig, (ax,) = _new_figure(height=5.2)
    if len(keys) == 1:
        k = keys[0]
        xs = [c[k] for c in cells]
        m = [np.nan if c["final_test_acc_mean"] is None else 100 * c["final_test_acc_mean"] for c in cells]
        sd = [0 if c["final_test_acc_std"] is None else 100 * c["final_test_acc_std"] for c in cells]
        ax.errorbar(range(len(xs)), m, yerr=sd, marker="o", capsize=3)
        ax.set_xticks(range(len(xs)), [f"{x:g}" if isinstance(x, float) else str(x) for x in xs])
        ax.set_xlabel(k)
        ax.set_ylabel("final test accuracy (%), mean +- std over seeds")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        return fig
    ky, kx = keys[0], keys[1]  # rows: first axis, columns: second
    ys, xs = grid[ky], grid[kx]
    acc = np.full((len(ys), len(xs)), np.nan)
    sd = np.full((len(ys), len(xs)), np.nan)
    n = np.zeros((len(ys), len(xs)), dtype=int)
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            mine = [c for c in cells if c[ky] == y and c[kx] == x and c.get("final_test_acc_mean") is not None]
            if mine:
                acc[i, j] = 100 * np.mean([c["final_test_acc_mean"] for c in mine])
                sd[i, j] = 100 * np.mean([c["final_test_acc_std"] or 0.0 for c in mine])
                n[i, j] = min(c["seeds_done"] for c in mine)
    im = ax.imshow(acc, origin="lower", cmap="viridis", aspect="auto")
    fig.colorbar(im, ax=ax, label="final test accuracy (%), mean over seeds")
    for i in range(len(ys)):
        for j in range(len(xs)):
            if np.isfinite(acc[i, j]):
                txt = f"{acc[i, j]:.1f}\n" + (f"±{sd[i, j]:.1f} (n={n[i, j]})" if n[i, j] > 1 else f"(n={n[i, j]})")
                ax.text(
                    j, i, txt, ha="center", va="center", fontsize=8, color="w" if acc[i, j] < np.nanmean(acc) else "k"
                )
    ax.set_xticks(range(len(xs)), [f"{x:g}" if isinstance(x, float) else str(x) for x in xs])
    ax.set_yticks(range(len(ys)), [f"{y:g}" if isinstance(y, float) else str(y) for y in ys])
    ax.set_xlabel(kx)
    ax.set_ylabel(ky)
    pair = {ky, kx}
    wd = next((k for k in _WD_KEYS if k in pair), None)
    if "lr" in pair and wd is not None and all(isinstance(v, float) for v in ys + xs):
        # lr * wd on the index grid (log-interpolated between ticks): iso-lines of the intrinsic lr
        def logi(vals, idx):
            return np.interp(idx, range(len(vals)), np.log10(vals))

        jj, ii = np.meshgrid(np.linspace(0, len(xs) - 1, 60), np.linspace(0, len(ys) - 1, 60))
        prod = logi(ys, ii) + logi(xs, jj)
        levels = sorted({round(math.log10(y * x), 9) for y in ys for x in xs})
        if len(levels) > 1:
            cs = ax.contour(jj, ii, prod, levels=levels, colors="0.3", linewidths=0.8, linestyles="--")
            ax.clabel(cs, fmt=lambda v: f"lr·wd={10**v:.2g}", fontsize=7)
    others = [k for k in keys if k not in (ky, kx)]
    note = f"; averaged over {', '.join(others)}" if others else ""
    ax.set_title(f"final test accuracy over the grid{note}", fontsize=10)
    fig.tight_layout()
    return fig


def _identity_scatter(summary: dict, measured: str, predicted: str, title: str, label: str):
    cells = [c for c in summary["cells"] if c.get(f"{measured}_mean") is not None and c.get(predicted) is not None]
    if not cells:
        return None
    keys = list(summary["grid"])
    fig, (ax,) = _new_figure(height=5.2)
    p = np.array([c[predicted] for c in cells])
    m = np.array([c[f"{measured}_mean"] for c in cells])
    e = np.array([c.get(f"{measured}_std") or 0.0 for c in cells])
    for c, pi, mi, ei in zip(cells, p, m, e):
        ax.errorbar([pi], [mi], yerr=[ei], marker="o", capsize=3, ls="none", label=_cell_label(c, keys))
    lo, hi = min(p.min(), m.min()) / 1.3, max(p.max(), m.max()) * 1.3
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="measured = predicted")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel(f"predicted {label}")
    ax.set_ylabel(f"measured {label} (mean +- std over seeds)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6, ncol=2, loc="upper left")
    fig.tight_layout()
    return fig


def plot_sweep_rel_step(summary: dict):
    """Measured conv relative step at the end of the first lr stage against sqrt(2 lr wd / (1 + mu))."""
    return _identity_scatter(
        summary,
        "rel_step_measured",
        "rel_step_predicted_mean",
        "conv relative step per step at the end of lr stage 1 vs sqrt(2 lr wd / (1 + mu))",
        "relative step ||dw||/||w||",
    )


def plot_sweep_norm(summary: dict):
    """Measured conv sum of squared norms at the end of stage 1 against the equilibrium prediction
    from each layer's measured grad_sq_unit (`equilibrium_sqsum`)."""
    return _identity_scatter(
        summary,
        "conv_sqsum_measured",
        "conv_sqsum_predicted_mean",
        "conv sum of ||w||^2 at the end of lr stage 1 vs its equilibrium value",
        "conv sum of ||w||^2",
    )


def sweep_figures(summary: dict, out_dir: str | Path) -> list[Path]:
    """sweep_accuracy, sweep_rel_step, sweep_norm (each where there is data) as PNG and SVG."""
    paths = []
    for name, fn in (
        ("sweep_accuracy", plot_sweep_heatmap),
        ("sweep_rel_step", plot_sweep_rel_step),
        ("sweep_norm", plot_sweep_norm),
    ):
        fig = fn(summary)
        if fig is not None:
            paths.append(save_figure(fig, out_dir, name))
    return paths
