"""Where a training step's time goes: torch.profiler over bnwd's step, with and without the Monitor.

    python benchmarks/step_profile.py                      # CPU, width 16, batch 128
    python benchmarks/step_profile.py --device cuda --out prof.txt

Prints, per step: operator calls, kernel launches (CUDA) and host time, with and without the
Monitor, then the operators the Monitor adds (its hooks) by host time. On a GPU a ResNet-20
step at batch 128 is launch-bound, so what counts is how many operators a step issues.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

_SRC = Path(__file__).resolve().parents[1] / "src"
if _SRC.is_dir() and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))

from bnwd.nn.monitor import Monitor  # noqa: E402
from bnwd.run.bench import ARTICLE_SAMPLE_EVERY, Setup, _sync  # noqa: E402


def profiled(s: Setup, steps: int, monitor: bool) -> tuple[Counter, Counter, int, float]:
    """Operator counts, operator host µs, kernel launches and wall s per step over `steps` steps."""
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if s.device.type == "cuda" else [])
    mon = Monitor(s.model, s.opt, sample_every=ARTICLE_SAMPLE_EVERY) if monitor else None
    for _ in range(3):
        s.train_step()
    _sync(s.device)
    with profile(activities=acts) as prof:
        t = time.perf_counter()
        for _ in range(steps):
            s.train_step()
        _sync(s.device)
        wall = (time.perf_counter() - t) / steps
    if mon is not None:
        mon.remove()
    calls, host = Counter(), Counter()
    launches = 0
    for e in prof.key_averages():
        if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx"):
            launches += e.count
        if e.key.startswith("aten::"):
            calls[e.key] += e.count
            host[e.key] += e.self_cpu_time_total
    return calls, host, launches, wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", help="also write the report to this file")
    a = ap.parse_args(argv)
    s = Setup(torch.device(a.device), a.batch_size, width=a.width)
    res = {on: profiled(s, a.steps, on) for on in (False, True)}
    n = a.steps
    lines = [
        f"device {a.device}, torch {torch.__version__}, ResNet-20 width {a.width}, batch {a.batch_size}, {n} steps"
    ]
    for on in (False, True):
        calls, host, launches, wall = res[on]
        lines.append(
            f"monitor {'on ' if on else 'off'}: {sum(calls.values()) / n:6.0f} aten ops/step, "
            f"{launches / n:5.0f} kernel launches/step, {1e3 * wall:7.2f} ms/step (profiled)"
        )
    (c0, h0, _, _), (c1, h1, _, _) = res[False], res[True]
    extra = {k: (c1[k] - c0[k]) / n for k in c1 if c1[k] > c0[k]}
    lines.append("operators the Monitor adds, per step (count, host µs):")
    for k in sorted(extra, key=lambda k: h0.get(k, 0) - h1[k])[:15]:
        lines.append(f"  {k:40s} {extra[k]:6.1f}  {(h1[k] - h0.get(k, 0)) / n:8.1f}")
    text = "\n".join(lines)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
