"""Upstream torch bug: channels_last backward of a 1x1 stride-2 conv + BN on some x86 CPUs.

Seen on a 2-core AMD EPYC (AVX2, no AVX-512) with the torch 2.13.0 and 2.14.1 CPU wheels: the
loop below hangs at 100% CPU on its 3rd-4th iteration with 2 threads and segfaults with 1.
3x3 stride-2, 1x1 stride-1 and 3x3 stride-1 convs do not hang. ResNet-20's projection
shortcuts are exactly 1x1 stride-2 convs, so bnwd computes them as `models.PointwiseConv` does:
the same 1x1 conv at stride 1 on every second pixel (`x[:, :, ::2, ::2]`), the same function,
which is the last configuration below and does not hang.

    python benchmarks/channels_last_hang.py            # runs the reproduction in a child, 60 s limit
    python benchmarks/channels_last_hang.py --threads 1

Prints `ok`, `HANG` or `CRASH (signal N)` per configuration and exits 1 if any of the four
nn.Conv2d ones failed (the upstream bug is present).
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

CHILD = """
import torch, torch.nn as nn
torch.set_num_threads({threads})
from bnwd.nn.models import PointwiseConv
conv = PointwiseConv if {bnwd} else nn.Conv2d
m = nn.Sequential(conv(4, 8, {k}, stride={stride}, padding={pad}, bias=False), nn.BatchNorm2d(8))
m = m.to(memory_format=torch.channels_last)
x = torch.randn(8, 4, 32, 32).contiguous(memory_format=torch.channels_last).requires_grad_()
for i in range(6):
    m(x).square().sum().backward()
print("done")
"""


def run(threads: int, k: int, stride: int, timeout: float, bnwd: bool = False) -> str:
    """`ok`, `HANG`, `CRASH (signal N)` or `FAIL (exit N)` for one conv + BN in a child process;
    `bnwd=True` builds the conv as bnwd's `PointwiseConv` (for 1x1) instead of nn.Conv2d."""
    code = CHILD.format(threads=threads, k=k, stride=stride, pad=k // 2, bnwd=bnwd)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    try:
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return "HANG"
    if p.returncode < 0:
        return f"CRASH (signal {-p.returncode})"
    return "ok" if p.returncode == 0 and "done" in p.stdout else f"FAIL (exit {p.returncode})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads in the child")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds before a configuration counts as hung")
    a = ap.parse_args()
    import torch

    print(f"torch {torch.__version__}, {a.threads} threads")
    bad = 0
    for k, stride in ((1, 2), (3, 2), (1, 1), (3, 1)):
        r = run(a.threads, k, stride, a.timeout)
        bad += r != "ok"
        print(f"{k}x{k} stride {stride}, channels_last, 6 backward passes: {r}", flush=True)
    r = run(a.threads, 1, 2, a.timeout, bnwd=True)
    print(f"1x1 stride 2 as bnwd computes it (stride 1 on x[:, :, ::2, ::2]), channels_last: {r}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
