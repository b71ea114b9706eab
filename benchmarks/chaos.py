"""How fast do two mathematically identical trainings separate?

Trains ResNet-20 (cpu-preset width 8, BN momentum 0.015, lr 0.1, L2 5e-3) on the same real
CIFAR-10 batches twice and prints the relative logit difference per step:

  exact    baseline SGD+L2 vs `weight_decay_as_lr` (the same dynamics in exact arithmetic)
  control  baseline vs baseline with every weight multiplied by (1 + 1e-13 * noise)

Both gaps grow exponentially from rounding level at the same rate: early training at lr 0.1 is
chaotic, so float32 runs of baseline and lr_exact agree statistically, not pointwise.

    python benchmarks/chaos.py --data ../shared/data --dtype float64 --steps 41 [--control]
"""

import argparse

import torch
import torch.nn.functional as F

import bnwd
from bnwd.run.data import augment, load_cifar10, standardize

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--data", default=None, help="CIFAR-10 folder (see the README)")
ap.add_argument("--dtype", default="float64", choices=["float32", "float64"])
ap.add_argument("--steps", type=int, default=41, help="training steps (batch 128)")
ap.add_argument("--control", action="store_true", help="baseline vs a 1e-13-perturbed baseline")
args = ap.parse_args()
dtype = getattr(torch, args.dtype)
d = load_cifar10(args.data)
xs, ys = d.train_x[: 128 * 8], d.train_y[: 128 * 8]


def run(exact: bool, perturb: float = 0.0) -> list[torch.Tensor]:
    torch.manual_seed(0)
    m = bnwd.resnet(20, width=8, bn_momentum=0.015).to(dtype)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(1 + perturb * torch.randn_like(p))
    opt = torch.optim.SGD(bnwd.param_groups(m, 5e-3), lr=0.1, momentum=0.9)
    if exact:  # the transform's hooks act on the optimizer's own steps
        bnwd.weight_decay_as_lr(opt, groups=["conv"], model=m, rescale_bn_eps=True)
    g = torch.Generator().manual_seed(1)
    out = []
    for t in range(args.steps):
        sl = slice((t % 8) * 128, (t % 8 + 1) * 128)
        logits = m(standardize(augment(xs[sl], g)).to(dtype))
        opt.zero_grad()
        F.cross_entropy(logits, ys[sl]).backward()
        opt.step()
        out.append(logits.detach())
    return out


a, b = (run(False), run(False, 1e-13)) if args.control else (run(False), run(True))
print(f"{args.dtype}, {'baseline vs perturbed baseline' if args.control else 'baseline vs weight_decay_as_lr'}")
for t in (0, 1, 2, 5, 10, 20, 40, 80, 160, 320):
    if t < args.steps:
        print(
            f"step {t:4d}: max |logit diff| / max |logit| = {((a[t] - b[t]).abs().max() / a[t].abs().max()).item():.2e}"
        )
