"""`bnwd sweep`: a grid of config values x seeds, one normal run directory each, run by a local
process pool or by Ray; then a summary and the figures that test the equilibrium theory.

    bnwd sweep --grid lr=0.05,0.1,0.2 conv_weight_decay=1e-4,2e-4,5e-4 --seeds 3 --out SWEEP

SWEEP/sweep.json holds the grid; SWEEP/runs/<key=value__...__s<seed>> the runs (resumable:
a finished run is skipped, an interrupted one resumes from its checkpoint); SWEEP/summary.csv
and summary.json one row per run (a failed run with its error) and per grid cell (mean, std
over seeds); SWEEP/figures/ the accuracy heatmap and measured-vs-predicted equilibrium.

The equilibrium is read at the end of the first lr stage (the last sample point before the
first milestone), where lr and the conv L2 have been constant longest: the conv layers'
relative step against sqrt(2 lr wd / (1 + mu)) and their summed squared norm against the sum of
the per-layer predictions from their measured grad_sq_unit (`theory.sgd_equilibrium`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import math
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnwd.errors import BnwdError, ConfigError, one_line
from bnwd.run import config as C

MAX_RUNS = 10_000  # above this a grid needs --yes
SWEEP_FILE = "sweep.json"
NOT_AXES = ("seed", "variant", "preset")  # given by --seeds, --variant, --preset


@dataclass(frozen=True)
class RunSpec:
    name: str
    preset: str
    overrides: dict[str, Any]  # grid values, fixed overrides, variant and seed
    seed: int


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """`["lr=0.05,0.1", "width=8,16"]` -> {"lr": [0.05, 0.1], "width": [8, 16]}, typed as the config."""
    types = C._types()
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
        if key not in types:
            raise ConfigError(f"unknown config key {key!r} in --grid; known keys: {', '.join(types)}")
        t = types[key] if isinstance(types[key], str) else getattr(types[key], "__name__", "")
        if "list" in str(t):
            raise ConfigError(f"{key!r} is a list and cannot be a grid axis")
        if key in grid:
            raise ConfigError(f"--grid names {key!r} twice")
        raw = [v.strip() for v in vals.split(",")]
        if not vals.strip() or any(v == "" for v in raw):
            raise ConfigError(f"--grid axis {key!r} has an empty value: {item!r}")
        typed = [C._coerce(key, types[key], v) for v in raw]
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
            C.make_config(preset, ov)  # validate
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
    from bnwd.run.rundir import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(rec, indent=1) + "\n")


# ---------------------------------------------------------------- running one run (any process)

_DATA_CACHE: dict[str, Any] = {}


_BUSY = threading.Event()


def die_with_parent() -> None:
    """Pool workers end when the driver dies (Linux). A worker that is training gets SIGTERM
    (PR_SET_PDEATHSIG): the trainer checkpoints and stops, so a rerun never finds a run still being
    written by an orphan. A worker without a task then exits, within a second: once its parent is
    gone the pool's queues never deliver again, and two such workers would wait on each other forever."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent or _BUSY.is_set():
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="bnwd-orphan-watch", daemon=True).start()


def _in_worker(fn, *args, **kw):
    """Run `fn` in a pool worker, marked busy (see `die_with_parent`)."""
    _BUSY.set()
    try:
        return fn(*args, **kw)
    finally:
        _BUSY.clear()


def worker_pool(jobs: int):
    """A process pool (spawn) whose workers end with the driver (`die_with_parent`)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    class WorkerPool(ProcessPoolExecutor):
        def submit(self, fn, /, *args, **kw):
            return super().submit(_in_worker, fn, *args, **kw)

    return WorkerPool(jobs, mp_context=mp.get_context("spawn"), initializer=die_with_parent)


def run_spec(spec: RunSpec, out: str, data: str | None, force: bool = False) -> dict:
    """Train (or resume, or skip when finished) one run; returns its summary. Raises on failure."""
    from bnwd.run.data import load_cifar10
    from bnwd.run.trainer import train

    key = str(data)
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = load_cifar10(data)
    cfg = C.make_config(spec.preset, spec.overrides)
    return train(
        cfg, Path(out) / "runs" / spec.name, resume=True, force=force, progress=False, dataset=_DATA_CACHE[key]
    )


# ---------------------------------------------------------------- engines


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, e.g. under taskset or a container)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _free_memory_gb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
        return kb / 2**20
    except (OSError, StopIteration, ValueError, IndexError):
        return None


RUN_MEMORY_GB = 1.5  # one training process, cpu preset: about 1.1 GB peak RSS (docs/performance.md)
GPU_AUTO_JOBS = 8  # runs sharing one GPU under --jobs auto


def resolve_jobs(jobs: int | str, device: str = "auto") -> int:
    """`--jobs auto`: on CPU one run per usable core, as many as the free memory holds at
    RUN_MEMORY_GB each (on 2 cores, two 1-thread runs side by side finish 1.28x sooner than the
    same two one after the other with 2 threads: docs/performance.md); on CUDA GPU_AUTO_JOBS runs
    share the GPU (8 together: 2.1x one run's img/s on an H200, docs/gpu/parallel_fp32.json)."""
    if isinstance(jobs, str) and jobs.strip().lower() != "auto":
        try:
            jobs = int(jobs)
        except ValueError:
            raise ConfigError(f"--jobs takes a number or auto, got {jobs!r}") from None
    if isinstance(jobs, int):
        if jobs < 1:
            raise ConfigError(f"--jobs must be >= 1 or auto, got {jobs}")
        return jobs
    import torch

    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return GPU_AUTO_JOBS
    free = _free_memory_gb()
    by_memory = usable_cores() if free is None else max(1, int(free // RUN_MEMORY_GB))
    return max(1, min(usable_cores(), by_memory))


def _run_progress(out: Path, names: list[str]) -> str:
    """`baseline-s0 41%  no_conv_l2-s0 39%`: how far each run has got, from its config.json
    (total_steps) and the last row of its metrics.jsonl."""
    parts = []
    for name in names:
        rd = out / "runs" / name
        try:
            total = json.loads((rd / "config.json").read_text())["total_steps"]
            with open(rd / "metrics.jsonl", "rb") as f:
                f.seek(max(0, f.seek(0, 2) - 65536))
                rows = f.read().decode(errors="replace").strip().splitlines()
            step = json.loads(rows[-1])["step"] if rows else 0
            parts.append(f"{name} {100 * step / total:.0f}%")
        except (OSError, ValueError, KeyError, IndexError, TypeError, ZeroDivisionError):
            parts.append(f"{name} starting")
    return "  ".join(parts)


def threads_per_run(jobs: int) -> int:
    """Torch threads for each of `jobs` runs side by side: the usable cores split evenly."""
    return max(1, usable_cores() // jobs)


def _with_threads(specs: list[RunSpec], threads: int) -> list[RunSpec]:
    """Each run with `threads` torch threads, unless its overrides set `threads`."""
    return [
        s if "threads" in s.overrides else RunSpec(s.name, s.preset, {**s.overrides, "threads": threads}, s.seed)
        for s in specs
    ]


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="run", dynamic_ncols=True)


def run_local(
    specs: list[RunSpec],
    out: Path,
    data: str | None,
    jobs: int,
    progress: bool,
    desc: str = "sweep",
    force: bool = False,
    fn=None,
) -> dict[str, dict]:
    """The process pool behind `sweep` and `reproduce`: `jobs` runs at once, usable_cores // jobs
    threads each (unless `threads=` is set); a failed run is retried once, then reported. A worker
    that dies (killed, out of memory, a crash in native code) breaks the whole pool and every run
    in it, and the pool cannot say whose worker it was: the pool is rebuilt and those runs resume
    from their checkpoints without losing an attempt, up to one rebuild per run; after that every
    run still unfinished is reported failed. The bar counts finished runs and shows how far the
    running ones have got. `fn(spec, out, data, force)` trains one run (default `run_spec`)."""
    from bnwd.run.rundir import FAILED, atomic_write

    fn = fn or run_spec
    results: dict[str, dict] = {}
    bar = _progress(len(specs), desc, progress)
    order = {s.name: i for i, s in enumerate(specs)}
    for spec in specs:  # a marker left by an earlier call would stop a reader of this run at once
        with contextlib.suppress(OSError):
            (Path(out) / "runs" / spec.name / FAILED).unlink()

    def record(spec, res=None, err=None):
        results[spec.name] = {"status": "done", **(res or {})} if err is None else {"status": "failed", "error": err}
        if err is not None:  # runs reading this one while it trains (ReferenceNorms) stop waiting
            with contextlib.suppress(OSError):
                (Path(out) / "runs" / spec.name).mkdir(parents=True, exist_ok=True)
                atomic_write(Path(out) / "runs" / spec.name / FAILED, err + "\n")
        if bar is not None:
            bar.update(1)

    if jobs <= 1:
        for spec in specs:
            for attempt in (1, 2):
                try:
                    record(spec, fn(spec, str(out), data, force))
                    break
                except (BnwdError, RuntimeError, ValueError, OSError) as e:
                    if attempt == 2:
                        record(spec, err=one_line(e))
    else:
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

        specs = _with_threads(specs, threads_per_run(jobs))
        pool, rebuilds = worker_pool(jobs), len(specs)
        try:
            pending = {pool.submit(fn, s, str(out), data, force): (s, 1) for s in specs}
            while pending:
                done, _ = wait(pending, timeout=5.0, return_when=FIRST_COMPLETED)
                if bar is not None:
                    running = [s.name for f, (s, _) in pending.items() if f.running()][:jobs]
                    bar.set_postfix_str(_run_progress(out, running), refresh=True)
                retry, broken = [], None
                for f in done:
                    spec, attempt = pending.pop(f)
                    try:
                        record(spec, f.result())
                    except BrokenProcessPool as e:
                        broken = e
                        retry.append((spec, attempt - 1, e))  # not its fault as far as we know
                    except Exception as e:  # noqa: BLE001 - a run's failure is data for the summary
                        retry.append((spec, attempt, e))
                if broken is not None:
                    retry += [(spec, attempt - 1, broken) for spec, attempt in pending.values()]
                    pending.clear()
                    pool.shutdown(wait=True, cancel_futures=True)
                    pool = worker_pool(jobs)
                    rebuilds -= 1
                    if rebuilds < 0:  # something kills every pool: stop rather than loop
                        retry = [(spec, 2, e) for spec, _, e in retry]
                # in submission order: a run that reads another while it trains starts after it
                for spec, attempt, e in sorted(retry, key=lambda r: order[r[0].name]):
                    if attempt < 2:
                        pending[pool.submit(fn, spec, str(out), data, force)] = (spec, attempt + 1)
                    else:
                        record(spec, err=one_line(e))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    if bar is not None:
        bar.close()
    return results


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--engine ray needs Ray, which is not installed: pip install 'bnwd[ray]'") from None
    return ray


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """One line naming the address when nothing answers there (ray.init itself retries for minutes)."""
    import socket

    if address == "auto":
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address must be host:port or ray://host:port (or auto), got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ConfigError(f"cannot reach a Ray cluster at --address {address}: {e.strerror or e}") from None


def ray_resources(gpus_per_run: float | None, cpus_per_run: float | None) -> dict[str, float]:
    """num_gpus per run on a GPU machine (default 0.25: four ResNet-20 runs share one GPU, which
    one alone leaves mostly idle; docs/gpu/parallel_fp32.json), num_cpus otherwise."""
    import torch

    gpu = gpus_per_run if gpus_per_run is not None else (0.25 if torch.cuda.is_available() else 0.0)
    cpu = cpus_per_run if cpus_per_run is not None else 1.0
    if gpu < 0 or cpu <= 0:
        raise ConfigError(f"--gpus-per-run must be >= 0 and --cpus-per-run > 0, got {gpu}, {cpu}")
    return {"num_gpus": gpu, "num_cpus": cpu}


def ray_map(
    fn, calls: dict[str, tuple], address: str | None, resources: dict[str, float], progress: bool, desc: str
) -> dict[str, dict]:
    """`fn(*args)` for every named call as a Ray task with `resources`; Ray retries a failed task
    once (`max_retries=1, retry_exceptions=True`), then the call is reported failed with its error:
    {name: {"status": "done", "result": ...} or {"status": "failed", "error": one line}}.
    Without `address` a local Ray instance starts and stops with the call."""
    ray = _import_ray()
    if address:
        _check_reachable(address)
    started = False
    if not ray.is_initialized():
        try:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
                started = True
        except Exception as e:  # noqa: BLE001 - ray raises several types for an unreachable cluster
            if address:
                raise ConfigError(f"cannot reach a Ray cluster at --address {address}: {one_line(e)}") from None
            raise
    try:
        task = ray.remote(max_retries=1, retry_exceptions=True, **resources)(fn)
        refs = {task.remote(*args): name for name, args in calls.items()}
        results: dict[str, dict] = {}
        bar = _progress(len(refs), desc, progress)
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    results[refs[ref]] = {"status": "done", "result": ray.get(ref)}
                except Exception as e:  # noqa: BLE001 - Ray wraps the task's exception
                    results[refs[ref]] = {"status": "failed", "error": one_line(getattr(e, "cause", None) or e)}
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        return results
    finally:
        if started:
            ray.shutdown()


def run_ray(
    specs: list[RunSpec],
    out: Path,
    data: str | None,
    address: str | None,
    resources: dict[str, float],
    progress: bool,
) -> dict[str, dict]:
    """One Ray task per run (`ray_map`), torch threads = its num_cpus unless `threads=` is set."""
    specs = _with_threads(specs, max(1, int(resources["num_cpus"])))
    res = ray_map(run_spec, {s.name: (s, str(out), data) for s in specs}, address, resources, progress, "sweep (ray)")
    return {k: ({"status": "done", **v["result"]} if v["status"] == "done" else v) for k, v in res.items()}


# ---------------------------------------------------------------- summary


def equilibrium_point(run) -> dict[str, float | None]:
    """Measured and predicted equilibrium at the end of the first lr stage of one run (`runs.Run`)."""
    from bnwd.nn.theory import sgd_equilibrium

    cfg = run.config
    wd = (cfg.get("resolved") or {}).get("conv_weight_decay", cfg.get("conv_weight_decay"))
    out: dict[str, float | None] = {
        "rel_step_measured": None,
        "rel_step_predicted": None,
        "conv_sqsum_measured": None,
        "conv_sqsum_predicted": None,
    }
    if cfg.get("optimizer", "sgd") != "sgd" or not wd or not run.rows:
        return out
    ms = cfg.get("lr_milestones") or [cfg.get("epochs", 0)]
    stage1 = [i for i, r in enumerate(run.rows) if r["epoch"] <= ms[0] + 1e-9 and "rel_step_conv" in r]
    if not stage1:
        return out
    i = stage1[-1]
    r = run.rows[i]
    lr, mu = cfg["lr"], cfg["momentum"]
    out["rel_step_measured"] = r.get("rel_step_conv")
    out["rel_step_predicted"] = sgd_equilibrium(lr, wd, mu)["relative_step"]
    out["conv_sqsum_measured"] = r.get("conv_sqsum")
    from bnwd.analysis.plots import equilibrium_sqsum

    eq = equilibrium_sqsum(run)  # per sample point, from the measured grad_sq_unit of each layer
    if eq is not None:
        out["conv_sqsum_predicted"] = float(eq[i]) if math.isfinite(eq[i]) else None
    return out


def summarize(
    out: Path, specs: list[RunSpec], grid: dict, results: dict[str, dict] | None = None, wall_s: float | None = None
) -> dict:
    """SWEEP/summary.json and summary.csv from the run folders (and the failures in `results`);
    `wall_s`: the sweep command's wall time (kept from the last summary when not given)."""
    import statistics

    from bnwd.analysis.runs import load_run
    from bnwd.run.rundir import atomic_write

    results = results or {}
    rows = []
    for spec in specs:
        d = out / "runs" / spec.name
        row: dict[str, Any] = {"run": spec.name, "seed": spec.seed, **{k: spec.overrides[k] for k in grid}}
        res = results.get(spec.name, {})
        summ = d / "summary.json"
        if summ.exists():
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
                row.update(status="failed", error="finished without summary.json")
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
    if wall_s is None and (out / "summary.json").exists():
        try:
            wall_s = json.loads((out / "summary.json").read_text()).get("wall_s")
        except ValueError:
            wall_s = None
    theory = {**theory_check(cells), **intrinsic_lr_check(rows, grid)}
    summary = {"grid": grid, "wall_s": wall_s, "runs": rows, "cells": cells, "theory": theory}
    from bnwd.run.rundir import jsonable

    atomic_write(out / "summary.json", json.dumps(jsonable(summary), indent=1) + "\n")
    cols = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    w.writerows([_csv(r.get(c)) for c in cols] for r in rows)
    atomic_write(out / "summary.csv", buf.getvalue())
    return summary


def theory_check(cells: list[dict], band: float = 0.1) -> dict:
    """Measured / predicted over the grid cells (seed means), as a geometric mean with a 95% t
    interval over cells: `agrees` when the interval lies within 1 +- band, `disagrees` when it
    excludes 1, else `undecided`."""
    import statistics

    from bnwd.analysis.claims import t_quantile

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
        h = t_quantile(len(logs) - 1) * sd / math.sqrt(len(logs))
        lo, hi = math.exp(mu - h), math.exp(mu + h)
        verdict = "agrees" if 1 - band <= lo and hi <= 1 + band else ("disagrees" if lo > 1 or hi < 1 else "undecided")
        out[name] = {"cells": len(logs), "ratio": math.exp(mu), "ci": [lo, hi], "band": band, "verdict": verdict}
    return out


def intrinsic_lr_check(rows: list[dict], grid: dict) -> dict:
    """Does final test accuracy depend on (lr, wd) only through lr * wd? Over the finished runs
    (seeds as replicates), a nested F test of "cells with equal lr * wd differ" against the
    within-cell (seed) spread, and the share of the accuracy variance that lr * wd explains
    (eta^2) next to the share the cells explain. Empty unless the grid has lr and a weight decay."""
    wd = next((k for k in ("conv_weight_decay", "weight_decay") if k in grid), None)
    done = [r for r in rows if r["status"] == "done" and r.get("final_test_acc") is not None]
    if "lr" not in grid or wd is None or len(done) < 3:
        return {}
    from scipy.stats import f as f_dist

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
        F = ((ss_cell - ss_prod) / df_nested) / ((ss_tot - ss_cell) / df_within)
        out.update(F=F, df=[df_nested, df_within], p=float(f_dist.sf(F, df_nested, df_within)))
        out["verdict"] = (
            "cells of equal lr*wd differ" if out["p"] < 0.05 else "no difference detected between cells of equal lr*wd"
        )
    return {"intrinsic_lr": out}


def _csv(v: Any) -> str:
    return "" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v)


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
    from bnwd.batch.reproduce import default_preset, resolve_seeds
    from bnwd.run.rundir import check_out_dir

    check_out_dir(out)
    if engine not in ("local", "ray"):
        raise ConfigError(f"--engine must be local or ray, got {engine!r}")
    if address and engine != "ray":
        raise ConfigError("--address is for --engine ray")
    preset = preset or default_preset()
    grid = parse_grid(grid_items)
    seeds_ = resolve_seeds(seeds, seed_list)
    overrides = dict(overrides or {})
    jobs = resolve_jobs(jobs, C.make_config(preset, overrides).device)
    specs = expand(grid, seeds_, preset, variant, overrides, yes=yes)
    if engine == "ray":
        _import_ray()
        resources = ray_resources(gpus_per_run, cpus_per_run)
        if address:
            _check_reachable(address)
    out_dir = Path(out).resolve()
    data_path = str(Path(data).resolve()) if data else None
    from bnwd.run.data import load_cifar10

    load_cifar10(data_path)  # missing or bad data: one line, before anything is written
    check_or_write_record(out_dir, sweep_record(grid, seeds_, preset, variant, overrides), force)
    t0 = time.time()
    if engine == "local":
        results = run_local(specs, out_dir, data_path, jobs, progress)
    else:
        results = run_ray(specs, out_dir, data_path, address, resources, progress)
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
    from bnwd.analysis.plots import sweep_figures

    return sweep_figures(summary, out / "figures")
