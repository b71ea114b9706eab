"""S_ref(epoch), the baseline's conv norms that lr_scaled follows, read from the article's fit
or from another run's files, while that run may still be training (`ReferenceNorms`)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from bnwd.errors import BnwdError, ConfigError
from bnwd.nn.optim import article_epoch, article_piecewise
from bnwd.run import config as C
from bnwd.run.rundir import RunDir


class ReferenceNorms:
    """S_ref(epoch): the baseline's sum of squared conv weights, globally or per conv layer.

    `article`: S(0) / p(article_epoch(epoch)), the article's piecewise fit with its lr stages
    mapped onto the run's; `reference`: interpolated from a baseline run's metrics. The baseline
    may still be training when `cfg.reference_wait` > 0 (`reproduce` runs lr_scaled beside it):
    S_ref between two sample points needs the later one, so `at` waits until the baseline has
    written it. The rows read are the rows a finished baseline holds, so the factor is the same.
    """

    POLL_S = 0.2  # s between looks at an unfinished reference

    def __init__(self, mode: str, cfg: C.Config, s0: float, names: list[str]):
        self.mode, self.cfg, self.s0, self.names = mode, cfg, s0, names
        self.per_layer = mode == "reference" and cfg.reference_mode == "layer"
        self.finished = True
        if mode == "reference":
            self.run = Path(cfg.reference)
            self.rd = RunDir(self.run)
            self.finished = self.rd.finished
            if not self.finished and not cfg.reference_wait:
                raise ConfigError(
                    f"reference={self.run} is not a finished baseline run (needs metrics.jsonl and summary.json)"
                )
            self._wait(self._load, "while lr_scaled waited for its start")

    def _load(self) -> bool:
        """Read the reference's rows; False while an unfinished one has not written its start."""
        rd, run = self.rd, self.run
        self.finished = rd.finished
        if self.finished and not rd.metrics.exists():
            raise ConfigError(f"reference={run} is not a finished baseline run (needs metrics.jsonl and summary.json)")
        if not rd.config.exists():
            if self.finished:
                raise ConfigError(f"reference={run} has no config.json; it is not a run directory")
            return False
        doc = rd.read_config()
        if doc.get("variant") != "baseline":
            raise ConfigError(f"reference={run} is a {doc.get('variant')!r} run; it must be a baseline run")
        # S(0): in summary.json, and in config.json from a run's start on (older runs: summary only)
        init = rd.read_summary() if self.finished else doc
        if "initial_conv_sqsum" not in init and not self.finished:
            return False
        rows = rd.rows()
        if not rows:
            if self.finished:
                raise ConfigError(f"reference={run} has an empty metrics.jsonl")
            return False
        # Sample points sit at the ends of windows; epoch 0 is the reference's initial norm.
        self.epoch = np.array([0.0] + [r["epoch"] for r in rows])
        if self.per_layer:
            missing = [n for n in self.names if f"sqnorm/conv/{n}" not in rows[0]]
            if missing:
                raise ConfigError(
                    f"reference={run} has no per-layer norms for {missing[0]} "
                    "(was it trained with log_layers=false or another model?)"
                )
            first = [init.get("initial_layer_sqnorm", {}).get(n, rows[0][f"sqnorm/conv/{n}"]) for n in self.names]
            self.ref = np.array([first] + [[r[f"sqnorm/conv/{n}"] for n in self.names] for r in rows])
        else:
            s0 = init.get("initial_conv_sqsum") or rows[0]["conv_sqsum"]
            self.ref = np.array([s0] + [r["conv_sqsum"] for r in rows])
        return True

    def _wait(self, ready, what: str, stopped=None) -> bool:
        """Poll `ready()` until true (True), or until `stopped()` (False). Gives up when the
        reference is marked failed (`rundir.FAILED`, written by the pool that ran it) or its files
        stay unchanged for `reference_wait` s."""
        last, since = None, time.monotonic()
        while not ready():
            if stopped is not None and stopped():
                return False
            why = self.rd.failed_reason()
            if why is not None:
                raise BnwdError(f"reference={self.run} failed ({why}); lr_scaled cannot go on without it")
            stamp = [_stamp(self.rd.config), _stamp(self.rd.metrics)]
            if stamp != last:
                last, since = stamp, time.monotonic()
            elif time.monotonic() - since > self.cfg.reference_wait:
                raise BnwdError(
                    f"reference={self.run} is not finished and wrote nothing for {self.cfg.reference_wait:g} s "
                    f"{what}; is it still training? (reference_wait= sets how long to wait)"
                )
            time.sleep(self.POLL_S)
        return True

    def wait_for(self, epoch: float, stopped=None) -> bool:
        """Wait until `at(epoch)` can be answered: True, or False if `stopped()` came first (the
        trainer calls this between steps, so that a stop while waiting checkpoints a whole step)."""
        if self.mode == "article" or self.finished or epoch <= self.epoch[-1]:
            return True
        has = lambda: self._load() and (self.finished or self.epoch[-1] >= epoch)  # noqa: E731
        return self._wait(has, f"while lr_scaled waited for epoch {epoch:.3f}", stopped)

    def at(self, epoch: float) -> np.ndarray | float:
        if self.mode == "article":
            cfg = self.cfg
            return self.s0 / article_piecewise(article_epoch(epoch, cfg.lr_milestones, cfg.epochs))
        self.wait_for(epoch)
        if self.per_layer:
            return np.array([np.interp(epoch, self.epoch, self.ref[:, i]) for i in range(self.ref.shape[1])])
        return float(np.interp(epoch, self.epoch, self.ref))


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size
