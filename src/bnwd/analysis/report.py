"""Summary table (mean +- std over seeds) and a report that checks the article's claims."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from bnwd.analysis.article import ARTICLE_CONFIG, dimensionless
from bnwd.analysis.claims import STAGE1_FROM, describe, evaluate, final_acc
from bnwd.analysis.equilibrium import EQ_KEY, lr_schedule, with_equilibrium_sqsum
from bnwd.analysis.plots import ARTICLE_EPOCHS, CAPTIONS, plot_all
from bnwd.analysis.runs import Run, aggregate, by_variant, load_runs
from bnwd.analysis.summary import write_summary_files
from bnwd.errors import BnwdError
from bnwd.nn import theory
from bnwd.run.rundir import SUMMARY, atomic_write, jsonable

# Numeric columns of a summary row, in table order.
COLUMNS = ("final_test_acc", "final_train_loss", "final_test_loss", "gap", "final_conv_sqsum", "epochs", "wall_s")

# The article's settings (tensorflow/models official resnet, as the article ran it) that the report compares.
ARTICLE = {
    k: ARTICLE_CONFIG[k]
    for k in ("epochs", "lr", "lr_milestones", "lr_gamma", "batch_size", "momentum", "conv_weight_decay")
    + ("weight_decay", "conv_init_scale", "optimizer", "depth", "width", "bn_momentum", "train_subset", "test_subset")
}
ARTICLE_TEXT = {"train_subset": "all 50,000", "test_subset": "all 10,000", "bn_momentum": "0.003, i.e. TF decay 0.997"}


# ---------------------------------------------------------------- numbers


def _f(x) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return float("nan")
    return float(x)


def _final_from_metrics(run: Run) -> dict:
    """Fallbacks for a run without (a complete) summary.json: the last sample/evaluation."""
    m = run.metrics
    out = {}
    for key, src in (
        ("final_test_acc", "test_acc"),
        ("final_test_loss", "test_loss"),
        ("final_train_loss", "train_loss"),
        ("final_train_acc", "train_acc"),
        ("final_conv_sqsum", "conv_sqsum"),
        ("epochs", "epoch"),
    ):
        a = m.get(src)
        if a is not None and np.isfinite(a).any():
            out[key] = float(a[np.isfinite(a)][-1])
    return out


def run_row(run: Run) -> dict:
    s = {**_final_from_metrics(run), **{k: v for k, v in run.summary.items() if v is not None}}
    row = {"variant": run.variant, "seed": run.seed}
    for c in ("final_test_acc", "final_train_loss", "final_test_loss", "final_conv_sqsum", "epochs", "wall_s"):
        row[c] = _f(s.get(c))
    row["final_test_acc"] = final_acc(run)  # the plateau mean (`runs.plateau`), not one evaluation
    row["gap"] = row["final_test_loss"] - row["final_train_loss"]
    return {k: row[k] for k in ("variant", "seed", *COLUMNS)}


def _stat(values: list[float]) -> dict:
    a = np.array([v for v in values if math.isfinite(v)], dtype=float)
    n = len(a)
    return {"mean": float(a.mean()) if n else float("nan"), "std": float(a.std(ddof=1)) if n > 1 else 0.0, "n": n}


def summarize(runs: list[Run]) -> tuple[list[dict], dict]:
    """rows: one per run (variant, seed, final_test_acc, final_train_loss, final_test_loss, gap =
    test - train loss, final_conv_sqsum, epochs, wall_s), taken from summary.json (the last
    sample/evaluation where it lacks a value). stats: variant -> {"n": runs, column: {"mean",
    "std" (over seeds, ddof=1; 0 with one value), "n" (runs with a value)}}."""
    rows = [run_row(r) for r in runs]
    stats = {}
    for v, _rs in by_variant(runs).items():
        sel = [x for x in rows if x["variant"] == v]
        st: dict = {"n": len(sel), "seeds": [x["seed"] for x in sel]}
        for c in COLUMNS:
            st[c] = _stat([x[c] for x in sel])
        stats[v] = st
    return rows, stats


def write_summary(runs: list[Run], out_dir: str | Path) -> list[Path]:
    """OUT/summary.csv (a `kind` column: `run` rows, then `mean` and `std` rows per variant, `n`
    = runs with a value) and OUT/summary.json ({"runs": rows, "variants": stats}, NaN -> null)."""
    rows, stats = summarize(runs)
    table = [["kind", "variant", "seed", "n", *COLUMNS]]
    table += [["run", r["variant"], r["seed"], 1, *[_csv(r[c]) for c in COLUMNS]] for r in rows]
    for v, st in stats.items():
        for kind in ("mean", "std"):
            table.append([kind, v, "", st["n"], *[_csv(st[c][kind]) for c in COLUMNS]])
    return write_summary_files(out_dir, {"runs": rows, "variants": stats}, table)


def _csv(x) -> str:
    return "" if x is None or (isinstance(x, float) and not math.isfinite(x)) else repr(float(x))


# ---------------------------------------------------------------- claims


def _window(runs: list[Run], key: str, lo: float, hi: float) -> float:
    """Mean over seeds of `key`, averaged over the sample points with lo < epoch <= hi
    (the last point at or before hi when the window holds none)."""
    c = aggregate(runs, key)
    if not len(c.epoch):
        return float("nan")
    sel = (c.epoch > lo) & (c.epoch <= hi + 1e-9)
    if sel.any():
        return float(c.mean[sel].mean())
    before = c.epoch <= hi + 1e-9
    return float(c.mean[before][-1]) if before.any() else float("nan")


# ---------------------------------------------------------------- the dimensionless numbers


def _fmt_list(xs, f="{:.3g}") -> str:
    return " / ".join(f.format(x) for x in xs)


def lag_lines(runs: list[Run]) -> list[str]:
    """The BN-lag table: per variant with views of its BN statistics, the stage-1 test accuracy
    (mean over the evaluations from epoch 0.5 to the first lr drop, then mean ± std over seeds)
    with each set of statistics, and the differences on the same weights and test images."""
    g = by_variant(runs)
    cfg = (g.get("baseline") or runs)[0].config
    E = _f(cfg.get("epochs"))
    drops = sorted(_f(m) for m in cfg.get("lr_milestones") or [] if 0 < _f(m) < E)
    m0 = drops[0] if drops else E
    views = ("own", "bn098", "comp", "precise")
    table = []
    for v in ("baseline", "no_conv_l2", "lr_scaled", "lr_exact"):
        per: dict[str, list[float]] = {k: [] for k in views}
        for r in g.get(v, []):
            e, own = r.series("test_acc")
            if not len(e) or not r.has("test_acc_precise"):
                continue
            for k in views:
                ek, xk = r.series("test_acc" if k == "own" else f"test_acc_{k}")
                d = dict(zip(np.round(ek, 9), xk))
                sel = [x for x in np.round(e, 9) if STAGE1_FROM - 1e-9 <= x <= m0 + 1e-9 and x in d]
                per[k].append(float(np.mean([d[x] for x in sel])) if sel else float("nan"))
        if per["own"]:
            table.append((v, per))
    if not table:
        return []

    def pm(xs: list[float]) -> str:
        a = 100 * np.array(xs)
        return f"{a.mean():.1f} ± {a.std(ddof=1):.1f}" if len(a) > 1 else f"{a.mean():.1f}"

    lines = [
        "## The BN lag, measured inside each run",
        "",
        f"Stage-1 test accuracy (%) with four sets of BN statistics on the same weights and test images: the mean "
        f"over the evaluations from epoch {STAGE1_FROM:g} to the first lr drop (epoch {m0:g}), then mean ± std over "
        "seeds. own: the run's running averages; bn098: averages at the article's decay 0.98; comp: averages of "
        "the statistics divided by the filter norms, multiplied back at evaluation (removes the lag that weight "
        "growth causes); precise: recomputed at the current weights from training batches (no lag). The claims "
        "below decide these differences; `figures/bn_lag.png` shows them over training. "
        + (
            "With `bn_views=stage1` the three extra views are computed at the stage-1 evaluations and the last one "
            "only, to keep their cost down (docs/performance.md)."
            if cfg.get("bn_views", "stage1") == "stage1"
            else f"`bn_views={cfg.get('bn_views')}`."
        ),
        "",
        "| variant | seeds | own | bn098 | comp | precise | precise − own | bn098 − own | comp − own |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for v, per in table:
        diff = lambda a, per=per: [x - y for x, y in zip(per[a], per["own"])]  # noqa: E731
        lines.append(
            f"| {v} | {len(per['own'])} | {pm(per['own'])} | {pm(per['bn098'])} | {pm(per['comp'])} | "
            f"{pm(per['precise'])} | {pm(diff('precise'))} | {pm(diff('bn098'))} | {pm(diff('comp'))} |"
        )
    return lines + [""]


def dimensionless_lines(runs: list[Run]) -> list[str]:
    """The table the report opens with: the article's dimensionless numbers against this
    preset's, from the resolved configs, and the baseline's measured stage-1 norm growth."""
    g = by_variant(runs)
    cfg = (g.get("baseline") or runs)[0].config
    if "steps_per_epoch" not in cfg or "conv_weight_decay" not in cfg:
        return []
    art, ours = dimensionless(ARTICLE_CONFIG), dimensionless(cfg)
    growth = "–"
    if "baseline" in g:
        m0 = sorted(float(m) for m in cfg["lr_milestones"])[0]
        vals = []
        for r in g["baseline"]:
            e, v = r.series("conv_sqsum")
            s0 = r.summary.get("initial_conv_sqsum")
            if len(e) and s0:
                vals.append(float(np.interp(m0, e, v)) / float(s0))
        if vals:
            growth = f"{np.mean(vals):.2f}" + (f" ± {np.std(vals, ddof=1):.2f}" if len(vals) > 1 else "")
    acc = [r.summary.get("final_test_acc") for r in g.get("baseline", [])]
    acc = [a for a in acc if isinstance(a, (int, float))]
    a = float(np.mean(acc)) if acc else float("nan")
    se = 100 * math.sqrt(a * (1 - a) / ours["n_test"]) if math.isfinite(a) else float("nan")
    return [
        "## The article's dimensionless numbers, and this preset's",
        "",
        'Computed from the resolved configs by `bnwd.analysis.article.dimensionless` (docs/theory.md, "Shrinking the experiment"); '
        "the stage-1 norm growth is measured.",
        "",
        "| number | article | this run |",
        "|---|---|---|",
        f"| steps per lr stage | {_fmt_list(art['stage_steps'], '{:,}')} | {_fmt_list(ours['stage_steps'], '{:,}')} |",
        f"| relaxation times per stage, N_k 2 lr_k L2_conv / (1 - mu) | {_fmt_list(art['relaxation'])} | "
        f"{_fmt_list(ours['relaxation'])} |",
        f"| BN window in relaxation units, decay 0.997-equivalent | {art['bn_window']:.3g} | {ours['bn_window']:.3g} |",
        f"| BN window in relaxation units, decay 0.98-equivalent (bn098) | {art['bn_window_098']:.3g} | "
        f"{ours['bn_window_098']:.3g} |",
        f"| L2 on BN and dense (a regularizer) | {art['regularizer_l2']:g} | {ours['regularizer_l2']:g} |",
        f"| equilibrium angular update per step in stage 1, sqrt(2 lr L2_conv / (1 + mu)) (cannot be kept: "
        f"delta^2 x relaxation time = (1 - mu) / (1 + mu)) | {math.degrees(art['angular_update']):.3g}° | "
        f"{math.degrees(ours['angular_update']):.3g}° ({ours['angular_update'] / art['angular_update']:.3g}x) |",
        f"| baseline conv sqsum at the first lr drop / initial (measured) | ~2.5 (1/p(50) of the article's fit) | "
        f"{growth} |",
        f"| test images (binomial s.e. of the final accuracy) | 10,000 (0.29 points at 91%) | "
        f"{ours['n_test']:,} ({se:.2f} points) |",
        "",
    ]


# ---------------------------------------------------------------- theory vs measurement

THEORY_VARIANTS = ("baseline", "lr_exact", "lr_scaled", "lr_scaled_bn098")


def theory_by_stage(runs: list[Run]) -> list[dict]:
    """Per lr stage: the equilibrium relative step (= angular update) of a scale-invariant weight,
    sqrt(2 lr wd / (1 + mu)) for SGD+L2 (sqrt(2 lr wd (1 - b1) / (1 + b1)) for AdamW), its
    relaxation time (1 - mu) / (2 lr wd) steps (1 / (2 lr wd) for AdamW), and the measured mean
    over conv layers of ||dw|| / ||w|| (EMA), averaged over the last quarter of the stage (its end
    point excluded), for each variant that has conv L2 or emulates it; and, when the baseline logged its gradient scale
    (SGD) or always (AdamW), the baseline's conv sqsum over the same window against its equilibrium
    value (`bnwd.analysis.equilibrium.equilibrium_sqsum`) as `sqsum` / `sqsum_eq`. Empty when the config has no
    weight decay."""
    g = by_variant(runs)
    cfg = (g.get("baseline") or runs)[0].config
    sched = lr_schedule(cfg)
    lam, mu, opt = (
        _f(cfg.get("conv_weight_decay", cfg.get("weight_decay"))),
        _f(cfg.get("momentum", 0.9)),
        cfg.get("optimizer", "sgd"),
    )
    spe = _f(cfg.get("steps_per_epoch"))
    if sched is None or not lam > 0 or opt not in ("sgd", "adamw"):
        return []
    edges, lrs = sched
    has_eq = bool(with_equilibrium_sqsum(runs))
    out = []
    for k in range(len(edges) - 1):
        lo, hi, lr = float(edges[k]), float(edges[k + 1]), float(lrs[k])
        if not lr > 0 or hi <= lo:
            continue
        eq = theory.sgd_equilibrium(lr, lam, mu) if opt == "sgd" else theory.adamw_equilibrium(lr, lam, mu)
        row = {
            "stage": k + 1,
            "epochs": (lo, hi),
            "lr": lr,
            "steps": (hi - lo) * spe if math.isfinite(spe) else float("nan"),
            "steps_to_equilibrium": eq["steps_to_equilibrium"],
            "predicted": eq["relative_step"],
            "measured": {},
        }
        # the last quarter of the stage; the sample exactly at a milestone can already carry the
        # next stage's lr: leave it out
        win = (hi - (hi - lo) / 4, hi - 1e-6)
        for v in THEORY_VARIANTS:
            if v in g:
                row["measured"][v] = _window(g[v], "rel_step_conv_ema", *win)
        if has_eq:  # the baseline's conv sqsum at the stage's end against where it would settle
            row["sqsum"] = _window(g["baseline"], "conv_sqsum", *win)
            row["sqsum_eq"] = _window(g["baseline"], EQ_KEY, *win)
        if "baseline" in g and any(r.has("mbuf_ratio_conv") for r in g["baseline"]):
            # the correlation factor of the equilibrium norm (`monitor.MomentumStats`)
            row["A"] = _window(g["baseline"], "mbuf_ratio_conv", *win)
            row["cos1"] = _window(g["baseline"], "grad_cos_lag1_conv", *win)
            row["mu"] = mu
        out.append(row)
    return out


def _theory_lines(runs: list[Run]) -> list[str]:
    rows = theory_by_stage(runs)
    if not rows:
        return []
    vs = [v for v in THEORY_VARIANTS if v in rows[0]["measured"]]
    opt = (by_variant(runs).get("baseline") or runs)[0].config.get("optimizer", "sgd")
    formula = "sqrt(2 lr wd / (1 + momentum))" if opt == "sgd" else "sqrt(2 lr wd (1 - b1) / (1 + b1))"
    lines = [
        "## Theory next to measurement",
        "",
        f"Equilibrium relative step of a scale-invariant weight, {formula} per step, and the number of steps "
        "it takes to get there (e-folding time of ||w||^2 under the decay), against the measured mean "
        "||Δw||/||w|| of the conv layers (EMA) over the last quarter of each lr stage (measured / predicted "
        "in brackets). A stage much shorter than the relaxation time ends before equilibrium.",
        "",
        "| stage | epochs | lr | steps | steps to equilibrium | predicted | " + " | ".join(vs) + " |",
        "|---|---|---|---|---|---|" + "---|" * len(vs),
    ]
    for r in rows:
        cells = []
        for v in vs:
            m = r["measured"].get(v, float("nan"))
            cells.append(f"{m:.4g} ({m / r['predicted']:.2f}x)" if math.isfinite(m) else "–")
        lo, hi = r["epochs"]
        lines.append(
            f"| {r['stage']} | {lo:g}-{hi:g} | {r['lr']:g} | {r['steps']:.0f} | {r['steps_to_equilibrium']:.0f} | "
            f"{r['predicted']:.4g} | " + " | ".join(cells) + " |"
        )
    if all("sqsum_eq" in r for r in rows):
        lines += [
            "",
            "The baseline's sum of squared conv weights over the same windows against its equilibrium value "
            "at that lr"
            + (
                " and the measured gradient scale L = ||g||^2 ||w||^2 of each layer, "
                "sum over layers of sqrt(L lr / (wd (1 - mu) (2 - wd lr / (1 + mu))))"
                if opt == "sgd"
                else ", sum over layers of lr dim / (2 wd)"
            )
            + ":",
            "",
            "| stage | measured conv sqsum | equilibrium | measured / equilibrium |",
            "|---|---|---|---|",
        ]
        corr = all("A" in r for r in rows)
        if corr:
            lines[-2] = lines[-2] + " A = E‖b‖² / E‖g‖² | A (1 − mu²) | sqrt(A (1 − mu²)) | lag-1 gradient cosine |"
            lines[-1] += "---|---|---|---|"
        for r in rows:
            a, b = r["sqsum"], r["sqsum_eq"]
            line = f"| {r['stage']} | {a:.4g} | {b:.4g} | {a / b:.2f}x |"
            if corr:
                f = r["A"] * (1 - r["mu"] ** 2)
                line += f" {r['A']:.3g} | {f:.3g} | {math.sqrt(f) if f > 0 else float('nan'):.2f} | {r['cos1']:.3f} |"
            lines.append(line)
        if corr:
            lines += [
                "",
                "The equilibrium above assumes gradients uncorrelated across steps. At stationarity the SGD-momentum "
                "recursion gives exactly E‖w‖² = lr (1 + mu) E‖b‖² / (2 wd) (b: the momentum buffer), so the "
                "equilibrium norm is the uncorrelated value times sqrt(A (1 − mu²)), with A = E‖b‖² / E‖g‖² measured "
                "(1 / (1 − mu²) for uncorrelated gradients; A (1 − mu²) < 1 means that over the momentum's memory "
                "the gradients' correlations are negative on balance, whatever the lag-1 cosine). The same recursion makes the measured angular update equal "
                "sqrt(2 lr wd / (1 + mu)) whatever the correlations: its agreement above checks the implementation, "
                "the norm ratio is the physics.",
            ]
    return lines + [""]


# ---------------------------------------------------------------- report


def _same(a, b) -> bool:
    if isinstance(b, list):
        return isinstance(a, list) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(b, (int, float)) and not isinstance(b, bool):
        return isinstance(a, (int, float)) and math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _images(cfg: dict, k: str) -> tuple[int | None, int]:
    """(images used, CIFAR-10's count) for k = train_subset / test_subset; n_train / n_test
    (the resolved counts) when config.json has them, else the subset (None: all)."""
    full = 50000 if k == "train_subset" else 10000
    n = cfg.get("n_train" if k == "train_subset" else "n_test")
    if not isinstance(n, int) or isinstance(n, bool):
        n = cfg.get(k) or None
    return n, full


def differences(runs: list[Run]) -> list[str]:
    """The settings that differ from the article's, in words."""
    g = by_variant(runs)
    cfg = (g.get("baseline") or runs)[0].config
    out = []
    E = _f(cfg.get("epochs"))
    for k, art in ARTICLE.items():
        if k not in cfg:
            continue
        v = cfg[k]
        if k in ("train_subset", "test_subset"):
            n, full = _images(cfg, k)
            if n != full:
                out.append(
                    f"{'training' if k == 'train_subset' else 'test'} images: {n if n else 'all'} (article: all {full:,})"
                )
            continue
        if _same(v, art):
            continue
        if k == "epochs" and math.isfinite(E):
            out.append(
                f"{E:g} epochs instead of 150"
                + (f" (schedule compressed {ARTICLE_EPOCHS / E:.3g}x)" if E < ARTICLE_EPOCHS else "")
            )
            continue
        shown = "all" if k.endswith("_subset") and v == 0 else (f"{v:.3g}" if isinstance(v, float) else v)
        line = f"{k} = {shown} (article: {ARTICLE_TEXT.get(k, art)})"
        spe = _f(cfg.get("steps_per_epoch"))
        if k == "bn_momentum" and isinstance(v, (int, float)) and v > 0 and math.isfinite(spe) and spe > 0:
            line += (
                f": BN moving-average window {1 / (v * spe):.2g} epochs at {spe:g} steps per epoch "
                f"(article: {1 / (0.003 * 390):.2g} epochs at 390)"
            )
        out.append(line)
    modes = sorted({str(r.config.get("lr_scaling")) for v in ("lr_scaled", "lr_scaled_bn098") for r in g.get(v, [])})
    if modes and modes != ["article"]:
        out.append(f"lr_scaled uses lr_scaling = {', '.join(modes)} (article: its hand-fitted piecewise-linear S_ref)")
    presets = sorted({str(r.config.get("preset")) for r in runs})
    if len(presets) > 1:
        out.append(f"runs come from several presets: {', '.join(presets)}")
    return out


def _pm(st: dict, c: str, pct: bool = False) -> str:
    m, s = st[c]["mean"], st[c]["std"]
    if not math.isfinite(m):
        return "–"
    if pct:
        return f"{100 * m:.2f} ± {100 * s:.2f}"
    return f"{m:.4g} ± {s:.2g}"


def _fmt(x, pct=False) -> str:
    if not isinstance(x, (int, float)) or not math.isfinite(x):
        return "–"
    return f"{100 * x:.2f}" if pct else f"{x:.4g}"


def _rel(f: Path, out: Path) -> str:
    f = Path(f)
    try:
        return Path(os.path.relpath(f.resolve(), out.resolve())).as_posix()
    except ValueError:  # another drive
        return f"figures/{f.name}"


def write_report(
    runs: list[Run],
    out_dir: str | Path,
    figures: list[Path],
    title: str = "bnwd: L2 regularization and batch norm, reproduced",
    notes: str = "",
) -> Path:
    """OUT/report.md: settings and their differences from the article, the mean ± std table,
    the figures (paths relative to OUT, e.g. figures/test_acc_1.png) and the claims checked."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, st = summarize(runs)
    g = by_variant(runs)
    cfg = (g.get("baseline") or runs)[0].config
    claim_items = evaluate(runs)
    atomic_write(out / "claims.json", json.dumps(jsonable(claim_items), indent=1))
    seeds = sorted(
        {r.seed for r in runs},
        key=lambda s: (not isinstance(s, (int, float)), s if isinstance(s, (int, float)) else str(s)),
    )
    sub, _ = _images(cfg, "train_subset")
    tsub, _ = _images(cfg, "test_subset")
    lines = [f"# {title}", ""]
    lines += dimensionless_lines(runs)
    lines.append(
        f"Preset `{cfg.get('preset')}`; variants {', '.join(f'`{v}`' for v in g)}; "
        f"{len(seeds)} seed(s) {seeds}; {_f(cfg.get('epochs')):g} epochs "
        f"({cfg.get('steps_per_epoch', '?')} steps each, batch {cfg.get('batch_size')}); "
        f"training images: {sub if sub else 'all'}, test images: {tsub if tsub else 'all'}; "
        f"ResNet-{cfg.get('depth')} width {cfg.get('width')}; {cfg.get('optimizer', 'sgd')} lr {cfg.get('lr')} "
        f"x{cfg.get('lr_gamma')} at epochs {cfg.get('lr_milestones')}, momentum {cfg.get('momentum')}, "
        f"conv L2 {_f(cfg.get('conv_weight_decay')):.3g} (baseline), BN/dense L2 {_f(cfg.get('weight_decay')):.3g}, "
        f"BN momentum {_f(cfg.get('bn_momentum')):.3g}, conv init x{_f(cfg.get('conv_init_scale', 1.0)):.3g}."
    )
    lines.append("")
    diffs = differences(runs)
    if diffs:
        lines += ["**Differences from the article's settings** (ResNet-20 v1 on all of CIFAR-10, 150 epochs):", ""]
        lines += [f"- {d}" for d in diffs]
    else:
        lines.append("Settings: the article's (ResNet-20 v1, all of CIFAR-10, 150 epochs, lr 0.1/0.01/0.001, L2 2e-4).")
    lines.append("")
    unfinished = [f"{r.variant} seed {r.seed}" for r in runs if not r.summary.get("finished")]
    if unfinished:
        lines += [f"Not finished (numbers are from their last sample point): {', '.join(unfinished)}.", ""]
    if notes:
        lines += [notes.strip(), ""]

    lines += [
        "## Results (mean ± std over seeds)",
        "",
        "| variant | seeds | final test acc (%) | final train loss | final test loss | test − train loss | final conv sqsum | wall (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v, s in st.items():
        lines.append(
            f"| {v} | {s['n']} | {_pm(s, 'final_test_acc', True)} | {_pm(s, 'final_train_loss')} | "
            f"{_pm(s, 'final_test_loss')} | {_pm(s, 'gap')} | {_pm(s, 'final_conv_sqsum')} | {_pm(s, 'wall_s')} |"
        )
    lines += [
        "",
        "std over seeds with ddof = 1 (0 with one seed). Test accuracy: mean over the evaluations in the second "
        "half of the last lr stage (the plateau); train loss: mean over the last sample window (training mode, "
        "augmented data); test loss: the last evaluation.",
        "",
    ]

    lines += lag_lines(runs)

    lines += [
        "## The article's claims, decided with 95% confidence intervals",
        "",
        "[evidence]: could have come out otherwise; [check]: holds by construction when the code is right "
        "(an implementation test, not a finding). Rules and statistics: `bnwd/claims.py`.",
        "",
    ]
    lines += [f"- {describe(c)}" for c in claim_items]
    lines += ["", "The same, machine-readable: `claims.json`.", ""]

    lines += _theory_lines(runs)

    lines += ["## Figures", "", "Lines: mean over seeds; shaded: ±1 std over seeds; dotted verticals: lr drops.", ""]
    for f in figures:
        f = Path(f)
        lines += [f"![{f.stem}]({_rel(f, out)})", ""]
        if f.stem in CAPTIONS:
            lines += [f"*{CAPTIONS[f.stem]}*", ""]

    lines += [
        "## Runs",
        "",
        "| variant | seed | final test acc (%) | final train loss | final test loss | conv sqsum | epochs | wall (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['seed']} | {_fmt(r['final_test_acc'], True)} | {_fmt(r['final_train_loss'])} | "
            f"{_fmt(r['final_test_loss'])} | {_fmt(r['final_conv_sqsum'])} | {_fmt(r['epochs'])} | {_fmt(r['wall_s'])} |"
        )
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_outputs(run_dirs: list[Path], out_dir: Path) -> dict:
    """OUT/figures/, OUT/summary.{csv,json}, OUT/claims.json and OUT/report.md from the finished
    runs among `run_dirs`."""
    runs = [r for r in load_runs(run_dirs) if r.summary and r.summary.get("finished")]
    if not runs:
        raise BnwdError(f"none of the given runs has finished (no {SUMMARY})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figs = plot_all(runs, out_dir / "figures")
    write_summary(runs, out_dir)
    report = write_report(runs, out_dir, figs)
    return {"figures": figs, "report": str(report or out_dir / "report.md"), "runs": [str(r) for r in run_dirs]}
