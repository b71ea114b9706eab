"""`bnwd bench`: training and evaluation throughput of ResNet-20 (img/s) and the monitor's overhead.

Synthetic uint8 data on the device, the real batched augmentation + standardization, forward,
backward and SGD momentum step: what a training step costs without the disk or the loader.
Per configuration (layout x eager/compiled) it times, in one process on the same data:

- train: the full step with the `Monitor` attached and the same step without it, alternating
  blocks of steps on one model (off/on, then on/off, ...) so that both see the same machine
  load; reported as medians of the per-step times (of per-block means on CUDA, where steps are
  not synchronised one by one). ``monitor_overhead = t_with / t_without - 1``. Two less noisy
  estimates come with it: the median over rounds of the paired block ratio, and the hooks
  timed directly (the optimizer step with minus without the monitor).
- eval: ``model.eval()``, no_grad, standardize, forward on batches of 1000 (``--eval-batch-size``).
- compiled (``--compile on``; ``auto`` = on on CUDA, off on CPU): the same after
  ``torch.compile(model)``, its blocks interleaved with the eager ones, with the speed-up over
  eager and the one-time compile cost (first step minus a steady step; the eval graph's apart)
  reported apart from the step time. A child process compiles and runs one step first: a
  compiled kernel that crashes (seen at width 4 on a 2-core AMD EPYC: "double free or
  corruption") then kills the child only, and its cold-cache compile time is the one reported.
  If compiling fails in any way, one line says so and the bench goes on with eager.

Layouts: `channels_last` (what training uses by default, on CPU and CUDA) and `plain` (NCHW).
By default the bench times channels_last only on CPU (under a minute), both on CUDA. On a 2-core
AMD EPYC (AVX2) channels_last steps 1.24x faster at width 16 (docs/cpu_ceiling.txt). Its one known trap, oneDNN's
channels_last backward of a strided 1x1 conv hanging on some AVX2 CPUs
(`benchmarks/channels_last_hang.py`), is never reached: `models.PointwiseConv` convolves the
subsampled input at stride 1 instead.
"""

from __future__ import annotations

import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

from bnwd.errors import ConfigError, one_line
from bnwd.nn.models import resnet20
from bnwd.nn.monitor import Monitor
from bnwd.nn.optim import make_optimizer, param_groups
from bnwd.run.data import augment, standardize
from bnwd.run.device import Placement, loss_and_grad, pick_device
from bnwd.run.rundir import peak_rss_mb

LAYOUTS = ("channels_last", "plain")
COMPILE = ("auto", "on", "off")
#: Keys the `--json` object always has (besides device, torch, threads, cpu, batch_size, width, configs).
JSON_KEYS = ("train_img_per_s", "train_img_per_s_no_monitor", "eval_img_per_s", "monitor_overhead", "peak_rss_mb")
COMPILE_HINT = "torch.compile of ResNet-20 takes one to two minutes on a 2-core CPU (C++ code generation)"
BUSY_HINT = "on a busy CPU, --threads 1 avoids OpenMP threads waiting on each other"
# The article's sample points are every quarter epoch: 390 // 4 steps at batch 128.
ARTICLE_SAMPLE_EVERY = 97


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_model() -> str:
    """The CPU's "model name" from /proc/cpuinfo, else `platform.processor()`."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name") and ":" in line:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else math.nan


class Watchdog:
    """Prints one line if a configuration runs longer than `after_s` (a C-level hang leaves
    Python silent; this thread still runs because the autograd engine releases the GIL)."""

    def __init__(self, what: str, after_s: float, hint: str = ""):
        msg = f"bnwd bench: still timing {what} after {after_s:.0f} s"
        self.timer = threading.Timer(
            after_s, lambda: print(msg + (f"; {hint}" if hint else ""), file=sys.stderr, flush=True)
        )
        self.timer.daemon = True

    def __enter__(self):
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.cancel()


class _Clock:
    """Marks around the optimizer step: perf_counter on CPU, CUDA events on CUDA (read after a sync)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def seconds(self, a, b) -> float:
        return a.elapsed_time(b) / 1e3 if self.cuda else b - a


class Setup:
    """One model + SGD momentum optimizer on synthetic uint8 data, optionally compiled.

    `train_step()` is the training step of `bnwd train` (augment, standardize, then the
    trainer's own `device.loss_and_grad`: forward, cross-entropy, backward; then `opt.step()`);
    `eval_batch()` its evaluation of one test batch.
    """

    def __init__(
        self,
        device: torch.device,
        batch_size: int,
        width: int = 16,
        amp: bool = False,
        channels_last: bool = False,
        compile_mode: str | None = None,
        eval_batch_size: int = 1000,
    ):
        torch.manual_seed(0)
        self.device, self.batch_size, self.amp, self.channels_last = device, batch_size, amp, channels_last
        self.place = Placement(device, amp, channels_last)
        self.model = resnet20(width=width).to(device, memory_format=self.place.memory_format)
        self.opt = make_optimizer(param_groups(self.model, 2e-4), "sgd", 0.1, 0.9)
        self.forward = self.model
        if compile_mode is not None:
            # dynamic=False: the train batch and the eval batch each get their own static graph.
            self.forward = torch.compile(
                self.model, mode=None if compile_mode == "default" else compile_mode, dynamic=False
            )
        self.data = torch.randint(0, 256, (batch_size * 4, 3, 32, 32), dtype=torch.uint8, device=device)
        self.y = torch.randint(0, 10, (batch_size * 4,), device=device)
        self.eval_batch_size = eval_batch_size
        self.eval_data = torch.randint(0, 256, (eval_batch_size * 2, 3, 32, 32), dtype=torch.uint8, device=device)
        self.eval_y = torch.randint(0, 10, (eval_batch_size * 2,), device=device)
        self.g = torch.Generator(device=device).manual_seed(0)
        self.clock = _Clock(device)
        self.i = 0

    def train_step(self) -> tuple:
        """One training step; returns the clock marks around `opt.step()` (hooks included)."""
        b, k = self.batch_size, self.i % 4
        self.i += 1
        x = self.place.input(standardize(augment(self.data[k * b : (k + 1) * b], self.g)))
        loss_and_grad(self.forward, x, self.y[k * b : (k + 1) * b], self.opt, self.place)
        a = self.clock.mark()
        self.opt.step()
        return a, self.clock.mark()

    @torch.no_grad()
    def eval_batch(self, k: int) -> torch.Tensor:
        b = self.eval_batch_size
        sl = slice((k % 2) * b, (k % 2 + 1) * b)
        x = self.place.input(standardize(self.eval_data[sl]))
        with self.place.autocast():
            logits = self.forward(x).float()
        return (logits.argmax(1) == self.eval_y[sl]).sum()


def warm_up(s: Setup, warmup: int = 3, sample_every: int = ARTICLE_SAMPLE_EVERY) -> float:
    """`warmup` untimed steps (the last one with a Monitor); returns the first step's seconds
    (allocations; for a compiled model, the compilation of the forward and backward graphs)."""
    s.model.train()
    _sync(s.device)
    t = time.perf_counter()
    s.train_step()
    _sync(s.device)
    first = time.perf_counter() - t
    for _ in range(max(0, warmup - 1)):
        s.train_step()
    with Monitor(s.model, s.opt, sample_every=sample_every):
        s.train_step()  # the monitor's first step allocates its masks
    _sync(s.device)
    return first


def time_train(
    setups: list[Setup], steps: int, block: int, sample_every: int = ARTICLE_SAMPLE_EVERY
) -> list[dict[str, Any]]:
    """Interleaved timing of the training step of every setup, with and without the Monitor.

    Each round runs a block of `block` steps of every (setup, monitor off/on) kind, in an order
    that reverses every round, until each kind has `steps` timed steps. Per setup, returns
    seconds: medians of the steps (of block means on CUDA, where steps are left to overlap as in
    training), means, the optimizer-step medians (hooks included when on), the median of the
    paired per-round ratios with/without, `sample()` and the per-round block means.
    """
    dev = setups[0].device
    cuda = dev.type == "cuda"
    kinds = [(i, on) for i in range(len(setups)) for on in (False, True)]
    samples: dict[tuple, list[float]] = {k: [] for k in kinds}  # seconds per step
    opt_s: dict[tuple, list[float]] = {k: [] for k in kinds}
    sample_s: dict[int, list[float]] = {i: [] for i in range(len(setups))}
    rounds: list[dict[tuple, float]] = []
    done = dict.fromkeys(kinds, 0)
    r = 0
    while min(done.values()) < steps:
        rnd: dict[tuple, float] = {}
        for kind in kinds if r % 2 == 0 else kinds[::-1]:
            i, on = kind
            s, n = setups[i], min(block, steps - done[kind])
            if n <= 0:
                continue
            mon = Monitor(s.model, s.opt, sample_every=sample_every) if on else None
            marks, total = [], 0.0
            if cuda:
                _sync(dev)
                t = time.perf_counter()
                marks = [s.train_step() for _ in range(n)]
                _sync(dev)
                total = time.perf_counter() - t
                samples[kind].append(total / n)
            else:
                for _ in range(n):
                    t = time.perf_counter()
                    marks.append(s.train_step())
                    dt = time.perf_counter() - t
                    samples[kind].append(dt)
                    total += dt
            opt_s[kind] += [s.clock.seconds(a, b) for a, b in marks]
            if mon is not None:
                _sync(dev)
                t = time.perf_counter()
                mon.sample()  # a host sync: what every sample point of a run costs
                sample_s[i].append(time.perf_counter() - t)
                mon.remove()
            rnd[kind] = total / n
            done[kind] += n
        rounds.append(rnd)
        r += 1
    out = []
    for i in range(len(setups)):
        off, on = (i, False), (i, True)
        paired = [x[on] / x[off] for x in rounds if on in x and off in x]
        out.append(
            {
                "without": median(samples[off]),
                "with": median(samples[on]),
                "mean_without": statistics.fmean(samples[off]),
                "mean_with": statistics.fmean(samples[on]),
                "opt_without": median(opt_s[off]),
                "opt_with": median(opt_s[on]),
                "paired_ratio": median(paired),
                "sample": median(sample_s[i]),
                "rounds": [{"without": x.get(off), "with": x.get(on)} for x in rounds],
            }
        )
    return out


def time_eval(setups: list[Setup], batches: int) -> list[dict[str, float]]:
    """Seconds per evaluation batch of every setup (median over `batches`, setups alternating,
    after one untimed batch each, whose time is returned as `first`: the eval graph's compilation)."""
    dev = setups[0].device
    firsts, ts = [], [[] for _ in setups]
    for s in setups:
        s.model.eval()
    try:
        for s in setups:
            _sync(dev)
            t = time.perf_counter()
            s.eval_batch(0)
            _sync(dev)
            firsts.append(time.perf_counter() - t)
        for k in range(batches):
            order = range(len(setups)) if k % 2 == 0 else reversed(range(len(setups)))
            for i in order:
                t = time.perf_counter()
                setups[i].eval_batch(k + 1)
                _sync(dev)
                ts[i].append(time.perf_counter() - t)
    finally:
        for s in setups:
            s.model.train()
    return [{"batch": median(x), "first": f} for x, f in zip(ts, firsts)]


_PROBE_CODE = "import json, sys; from bnwd.run.bench import _probe_main; _probe_main(json.loads(sys.argv[1]))"


def _probe_main(cfg: dict) -> None:
    """Child side of `compile_probe`: compile, one training step and one eval batch; print one JSON line."""
    torch.set_num_threads(cfg.pop("threads"))
    s = Setup(torch.device(cfg.pop("device")), **cfg)
    first = warm_up(s, warmup=1)
    t = time.perf_counter()
    s.train_step()
    _sync(s.device)
    steady = time.perf_counter() - t
    ev = time_eval([s], 1)[0]
    out = {"compile_s": max(0.0, first - steady), "compile_eval_s": max(0.0, ev["first"] - ev["batch"])}
    print(json.dumps(out), flush=True)


def compile_probe(device: torch.device, timeout_s: float, **setup) -> tuple[dict | None, str | None]:
    """Compile and run one step and one eval batch in a child process: `(times, None)` if it worked,
    `(None, reason)` if it failed. A compiled kernel that crashes (seen on a 2-core AMD EPYC: "double
    free or corruption" at width 4, batch 16) then costs the child, not the bench; the compiled
    code is cached on disk (inductor's cache), so the in-process compilation that follows is fast.
    The child's numbers are the cold-cache compile cost (unless the cache was warm already)."""
    cfg = {"device": str(device), "threads": torch.get_num_threads(), **setup}
    pkg_parent = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        p = subprocess.run(
            [sys.executable, "-c", _PROBE_CODE, json.dumps(cfg)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return None, f"compiling in a child process took over {timeout_s:.0f} s"
    if p.returncode != 0:
        if p.returncode < 0:
            try:
                how = f"crashed with {signal.Signals(-p.returncode).name}"
            except ValueError:
                how = f"crashed with signal {-p.returncode}"
        else:
            how = f"exited {p.returncode}"
        lines = [ln.strip() for ln in p.stderr.splitlines() if ln.strip()]
        last = next((ln for ln in reversed(lines) if not ln.startswith(("File ", "Thread ", "Current thread"))), "")
        return None, f"compiled step {how} in a child process" + (f" ({last[:200]})" if last else "")
    try:
        return json.loads(p.stdout.strip().splitlines()[-1]), None
    except (ValueError, IndexError):
        return None, f"the compile probe printed no result ({p.stdout.strip()[-200:]!r})"


def parse_layouts(spec: str | None, cuda: bool) -> list[str]:
    """`None` -> the device's default: channels_last (training's layout), and plain on CUDA to compare."""
    if spec is None:
        return ["plain", "channels_last"] if cuda else ["channels_last"]
    out = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [s for s in out if s not in LAYOUTS]
    if bad or not out:
        raise ConfigError(f"--layouts takes a comma-separated subset of {', '.join(LAYOUTS)}, got {spec!r}")
    return out


def _config_result(bs: int, eval_bs: int, tr: dict, ev: dict, first: float) -> dict[str, Any]:
    base, withmon = tr["without"], tr["with"]
    return {
        "ms_per_step": 1e3 * base,
        "img_per_s": bs / base,
        "ms_per_step_with_monitor": 1e3 * withmon,
        "img_per_s_with_monitor": bs / withmon,
        "img_per_s_mean": bs / tr["mean_without"],
        "img_per_s_with_monitor_mean": bs / tr["mean_with"],
        "monitor_overhead": withmon / base - 1,
        "monitor_overhead_paired": tr["paired_ratio"] - 1,
        "monitor_hook_ms": 1e3 * (tr["opt_with"] - tr["opt_without"]),
        "monitor_overhead_hooks": (tr["opt_with"] - tr["opt_without"]) / base,
        "monitor_sample_ms": 1e3 * tr["sample"],
        "optimizer_step_ms": 1e3 * tr["opt_without"],
        "first_step_s": first,
        "interleaved_rounds": len(tr["rounds"]),
        "eval_batch_size": eval_bs,
        "eval_ms_per_batch": 1e3 * ev["batch"],
        "eval_img_per_s": eval_bs / ev["batch"],
        "eval_first_batch_s": ev["first"],
    }


def bench(
    device: str = "auto",
    batch_size: int = 128,
    steps: int = 20,
    width: int = 16,
    threads: int = 0,
    json_path: str | None = None,
    layouts: str | None = None,
    watchdog_s: float = 60.0,
    compile: str = "auto",
    compile_mode: str = "default",
    eval_batch_size: int = 1000,
    eval_batches: int = 5,
    block: int = 0,
    warmup: int = 3,
    print_json: bool = False,
    compile_probe_on: bool = True,
) -> dict:
    """Time every configuration, print a table (and with `print_json` one JSON line last), return the results.

    The top-level numbers are those of the last configuration timed (the last layout, compiled
    when compiling is on and worked); every configuration's are under ``configs``. With
    `compile_probe_on` the model is first compiled and run in a child process (`compile_probe`).
    """
    if compile not in COMPILE:
        raise ConfigError(f"--compile must be one of {', '.join(COMPILE)}, got {compile!r}")
    for name, v, lo in (("batch size", batch_size, 1), ("steps", steps, 1), ("width", width, 1)):
        if v < lo:
            raise ConfigError(f"{name} must be >= {lo}, got {v}")
    if eval_batch_size < 1 or eval_batches < 1:
        raise ConfigError(f"eval batch size and batches must be >= 1, got {eval_batch_size} and {eval_batches}")
    dev = pick_device(device)
    if threads:
        torch.set_num_threads(threads)
    cuda = dev.type == "cuda"
    use_compile = compile == "on" or (compile == "auto" and cuda)
    block = block if block > 0 else max(1, min(10 if cuda else 5, steps // 4))
    res: dict[str, Any] = {
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if cuda else cpu_model(),
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "width": width,
        "steps": steps,
        "block": block,
        "eval_batch_size": eval_batch_size,
        "compile": {
            "requested": compile,
            "enabled": use_compile,
            "mode": compile_mode,
            "probe": use_compile and compile_probe_on,
            "error": None,
        },
        "configs": {},
    }
    for layout in parse_layouts(layouts, cuda):
        cl = layout == "channels_last"
        amp = cuda and cl
        base = "bf16+channels_last" if amp else layout
        hint = "" if cuda else BUSY_HINT
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        names, setups, firsts = [base], [Setup(dev, batch_size, width, amp, cl, None, eval_batch_size)], []
        print(f"timing {base}: warm-up ({warmup} steps) ...", file=sys.stderr, flush=True)
        with Watchdog(f"{base}: warm-up", watchdog_s, hint):
            firsts.append(warm_up(setups[0], warmup))
        probe = None
        if use_compile and not res["compile"]["error"] and compile_probe_on:
            name = base + "+compile"
            print(
                f"compiling {name} in a child process first (a crash there costs only the child) ...",
                file=sys.stderr,
                flush=True,
            )
            with Watchdog(f"{name}: compilation in a child process", watchdog_s * 10, COMPILE_HINT):
                probe, why = compile_probe(
                    dev,
                    max(600.0, watchdog_s * 10),
                    batch_size=batch_size,
                    width=width,
                    amp=amp,
                    channels_last=cl,
                    compile_mode=compile_mode,
                    eval_batch_size=eval_batch_size,
                )
            if why:
                res["compile"]["error"] = why
                print(f"bnwd bench: torch.compile failed ({why}); continuing with eager", file=sys.stderr)
        if use_compile and not res["compile"]["error"]:
            name = base + "+compile"
            print(f"compiling {name} (one-time cost, reported apart) ...", file=sys.stderr, flush=True)
            try:
                with Watchdog(f"{name}: compilation", watchdog_s * 10, COMPILE_HINT):
                    setups.append(Setup(dev, batch_size, width, amp, cl, compile_mode, eval_batch_size))
                    firsts.append(warm_up(setups[-1], warmup))
                names.append(name)
            except Exception as e:
                del setups[1:], firsts[1:]
                res["compile"]["error"] = one_line(e)
                print(f"bnwd bench: torch.compile failed ({one_line(e)}); continuing with eager", file=sys.stderr)
        what = (
            f"{' and '.join(names)}: train with and without monitor, interleaved "
            f"({steps} steps each of batch {batch_size})"
        )
        print(f"timing {what} ...", file=sys.stderr, flush=True)
        with Watchdog(what, watchdog_s * len(setups), hint):
            trs = time_train(setups, steps, block)
        what = f"{' and '.join(names)}: eval ({eval_batches} batches of {eval_batch_size})"
        print(f"timing {what} ...", file=sys.stderr, flush=True)
        try:
            with Watchdog(what, watchdog_s * (10 if len(setups) > 1 else 1), COMPILE_HINT if len(setups) > 1 else hint):
                evs = time_eval(setups, eval_batches)
        except Exception as e:
            if len(setups) == 1:
                raise
            res["compile"]["error"] = one_line(e)
            print(f"bnwd bench: torch.compile failed ({one_line(e)}); continuing with eager", file=sys.stderr)
            names, setups, trs, firsts = names[:1], setups[:1], trs[:1], firsts[:1]
            evs = time_eval(setups, eval_batches)
        for k, name in enumerate(names):
            r = _config_result(batch_size, eval_batch_size, trs[k], evs[k], firsts[k])
            r.update(layout=layout, amp="bf16" if amp else "off", compiled=k > 0)
            if k > 0:
                e, c = trs[0], trs[k]
                r["compile_s"] = max(0.0, firsts[k] - c["without"])
                r["compile_eval_s"] = max(0.0, evs[k]["first"] - evs[k]["batch"])
                if probe:  # the child compiled first: its times are the cold ones, these the cached ones
                    r["compile_s_cached"], r["compile_eval_s_cached"] = r["compile_s"], r["compile_eval_s"]
                    r["compile_s"], r["compile_eval_s"] = probe["compile_s"], probe["compile_eval_s"]
                r["speedup_vs_eager"] = e["without"] / c["without"]
                r["speedup_vs_eager_with_monitor"] = e["with"] / c["with"]
                r["speedup_vs_eager_paired"] = median(
                    [
                        x["without"] / y["without"]
                        for x, y in zip(e["rounds"], c["rounds"])
                        if x["without"] and y["without"]
                    ]
                )
                r["eval_speedup_vs_eager"] = evs[0]["batch"] / evs[k]["batch"]
            if cuda:
                r["cuda_max_memory_allocated_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
            res["configs"][name] = r
            _print_config(name, r, batch_size)
        del setups  # free this layout's models and data before the next
    # the headline numbers are those of the fastest configuration, Monitor on
    primary = max(res["configs"], key=lambda n: res["configs"][n]["img_per_s_with_monitor"])
    p = res["configs"][primary]
    res.update(
        primary=primary,
        train_img_per_s=p["img_per_s_with_monitor"],
        train_img_per_s_no_monitor=p["img_per_s"],
        train_ms_per_step=p["ms_per_step_with_monitor"],
        train_ms_per_step_no_monitor=p["ms_per_step"],
        eval_img_per_s=p["eval_img_per_s"],
        monitor_overhead=p["monitor_overhead"],
        monitor_overhead_paired=p["monitor_overhead_paired"],
        monitor_overhead_hooks=p["monitor_overhead_hooks"],
        peak_rss_mb=peak_rss_mb(),
    )
    if cuda:
        res["cuda_max_memory_allocated_mb"] = max(c["cuda_max_memory_allocated_mb"] for c in res["configs"].values())
    compiled = [c for c in res["configs"].values() if "compile_s" in c]
    if compiled:  # the compile cost and speed-up of the (last) compiled configuration, fastest or not
        c = compiled[-1]
        res["compile_s"], res["compile_eval_s"] = c["compile_s"], c["compile_eval_s"]
        if "speedup_vs_eager" in c:
            res["compile_speedup"] = c["speedup_vs_eager"]
    mem = f", peak RSS {res['peak_rss_mb']:.0f} MB"
    if cuda:
        mem += f", CUDA max allocated {res['cuda_max_memory_allocated_mb']:.0f} MB"
    print(
        f"device {res['device']} ({res['device_name']}), torch {res['torch']}, {res['threads']} threads, "
        f"batch {batch_size}, ResNet-20 width {width}{mem}"
    )
    if json_path:
        with open(json_path, "w") as f:
            json.dump(res, f, indent=1)
            f.write("\n")
    if print_json:
        print(json.dumps(res), flush=True)
    return res


def _print_config(name: str, r: dict, bs: int) -> None:
    line = (
        f"{name:>26}: train {r['img_per_s_with_monitor']:7.0f} img/s with monitor "
        f"({r['ms_per_step_with_monitor']:.1f} ms/step), {r['img_per_s']:7.0f} without ({r['ms_per_step']:.1f} ms); "
        f"monitor {100 * r['monitor_overhead']:+.1f}% (paired {100 * r['monitor_overhead_paired']:+.1f}%, "
        f"hooks {r['monitor_hook_ms']:.2f} ms/step); eval {r['eval_img_per_s']:.0f} img/s "
        f"(batch {r['eval_batch_size']})"
    )
    if r.get("compiled"):
        line += f"; compile {r['compile_s']:.1f} s + eval {r['compile_eval_s']:.1f} s"
        if "compile_s_cached" in r:
            line += f" (again in-process, cache warm: {r['compile_s_cached']:.1f} + {r['compile_eval_s_cached']:.1f} s)"
        if "speedup_vs_eager" in r:
            line += f", {r['speedup_vs_eager']:.2f}x eager (eval {r['eval_speedup_vs_eager']:.2f}x)"
    print(line, flush=True)
