"""How fast can a ResNet-20 training step get on this CPU? The floor set by the convolutions.

    python benchmarks/cpu_ceiling.py                       # width 16, batch 128, both layouts
    python benchmarks/cpu_ceiling.py --perf-json docs/perf.json   # also: what 2x the recipe needs

In one process it measures:

- the training FLOPs of one image: every conv and the dense layer, forward (2 FLOP per
  multiply-add) plus backward (input gradient, except for the first conv, and weight gradient);
- the machine's fp32 matrix-multiply rate (`torch.mm` of 1024x1024 matrices, torch's threads),
  the practical peak of any fp32 convolution on it;
- bnwd's step per layout (channels_last, plain; the Monitor off), with torch.profiler's time in
  the oneDNN convolution kernels (forward and backward) apart from everything else, and the
  precision of that layout's batch norm (float32 against float64).

It prints the step, the conv share, the GFLOP/s the convs reach, and two ceilings: a step with
nothing but its convs (all of BN, ReLU, the optimizer and the data free), and a step whose every
FLOP runs at the matmul rate. With `--perf-json` (written by `recipe_vs_bnwd.py`) it also prints
what 2x the standard recipe's img/s would need in GFLOP/s.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile

_SRC = Path(__file__).resolve().parents[1] / "src"
if _SRC.is_dir() and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))

from bnwd.nn.models import resnet20  # noqa: E402
from bnwd.run.bench import Setup, cpu_model  # noqa: E402

CONV_OPS = ("aten::mkldnn_convolution", "aten::convolution_backward")


def train_flops_per_image(width: int) -> float:
    """Forward multiply-adds of every conv and linear layer (from a forward pass's shapes), x2 FLOP,
    x3 for training (forward, input gradient, weight gradient), less the first conv's input gradient."""
    model, macs = resnet20(width=width), []

    def hook(m, inp, out):
        k = m.weight[0].numel()  # per output element: cin/groups * kh * kw
        macs.append((m, out.numel() * k))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    for h in handles:
        h.remove()
    fwd = sum(n for _, n in macs)
    first = next(n for m, n in macs if m is model.conv)
    return 2.0 * (3 * fwd - first)


def matmul_gflops(n: int = 1024, reps: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(ts) / 1e9


def step_and_conv_ms(channels_last: bool, width: int, batch: int, steps: int) -> tuple[float, float]:
    """Median wall ms of a step, and the mean ms per step inside oneDNN's conv kernels (profiled)."""
    s = Setup(torch.device("cpu"), batch, width=width, channels_last=channels_last)
    for _ in range(3):
        s.train_step()
    ts = []
    for _ in range(steps):
        t = time.perf_counter()
        s.train_step()
        ts.append(time.perf_counter() - t)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            s.train_step()
    conv_us = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in CONV_OPS)
    return statistics.median(ts) * 1e3, conv_us / steps / 1e3


def bn_error(channels_last: bool) -> float:
    """Max abs error of float32 training-mode batch norm against float64, on activations of
    mean/std = 6 (128 x 16 x 32 x 32, unit-scale output)."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 16, 32, 32, dtype=torch.float64, generator=g) * 0.5 + 3.0
    ref = F.batch_norm(x, None, None, training=True, eps=1e-5)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    y = F.batch_norm(x.float().contiguous(memory_format=fmt), None, None, training=True, eps=1e-5)
    return float((y.double() - ref).abs().max())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=128, help="images per step")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per layout (and as many profiled)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--perf-json", default=None, help="recipe_vs_bnwd.py --json-out file: compare with its recipe")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    b = a.batch_size
    flops = train_flops_per_image(a.width)
    peak = matmul_gflops()
    cmd = " ".join(["python benchmarks/cpu_ceiling.py", *(sys.argv[1:] if argv is None else argv)])
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"`{cmd}` on {when}, {cpu_model()}")
    cap = torch.backends.cpu.get_cpu_capability()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability {cap}")
    print(f"ResNet-20 width {a.width}: {flops / 1e6:.1f} MFLOP per training image (convs + dense, fwd + bwd)")
    print(f"fp32 matmul (1024^3): {peak:.1f} GFLOP/s -> {peak * 1e9 / flops:.0f} img/s if every FLOP ran at that rate")
    for cl in (True, False):
        step, conv = step_and_conv_ms(cl, a.width, b, a.steps)
        name = "channels_last" if cl else "plain"
        print(
            f"{name:13s}: step {step:6.1f} ms ({b / step * 1e3:4.0f} img/s); convs {conv:6.1f} ms = "
            f"{conv / step:4.0%} of it, {flops * b / (conv / 1e3) / 1e9:5.1f} GFLOP/s; a step of convs only: "
            f"{b / conv * 1e3:4.0f} img/s"
        )
        print(f"{'':13s}  batch norm vs float64 (mean/std = 6): max error {bn_error(cl):.1e}")
    if a.perf_json:
        rec = json.loads(Path(a.perf_json).read_text())["comparison"]["recipe"]["median"]
        need = 2 * rec * flops / 1e9
        print(
            f"the recipe's median {rec:.0f} img/s (from {a.perf_json}); 2x it = {2 * rec:.0f} img/s "
            f"= {need:.1f} GFLOP/s of training FLOPs, {need / peak:.0%} of the matmul rate"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
