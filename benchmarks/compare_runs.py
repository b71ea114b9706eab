"""Compare the metrics of two `bnwd reproduce` outputs run for run: same keys, and the largest
relative difference per metric family (the part of the key before the first '/').

    git worktree add /tmp/before REV
    PYTHONPATH=/tmp/before/src python -m bnwd reproduce --preset smoke --data D --out /tmp/a threads=1
    PYTHONPATH=src python -m bnwd reproduce --preset smoke --data D --out /tmp/b threads=1
    python benchmarks/compare_runs.py /tmp/a /tmp/b

Exit status 1 when the runs, their sample points or their keys differ.
"""

import json
import math
import sys
from pathlib import Path


def main(a: str, b: str) -> int:
    worst: dict[str, float] = {}
    runs = sorted(p.name for p in (Path(a) / "runs").iterdir())
    if runs != sorted(p.name for p in (Path(b) / "runs").iterdir()):
        print("the two outputs hold different runs")
        return 1
    for run in runs:
        ra = [json.loads(x) for x in (Path(a) / "runs" / run / "metrics.jsonl").read_text().splitlines()]
        rb = [json.loads(x) for x in (Path(b) / "runs" / run / "metrics.jsonl").read_text().splitlines()]
        if len(ra) != len(rb) or [r.keys() for r in ra] != [r.keys() for r in rb]:
            print(f"{run}: different sample points or keys")
            return 1
        for x, y in zip(ra, rb):
            for k, u in x.items():
                v = y[k]
                fam = k.split("/")[0]
                if isinstance(u, float) and not (math.isnan(u) and math.isnan(v)):
                    worst[fam] = max(worst.get(fam, 0.0), abs(u - v) / max(abs(u), 1e-300))
                elif u != v:
                    worst[fam] = math.inf
    print(f"{len(runs)} runs, same sample points and keys; largest relative difference per metric family:")
    for k, v in sorted(worst.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {k:24s} {'identical' if v == 0 else f'{v:.2e}'}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
