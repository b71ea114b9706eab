"""`bnwd sweep`: a grid of config values x seeds (grid -> specs -> `engine.run_specs` ->
`analysis.sweep.summarize`), one normal run directory each, run by a local process pool or by Ray;
then a summary and the figures that test the equilibrium theory.

    bnwd sweep --grid lr=0.05,0.1,0.2 conv_weight_decay=1e-4,2e-4,5e-4 --seeds 3 --out SWEEP

SWEEP/sweep.json holds the grid; SWEEP/runs/<key=value__...__s<seed>> the runs (resumable:
a finished run is skipped, an interrupted one resumes from its checkpoint); SWEEP/summary.csv
and summary.json one row per run (a failed run with its error) and per grid cell (mean, std
over seeds); SWEEP/figures/ the accuracy heatmap and measured-vs-predicted equilibrium
(`analysis.sweep`).
"""

from __future__ import annotations

import itertools
import json
import math
import time
from pathlib import Path
from typing import Any

from bnwd.analysis.plots import sweep_figures
from bnwd.analysis.sweep import summarize
from bnwd.batch.engine import (
    RunSpec,
    check_engine,
    check_reachable,
    default_preset,
    import_ray,
    ray_resources,
    resolve_jobs,
    resolve_seeds,
    run_specs,
)
from bnwd.errors import BnwdError, ConfigError
from bnwd.run.config import Config, make_config, type_name
from bnwd.run.data import load_cifar10
from bnwd.run.rundir import atomic_write, check_out_dir

MAX_RUNS = 10_000  # above this a grid needs --yes
SWEEP_FILE = "sweep.json"
NOT_AXES = ("seed", "variant", "preset")  # given by --seeds, --variant, --preset
KEYS = tuple(Config().to_dict())


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def parse_grid(items: list[str], preset: str = "blog", overrides: dict | None = None) -> dict[str, list[Any]]:
    """`["lr=0.05,0.1", "width=8,16"]` -> {"lr": [0.05, 0.1], "width": [8, 16]}, typed as the config
    types them (each value in a config of `preset` with `overrides`)."""
    grid: dict[str, list[Any]] = {}
    if not items:
        raise ConfigError("--grid needs at least one axis, e.g. --grid lr=0.05,0.1")
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--grid takes key=v1,v2,..., got {item!r}")
        key, vals = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if key in NOT_AXES:
            raise ConfigError(f"{key!r} cannot be a grid axis; use --{key}{'s' if key == 'seed' else ''}")
        if key not in KEYS:
            raise ConfigError(f"unknown config key {key!r} in --grid; known keys: {', '.join(KEYS)}")
        if "list" in type_name(key):
            raise ConfigError(f"{key!r} is a list and cannot be a grid axis")
        if key in grid:
            raise ConfigError(f"--grid names {key!r} twice")
        raw = [v.strip() for v in vals.split(",")]
        if not vals.strip() or any(v == "" for v in raw):
            raise ConfigError(f"--grid axis {key!r} has an empty value: {item!r}")
        typed = [getattr(make_config(preset, {**(overrides or {}), key: v}), key) for v in raw]
        grid[key] = list(dict.fromkeys(typed))
    return grid


def expand(
    grid: dict[str, list[Any]], seeds: list[int], preset: str, variant: str, overrides: dict, yes: bool = False
) -> list[RunSpec]:
    """Every (cell, seed), seed-major (all cells of the first seed first); every config is built
    and validated here, so bad input fails before anything is written."""
    n = math.prod(len(v) for v in grid.values()) * len(seeds)
    if n > MAX_RUNS and not yes:
        raise ConfigError(f"the grid has {n:,} runs (over {MAX_RUNS:,}); pass --yes to run it anyway")
    keys = list(grid)
    specs = []
    for seed in seeds:
        for values in itertools.product(*(grid[k] for k in keys)):
            cell = dict(zip(keys, values))
            ov = {**overrides, **cell, "variant": variant, "seed": seed}
            make_config(preset, ov)  # validate
            name = "__".join(f"{k}={_fmt(v)}" for k, v in cell.items()) + f"__s{seed}"
            specs.append(RunSpec(name, preset, ov, seed))
    return specs


def sweep_record(grid: dict, seeds: list[int], preset: str, variant: str, overrides: dict) -> dict:
    return {"grid": grid, "seeds": seeds, "preset": preset, "variant": variant, "overrides": overrides}


def check_or_write_record(out: Path, rec: dict, force: bool) -> None:
    """SWEEP/sweep.json: a rerun of the same sweep resumes; another grid in the same folder is refused
    (more seeds are fine: runs are named by seed)."""
    path = out / SWEEP_FILE
    if path.exists() and not force:
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            raise ConfigError(f"{path} is unreadable; use --force or another --out") from None
        same = {k: old.get(k) for k in ("grid", "preset", "variant", "overrides")}
        if same != {k: rec[k] for k in same}:
            raise ConfigError(f"{out} holds another sweep ({path}); use another --out or pass --force")
        rec = {**rec, "seeds": sorted(set(old.get("seeds", [])) | set(rec["seeds"]))}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(rec, indent=1) + "\n")


# ---------------------------------------------------------------- entry


def sweep(
    grid_items: list[str],
    out: str,
    seeds: int | None = None,
    seed_list: str | None = None,
    preset: str | None = None,
    variant: str = "baseline",
    overrides: dict | None = None,
    engine: str = "local",
    address: str | None = None,
    jobs: int | str = "auto",
    data: str | None = None,
    yes: bool = False,
    force: bool = False,
    progress: bool = True,
    gpus_per_run: float | None = None,
    cpus_per_run: float | None = None,
) -> dict:
    check_out_dir(out)
    check_engine(engine, address)
    preset = preset or default_preset()
    overrides = dict(overrides or {})
    grid = parse_grid(grid_items, preset, overrides)
    seeds_ = resolve_seeds(seeds, seed_list)
    jobs = resolve_jobs(jobs, make_config(preset, overrides).device)
    specs = expand(grid, seeds_, preset, variant, overrides, yes=yes)
    resources = None
    if engine == "ray":
        import_ray()
        resources = ray_resources(gpus_per_run, cpus_per_run)
        if address:
            check_reachable(address)
    out_dir = Path(out).resolve()
    data_path = str(Path(data).resolve()) if data else None
    load_cifar10(data_path)  # missing or bad data: one line, before anything is written
    check_or_write_record(out_dir, sweep_record(grid, seeds_, preset, variant, overrides), force)
    t0 = time.time()
    results = run_specs(specs, out_dir, data_path, jobs, engine, address, resources, progress, "sweep")
    summary = summarize(out_dir, specs, grid, results, wall_s=time.time() - t0)
    figs = plot_sweep(out_dir, summary)
    return {"summary": summary, "figures": figs, "out": str(out_dir)}


def replot(out: str) -> dict:
    """`bnwd sweep --plot SWEEP`: summary and figures again from SWEEP/sweep.json and its run folders."""
    out_dir = Path(out)
    path = out_dir / SWEEP_FILE
    if not path.exists():
        raise BnwdError(f"{out_dir} is not a sweep folder (no {SWEEP_FILE})")
    rec = json.loads(path.read_text())
    specs = expand(rec["grid"], rec["seeds"], rec["preset"], rec["variant"], rec["overrides"], yes=True)
    summary = summarize(out_dir, specs, rec["grid"])
    return {"summary": summary, "figures": plot_sweep(out_dir, summary), "out": str(out_dir)}


def plot_sweep(out: Path, summary: dict) -> list[str]:
    return sweep_figures(summary, out / "figures")
