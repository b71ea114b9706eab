"""Two trainings, four ways on this machine: one after the other or side by side, eager or compiled.

    python benchmarks/schedules.py --data ../shared/data --out docs/parallel_cpu.txt \\
        --set epochs=0.69 lr_milestones=0.23,0.46

Runs `bnwd train --preset cpu` for `--variants` (default baseline and no_conv_l2, the first wave
of `bnwd reproduce --preset cpu`) in each configuration, in this order:
  serial    one after the other, each with all usable cores as torch threads;
  parallel  side by side, the cores split between them (`reproduce --jobs auto`'s way);
each eager (`compile=off`) and compiled (`compile=on`). The compiled ones share one inductor cache,
empty at the start: the first compiled configuration pays the cold compile, the second finds the
cache warm, as the later runs of one `reproduce` do. Prints each configuration's wall time (first
process start to last exit), the runs' test accuracies, and the ratios to `serial eager`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from bnwd.bench import cpu_model  # noqa: E402
from bnwd.sweep import usable_cores  # noqa: E402


def launch(variant: str, out: Path, threads: int, compile_: str, a, env) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "bnwd", "train", "--preset", "cpu", "--variant", variant, "--out", str(out)]
    cmd += ["--no-progress", "--device", "cpu"] + (["--data", str(Path(a.data).resolve())] if a.data else [])
    cmd += [*a.set, f"threads={threads}", f"compile={compile_}"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def run_config(name: str, side_by_side: bool, compile_: str, tmp: Path, a, env) -> dict:
    cores = usable_cores()
    threads = max(1, cores // len(a.variants)) if side_by_side else cores
    t0 = time.perf_counter()
    procs = []
    for v in a.variants:
        p = launch(v, tmp / name / v, threads, compile_, a, env)
        if not side_by_side:
            p.wait()
        procs.append(p)
    for p, v in zip(procs, a.variants):
        err = p.communicate()[1]
        if p.returncode:
            raise SystemExit(f"schedules: {name} {v} failed (exit {p.returncode}): {err.strip()[-500:]}")
    wall = time.perf_counter() - t0
    acc = {v: json.loads((tmp / name / v / "summary.json").read_text())["final_test_acc"] for v in a.variants}
    print(f"  {name}: {wall:.1f} s, test acc {acc}", flush=True)
    return {"wall_s": wall, "threads_per_run": threads, "test_acc": acc}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="CIFAR-10 folder")
    ap.add_argument("--variants", default="baseline,no_conv_l2", help="comma-separated, trained together")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every run")
    ap.add_argument("--out", default=None, help="also write the summary lines here")
    ap.add_argument("--json-out", default=None, help="also write every number here")
    a = ap.parse_args(argv)
    a.variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    with tempfile.TemporaryDirectory(prefix="bnwd_schedules_") as td:
        tmp = Path(td)
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TORCHINDUCTOR_CACHE_DIR": str(tmp / "inductor")}
        res = {}
        for name, side, comp in (
            ("serial eager", False, "off"),
            ("parallel eager", True, "off"),
            ("parallel compiled (cold cache)", True, "on"),
            ("serial compiled (warm cache)", False, "on"),
        ):
            print(f"{name} ...", flush=True)
            res[name] = run_config(name, side, comp, tmp, a, env)
    cmd = " ".join(["python benchmarks/schedules.py", *(sys.argv[1:] if argv is None else argv)])
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    base = res["serial eager"]["wall_s"]
    lines = [
        f"`{cmd}` on {when}, {cpu_model()}, {usable_cores()} usable cores",
        f"bnwd train --preset cpu {' '.join(a.set)} for {', '.join(a.variants)}",
        f"{'configuration':32s} {'wall s':>8s} {'threads/run':>11s} {'vs serial eager':>16s}",
    ]
    for name, r in res.items():
        lines.append(f"{name:32s} {r['wall_s']:8.1f} {r['threads_per_run']:11d} {base / r['wall_s']:15.2f}x")
    print("\n" + "\n".join(lines))
    if a.out:
        Path(a.out).write_text("\n".join(lines) + "\n")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps({"command": cmd, "results": res}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
