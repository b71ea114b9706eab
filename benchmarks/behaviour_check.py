"""Behaviour fingerprint: a smoke `reproduce` (every variant, exact and Adam included) and a
smoke `sweep`, their metrics reduced to one JSON of numbers, so that two checkouts can be
compared file by file.

    python benchmarks/behaviour_check.py run  --out /tmp/before --data ../shared/data
    python benchmarks/behaviour_check.py diff /tmp/before/fingerprint.json /tmp/after/fingerprint.json

Run each side with the same interpreter and thread count: the runs are deterministic on one
machine (CPU, one thread per run), so any difference is a change in behaviour. Wall times,
throughputs, memory and paths are left out of the fingerprint; every other number in every
`metrics.jsonl`, run `summary.json`, `claims.json` and the sweep's `summary.json` is kept.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

# Keys that measure the machine, not the training.
VOLATILE = (
    "wall",
    "time",
    "_s",
    "img_per_s",
    "rss",
    "throughput",
    "date",
    "host",
    "path",
    "out",
    "reference",
    "view_of",
)


def volatile(key: str) -> bool:
    k = key.lower()
    return any(k.endswith(v) or v in k.split("_") or k.startswith(v) for v in VOLATILE)


def clean(x):
    if isinstance(x, dict):
        return {k: clean(v) for k, v in sorted(x.items()) if not volatile(str(k))}
    if isinstance(x, list):
        return [clean(v) for v in x]
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    return x


def fingerprint(root: Path) -> dict:
    out = {}
    for f in sorted(root.rglob("*")):
        rel = str(f.relative_to(root))
        if f.name == "metrics.jsonl":
            out[rel] = [clean(json.loads(line)) for line in f.read_text().splitlines() if line.strip()]
        elif f.name in ("summary.json", "claims.json", "config.json"):
            out[rel] = clean(json.loads(f.read_text()))
    return out


def bnwd(*args: str) -> None:
    cmd = [sys.executable, "-m", "bnwd", *args, "--no-progress"]
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def run(out: Path, data: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    common = ["--preset", "smoke", "--data", data, "--jobs", "1", "--device", "cpu"]
    bnwd("reproduce", *common, "--seeds", "2", "--exact", "--out", str(out / "reproduce"))
    bnwd("reproduce", *common, "--seeds", "1", "--optimizer", "adam", "--out", str(out / "adam"))
    bnwd("sweep", *common, "--grid", "lr=0.05,0.1", "weight_decay=0.001,0.005", "--out", str(out / "sweep"))
    fp = fingerprint(out)
    (out / "fingerprint.json").write_text(json.dumps(fp, indent=1, sort_keys=True))
    print(
        f"{len(fp)} files, {sum(len(v) if isinstance(v, list) else 1 for v in fp.values())} records -> {out / 'fingerprint.json'}"
    )


def diff(a: Path, b: Path) -> int:
    fa, fb = json.loads(a.read_text()), json.loads(b.read_text())
    bad = 0
    for name in sorted(set(fa) | set(fb)):
        if name not in fa or name not in fb:
            print(f"only in {'after' if name in fb else 'before'}: {name}")
            bad += 1
        elif fa[name] != fb[name]:
            print(f"differs: {name}")
            bad += 1
    print(f"{len(set(fa) & set(fb))} files compared, {bad} differ" + ("" if bad else ": identical"))
    return 1 if bad else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--data", default=os.environ.get("BNWD_DATA", "../shared/data"))
    d = sub.add_parser("diff")
    d.add_argument("a", type=Path)
    d.add_argument("b", type=Path)
    a = p.parse_args()
    if a.cmd == "run":
        run(a.out, a.data)
        return 0
    return diff(a.a, a.b)


if __name__ == "__main__":
    sys.exit(main())
