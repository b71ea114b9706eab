"""Same training, two versions of bnwd, side by side: the wall time of `bnwd train` before and after.

    python benchmarks/before_after.py --before 362d862 --data ../shared/data \\
        --preset cpu --variant baseline --set epochs=0.69 lr_milestones=0.23,0.46
    python benchmarks/before_after.py --before dc90f5c --data ../shared/data --reproduce \\
        --set epochs=0.69 lr_milestones=0.23,0.46    # one seed's whole reproduce, as each schedules it

Checks out `--before` (a git revision) into a temporary worktree, then runs `bnwd train` with the
same arguments from that tree and from this one, alternating (`--repeats` times each, before
first), each in its own process on the same machine. Prints each run's wall time (process start
to exit, data loading and evaluations included) and the training's own `wall_s` from
summary.json, min / median / max of each side, and the ratio of the medians (before / after,
so > 1 means faster now). Pass `--set` overrides to shrink the run: a fraction of the `cpu`
preset's epochs with its milestones scaled alike keeps its evaluation cadence per step.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from bnwd.bench import cpu_model  # noqa: E402


def run_once(src: Path, out: Path, a: argparse.Namespace) -> dict:
    what = ["reproduce", "--seed-list", "0"] if a.reproduce else ["train", "--variant", a.variant]
    cmd = [sys.executable, "-m", "bnwd", *what, "--preset", a.preset]
    cmd += ["--out", str(out), "--no-progress", "--device", "cpu"] + (
        ["--data", str(Path(a.data).resolve())] if a.data else []
    )
    cmd += a.set
    env = {**os.environ, "PYTHONPATH": str(src)}
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, cwd=src.parent, capture_output=True, text=True, timeout=a.timeout)
    wall = time.perf_counter() - t
    if p.returncode:
        raise SystemExit(f"before_after: `{' '.join(cmd)}` failed (exit {p.returncode}): {p.stderr.strip()[-500:]}")
    summ = json.loads((out / "summary.json").read_text())
    if a.reproduce:  # OUT/summary.json: one row per run; training time = the runs' summed wall_s,
        # without lr_scaled_bn098 (by default a view of lr_scaled's training)
        runs = [r for r in summ["runs"] if isinstance(r.get("wall_s"), (int, float))]
        if any(r["variant"] == "lr_scaled" for r in runs):  # the bn098 view repeats lr_scaled's wall_s
            runs = [r for r in runs if r["variant"] != "lr_scaled_bn098"]
        acc = {f"{r['variant']}": r["final_test_acc"] for r in summ["runs"]}
        return {"process_s": wall, "train_wall_s": sum(r["wall_s"] for r in runs), "test_acc": acc}
    return {"process_s": wall, "train_wall_s": summ.get("wall_s"), "test_acc": summ.get("final_test_acc")}


def stats(xs: list[float]) -> str:
    return f"{min(xs):7.1f} / {statistics.median(xs):7.1f} / {max(xs):7.1f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="git revision to compare against (e.g. a commit hash)")
    ap.add_argument("--data", default=None, help="CIFAR-10 folder")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--variant", default="baseline")
    ap.add_argument(
        "--reproduce",
        action="store_true",
        help="time `bnwd reproduce --seed-list 0` (all of one seed's runs, as each version schedules them) "
        "instead of one `bnwd train --variant`",
    )
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for both")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each, alternating")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    ap.add_argument("--out", default=None, help="also write the summary lines here (e.g. docs/before_after.txt)")
    ap.add_argument("--json-out", default=None, help="also write every number here")
    a = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bnwd_before_after_"))
    tree = tmp / "before"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), a.before], check=True)
    rev = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    now = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "src"], capture_output=True, text=True)
    names = {
        "before": f"{rev.stdout.strip()}",
        "after": now.stdout.strip() + (" + uncommitted" if dirty.stdout else ""),
    }
    res: dict[str, list[dict]] = {"before": [], "after": []}
    try:
        for i in range(a.repeats):
            for side, src in (("before", tree / "src"), ("after", ROOT / "src")):
                print(f"[{i + 1}/{a.repeats}] {side} ({names[side]}) ...", flush=True)
                r = run_once(src, tmp / f"{side}{i}", a)
                res[side].append(r)
                print(f"    {r['process_s']:.1f} s (training {r['train_wall_s']:.1f} s, test acc {r['test_acc']})")
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    cmd = " ".join(["python benchmarks/before_after.py", *(sys.argv[1:] if argv is None else argv)])
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"`{cmd}` on {when}, {cpu_model()}",
        (
            f"bnwd reproduce --preset {a.preset} --seed-list 0"
            if a.reproduce
            else f"bnwd train --preset {a.preset} --variant {a.variant}"
        )
        + f" {' '.join(a.set)}, {a.repeats} runs of each, alternating",
        f"{'':26s} process s min / median / max   training s min / median / max"
        + (" (summed over the trained runs)" if a.reproduce else ""),
    ]
    for side in ("before", "after"):
        p = [r["process_s"] for r in res[side]]
        w = [r["train_wall_s"] for r in res[side]]
        lines.append(f"{side + ' (' + names[side] + ')':26s} {stats(p)}     {stats(w)}")
    med = {s: statistics.median(r["process_s"] for r in res[s]) for s in res}
    lines.append(f"before / after, medians of process time: {med['before'] / med['after']:.2f}x")
    print("\n" + "\n".join(lines))
    if a.out:
        Path(a.out).write_text("\n".join(lines) + "\n")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps({"command": cmd, "revisions": names, "runs": res}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
