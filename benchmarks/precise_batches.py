"""How many training batches the precise view needs: split-half agreement of its test accuracy.

Trains a baseline of a preset (default `cpu`), or loads checkpoints of a run (`--checkpoints`),
and at a few points of lr stage 1 recomputes the BN statistics from two disjoint sets of N augmented training batches (`Trainer.precise_model`
at two offsets of its batch stream), for several N, and evaluates both on the test set. The
precise view's sampling error is |acc(half A) - acc(half B)| / sqrt(2) per evaluation.

    python benchmarks/precise_batches.py --data ../shared/data --out docs/precise_batches.json
    python benchmarks/precise_batches.py --data ../shared/data --checkpoints a.pt,b.pt  # saved checkpoint.pt files
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bnwd.run.config import Config, make_config
from bnwd.run.rundir import load_checkpoint
from bnwd.run.trainer import Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--points", default="0.5,1.0,2.0", help="epochs at which to measure")
    ap.add_argument("--sizes", default="8,16,32,64", help="N, batches per half")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument(
        "--checkpoints", default="", help="comma-separated checkpoint.pt files of one run, instead of training"
    )
    args = ap.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]
    rows = []
    t0 = time.time()
    if args.checkpoints:
        for path in args.checkpoints.split(","):
            st = load_checkpoint(Path(path))
            tr = Trainer(Config(**st["config"]), Path("/tmp/bnwd_precise_batches"), data=args.data, progress=False)
            tr.load_state(st)
            measure(tr, sizes, rows, t0)
    else:
        cfg = make_config(args.preset, {"bn_views": "all", "seed": 0})
        tr = Trainer(cfg, Path("/tmp/bnwd_precise_batches"), data=args.data, progress=False)
        points = [round(float(p) * tr.spe) for p in args.points.split(",")]
        while tr.step < max(points):
            tr.set_lr(tr.step)
            tr.train_step(tr.step)
            tr.step += 1
            if tr.step in points:
                measure(tr, sizes, rows, t0)
    print("\nmean |A - B| over the points, in points:")
    for n in sizes:
        d = [abs(r["half_a"] - r["half_b"]) for r in rows if r["N"] == n]
        print(f"  N={n:3d}: {100 * sum(d) / len(d):.2f}  (max {100 * max(d):.2f})")
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows}, indent=1))


@torch.no_grad()
def measure(tr: Trainer, sizes: list[int], rows: list[dict], t0: float) -> None:
    """At the trainer's current step: own accuracy, then the precise view from two disjoint
    stretches of its batch stream for each N."""
    own = tr.evaluate()[1]
    for n in sizes:
        tr.cfg.precise_batches = n
        a = tr.evaluate(tr.views.precise_model(tr.step))[1]
        b = tr.evaluate(tr.views.precise_model(tr.step + 10_000))[1]  # a disjoint stretch of the stream
        rows.append({"epoch": tr.step / tr.spe, "N": n, "own": own, "half_a": a, "half_b": b})
        print(
            f"epoch {tr.step / tr.spe:5.2f}  N={n:3d}  own {100 * own:5.2f}  precise A {100 * a:5.2f}  "
            f"B {100 * b:5.2f}  |A-B| {100 * abs(a - b):4.2f} points   ({time.time() - t0:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
