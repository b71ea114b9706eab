"""`RunDir`, the one owner of a run folder, and the device module's compile fallback: no training."""

import json
import os

import pytest
import torch

from bnwd.errors import BnwdError, ConfigError
from bnwd.run import rundir as R
from bnwd.run.config import make_config
from bnwd.run.device import Forward
from bnwd.run.rundir import RunDir


def test_layout_of_a_batch_of_runs(tmp_path):
    """OUT/runs/<name>, with the file names every reader uses."""
    rd = RunDir.of(tmp_path, "baseline-s0")
    assert rd.path == tmp_path / "runs" / "baseline-s0"
    assert (rd.config.name, rd.metrics.name, rd.summary.name, rd.ckpt.name, rd.failed.name) == (
        R.CONFIG,
        R.METRICS,
        R.SUMMARY,
        R.CKPT,
        R.FAILED,
    )


def test_prepare_new_resume_done_force(tmp_path):
    """An empty folder is new; with this config's config.json it is resumed (--resume) or refused;
    with a summary it is done; another config is refused naming the difference, unless force,
    which deletes the run's files."""
    cfg, rd = make_config("smoke"), RunDir(tmp_path / "r")
    assert rd.prepare(cfg, resume=False, force=False) == "new" and rd.path.is_dir()
    rd.write_config(cfg.to_dict())
    with pytest.raises(ConfigError, match="--resume"):
        rd.prepare(cfg, resume=False, force=False)
    assert rd.prepare(cfg, resume=True, force=False) == "resume"
    rd.write_summary({"finished": True})
    assert rd.prepare(cfg, resume=True, force=False) == "done" and rd.read_summary() == {"finished": True}
    other = make_config("smoke", {"lr": 0.05})
    with pytest.raises(ConfigError, match="lr: 0.1 -> 0.05"):
        rd.prepare(other, resume=True, force=False)
    rd.metrics.write_text("{}\n")
    assert rd.prepare(other, resume=False, force=True) == "new"
    assert not any(p.exists() for p in (rd.config, rd.metrics, rd.summary))


def test_failed_marker(tmp_path):
    """mark_failed writes the reason (creating the folder), failed_reason reads it, clear_failed removes it."""
    rd = RunDir.of(tmp_path, "x")
    assert rd.failed_reason() is None
    rd.mark_failed("worker died (exit -9)")
    assert rd.failed_reason() == "worker died (exit -9)"
    rd.clear_failed()
    rd.clear_failed()  # twice is fine
    assert rd.failed_reason() is None


def test_summary_is_written_atomically_with_nan_as_null(tmp_path, monkeypatch):
    """summary.json goes through a temp file and a rename (NaN -> null); a failed write leaves
    the previous summary whole."""
    rd = RunDir(tmp_path)
    rd.write_summary({"acc": float("nan"), "n": 1})
    assert json.loads(rd.summary.read_text()) == {"acc": None, "n": 1}

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(BnwdError, match="No space left"):
        rd.write_summary({"n": 2})
    assert json.loads(rd.summary.read_text()) == {"acc": None, "n": 1}


def test_compile_fallback_never_swallows_bnwd_errors():
    """compile=auto: a compile error of the forward falls back to eager (once, with a warning); a
    bnwd error (deterministic: a ConfigError of a hook, a DivergenceError) propagates unchanged."""
    model = torch.nn.Linear(2, 2)
    fwd = Forward(model, make_config("smoke", {"compile": "off"}), torch.device("cpu"))
    assert not fwd.compiled

    def broken(x):
        raise RuntimeError("inductor: simulated")

    def config_error(f):
        raise ConfigError("deterministic")

    fwd.fn, fwd.fallback = broken, True
    with pytest.raises(ConfigError, match="deterministic"):
        fwd.run(config_error)
    assert fwd.fn is broken and fwd.fallback  # not taken for a compile error
    with pytest.warns(UserWarning, match="simulated"):
        y = fwd(torch.ones(1, 2))
    assert fwd.fn is model and not fwd.fallback and torch.equal(y, model(torch.ones(1, 2)))
