"""A sweep's finished runs read back: SWEEP/summary.json and summary.csv (one row per run, a
failed run with its error, and one per grid cell: mean and std over seeds), and the two checks of
the equilibrium theory over the grid (`theory_check`, `intrinsic_lr_check`).

The equilibrium is read at the end of the first lr stage (`equilibrium.equilibrium_point`).
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from bnwd.analysis.equilibrium import equilibrium_point
from bnwd.analysis.runs import load_run, run_dir
from bnwd.analysis.stats import nested_f, t_halfwidth
from bnwd.analysis.summary import write_summary_files
from bnwd.run.rundir import SUMMARY


class Spec(Protocol):
    """What the summary reads of a run's spec (`batch.engine.RunSpec`)."""

    name: str
    seed: int
    overrides: dict[str, Any]


def summarize(
    out: Path, specs: Iterable[Spec], grid: dict, results: dict[str, dict] | None = None, wall_s: float | None = None
) -> dict:
    """SWEEP/summary.json and summary.csv from the run folders (and the failures in `results`);
    `wall_s`: the sweep command's wall time (kept from the last summary when not given)."""
    results = results or {}
    rows = []
    for spec in specs:
        d = run_dir(out, spec.name)
        row: dict[str, Any] = {"run": spec.name, "seed": spec.seed, **{k: spec.overrides[k] for k in grid}}
        res = results.get(spec.name, {})
        if (d / SUMMARY).exists():
            run = load_run(d)
            s = run.summary
            row.update(
                status="done",
                final_test_acc=s.get("final_test_acc"),
                best_test_acc=s.get("best_test_acc"),
                final_train_loss=s.get("final_train_loss"),
                final_conv_sqsum=s.get("final_conv_sqsum"),
                wall_s=s.get("wall_s"),
                **equilibrium_point(run),
            )
            row["intrinsic_lr"] = run.config["lr"] * ((run.config.get("resolved") or {}).get("conv_weight_decay") or 0)
        else:
            row.update(status=res.get("status", "not run"), error=res.get("error"))
            if row["status"] == "done":  # reported done but no summary: say so rather than drop it
                row.update(status="failed", error=f"finished without {SUMMARY}")
        rows.append(row)
    cells = []
    keys = list(grid)
    for values in itertools.product(*(grid[k] for k in keys)):
        mine = [r for r in rows if all(r[k] == v for k, v in zip(keys, values))]
        done = [r for r in mine if r["status"] == "done"]
        cell: dict[str, Any] = {**dict(zip(keys, values)), "seeds_done": len(done), "seeds": len(mine)}
        for m in ("final_test_acc", "rel_step_measured", "rel_step_predicted", "conv_sqsum_measured"):
            xs = [r[m] for r in done if r.get(m) is not None]
            cell[f"{m}_mean"] = statistics.fmean(xs) if xs else None
            cell[f"{m}_std"] = statistics.stdev(xs) if len(xs) > 1 else (0.0 if xs else None)
        xs = [r["conv_sqsum_predicted"] for r in done if r.get("conv_sqsum_predicted") is not None]
        cell["conv_sqsum_predicted_mean"] = statistics.fmean(xs) if xs else None
        cells.append(cell)
    if wall_s is None and (Path(out) / SUMMARY).exists():
        wall_s = _last_wall_s(Path(out) / SUMMARY)
    theory = {**theory_check(cells), **intrinsic_lr_check(rows, grid)}
    summary = {"grid": grid, "wall_s": wall_s, "runs": rows, "cells": cells, "theory": theory}
    cols = list(dict.fromkeys(k for r in rows for k in r))
    table = [cols, *([_csv(r.get(c)) for c in cols] for r in rows)]
    write_summary_files(out, summary, table, lineterminator="\n", end="\n")
    return summary


def _last_wall_s(path: Path) -> float | None:
    """The wall time the last summary recorded; None when it is unreadable (it is rewritten next)."""
    try:
        return json.loads(path.read_text()).get("wall_s")
    except ValueError:
        return None


def theory_check(cells: list[dict], band: float = 0.1) -> dict:
    """Measured / predicted over the grid cells (seed means), as a geometric mean with a 95% t
    interval over cells: `agrees` when the interval lies within 1 +- band, `disagrees` when it
    excludes 1, else `undecided`. Cells without both numbers are left out; with fewer than two
    cells only their count is given."""
    out = {}
    for name, m, p in (
        ("rel_step", "rel_step_measured_mean", "rel_step_predicted_mean"),
        ("conv_sqsum", "conv_sqsum_measured_mean", "conv_sqsum_predicted_mean"),
    ):
        logs = [math.log(c[m] / c[p]) for c in cells if c.get(m) and c.get(p)]
        if len(logs) < 2:
            out[name] = {"cells": len(logs)}
            continue
        mu, sd = statistics.fmean(logs), statistics.stdev(logs)
        h = t_halfwidth(sd, len(logs))
        lo, hi = math.exp(mu - h), math.exp(mu + h)
        verdict = "agrees" if 1 - band <= lo and hi <= 1 + band else ("disagrees" if lo > 1 or hi < 1 else "undecided")
        out[name] = {"cells": len(logs), "ratio": math.exp(mu), "ci": [lo, hi], "band": band, "verdict": verdict}
    return out


def intrinsic_lr_check(rows: list[dict], grid: dict) -> dict:
    """Does final test accuracy depend on (lr, wd) only through lr * wd? Over the finished runs
    (seeds as replicates), a nested F test of "cells with equal lr * wd differ" against the
    within-cell (seed) spread (`stats.nested_f`), and the share of the accuracy variance that
    lr * wd explains (eta^2) next to the share the cells explain. Empty unless the grid has lr
    and a weight decay and three runs finished."""
    wd = next((k for k in ("conv_weight_decay", "weight_decay") if k in grid), None)
    done = [r for r in rows if r["status"] == "done" and r.get("final_test_acc") is not None]
    if "lr" not in grid or wd is None or len(done) < 3:
        return {}

    def key_cell(r):
        return tuple(r[k] for k in grid)

    def key_prod(r):
        return round(math.log(r["lr"] * r[wd]), 9)

    y = [r["final_test_acc"] for r in done]
    mean = sum(y) / len(y)

    def ss_between(key):
        groups: dict[Any, list[float]] = {}
        for r in done:
            groups.setdefault(key(r), []).append(r["final_test_acc"])
        return sum(len(g) * (sum(g) / len(g) - mean) ** 2 for g in groups.values()), len(groups)

    ss_tot = sum((v - mean) ** 2 for v in y)
    ss_prod, n_prod = ss_between(key_prod)
    ss_cell, n_cell = ss_between(key_cell)
    df_nested, df_within = n_cell - n_prod, len(done) - n_cell
    out: dict[str, Any] = {
        "products": n_prod,
        "cells": n_cell,
        "runs": len(done),
        "eta2_product": ss_prod / ss_tot if ss_tot > 0 else None,
        "eta2_cell": ss_cell / ss_tot if ss_tot > 0 else None,
    }
    if df_nested > 0 and df_within > 0 and ss_tot > ss_cell:
        F, p = nested_f(ss_tot, ss_prod, ss_cell, df_nested, df_within)
        out.update(F=F, df=[df_nested, df_within], p=p)
        out["verdict"] = (
            "cells of equal lr*wd differ" if out["p"] < 0.05 else "no difference detected between cells of equal lr*wd"
        )
    return {"intrinsic_lr": out}


def _csv(v: Any) -> str:
    return "" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v)
