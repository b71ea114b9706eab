"""Finished runs read back: one Run per folder, seeds aggregated to mean +- std curves."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bnwd.errors import BnwdError
from bnwd.run.config import VARIANTS, bn098_momentum
from bnwd.run.rundir import (
    CONFIG,
    METRICS,
    SUMMARY,
    RunDir,
    atomic_write,
    jsonable,
    plateau,
    read_json,
    read_metrics,
    write_metrics,
)


def run_dir(out: str | Path, name: str) -> Path:
    """OUT/runs/<name>, the folder of run `name` in the output folder `out`."""
    return RunDir.of(out, name).path


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run directories among `paths`, looking one and two levels down for folders of runs."""
    found: list[Path] = []
    for p in paths:
        p = Path(p)
        if (p / CONFIG).exists():
            found.append(p)
            continue
        sub = sorted(c.parent for c in p.glob(f"*/{CONFIG}")) or sorted(c.parent for c in p.glob(f"*/*/{CONFIG}"))
        if not sub:
            raise BnwdError(f"{p} is not a run directory (no {CONFIG}) and holds none")
        found += sub
    return found


# ---------------------------------------------------------------- runs read back


@dataclass
class Run:
    """One run directory: its config, metric rows, per-key arrays (NaN where missing) and summary."""

    path: Path
    config: dict
    rows: list[dict]
    summary: dict = field(default_factory=dict)
    metrics: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        self.path = Path(self.path)
        if not self.metrics:
            self.metrics = _columns(self.rows)

    @property
    def variant(self) -> str:
        return str(self.config.get("variant") or self.summary.get("variant") or "?")

    @property
    def seed(self):
        s = self.config.get("seed", self.summary.get("seed"))
        return s

    @property
    def epochs(self) -> float:
        return float(self.config.get("epochs") or self.summary.get("epochs") or _last(self.metrics.get("epoch")))

    def has(self, key: str) -> bool:
        a = self.metrics.get(key)
        return a is not None and bool(np.isfinite(a).any())

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(epochs, values) at the sample points where `key` has a finite value."""
        e, _, v = self.series_steps(key)
        return e, v

    def series_steps(self, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(epochs, steps, values) at the sample points where `key` has a finite value."""
        v = self.metrics.get(key)
        if v is None:
            z = np.zeros(0)
            return z, z, z
        ok = np.isfinite(v) & np.isfinite(self.metrics["epoch"])
        steps = self.metrics.get("step", np.full(len(v), np.nan))
        return self.metrics["epoch"][ok], steps[ok], v[ok]


def _last(a) -> float:
    if a is None or not len(a):
        return float("nan")
    return float(a[-1])


def _num(x) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return float("nan")
    return float(x)


def _columns(rows: list[dict]) -> dict[str, np.ndarray]:
    """Numeric keys of the rows as float arrays, NaN where a row lacks the key."""
    keys: dict[str, None] = {}
    for r in rows:
        for k, v in r.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                keys.setdefault(k)
    cols = {k: np.array([_num(r.get(k)) for r in rows], dtype=float) for k in keys}
    if "epoch" not in cols:
        cols["epoch"] = np.full(len(rows), np.nan)
    return cols


def load_run(run_dir: str | Path) -> Run:
    """Read a run directory; BnwdError (one line) if it is not one or has no metrics yet."""
    p = Path(run_dir)
    if not p.is_dir() or not (p / CONFIG).is_file():
        raise BnwdError(f"{p} is not a run directory (needs {CONFIG} and {METRICS})")
    if not (p / METRICS).is_file():
        raise BnwdError(f"{p} is not a run directory with metrics (no {METRICS})")
    config = read_json(p / CONFIG)
    rows = [r for r in read_metrics(p / METRICS) if isinstance(r.get("epoch"), (int, float))]
    if not rows:
        raise BnwdError(f"{p}/{METRICS} holds no sample points (no metrics yet)")
    summary = read_json(p / SUMMARY) if (p / SUMMARY).exists() else {}
    return Run(p, config, rows, summary)


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    return [load_run(p) for p in paths]


def _seed_key(r: Run):
    s = r.seed
    return (0, s, "") if isinstance(s, (int, float)) else (1, 0, str(s))


def by_variant(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs grouped by variant, in the article's order (unknown variants last), seeds sorted."""
    out: dict[str, list[Run]] = {}
    for r in runs:
        out.setdefault(r.variant, []).append(r)
    order = {v: i for i, v in enumerate(VARIANTS)}
    return {v: sorted(rs, key=_seed_key) for v, rs in sorted(out.items(), key=lambda kv: (order.get(kv[0], 99), kv[0]))}


# ---------------------------------------------------------------- seeds -> mean +- std


@dataclass
class Curve:
    epoch: np.ndarray
    mean: np.ndarray
    std: np.ndarray  # over seeds, ddof=1; 0 where only one seed has a value
    n: np.ndarray  # seeds with a value at each point


def aggregate(runs: list[Run], key: str) -> Curve:
    """Mean and +-1 std over seeds of `key`.

    Seeds whose sample steps equal the reference seed's (the one with the most points)
    are stacked as they are; others are interpolated onto the reference epochs (NaN
    outside their own range).
    """
    series = [r.series_steps(key) for r in runs]
    series = [s for s in series if len(s[0])]
    if not series:
        z = np.zeros(0)
        return Curve(z, z, z, z)
    ref = max(range(len(series)), key=lambda i: len(series[i][0]))
    e0, s0, _ = series[ref]
    vals = []
    for e, s, v in series:
        if len(s) == len(s0) and np.array_equal(s, s0):
            vals.append(v)
        else:
            x = np.interp(e0, e, v)
            x[(e0 < e[0] - 1e-9) | (e0 > e[-1] + 1e-9)] = np.nan
            vals.append(x)
    a = np.vstack(vals)
    ok = np.isfinite(a)
    n = ok.sum(0)
    mean = np.where(ok, a, 0).sum(0) / np.maximum(n, 1)
    dev = np.where(ok, a - mean, 0.0)
    std = np.where(n > 1, np.sqrt((dev**2).sum(0) / np.maximum(n - 1, 1)), 0.0)
    return Curve(e0, mean, std, n.astype(float))


def mean_std(runs: list[Run], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(epochs, mean, std) over seeds; see `aggregate`."""
    c = aggregate(runs, key)
    return c.epoch, c.mean, c.std


# ---------------------------------------------------------------- the bn098 view of an lr_scaled run


def write_bn098_view(source: Path, view: Path) -> Path:
    """Write `view` as the `lr_scaled_bn098` run that `source` (a finished `lr_scaled` run trained
    with `bn098_view`) stands for: the same training, evaluated with the BN statistics kept at
    the 0.98-equivalent momentum (`test_*_bn098`). Derived data: rewritten from the source each time."""
    source, view = Path(source), Path(view)
    cfg = read_json(source / CONFIG)
    if cfg.get("variant") != "lr_scaled" or not cfg.get("resolved", {}).get("bn098_view"):
        raise BnwdError(f"{source} is not an lr_scaled run with bn098_view; it has no bn098 statistics")
    rows = []
    for r in read_metrics(source / METRICS):
        r = dict(r)
        for k in [k for k in r if k.startswith(("test_acc_", "test_loss_")) and not k.endswith("_bn098")]:
            del r[k]  # the other views belong to lr_scaled's statistics
        if "test_acc_bn098" in r:
            r["test_acc"], r["test_loss"] = r.pop("test_acc_bn098"), r.pop("test_loss_bn098")
        rows.append(r)
    summary = read_json(source / SUMMARY)
    evals = [r for r in rows if "test_acc" in r]
    summary.update(
        variant="lr_scaled_bn098",
        final_test_acc=evals[-1]["test_acc"],
        final_test_loss=evals[-1]["test_loss"],
        plateau_test_acc=plateau(rows, cfg.get("lr_milestones") or [], float(cfg["epochs"])),
        best_test_acc=max(r["test_acc"] for r in evals),
        view_of=str(source),
    )
    resolved = {**cfg.get("resolved", {}), "bn_momentum_used": bn098_momentum(cfg["bn_momentum"]), "bn098_view": False}
    doc = {**cfg, "variant": "lr_scaled_bn098", "resolved": resolved, "view_of": str(source)}
    try:
        view.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BnwdError(f"cannot create run directory {view}: {e.strerror or e}") from None
    atomic_write(view / CONFIG, json.dumps(doc, indent=1))
    write_metrics(view / METRICS, rows)
    atomic_write(view / SUMMARY, json.dumps(jsonable(summary), indent=1))
    return view
