"""The run directory: the one owner of its files (`RunDir`), and the file helpers under it.

RUN/config.json     the resolved config (written once, when the run starts)
RUN/metrics.jsonl   one JSON object per sample point
RUN/summary.json    written atomically when the run finishes
RUN/checkpoint.pt   model, optimizer, monitor, step, config; written atomically
RUN/failed.txt      why the run failed, when a pool gave up on it (removed when it starts again)

A batch of runs keeps each in OUT/runs/<name> (`RunDir.of(out, name)`).

`RunDir` API (paths: `.path .config .metrics .summary .ckpt .failed`):

    RunDir.of(out, name)          OUT/runs/<name>;  RunDir(path) for any folder
    rd.prepare(cfg, resume, force) -> "new" | "resume" | "done"   (never clobbers silently)
    rd.write_config(doc)          config.json, atomically (once per run)
    rd.read_config() / rd.read_summary() / rd.rows()              read back
    rd.write_summary(summary)     summary.json, atomically (NaN -> null)
    rd.finished                   summary.json exists
    rd.mark_failed(why) / rd.clear_failed() / rd.failed_reason() -> str | None

The module-level names (CONFIG, METRICS, SUMMARY, CKPT, FAILED, atomic_write, read_metrics,
write_metrics, save_checkpoint, load_checkpoint, read_json, jsonable, plateau, peak_rss_mb,
check_out_dir) stay for code that works with single files.
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
from bnwd.run import config as C

CONFIG, METRICS, SUMMARY, CKPT = "config.json", "metrics.jsonl", "summary.json", "checkpoint.pt"
FAILED = "failed.txt"
RUNS = "runs"  # OUT/runs/<name>: the runs of a batch (reproduce, sweep)


class RunDir:
    """One run's folder: its file names, the new/resume/done/force decision, config.json,
    summary.json and the failed marker (module docstring for the API)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config, self.metrics, self.summary = self.path / CONFIG, self.path / METRICS, self.path / SUMMARY
        self.ckpt, self.failed = self.path / CKPT, self.path / FAILED

    @classmethod
    def of(cls, out: str | Path, name: str) -> RunDir:
        return cls(Path(out) / RUNS / name)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def finished(self) -> bool:
        return self.summary.exists()

    def prepare(self, cfg: C.Config, resume: bool, force: bool) -> str:
        """Decide what to do with the folder: 'new', 'resume' or 'done'. Never clobbers silently:
        another config, or this one without `resume`, is refused unless `force` (which deletes
        the run's files). 'new' creates the folder; `trainer.train` writes config.json once the
        run is built (it records what the data gave)."""
        out = self.path
        if self.config.exists():
            try:
                old = C.load_config(self.config)
            except (ValueError, BnwdError, TypeError):
                if not force:
                    raise ConfigError(f"{self.config} is unreadable; use --force to start the run over") from None
                old = None
            differences = C.diff(old, cfg) if old is not None else ["unreadable config"]
            if force:
                for p in (self.metrics, self.summary, self.ckpt, self.config):
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()
            elif differences:
                raise ConfigError(
                    f"{out} holds a run with another config ({'; '.join(differences[:4])}); "
                    "choose another --out or pass --force to overwrite it"
                )
            elif self.finished:
                if resume:
                    return "done"
                raise ConfigError(
                    f"{out} already holds this finished run; pass --resume to keep it or --force to redo it"
                )
            elif not resume:
                raise ConfigError(
                    f"{out} holds an unfinished run with this config; pass --resume to continue it or --force to restart"
                )
            else:
                return "resume"
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BnwdError(f"cannot create run directory {out}: {e.strerror or e}") from None
        return "new"

    def write_config(self, doc: dict) -> None:
        atomic_write(self.config, json.dumps(doc, indent=1))

    def read_config(self) -> dict:
        return read_json(self.config)

    def write_summary(self, summary: dict) -> None:
        atomic_write(self.summary, json.dumps(jsonable(summary), indent=1))

    def read_summary(self) -> dict:
        return read_json(self.summary)

    def rows(self) -> list[dict]:
        return read_metrics(self.metrics)

    def mark_failed(self, why: str) -> None:
        """The marker a pool writes when it gives up on the run (readers waiting on it stop)."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write(self.failed, why.rstrip("\n") + "\n")

    def clear_failed(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.failed.unlink()

    def failed_reason(self) -> str | None:
        try:
            return self.failed.read_text().strip()
        except FileNotFoundError:
            return None


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
