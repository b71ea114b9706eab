"""The suite's per-test timeout: a hung test fails by name, fast, instead of eating CI's time."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(60)
def test_a_sleeping_test_is_reported_as_timed_out_by_name(tmp_path):
    """Run pytest with this project's configuration on a test that sleeps 60 s, with the limit
    lowered to 2 s: it must end within seconds, name the test and dump its stack."""
    (tmp_path / "test_sleeper.py").write_text("import time\n\ndef test_sleeps_forever():\n    time.sleep(60)\n")
    t = time.monotonic()
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-c",
            str(ROOT / "pyproject.toml"),
            "--rootdir",
            str(tmp_path),
            "-p",
            "no:cacheprovider",
            "-o",
            "timeout=2",
            str(tmp_path / "test_sleeper.py"),
        ],
        capture_output=True,
        text=True,
        timeout=50,
    )
    elapsed = time.monotonic() - t
    out = p.stdout + p.stderr
    assert p.returncode != 0
    assert elapsed < 30
    assert "Timeout" in out and "test_sleeps_forever" in out
    assert "time.sleep(60)" in out  # the stack dump points at the stuck line
