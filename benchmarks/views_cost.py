"""What the BN statistics views cost, side by side in one process.

Times, on one preset's model and data: a training step, the run's own test evaluation, and the
views at one evaluation (bn098 and comp: one evaluation each; precise: `precise_batches`
training-mode forwards and one evaluation). Then adds up one seed of `bnwd reproduce` at that
preset: training and own evaluations of baseline, no_conv_l2 and lr_scaled (plus lr_scaled's
bn098 view at every evaluation), against the views at the evaluations `bn_views` selects.

    python benchmarks/views_cost.py --data ../shared/data [--preset cpu] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bnwd.run.config import make_config
from bnwd.run.trainer import Trainer


def timed(fn, n: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--steps", type=int, default=30, help="training steps timed")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = make_config(args.preset, {"bn_views": "all"})
    tr = Trainer(cfg, Path("/tmp/bnwd_views_cost"), data=args.data, progress=False)

    def step():
        tr.set_lr(tr.step)
        tr.train_step(tr.step)
        tr.step += 1

    t_step = timed(step, args.steps)
    t_eval = timed(tr.evaluate, 2)

    def shadow(sh):
        with sh.swapped():
            tr.evaluate()

    t_shadow = timed(lambda: shadow(tr.views.comp), 2)
    t_precise = timed(lambda: tr.evaluate(tr.views.precise_model(tr.step)), 2)
    t_views = 2 * t_shadow + t_precise  # bn098, comp, precise

    evals = [s for s in range(tr.sample_every, tr.total_steps + 1, tr.sample_every) if s % tr.eval_every == 0]
    if tr.total_steps not in evals:
        evals.append(tr.total_steps)
    stage1 = [s for s in evals if s / tr.spe <= tr.stage1_end + 1e-9 or s == tr.total_steps]
    base = 3 * (tr.total_steps * t_step + len(evals) * t_eval) + len(evals) * t_shadow  # + lr_scaled's bn098
    # with views: bn098 is new for baseline and no_conv_l2 only (lr_scaled evaluates it already)
    per_run = lambda n: n * (t_shadow + t_precise)  # noqa: E731
    add = {"stage1": 2 * per_run(len(stage1)) + per_run(len(stage1)) + 2 * len(stage1) * t_shadow}
    add["all"] = 3 * per_run(len(evals)) + 2 * len(evals) * t_shadow
    print(f"preset {args.preset}, {torch.get_num_threads()} thread(s), N = {cfg.precise_batches} batches")
    print(f"training step            {1000 * t_step:8.1f} ms")
    print(f"own evaluation           {t_eval:8.2f} s  ({tr.data.n_test} test images)")
    print(f"bn098 or comp view       {t_shadow:8.2f} s")
    print(f"precise view             {t_precise:8.2f} s  (statistics from {cfg.precise_batches} batches + evaluation)")
    print(f"views at one evaluation  {t_views:8.2f} s")
    print(f"one seed (3 trained runs, {len(evals)} evaluations each): {base / 60:.1f} min of compute without the views")
    for mode, a in add.items():
        n = len(stage1) if mode == "stage1" else len(evals)
        print(f"  bn_views={mode:6s}: + {a / 60:.1f} min ({100 * a / base:.1f}%), views at {n} evaluations per run")


if __name__ == "__main__":
    main()
