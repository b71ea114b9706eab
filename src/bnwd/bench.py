"""`bnwd bench`: training throughput of ResNet-20 (img/s) and the monitor's overhead.

Synthetic uint8 data on the device, the real augmentation + standardization, forward,
backward and SGD step: what a training step costs without the disk or the loader.

Layouts: `plain` (NCHW) everywhere; `channels_last` only on CUDA by default. On some x86
CPUs (seen on a 2-core AMD EPYC, AVX2, torch 2.13.0 and 2.14.1 CPU wheels) the backward of
a 1x1 stride-2 conv + BN in channels_last hangs at 100% CPU or segfaults (upstream bug;
`benchmarks/channels_last_hang.py` reproduces it without bnwd). ResNet-20's projection
shortcuts are exactly such convs, so on CPU channels_last is timed only when asked for.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import torch
import torch.nn.functional as F

from .data import augment, standardize
from .errors import ConfigError
from .models import resnet20
from .optim import make_optimizer, param_groups

LAYOUTS = ("plain", "channels_last")
HANG_HINT = (
    "channels_last backward on CPU hangs on some x86 machines (upstream torch bug, "
    "see benchmarks/channels_last_hang.py); time the plain layout only"
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def time_steps(
    device: torch.device,
    batch_size: int,
    steps: int,
    width: int = 16,
    monitor: bool = False,
    amp: bool = False,
    channels_last: bool = False,
    warmup: int = 3,
) -> float:
    """Seconds per training step (median of `steps` timed steps after `warmup`)."""
    if monitor:
        from .monitor import Monitor
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = resnet20(width=width).to(device, memory_format=fmt)
    opt = make_optimizer(param_groups(model, 2e-4), "sgd", 0.1, 0.9)
    mon = Monitor(model, opt, sample_every=100) if monitor else None
    data = torch.randint(0, 256, (batch_size * 4, 3, 32, 32), dtype=torch.uint8, device=device)
    y = torch.randint(0, 10, (batch_size * 4,), device=device)
    g = torch.Generator(device=device).manual_seed(0)
    times = []
    for i in range(warmup + steps):
        sl = slice((i % 4) * batch_size, (i % 4 + 1) * batch_size)
        _sync(device)
        t = time.perf_counter()
        x = standardize(augment(data[sl], g))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x).float(), y[sl])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    if mon:
        mon.remove()
    times.sort()
    return times[len(times) // 2]


def parse_layouts(spec: str | None, cuda: bool) -> list[str]:
    """`None` -> the device's default: plain (and channels_last with bf16 on CUDA)."""
    if spec is None:
        return list(LAYOUTS) if cuda else ["plain"]
    out = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [s for s in out if s not in LAYOUTS]
    if bad or not out:
        raise ConfigError(f"--layouts takes a comma-separated subset of {', '.join(LAYOUTS)}, got {spec!r}")
    return out


def bench(
    device: str = "auto",
    batch_size: int = 128,
    steps: int = 20,
    width: int = 16,
    threads: int = 0,
    json_path: str | None = None,
    layouts: str | None = None,
    watchdog_s: float = 60.0,
) -> dict:
    from .train import pick_device

    dev = pick_device(device)
    if threads:
        torch.set_num_threads(threads)
    cuda = dev.type == "cuda"
    res = {
        "device": str(dev),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "width": width,
        "steps": steps,
    }
    for layout in parse_layouts(layouts, cuda):
        cl = layout == "channels_last"
        kw = {"channels_last": cl, "amp": cuda and cl}
        name = "bf16+channels_last" if kw["amp"] else layout
        hint = HANG_HINT if cl and not cuda else ""
        times = {}
        for mon in (False, True):
            what = f"{name}{' + monitor' if mon else ''}"
            print(f"timing {what} ({steps} steps of batch {batch_size}) ...", file=sys.stderr, flush=True)
            with Watchdog(what, watchdog_s, hint):
                times[mon] = time_steps(dev, batch_size, steps, width, monitor=mon, **kw)
        base, withmon = times[False], times[True]
        res[name] = {
            "ms_per_step": 1e3 * base,
            "img_per_s": batch_size / base,
            "ms_per_step_with_monitor": 1e3 * withmon,
            "monitor_overhead_pct": 100 * (withmon / base - 1),
        }
        print(
            f"{name:>20}: {batch_size / base:8.0f} img/s  ({1e3 * base:.1f} ms/step; with monitor "
            f"{1e3 * withmon:.1f} ms/step, {100 * (withmon / base - 1):+.1f}%)"
        )
    print(
        f"device {res['device']}, torch {res['torch']}, {res['threads']} threads, batch {batch_size}, ResNet-20 width {width}"
    )
    if json_path:
        with open(json_path, "w") as f:
            json.dump(res, f, indent=1)
    return res
