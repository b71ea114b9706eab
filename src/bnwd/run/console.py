"""What a run shows and hears: the progress bar, TensorBoard, SIGINT / SIGTERM."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable
from pathlib import Path

from bnwd.errors import ConfigError


class Progress:
    """The tqdm bar of a run (nothing when `on` is false): a tick per step, and at sample points
    the train loss, the images per second since `start` and the last test accuracy."""

    def __init__(self, on: bool, desc: str, total: int, start: int, batch_size: int):
        self.bar, self.start, self.batch_size, self.t0 = None, start, batch_size, time.time()
        if on:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, desc=desc, leave=True)

    def tick(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def show(self, row: dict) -> None:
        if self.bar is None:
            return
        post = {"loss": f"{row['train_loss']:.3f}"}
        steps = row["step"] - self.start
        post["img/s"] = f"{steps * self.batch_size / max(time.time() - self.t0, 1e-9):.0f}"
        if "test_acc" in row:
            post["test"] = f"{100 * row['test_acc']:.1f}%"
        self.bar.set_postfix(post, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class TensorBoard:
    """Every number of a metrics row as a scalar under RUN/tb (tensorboard=true), from `step` on."""

    def __init__(self, on: bool, folder: Path, step: int):
        self.writer = None
        if not on:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("tensorboard=true needs the tensorboard extra: pip install 'bnwd[tensorboard]'") from None
        self.writer = SummaryWriter(str(folder), purge_step=step)

    def log(self, row: dict) -> None:
        if self.writer is None:
            return
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)) and v is not None:
                self.writer.add_scalar(k, v, row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@contextlib.contextmanager
def caught_signals(handler: Callable[[str], None]):
    """SIGINT and SIGTERM call `handler(name)` instead of stopping the process (main thread only;
    elsewhere nothing changes); the previous handlers come back on exit."""
    old = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, lambda signum, frame: handler(signal.Signals(signum).name))
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
