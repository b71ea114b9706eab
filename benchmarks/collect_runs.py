"""Copy finished runs' small files (config.json, metrics.jsonl, summary.json) into one folder,
so that a report can be regenerated from the repository alone:

    python benchmarks/collect_runs.py runs/cpu/runs runs/cpu1/runs --out docs/cpu/runs
    bnwd plot docs/cpu/runs --out docs/cpu

Unfinished runs (no summary.json) are listed and skipped; checkpoints stay behind.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

FILES = ("config.json", "metrics.jsonl", "summary.json")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sources", nargs="+", help="run folders, or folders holding them")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    runs = []
    for s in map(Path, args.sources):
        runs += [s] if (s / "config.json").exists() else sorted(p for p in s.iterdir() if (p / "config.json").exists())
    out = Path(args.out)
    for r in runs:
        if not (r / "summary.json").exists():
            print(f"skipped (unfinished): {r}", file=sys.stderr)
            continue
        (out / r.name).mkdir(parents=True, exist_ok=True)
        for f in FILES:
            shutil.copy2(r / f, out / r.name / f)
        print(f"{r} -> {out / r.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
