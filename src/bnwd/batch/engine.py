"""One engine for many runs: `run_specs` trains a list of `RunSpec`s, each a normal, resumable
run directory OUT/runs/<name>, in a local process pool or as Ray tasks, behind one interface.

- Order. A spec may name another as `after` (lr_scaled reads its seed's finished baseline): the
  specs form levels, and a level starts when the one before has ended; a spec whose `after`
  failed is not started. A run that reads another while both train (`reference_wait`) needs no
  `after`: it is listed after it, and runs start in list order.
- Threads. A level's runs that have something to train run min(jobs, their number) at once, each
  with usable_cores // that many torch threads (unless the spec sets `threads`); one alone runs
  in this process with the torch default. On Ray each task gets its num_cpus. Thread counts
  follow from the plan, never from timing. A run finished before (its summary.json exists) takes
  no place: it is checked in this process.
- Failures. One policy (`retryable`): an error that can pass on a retry (RuntimeError such as a
  CUDA error, OSError, MemoryError) gets one more attempt; a deterministic one (ConfigError,
  DivergenceError, any other BnwdError, a bug) is reported at once. Every failed run is reported
  with its error, and RUN/failed.txt tells a run reading it to stop waiting. `Interrupted` (the
  user stopped the command) ends the call.
- Training one run: `train_run`, the same in this process, in a pool worker and in a Ray task.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bnwd.analysis.runs import run_dir, write_bn098_view
from bnwd.errors import BnwdError, ConfigError, one_line
from bnwd.run.config import make_config
from bnwd.run.data import load_cifar10
from bnwd.run.rundir import CONFIG, METRICS, SUMMARY, RunDir
from bnwd.run.trainer import Interrupted, train


@dataclass(frozen=True)
class RunSpec:
    name: str  # the run folder: OUT/runs/<name>
    preset: str
    overrides: dict[str, Any]  # every config value the preset does not give (variant and seed included)
    seed: int
    after: str | None = None  # the name of a run that must finish first (lr_scaled reads its baseline)
    view: str | None = None  # also write this run's lr_scaled_bn098 view as OUT/runs/<view>


# ---------------------------------------------------------------- command input shared by reproduce and sweep


def default_preset() -> str:
    """The preset of every command run without --preset: the article's `blog` when torch sees a
    CUDA GPU, the `cpu` preset otherwise."""
    import torch

    return "blog" if torch.cuda.is_available() else "cpu"


def resolve_seeds(seeds: int | None = None, seed_list: str | list[int] | None = None) -> list[int]:
    """`--seeds 3` -> [0, 1, 2]; `--seed-list 10,11,12` -> those seeds, in order, once each."""
    if seed_list is not None and seed_list != "":
        if seeds is not None:
            raise ConfigError("give --seeds or --seed-list, not both")
        items = seed_list.split(",") if isinstance(seed_list, str) else list(seed_list)
        try:
            out = [int(str(s).strip()) for s in items if str(s).strip()]
        except ValueError:
            raise ConfigError(f"--seed-list takes comma-separated integers, got {seed_list!r}") from None
        if not out or any(s < 0 for s in out):
            raise ConfigError(f"--seed-list needs one or more seeds >= 0, got {seed_list!r}")
        return list(dict.fromkeys(out))
    n = 1 if seeds is None else int(seeds)
    if n < 1:
        raise ConfigError(f"--seeds must be >= 1, got {n}")
    return list(range(n))


def check_engine(engine: str, address: str | None) -> None:
    if engine not in ("local", "ray"):
        raise ConfigError(f"--engine must be local or ray, got {engine!r}")
    if address and engine != "ray":
        raise ConfigError("--address is for --engine ray")


# ---------------------------------------------------------------- jobs and threads


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


def threads_per_run(jobs: int) -> int:
    """Torch threads for each of `jobs` runs side by side: the usable cores split evenly."""
    return max(1, usable_cores() // jobs)


def _with_threads(specs: list[RunSpec], threads: int) -> list[RunSpec]:
    """Each run with `threads` torch threads, unless its overrides set `threads` (0: not set)."""
    return [
        s if s.overrides.get("threads") else replace(s, overrides={**s.overrides, "threads": threads}) for s in specs
    ]


# ---------------------------------------------------------------- training one run (any process)

_DATA_CACHE: dict[str, Any] = {}


def train_run(spec: RunSpec, out: str, data: str | None, force: bool = False) -> dict:
    """Train (or resume, or check and skip when finished) OUT/runs/<spec.name>, and write its
    bn098 view when the spec asks for one; returns the run's summary. Raises on failure."""
    key = str(data)
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = load_cifar10(data)
    cfg = make_config(spec.preset, spec.overrides)
    rd = run_dir(out, spec.name)
    summary = train(cfg, rd, resume=True, force=force, progress=False, dataset=_DATA_CACHE[key])
    if spec.view:
        write_bn098_view(rd, run_dir(out, spec.view))
    return summary


# ---------------------------------------------------------------- the retry policy

TRANSIENT = (RuntimeError, OSError, MemoryError)  # can pass on a retry: CUDA errors, I/O, memory


def retryable(e: BaseException) -> bool:
    """Whether a run that raised `e` may pass on a second attempt: never a BnwdError (a bad
    config, a diverged loss, bad data: the same again), nor a bug (TypeError, KeyError, ...)."""
    return isinstance(e, TRANSIENT) and not isinstance(e, BnwdError)


# ---------------------------------------------------------------- the local process pool

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


def _run_progress(out: Path, names: list[str]) -> str:
    """`baseline-s0 41%  no_conv_l2-s0 39%`: how far each run has got, from its config.json
    (total_steps) and the last row of its metrics.jsonl."""
    parts = []
    for name in names:
        rd = run_dir(out, name)
        try:
            total = json.loads((rd / CONFIG).read_text())["total_steps"]
            with open(rd / METRICS, "rb") as f:
                f.seek(max(0, f.seek(0, 2) - 65536))
                rows = f.read().decode(errors="replace").strip().splitlines()
            step = json.loads(rows[-1])["step"] if rows else 0
            parts.append(f"{name} {100 * step / total:.0f}%")
        except (OSError, ValueError, KeyError, IndexError, TypeError, ZeroDivisionError):
            parts.append(f"{name} starting")
    return "  ".join(parts)


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="run", dynamic_ncols=True)


class _Record:
    """The results of one call: {name: {"status": "done", **summary} or {"status": "failed", "error"}};
    a failed run gets RUN/failed.txt (a run reading it while it trains, `ReferenceNorms`, stops waiting)."""

    def __init__(self, out: Path, bar):
        self.out, self.bar, self.results = Path(out), bar, {}

    def __call__(self, spec: RunSpec, res: dict | None = None, err: str | None = None) -> None:
        if err is None:
            self.results[spec.name] = {"status": "done", **(res or {})}
        else:
            self.results[spec.name] = {"status": "failed", "error": err}
            with contextlib.suppress(OSError, BnwdError):
                RunDir.of(self.out, spec.name).mark_failed(err)
        if self.bar is not None:
            self.bar.update(1)


def run_local(
    specs: list[RunSpec],
    out: Path,
    data: str | None,
    jobs: int,
    progress: bool,
    desc: str = "runs",
    force: bool = False,
    fn=None,
) -> dict[str, dict]:
    """The specs (no `after` among them) in this process (`jobs` 1) or in a pool of `jobs`
    processes, usable_cores // jobs threads each (unless `threads=` is set), under the retry policy.
    A worker that dies (killed, out of memory, a crash in native code) breaks the whole pool and
    every run in it, and the pool cannot say whose worker it was: the pool is rebuilt and those
    runs resume from their checkpoints without losing an attempt, up to one rebuild per run; after
    that every run still unfinished is reported failed. The bar counts finished runs and shows how
    far the running ones have got. `fn(spec, out, data, force)` trains one run (default `train_run`)."""
    fn = fn or train_run
    bar = _progress(len(specs), desc, progress)
    record = _Record(out, bar)
    order = {s.name: i for i, s in enumerate(specs)}
    for spec in specs:  # a marker left by an earlier call would stop a reader of this run at once
        with contextlib.suppress(OSError):
            RunDir.of(out, spec.name).clear_failed()

    def failed(spec: RunSpec, attempt: int, e: BaseException) -> bool:
        """Record the failure unless the run gets another attempt; True when it does."""
        if isinstance(e, Interrupted):
            raise e
        if attempt < 2 and retryable(e):
            return True
        record(spec, err=one_line(e))
        return False

    if jobs <= 1:
        for spec in specs:
            for attempt in (1, 2):
                try:
                    record(spec, fn(spec, str(out), data, force))
                    break
                except Exception as e:  # noqa: BLE001 - a run's failure is data for the summary
                    if not failed(spec, attempt, e):
                        break
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
                    again = isinstance(e, BrokenProcessPool) and attempt < 2 or failed(spec, attempt, e)
                    if again:
                        pending[pool.submit(fn, spec, str(out), data, force)] = (spec, attempt + 1)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    if bar is not None:
        bar.close()
    return {s.name: record.results[s.name] for s in specs if s.name in record.results}


# ---------------------------------------------------------------- Ray


def import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--engine ray needs Ray, which is not installed: pip install 'bnwd[ray]'") from None
    return ray


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
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


@contextlib.contextmanager
def ray_session(address: str | None):
    """Ray, joined at `address` or, without one, a local instance that stops with the block."""
    ray = import_ray()
    if address:
        check_reachable(address)
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
        yield ray
    finally:
        if started:
            ray.shutdown()


def run_ray(
    ray,
    specs: list[RunSpec],
    out: Path,
    data: str | None,
    resources: dict[str, float],
    progress: bool,
    desc: str = "runs (ray)",
    force: bool = False,
    fn=None,
) -> dict[str, dict]:
    """One Ray task per run with `resources`, torch threads = its num_cpus unless `threads=` is
    set; Ray gives a task that raised a `retryable` error one more attempt (`TRANSIENT`)."""
    fn = fn or train_run
    specs = _with_threads(specs, max(1, int(resources["num_cpus"])))
    task = ray.remote(max_retries=1, retry_exceptions=list(TRANSIENT), **resources)(fn)
    refs = {task.remote(s, str(out), data, force): s for s in specs}
    record = _Record(out, _progress(len(refs), desc, progress))
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for ref in done:
            try:
                record(refs[ref], ray.get(ref))
            except Exception as e:  # noqa: BLE001 - Ray wraps the task's exception
                cause = getattr(e, "cause", None) or e
                if isinstance(cause, Interrupted):
                    raise cause from None
                record(refs[ref], err=one_line(cause))
    if record.bar is not None:
        record.bar.close()
    return {s.name: record.results[s.name] for s in specs}


# ---------------------------------------------------------------- the engine


def levels(specs: list[RunSpec]) -> list[list[RunSpec]]:
    """The specs in levels: a spec sits one level below the spec it runs `after` (one that is
    not among `specs` is taken as done), each level in the specs' order."""
    by_name = {s.name: s for s in specs}
    depth: dict[str, int] = {}

    def d(s: RunSpec, seen: tuple[str, ...] = ()) -> int:
        if s.name not in depth:
            if s.name in seen:
                raise ConfigError(f"runs wait on each other: {' -> '.join((*seen, s.name))}")
            dep = by_name.get(s.after) if s.after else None
            depth[s.name] = 0 if dep is None else d(dep, (*seen, s.name)) + 1
        return depth[s.name]

    out: list[list[RunSpec]] = [[] for _ in range(max((d(s) for s in specs), default=-1) + 1)]
    for s in specs:
        out[depth[s.name]].append(s)
    return out


def run_specs(
    specs: list[RunSpec],
    out: str | Path,
    data: str | None,
    jobs: int = 1,
    engine: str = "local",
    address: str | None = None,
    resources: dict[str, float] | None = None,
    progress: bool = True,
    desc: str = "runs",
    force: bool = False,
    fn=None,
) -> dict[str, dict]:
    """Every spec, level by level (see the module's docstring), on the local engine (`jobs` at
    once) or on Ray (`address`, `resources`); {name: {"status": "done", **summary} or
    {"status": "failed", "error": one line}}, level by level: in each, the runs finished before,
    then the ones trained, then those not started, each in the specs' order."""
    fn = fn or train_run
    out = Path(out)
    results: dict[str, dict] = {}
    lv = levels(specs)
    with ray_session(address) if engine == "ray" else contextlib.nullcontext() as ray:
        for i, level in enumerate(lv, 1):
            kept, ready, blocked = [], [], []
            for s in level:
                if s.after and results.get(s.after, {}).get("status", "done") != "done":
                    blocked.append(s)
                elif not force and (run_dir(out, s.name) / SUMMARY).exists():
                    kept.append(s)  # checked here, without a place among the runs that train
                else:
                    ready.append(s)
            if kept:
                results.update(run_local(kept, out, data, 1, False, force=force, fn=fn))
            name = f"{desc} {i}/{len(lv)}"
            if ready and engine == "ray":
                results.update(
                    run_ray(ray, ready, out, data, resources or {"num_cpus": 1.0}, progress, name, force, fn)
                )
            elif ready:
                k = min(jobs, len(ready))
                if progress:
                    print(f"{name}: {_level_line(ready, k)}", flush=True)
                results.update(run_local(ready, out, data, k, progress, name, force, fn))
            for s in blocked:
                results[s.name] = {"status": "failed", "error": f"not started: {s.after}, which it needs, failed"}
    return results


def _level_line(ready: list[RunSpec], k: int) -> str:
    """`baseline-s0, no_conv_l2-s0 (2 at once, 1 thread each)`."""
    given = {s.overrides.get("threads") or 0 for s in ready}
    threads = given.pop() if len(given) == 1 and 0 not in given else (threads_per_run(k) if k > 1 else 0)
    names = ", ".join(s.name for s in ready[:8]) + (f" and {len(ready) - 8} more" if len(ready) > 8 else "")
    how = f"{k} at once" + (f", {threads} thread{'s' * (threads > 1)} each" if threads else "")
    return f"{names} ({how})"
