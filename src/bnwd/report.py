"""Summary table (mean +- std over seeds) and a report that checks the article's claims."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from .plots import Run, by_variant, mean_std

COLUMNS = ("final_test_acc", "final_train_loss", "final_test_loss", "gap", "final_conv_sqsum")


def summarize(runs: list[Run]) -> tuple[list[dict], dict]:
    rows = []
    for r in runs:
        s = r.summary
        rows.append({"variant": r.variant, "seed": r.config.get("seed"), "final_test_acc": s["final_test_acc"],
                     "final_train_loss": s["final_train_loss"], "final_test_loss": s["final_test_loss"],
                     "gap": s["final_test_loss"] - s["final_train_loss"], "final_conv_sqsum": s.get("final_conv_sqsum"),
                     "epochs": s.get("epochs"), "wall_s": s.get("wall_s")})
    stats = {}
    for v, rs in by_variant(runs).items():
        sel = [x for x in rows if x["variant"] == v]
        st = {"n": len(sel)}
        for c in COLUMNS:
            a = np.array([x[c] for x in sel], float)
            st[c] = {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0}
        stats[v] = st
    return rows, stats


def write_summary(runs: list[Run], out_dir: str | Path) -> None:
    out = Path(out_dir)
    rows, stats = summarize(runs)
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["kind", "variant", "seed", "n", *COLUMNS])
        for r in rows:
            w.writerow(["run", r["variant"], r["seed"], 1, *[r[c] for c in COLUMNS]])
        for v, st in stats.items():
            w.writerow(["mean", v, "", st["n"], *[st[c]["mean"] for c in COLUMNS]])
            w.writerow(["std", v, "", st["n"], *[st[c]["std"] for c in COLUMNS]])
    (out / "summary.json").write_text(json.dumps({"runs": rows, "variants": stats}, indent=1))


def _pm(st: dict, c: str, pct: bool = False) -> str:
    k = 100 if pct else 1
    m, s = st[c]["mean"] * k, st[c]["std"] * k
    return f"{m:.2f} +- {s:.2f}" if pct else f"{m:.4g} +- {s:.2g}"


def _window(runs: list[Run], key: str, lo: float, hi: float) -> float:
    e, m, _ = mean_std(runs, key)
    sel = (e > lo) & (e <= hi)
    return float(m[sel].mean()) if sel.any() else float("nan")


def claims(runs: list[Run]) -> list[dict]:
    g = by_variant(runs)
    _, st = summarize(runs)
    cfg = runs[0].config
    ms = cfg.get("lr_milestones") or [cfg.get("epochs", 1)]
    E = float(cfg.get("epochs", 1))
    out = []

    def add(claim, needs, fn):
        if not all(v in g for v in needs):
            out.append({"claim": claim, "shown": None, "evidence": f"needs runs {', '.join(needs)}"})
            return
        shown, ev = fn()
        out.append({"claim": claim, "shown": bool(shown), "evidence": ev})

    def acc(v):
        return st[v]["final_test_acc"]

    def c1():
        b, n = acc("baseline"), acc("no_conv_l2")
        spread = max(b["std"], n["std"])
        return n["mean"] < b["mean"], (f"baseline {_pm(st['baseline'], 'final_test_acc', True)}%, no_conv_l2 "
                                       f"{_pm(st['no_conv_l2'], 'final_test_acc', True)}% (article: 91 vs 89.5); gap "
                                       f"{100 * (b['mean'] - n['mean']):.2f} points vs seed spread {100 * spread:.2f}")
    add("Removing conv L2 lowers final test accuracy", ["baseline", "no_conv_l2"], c1)

    def c2():
        r = st["no_conv_l2"]["final_conv_sqsum"]["mean"] / st["baseline"]["final_conv_sqsum"]["mean"]
        return r > 2, f"final conv sqsum no_conv_l2 / baseline = {r:.1f}x"
    add("Without conv L2 the conv weights grow far larger", ["baseline", "no_conv_l2"], c2)

    def c3():
        a = _window(g["no_conv_l2"], "rel_step_conv_ema", ms[0] / 2, ms[0]) / _window(g["baseline"], "rel_step_conv_ema", ms[0] / 2, ms[0])
        b = _window(g["no_conv_l2"], "rel_step_conv_ema", E * 0.9, E) / _window(g["baseline"], "rel_step_conv_ema", E * 0.9, E)
        return a < 1 and b < 1, f"relative step no_conv_l2 / baseline: {a:.2f} late in stage 1, {b:.2f} at the end"
    add("Without conv L2 the relative step size of conv layers falls below the baseline's", ["baseline", "no_conv_l2"], c3)

    def c4():
        dt = st["no_conv_l2"]["final_train_loss"]["mean"] - st["baseline"]["final_train_loss"]["mean"]
        dg = st["no_conv_l2"]["gap"]["mean"] - st["baseline"]["gap"]["mean"]
        return dt > 0 and dg > 0, f"train loss {dt:+.3f}, test-train gap {dg:+.3f} (article: +0.025, +0.024)"
    add("Without conv L2 both the train loss (underfit) and the test-train gap (overfit) are larger", ["baseline", "no_conv_l2"], c4)

    def c5():
        e, b, _ = mean_std(g["baseline"], "rel_step_conv_ema")
        e2, s, _ = mean_std(g["lr_scaled"], "rel_step_conv_ema")
        r = np.interp(e, e2, s) / b
        q = np.percentile(r, [10, 50, 90])
        return abs(q[1] - 1) < 0.15, f"median ratio lr_scaled / baseline = {q[1]:.3f} (10-90%: {q[0]:.2f}-{q[2]:.2f})"
    add("lr_scaled tracks the baseline's relative step size", ["baseline", "lr_scaled"], c5)

    def c6():
        d = acc("lr_scaled")["mean"] - acc("baseline")["mean"]
        spread = max(acc("lr_scaled")["std"], acc("baseline")["std"], 0.005)
        return abs(d) <= spread, f"lr_scaled - baseline final test acc = {100 * d:+.2f} points (tolerance {100 * spread:.2f})"
    add("lr_scaled recovers the baseline's final accuracy", ["baseline", "lr_scaled"], c6)

    def c7():
        b = _window(g["baseline"], "test_acc", ms[0] / 2, ms[0])
        s = _window(g["lr_scaled"], "test_acc", ms[0] / 2, ms[0])
        return s < b, f"mean test acc, 2nd half of stage 1: lr_scaled {100 * s:.2f}% vs baseline {100 * b:.2f}%"
    add("lr_scaled is worse than the baseline during the first stage (BN moving averages lag)", ["baseline", "lr_scaled"], c7)

    def c8():
        b = _window(g["baseline"], "test_acc", ms[0] / 2, ms[0])
        s = _window(g["lr_scaled"], "test_acc", ms[0] / 2, ms[0])
        f = _window(g["lr_scaled_bn098"], "test_acc", ms[0] / 2, ms[0])
        return f > s, f"2nd half of stage 1: lr_scaled_bn098 {100 * f:.2f}% vs lr_scaled {100 * s:.2f}% (baseline {100 * b:.2f}%)"
    add("A shorter BN moving-average window (decay 0.98) fixes the first stage", ["baseline", "lr_scaled", "lr_scaled_bn098"], c8)

    def c9():
        r = st["lr_scaled"]["final_conv_sqsum"]["mean"] / st["baseline"]["final_conv_sqsum"]["mean"]
        return r > 10, f"final conv sqsum lr_scaled / baseline = {r:.3g}x"
    add("With lr scaling the conv weights grow to extreme values", ["baseline", "lr_scaled"], c9)

    def c10():
        e, b, _ = mean_std(g["baseline"], "train_loss")
        e2, x, _ = mean_std(g["lr_exact"], "train_loss")
        r = np.interp(e, e2, x) / b
        d = acc("lr_exact")["mean"] - acc("baseline")["mean"]
        return abs(np.median(r) - 1) < 0.1, (f"median train-loss ratio lr_exact / baseline = {np.median(r):.3f}; "
                                             f"final test acc difference {100 * d:+.2f} points")
    add("(beyond the article) the exact transform reproduces the baseline without conv L2", ["baseline", "lr_exact"], c10)
    return out


def write_report(runs: list[Run], out_dir: str | Path, figures: list[Path], title: str = "bnwd: L2 regularization and batch norm",
                 notes: str = "") -> Path:
    out = Path(out_dir)
    _, st = summarize(runs)
    cfg = runs[0].config
    seeds = sorted({r.config.get("seed") for r in runs})
    diffs = []
    art = {"epochs": 150.0, "width": 16, "depth": 20, "batch_size": 128, "weight_decay": 2e-4, "train_subset": 0,
           "bn_momentum": 0.003, "optimizer": "sgd", "lr": 0.1}
    for k, v in art.items():
        if cfg.get(k) != v and not (isinstance(v, float) and isinstance(cfg.get(k), (int, float)) and float(cfg.get(k)) == v):
            diffs.append(f"{k} = {cfg.get(k)} (article: {v if v else 'all 50,000'})")
    lines = [f"# {title}", "",
             f"Preset `{cfg.get('preset')}`, {len(seeds)} seed(s) {seeds}, {cfg.get('epochs')} epochs, lr {cfg.get('lr')} "
             f"x{cfg.get('lr_gamma')} at epochs {cfg.get('lr_milestones')}, batch {cfg.get('batch_size')}, "
             f"{cfg.get('n_train', 'all')} training / {cfg.get('n_test', 'all')} test images, lr_scaling `{cfg.get('lr_scaling')}`.", ""]
    lines += ["Differences from the article's settings: " + ("; ".join(diffs) if diffs else "none") + ".", ""]
    if notes:
        lines += [notes, ""]
    lines += ["| run | seeds | test acc (%) | train loss | test loss | test - train loss | conv sqsum |",
              "|---|---|---|---|---|---|---|"]
    for v, s in st.items():
        lines.append(f"| {v} | {s['n']} | {_pm(s, 'final_test_acc', True)} | {_pm(s, 'final_train_loss')} | "
                     f"{_pm(s, 'final_test_loss')} | {_pm(s, 'gap')} | {_pm(s, 'final_conv_sqsum')} |")
    lines += ["", "mean +- std over seeds (std 0 with one seed).", "", "## The article's claims, checked", ""]
    for c in claims(runs):
        mark = {True: "yes", False: "NO", None: "n/a"}[c["shown"]]
        lines.append(f"- **{mark}**: {c['claim']}: {c['evidence']}")
    lines += ["", "## Figures", ""]
    for f in figures:
        lines += [f"![{f.stem}](figures/{f.name})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
