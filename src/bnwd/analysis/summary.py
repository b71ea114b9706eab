"""The one writer of OUT/summary.json and OUT/summary.csv (reproduce's per-variant summary and a
sweep's per-run one), each file written atomically (`rundir.atomic_write`)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from bnwd.run.rundir import SUMMARY, atomic_write, jsonable

SUMMARY_CSV = "summary.csv"


def write_summary_files(
    out_dir: str | Path, doc: dict, table: list[list], *, lineterminator: str = "\r\n", end: str = ""
) -> list[Path]:
    """OUT/summary.json: `doc` (NaN -> null, indent 1, then `end`); OUT/summary.csv: the rows of
    `table`, header first, cells as given (csv quoting, lines ended by `lineterminator`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    csv.writer(buf, lineterminator=lineterminator).writerows(table)
    atomic_write(out / SUMMARY_CSV, buf.getvalue())
    atomic_write(out / SUMMARY, json.dumps(jsonable(doc), indent=1) + end)
    return [out / SUMMARY_CSV, out / SUMMARY]
