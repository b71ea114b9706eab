"""What one seed of `bnwd reproduce --preset cpu` costs on this machine, and what fits a budget.

    python benchmarks/preset_budget.py --out docs/preset_budget.txt --json-out docs/preset_budget.json

Runs `bnwd bench --width 8 --threads 1` in one process per usable core, all at once (the way
`reproduce` trains on CPU), and takes the median over the processes of their training img/s
(Monitor on) and evaluation img/s. Then adds up one seed's work from the preset's own config:
per run, steps x batch / training rate + evaluations x test images / evaluation rate, where
`lr_scaled` evaluates twice per point (its bn098 view's statistics too). The sum over the three
trainings divided by the cores is the wall time with every core busy all the time: no schedule
of these runs, on this machine, at these rates, beats it. Last, the evaluation cadence
(`eval_every`, a multiple of `sample_every`) that would bring that bound under `--budget` minutes.

Pass `--walls RUNS` (a finished reproduce folder) to print the measured training time of each
run next to the model's, as a check of the model (runs trained with one thread side by side).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from bnwd.bench import cpu_model  # noqa: E402
from bnwd.config import make_config  # noqa: E402
from bnwd.sweep import usable_cores  # noqa: E402

N_TRAIN, N_TEST = 50_000, 10_000  # the cpu preset trains and tests on all of CIFAR-10


def bench_side_by_side(n: int, steps: int) -> list[dict]:
    cmd = [sys.executable, "-m", "bnwd", "bench", "--device", "cpu", "--width", "8", "--threads", "1"]
    cmd += ["--steps", str(steps), "--eval-batches", "5", "--json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)
    ]
    out = []
    for p in procs:
        so, se = p.communicate()
        if p.returncode:
            raise SystemExit(f"preset_budget: bnwd bench failed (exit {p.returncode}): {se.strip()[-400:]}")
        out.append(json.loads(so.strip().splitlines()[-1]))
    return out


def schedule(eval_every: float) -> dict:
    """Steps and evaluation points of one `cpu` run, as `train.Trainer` counts them."""
    cfg = make_config("cpu", {"eval_every": eval_every})
    spe = N_TRAIN // cfg.batch_size  # `TrainLoader` drops the last partial batch
    total = max(1, round(cfg.epochs * spe))
    sample = max(1, round(cfg.sample_every * spe))
    every = sample * max(1, round(cfg.eval_every / cfg.sample_every))
    evals = total // every + (total % every != 0)  # every `every` steps, and the last step
    return {"steps": total, "evals": evals, "batch": cfg.batch_size, "sample_every": cfg.sample_every}


def run_minutes(sch: dict, train_ips: float, eval_ips: float) -> dict[str, float]:
    """Minutes of one core per trained run: baseline, no_conv_l2, lr_scaled (two evaluations a point)."""
    train = sch["steps"] * sch["batch"] / train_ips / 60
    ev = sch["evals"] * N_TEST / eval_ips / 60
    return {"baseline": train + ev, "no_conv_l2": train + ev, "lr_scaled": train + 2 * ev, "_train": train, "_eval": ev}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30, help="timed steps per bench process (with and without Monitor)")
    ap.add_argument("--budget", type=float, default=30.0, help="minutes for one seed")
    ap.add_argument("--walls", default=None, help="a finished reproduce folder to compare with")
    ap.add_argument("--out", default=None, help="also write the printed lines here")
    ap.add_argument("--json-out", default=None, help="also write every number here")
    a = ap.parse_args(argv)
    cores = usable_cores()
    cmd = " ".join(["python benchmarks/preset_budget.py", *(sys.argv[1:] if argv is None else argv)])
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"`{cmd}` on {when}, {cpu_model()}, {cores} usable cores"]
    res = bench_side_by_side(cores, a.steps)
    tr = statistics.median(r["train_img_per_s"] for r in res)
    ev = statistics.median(r["eval_img_per_s"] for r in res)
    lines.append(
        f"{cores} x `bnwd bench --width 8 --threads 1` at once, medians: train {tr:.0f} img/s, eval {ev:.0f} img/s"
    )
    base = schedule(make_config("cpu").eval_every)
    m = run_minutes(base, tr, ev)
    lines.append(
        f"one run: {base['steps']} steps = {m['_train']:.1f} min; {base['evals']} evaluations of {N_TEST} images "
        f"= {m['_eval']:.1f} min (lr_scaled: twice that)"
    )
    total = sum(v for k, v in m.items() if not k.startswith("_"))
    bound = total / cores
    lines.append(f"one seed: {total:.1f} core-minutes; with every core busy: >= {bound:.1f} min")
    if a.walls:
        for d in sorted((Path(a.walls) / "runs").glob("*-s0")):
            s = d / "summary.json"
            v = d.name.rsplit("-s", 1)[0]
            if v in m and s.exists():
                got = json.loads(s.read_text())["wall_s"] / 60
                th = json.loads((d / "config.json").read_text()).get("threads", 0)
                if th != 1:  # the model is for one thread per core
                    lines.append(f"  {v:12s} measured {got:5.1f} min with {th or 'default'} threads: not comparable")
                    continue
                lines.append(
                    f"  {v:12s} model {m[v]:5.1f} min of one core, measured {got:5.1f} min with 1 thread ({d})"
                )
    cands = []
    k = 1
    while k * base["sample_every"] <= 6.9:
        e = k * base["sample_every"]
        sch = schedule(e)
        mm = run_minutes(sch, tr, ev)
        t = sum(v for kk, v in mm.items() if not kk.startswith("_")) / cores
        cands.append({"eval_every": e, "evals": sch["evals"], "bound_min": t})
        k += 1
    fit = next((c for c in cands if c["bound_min"] <= a.budget), None)
    for c in cands[:4]:
        lines.append(
            f"  eval_every={c['eval_every']:g}: {c['evals']:2d} evaluations per run, >= {c['bound_min']:.1f} min"
        )
    no_eval = m["_train"] * 3 / cores
    if fit:
        lines.append(
            f"under {a.budget:g} min needs eval_every >= {fit['eval_every']:g} ({fit['evals']} evaluations per run)"
        )
    else:
        lines.append(f"under {a.budget:g} min is out of reach at any cadence: training alone takes {no_eval:.1f} min")
    text = "\n".join(lines)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    if a.json_out:
        doc = {"command": cmd, "cores": cores, "bench": res, "train_img_per_s": tr, "eval_img_per_s": ev,
               "schedule": base, "run_minutes": m, "bound_min": bound, "cadences": cands}  # fmt: skip
        Path(a.json_out).write_text(json.dumps(doc, indent=1) + "\n")
    return 0 if math.isfinite(bound) else 1


if __name__ == "__main__":
    sys.exit(main())
