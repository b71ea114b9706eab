"""Wall time of finished runs: each run's training time, and the span of the whole batch.

    python benchmarks/run_walls.py runs/cpu_after            # a reproduce folder (or its runs/)

Prints one line per run (variant, seed, steps, training wall time from summary.json, img/s; a
resumed run's summary times only its last part, said so and left out of the sums) and the span from the first run's config.json being written to the last summary.json: the wall time
of the `bnwd reproduce` that made them, less data loading before the first run and the figures
and report after the last. The first line names the command, date and CPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from bnwd.bench import cpu_model  # noqa: E402
from bnwd.experiments import find_runs  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", help="run directories or folders of them")
    a = ap.parse_args(argv)
    cmd = " ".join(["python benchmarks/run_walls.py", *(sys.argv[1:] if argv is None else argv)])
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"`{cmd}` on {when}, {cpu_model()}")
    starts, ends, total = [], [], 0.0
    for d in find_runs([Path(p) for p in a.paths]):
        sp = d / "summary.json"
        if not sp.exists():
            print(f"{d.name:28s} not finished")
            continue
        s, c = json.loads(sp.read_text()), json.loads((d / "config.json").read_text())
        cfg = c.get("config", c)
        wall = s.get("wall_s")
        if s.get("view_of") or not isinstance(wall, (int, float)):
            print(f"{d.name:28s} no training of its own (a view of {s.get('view_of')})")
            continue
        steps, ips, b = s["steps"], s["images_per_s"], cfg["batch_size"]
        done = round(ips * wall / b)  # steps trained in the session that finished the run
        part = "" if done >= steps else f" (resumed at step {steps - done}: the last {done} steps only)"
        rss = f", peak RSS {s['peak_rss_mb']:.0f} MB" if isinstance(s.get("peak_rss_mb"), (int, float)) else ""
        th = f"{cfg['threads']} thread{'s' * (cfg['threads'] != 1)}" if cfg.get("threads") else "default threads"
        print(
            f"{d.name:28s} width {cfg['width']}, {steps} steps, {th}: {wall / 60:6.1f} min, {ips:5.0f} img/s{rss}{part}"
        )
        if done < steps:
            continue
        total += wall
        starts.append((d / "config.json").stat().st_mtime)
        ends.append(sp.stat().st_mtime)
    if starts:
        print(
            f"sum of training times: {total / 60:.1f} min; span first config -> last summary: {(max(ends) - min(starts)) / 60:.1f} min"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
