"""The ops the Monitor adds to one training step, counted with torch.profiler on CPU (issue 24).

On a launch-bound GPU step each top-level aten op of the eager optimizer hooks is at least one
kernel launch, so their count is what the Monitor costs there (the compiled forward does not
include the hooks). Counts one SGD step of ResNet-20 (width 8, the cpu preset's; batch 32: the
counts do not depend on the batch) three ways: the optimizer step alone, with the Monitor's hooks,
and with the trainer's MomentumStats too; and the Monitor's fold (every BUFFER = 64 steps) and
sample() per call.

    PYTHONPATH=src python benchmarks/monitor_ops.py [--width 8] [--json FILE]

"top-level" = aten ops called from Python (not from inside another aten op): the launch count;
"all" = every aten op, nested ones included (CPU dispatch work).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bnwd.nn.models import resnet  # noqa: E402
from bnwd.nn.monitor import BUFFER, MomentumStats, Monitor  # noqa: E402
from bnwd.nn.optim import make_optimizer, param_groups  # noqa: E402


def aten_counts(prof) -> tuple[collections.Counter, collections.Counter]:
    top, every = collections.Counter(), collections.Counter()
    for e in prof.events():
        if not e.name.startswith("aten::"):
            continue
        every[e.name] += 1
        p = e.cpu_parent
        while p is not None and not p.name.startswith("aten::"):
            p = p.cpu_parent
        if p is None:
            top[e.name] += 1
    return top, every


def setup(width: int, batch: int, monitor: bool, momentum_stats: bool):
    torch.manual_seed(0)
    model = resnet(20, width=width).to(memory_format=torch.channels_last)
    groups = param_groups(model, {"conv": 2e-4, "bn": 2e-4, "head": 2e-4})
    opt = make_optimizer(groups, "sgd", 0.1, 0.9, (0.9, 0.999))
    mon = Monitor(model, opt, sample_every=100, halflife=100) if monitor else None
    ms = MomentumStats(opt, "conv") if momentum_stats else None
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    return model, opt, mon, ms, x, y


def measure(width: int, batch: int, steps: int, monitor: bool, momentum_stats: bool) -> dict:
    model, opt, mon, ms, x, y = setup(width, batch, monitor, momentum_stats)

    def backward():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    for _ in range(3):  # warm: optimizer state, cached masks
        backward()
        opt.step()
    res = {}
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            backward()
            opt.step()
    res["step_top"], res["step_all"] = aten_counts(prof)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            opt.step()  # gradients stay: the optimizer step and its hooks alone
    res["opt_top"], res["opt_all"] = aten_counts(prof)
    if mon is not None:
        mon._fold()
        for _ in range(BUFFER - 1):  # a nearly full buffer (the 64th step folds by itself)
            opt.step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            mon._fold()
        res["fold_top"], _ = aten_counts(prof)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            mon.sample()
        res["sample_top"], _ = aten_counts(prof)
    return {
        k: {n: c / (1 if k.startswith(("fold", "sample")) else steps) for n, c in v.items()} for k, v in res.items()
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    base = measure(a.width, a.batch, a.steps, False, False)
    mon = measure(a.width, a.batch, a.steps, True, False)
    both = measure(a.width, a.batch, a.steps, True, True)
    tot = lambda d: sum(d.values())  # noqa: E731
    n_params = sum(1 for _ in resnet(20, width=a.width).parameters())
    print(f"ResNet-20 width {a.width}, {n_params} parameter tensors, SGD (foreach), torch {torch.__version__}, CPU")
    print(f"{'aten ops per training step':<44} {'top-level':>10} {'all':>8}")
    rows = [
        ("no monitor (fwd + bwd + SGD step)", base["step_top"], base["step_all"]),
        ("with Monitor", mon["step_top"], mon["step_all"]),
        ("with Monitor + MomentumStats (as trained)", both["step_top"], both["step_all"]),
        ("SGD step alone", base["opt_top"], base["opt_all"]),
        ("SGD step + Monitor hooks", mon["opt_top"], mon["opt_all"]),
        ("SGD step + Monitor hooks + MomentumStats", both["opt_top"], both["opt_all"]),
    ]
    for name, t, e in rows:
        print(f"{name:<44} {tot(t):>10.0f} {tot(e):>8.0f}")
    hooks = collections.Counter(mon["opt_top"])
    hooks.subtract(base["opt_top"])
    print(f"\nMonitor hooks per step: {tot(hooks):.0f} top-level aten ops:")
    for n, c in sorted(hooks.items(), key=lambda kv: (-kv[1], kv[0])):
        if c:
            print(f"  {c:>4.0f}  {n}")
    ms = collections.Counter(both["opt_top"])
    ms.subtract(mon["opt_top"])
    print(f"MomentumStats hook per step: {tot(ms):.0f} top-level aten ops")
    print(
        f"Monitor fold (once per {BUFFER} steps): {tot(mon['fold_top']):.0f} top-level ops "
        f"= {tot(mon['fold_top']) / BUFFER:.1f} per step; sample() (once per sample point): {tot(mon['sample_top']):.0f}"
    )
    if a.json:
        out = {
            "width": a.width,
            "torch": torch.__version__,
            "per_step_top": {r[0]: tot(r[1]) for r in rows},
            "per_step_all": {r[0]: tot(r[2]) for r in rows},
            "monitor_hook_ops": {n: c for n, c in hooks.items() if c},
            "momentum_stats_ops": tot(ms),
            "fold_ops": tot(mon["fold_top"]),
            "sample_ops": tot(mon["sample_top"]),
        }
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
