"""Tiny fake CIFAR-10 data for the tests (never the real dataset): learnable, byte-for-byte
deterministic, in the exact python layout, as an archive or as an extracted folder."""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import os
import pickle
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from bnwd.run import trainer as T
from bnwd.run.data import ARCHIVE_NAME, CLASSES, FOLDER_NAME, IMAGE_VALUES, TEST_FILE, TRAIN_FILES

# Fixed class colours (independent of the seed so train and test agree).
_PALETTE = np.random.default_rng(20180315).integers(30, 226, size=(10, 3))


def fake_batch(n: int, seed: int, name: str = "fake") -> dict:
    """One batch dict in the CIFAR layout (bytes keys) with ``n`` learnable images.

    Each class has a fixed mean colour; pixels are that colour plus noise, so
    a small net learns it quickly. Labels cycle through 0..9 in random order.
    """
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 10)
    noise = rng.normal(0.0, 40.0, size=(n, 3, 32 * 32))
    pix = _PALETTE[labels][:, :, None] + noise
    data = np.clip(np.rint(pix), 0, 255).astype(np.uint8).reshape(n, IMAGE_VALUES)
    return {
        b"batch_label": f"{name} (fake)".encode(),
        b"labels": [int(v) for v in labels],
        b"data": data,
        b"filenames": [f"fake_{name}_{i:05d}.png".encode() for i in range(n)],
    }


def fake_members(
    n_train: int = 100,
    n_test: int = 50,
    seed: int = 0,
    *,
    omit: tuple[str, ...] | list[str] = (),
    transform: Callable[[str, dict], object] | None = None,
    protocol: int = 4,
) -> list[tuple[str, bytes]]:
    """(member name, pickled bytes) of ``data_batch_1..5``, ``test_batch``, ``batches.meta``.

    ``n_train`` images are split as evenly as possible over the 5 training batches. For broken
    variants: ``omit`` leaves out the named members (e.g. ``("data_batch_3",)``);
    ``transform(name, batch_dict)`` returns the object to pickle for member ``name`` instead of
    ``batch_dict`` (anything, e.g. a dict with wrong shapes or a hostile object).
    """
    sizes = [len(a) for a in np.array_split(np.arange(n_train), len(TRAIN_FILES))]
    batches: list[tuple[str, object]] = [
        (name, fake_batch(size, seed * 7919 + i, name)) for i, (name, size) in enumerate(zip(TRAIN_FILES, sizes))
    ]
    batches.append((TEST_FILE, fake_batch(n_test, seed * 7919 + 5, TEST_FILE)))
    meta = {
        b"label_names": [c.encode() for c in CLASSES],
        b"num_cases_per_batch": max(sizes + [n_test]),
        b"num_vis": IMAGE_VALUES,
    }
    batches.append(("batches.meta", meta))
    return [
        (name, pickle.dumps(transform(name, obj) if transform is not None else obj, protocol=protocol))
        for name, obj in batches
        if name not in omit
    ]


def write_fake_cifar(dest: str | os.PathLike, n_train: int = 100, n_test: int = 50, seed: int = 0, **kw) -> Path:
    """Write a tiny CIFAR-10 archive (`fake_members`, same keywords); return its path.

    ``dest`` is a folder (the archive is written as ``dest/cifar-10-python.tar.gz``) or a path
    ending in ``.tar.gz``. The archive holds ``cifar-10-batches-py/`` and its members.
    """
    dest = Path(dest)
    path = dest if dest.name.endswith((".tar.gz", ".tgz")) else dest / ARCHIVE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)

    def add(tf: tarfile.TarFile, name: str, payload: bytes | None) -> None:
        info = tarfile.TarInfo(name)
        info.mtime = 0
        if payload is None:
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tf.addfile(info)
        else:
            info.size, info.mode = len(payload), 0o644
            tf.addfile(info, io.BytesIO(payload))

    tmp = path.with_name(path.name + ".tmp")
    with (
        open(tmp, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tf,
    ):
        add(tf, FOLDER_NAME, None)
        for name, payload in fake_members(n_train, n_test, seed, **kw):
            add(tf, f"{FOLDER_NAME}/{name}", payload)
    os.replace(tmp, path)
    return path


def write_fake_cifar_folder(dest: str | os.PathLike, n_train: int = 100, n_test: int = 50, seed: int = 0, **kw) -> Path:
    """The same data as `write_fake_cifar`, as an extracted ``dest/cifar-10-batches-py/``; returns it."""
    folder = Path(dest) / FOLDER_NAME
    folder.mkdir(parents=True, exist_ok=True)
    for name, payload in fake_members(n_train, n_test, seed, **kw):
        (folder / name).write_bytes(payload)
    return folder


def benchmark_script(name: str):
    """Import benchmarks/<name>.py as a module (the folder is no package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def die_once(spec, out, data, force=False):
    """A run whose first attempt kills its worker process outright (as the OOM killer or a crash in
    native code would): the marker file makes the second attempt train normally."""
    from bnwd.batch.engine import train_run

    marker = Path(out) / f"{spec.name}.died"
    if spec.name.endswith("s1") and not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("")
        os._exit(9)
    return train_run(spec, out, data, force)


def always_die(spec, out, data, force=False):
    """A run that kills its worker every time."""
    os._exit(9)


def metrics_rows(run: str | os.PathLike) -> list[dict]:
    """The rows of RUN/metrics.jsonl, as written (no line dropped)."""
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def crash_then_resume(cfg, out: str | os.PathLike, crash_step: int, **train_kw) -> int:
    """Train `cfg` into `out` until an exception at the start of step `crash_step` (after the
    metrics rows past the last checkpoint were written), then `train(..., resume=True)` to the end.
    Returns the step of the checkpoint the resumed leg started from (> 0: it did resume)."""
    out = Path(out)
    real = T.Trainer.train_step

    def crashing(self, step):
        if step == crash_step:
            raise RuntimeError("simulated crash")
        return real(self, step)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(T.Trainer, "train_step", crashing)
        with pytest.raises(RuntimeError, match="simulated crash"):
            T.train(cfg, out, progress=False, **train_kw)
    assert not (out / "summary.json").exists()
    resumed_from = int(T.load_checkpoint(out / "checkpoint.pt")["step"])
    T.train(cfg, out, resume=True, progress=False, **train_kw)
    return resumed_from
