"""The Monitor's per-step cost in ops (issue 24): its hooks run a fixed number of aten ops per
optimizer step whatever the model (no per-parameter view or copy), since on a launch-bound GPU
step each top-level op is a launch. Counted with torch.profiler, as benchmarks/monitor_ops.py does."""

import pytest
import torch
import torch.nn.functional as F
from fakes import benchmark_script

from bnwd.nn.models import resnet
from bnwd.nn.monitor import Monitor
from bnwd.nn.optim import make_optimizer, param_groups

ops = benchmark_script("monitor_ops")


def hook_ops(depth: int, channels_last: bool) -> int:
    """Top-level aten ops of one SGD step with the Monitor minus without it."""
    counts = []
    for with_monitor in (False, True):
        torch.manual_seed(0)
        model = resnet(depth, width=4)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = make_optimizer(param_groups(model, 1e-4), "sgd", 0.1, 0.9, (0.9, 0.999))
        mon = Monitor(model, opt) if with_monitor else None
        x = torch.randn(4, 3, 32, 32)
        F.cross_entropy(model(x), torch.arange(4)).backward()
        opt.step()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            opt.step()
        counts.append(sum(ops.aten_counts(prof)[0].values()))
        if mon is not None:
            mon.remove()
    return counts[1] - counts[0]


@pytest.mark.parametrize("channels_last", [False, True])
def test_monitor_hooks_run_a_fixed_handful_of_ops(channels_last, one_thread):
    """13 top-level aten ops per step (6 pre, 7 post hook; 100 for ResNet-20 before issue 24,
    most of them per-parameter views of the gradients), the same for ResNet-8 and ResNet-20."""
    small, large = hook_ops(8, channels_last), hook_ops(20, channels_last)
    assert small == large <= 13, (small, large)
