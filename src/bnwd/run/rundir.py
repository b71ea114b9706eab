"""The run directory, the one owner of its files, and runs read back for plots and reports.

RUN/config.json     the resolved config
RUN/metrics.jsonl   one JSON object per sample point
RUN/summary.json    written when the run finishes
RUN/checkpoint.pt   model, optimizer, monitor, step, config; written atomically
RUN/failed.txt      why the run failed, when a pool gave up on it (removed when it starts again)

Several runs of one variant (seeds) aggregate to mean +- std curves (`aggregate`).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

from bnwd.errors import BnwdError, CheckpointError, ConfigError

CONFIG, METRICS, SUMMARY, CKPT = "config.json", "metrics.jsonl", "summary.json", "checkpoint.pt"
FAILED = "failed.txt"


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write to a temp file, fsync, rename: a crash leaves the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise BnwdError(
            f"could not write {path}: {e.strerror or e}; the previous version of the file is intact"
        ) from None


def check_out_dir(path: str | Path, flag: str = "--out") -> None:
    """Refuse an output folder that cannot be one (an existing file, or a file where a parent
    folder should be) before anything starts or is written: one ConfigError line."""
    p = Path(path)
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                what = "is a file" if q == p else f"cannot be created: {q} is a file"
                raise ConfigError(f"{flag} {p} {what}; {flag} names a folder")
            return


def _fsync_dir(d: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_checkpoint(path: Path, state: dict) -> None:

    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, buf.getvalue())


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or tampered file: zip, pickle or unsupported-global errors
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path} is corrupt or not a bnwd checkpoint ({msg[:160]}); delete it or rerun with --force"
        ) from None


def read_metrics(path: Path) -> list[dict]:
    """The rows of metrics.jsonl. The one rule for a bad line: the last line may be half-written
    (the run was killed mid-write) and is dropped; a bad line before it means the file is corrupt."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise BnwdError(f"{path}: cannot read ({type(e).__name__})") from None
    out = []
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise BnwdError(f"{path}: line {i + 1} is not JSON; the file is corrupt") from None
        if not isinstance(row, dict):
            raise BnwdError(f"{path}: line {i + 1} is not a JSON object; the file is corrupt")
        out.append(row)
    return out


def write_metrics(path: Path, rows: list[dict]) -> None:
    atomic_write(path, "".join(json.dumps(jsonable(r)) + "\n" for r in rows))


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (`ru_maxrss`; NaN where unavailable)."""
    try:
        import resource
    except ImportError:  # Windows
        return math.nan
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024  # bytes on macOS, KiB on Linux


def jsonable(x):
    """Non-finite floats -> None (JSON has no NaN), through dicts, lists and tuples."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    return x


def read_json(path: Path) -> dict:
    return _read_json(Path(path), Path(path).name)


def _read_json(p: Path, what: str) -> dict:
    try:
        d = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BnwdError(f"{p}: cannot read {what} ({type(e).__name__})") from None
    if not isinstance(d, dict):
        raise BnwdError(f"{p}: {what} is not a JSON object")
    return d


def plateau(rows: list[dict], milestones: list, epochs: float, key: str = "test_acc") -> float:
    """A run's final accuracy: the mean of `key` over the evaluations in the second half of the
    last lr stage (the plateau), not one evaluation (10,000 test images give one evaluation a
    binomial error of ~0.45 points; neighbouring evaluations at a tiny lr differ by less)."""
    drops = [float(m) for m in milestones if 0 < float(m) < epochs]
    start = (max(drops) + epochs) / 2 if drops else epochs / 2
    vals = [r[key] for r in rows if key in r and r["epoch"] >= start - 1e-9]
    if not vals:
        vals = [[r[key] for r in rows if key in r][-1]]
    return float(np.mean(vals))
