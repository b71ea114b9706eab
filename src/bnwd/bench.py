"""`bnwd bench`: training throughput of ResNet-20 (img/s) and the monitor's overhead.

Synthetic uint8 data on the device, the real augmentation + standardization, forward,
backward and SGD step: what a training step costs without the disk or the loader.
"""
from __future__ import annotations

import json
import time

import torch
import torch.nn.functional as F

from .data import augment, standardize
from .models import resnet20
from .optim import make_optimizer, param_groups


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(device: torch.device, batch_size: int, steps: int, width: int = 16, monitor: bool = False,
               amp: bool = False, channels_last: bool = False, warmup: int = 3) -> float:
    """Seconds per training step (median of `steps` timed steps after `warmup`)."""
    if monitor:
        from .monitor import Monitor
    torch.manual_seed(0)
    model = resnet20(width=width).to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
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


def bench(device: str = "auto", batch_size: int = 128, steps: int = 20, width: int = 16, threads: int = 0,
          json_path: str | None = None) -> dict:
    from .train import pick_device
    dev = pick_device(device)
    if threads:
        torch.set_num_threads(threads)
    cuda = dev.type == "cuda"
    res = {"device": str(dev), "torch": torch.__version__, "threads": torch.get_num_threads(), "batch_size": batch_size,
           "width": width, "steps": steps}
    configs = [("plain", {})]
    if cuda:
        configs += [("bf16+channels_last", {"amp": True, "channels_last": True})]
    else:
        configs += [("channels_last", {"channels_last": True})]
    for name, kw in configs:
        base = time_steps(dev, batch_size, steps, width, monitor=False, **kw)
        mon = time_steps(dev, batch_size, steps, width, monitor=True, **kw)
        res[name] = {"ms_per_step": 1e3 * base, "img_per_s": batch_size / base,
                     "ms_per_step_with_monitor": 1e3 * mon, "monitor_overhead_pct": 100 * (mon / base - 1)}
        print(f"{name:>20}: {batch_size / base:8.0f} img/s  ({1e3 * base:.1f} ms/step; with monitor "
              f"{1e3 * mon:.1f} ms/step, {100 * (mon / base - 1):+.1f}%)")
    print(f"device {res['device']}, torch {res['torch']}, {res['threads']} threads, batch {batch_size}, ResNet-20 width {width}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(res, f, indent=1)
    return res
