"""CIFAR-10 loading, augmentation and deterministic batching (airbench style).

The whole dataset is held as uint8 tensors ``[N, 3, 32, 32]`` and augmented with
batched tensor ops on whatever device the tensors live on.

Where the data comes from (see :func:`load_cifar10`): a folder (``--data DIR``,
env ``BNWD_DATA``, default ``~/.cache/bnwd``) holding either the extracted
``cifar-10-batches-py/`` or the archive ``cifar-10-python.tar.gz``. The archive
is read in memory, never extracted, so read-only folders work and nothing in it
is ever written to disk: only the regular-file members ``cifar-10-batches-py/<batch>``
are read (other members, e.g. ones with ``..`` or an absolute path, are skipped; a
batch member that is a link or a device is refused). When neither is
present the official archive is downloaded (and only that download is
md5-checked: archives a user placed themselves may be re-packed copies).

The batch pickles are read with a restricted unpickler that only resolves the
numpy globals a CIFAR batch needs, so a hostile pickle cannot run code.

Training batches are a pure function of ``(seed, step)`` (:class:`TrainLoader`),
so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import math
import os
import pickle
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from bnwd.errors import ConfigError, DataError

__all__ = [
    "ARCHIVE_NAME",
    "BATCH_FILES",
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "CLASSES",
    "FOLDER_NAME",
    "Cifar10",
    "TrainLoader",
    "augment",
    "augment_params",
    "clear_cache",
    "crop_flip",
    "default_root",
    "load_cifar10",
    "resolve_root",
    "standardize",
    "test_batches",
]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
FOLDER_NAME = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
BATCH_FILES = TRAIN_FILES + (TEST_FILE,)
CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
IMAGE_VALUES = 3 * 32 * 32
PAD = 4
DOWNLOAD_TIMEOUT_S = 60.0
# A real batch member is ~31 MB; refuse anything absurdly large (tar bombs).
MAX_MEMBER_BYTES = 1 << 30


def _one_line(obj: object) -> str:
    return " ".join(str(obj).split())


@contextlib.contextmanager
def _tar_errors(archive: Path, what: str) -> Iterator[None]:
    """Turn the many ways a damaged tar.gz fails into one DataError naming the file."""
    try:
        yield
    except DataError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError) as e:
        raise DataError(f"{archive}: {what} ({type(e).__name__}: {_one_line(e)})") from None


# --------------------------------------------------------------------------- #
# where the data lives
# --------------------------------------------------------------------------- #


def default_root() -> Path:
    """The default data folder, ``~/.cache/bnwd``."""
    return Path.home() / ".cache" / "bnwd"


def resolve_root(data: str | os.PathLike | None = None) -> Path:
    """Data folder: the argument, else env ``BNWD_DATA``, else ``~/.cache/bnwd``."""
    if data is not None and str(data) != "":
        return Path(data).expanduser()
    env = os.environ.get("BNWD_DATA", "")
    if env:
        return Path(env).expanduser()
    return default_root()


# --------------------------------------------------------------------------- #
# restricted unpickling
# --------------------------------------------------------------------------- #


def _numpy_reconstruct():
    # numpy 1.x calls it numpy.core.multiarray._reconstruct, numpy 2.x
    # numpy._core.multiarray._reconstruct; this finds it without importing either.
    return np.ndarray.__reduce__(np.empty(0))[0]


# Exactly what CIFAR-10 python pickles reference: the official (Python 2,
# numpy 1.x) archive names numpy.core.multiarray._reconstruct, numpy.ndarray and
# numpy.dtype; pickles written by numpy 2 (like the offline copy) name
# numpy._core.multiarray._reconstruct instead. Labels are plain lists of ints.
_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[[], object]] = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the numpy globals a CIFAR batch needs."""

    def __init__(self, file, label: str):
        super().__init__(file, encoding="bytes")
        self._label = label

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        factory = _ALLOWED_GLOBALS.get((module, name))
        if factory is None:
            raise DataError(
                f"{self._label}: pickle refers to {module}.{name}, refusing to load "
                "(a CIFAR batch only holds arrays, lists and bytes)"
            )
        return factory()

    def persistent_load(self, pid):
        raise DataError(f"{self._label}: pickle uses persistent ids, refusing to load")


def _unpickle(raw: bytes, label: str) -> object:
    try:
        return _RestrictedUnpickler(io.BytesIO(raw), label).load()
    except DataError:
        raise
    except Exception as e:  # hostile or corrupt pickles raise all sorts of things
        raise DataError(f"{label}: not a readable CIFAR batch pickle ({type(e).__name__}: {_one_line(e)})") from None


def _get(d: dict, key: str):
    if key.encode() in d:
        return d[key.encode()]
    return d.get(key)


def _parse_batch(raw: bytes, label: str) -> tuple[np.ndarray, np.ndarray]:
    """Unpickle and validate one batch; returns (data uint8 [N,3072], labels int64 [N])."""
    d = _unpickle(raw, label)
    if not isinstance(d, dict):
        raise DataError(f"{label}: expected a dict in the pickle, found {type(d).__name__}")
    data = _get(d, "data")
    labels = _get(d, "labels")
    if data is None or labels is None:
        raise DataError(f"{label}: batch has no 'data' or no 'labels' entry")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != IMAGE_VALUES:
        desc = (
            f"{data.dtype} array of shape {tuple(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
        )
        raise DataError(f"{label}: 'data' must be a uint8 array of shape (N, 3072), found {desc}")
    try:
        lab = np.asarray(labels)
    except Exception:
        lab = np.asarray([], dtype=object)
    if lab.ndim != 1 or not np.issubdtype(lab.dtype, np.integer):
        raise DataError(f"{label}: 'labels' must be a list of integers")
    if len(lab) != len(data):
        raise DataError(f"{label}: {len(lab)} labels for {len(data)} images")
    if len(lab) and (lab.min() < 0 or lab.max() > 9):
        bad = lab[(lab < 0) | (lab > 9)][0]
        raise DataError(f"{label}: label {int(bad)} is outside 0..9")
    return data, lab.astype(np.int64)


# --------------------------------------------------------------------------- #
# the dataset object
# --------------------------------------------------------------------------- #


@dataclass
class Cifar10:
    """CIFAR-10 as uint8 images ``[N, 3, 32, 32]`` (RGB) and int64 labels ``[N]``.

    Objects returned by :func:`load_cifar10` share their tensors with a
    per-process cache: treat the tensors as read-only.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str

    @property
    def n_train(self) -> int:
        return int(self.train_x.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.test_x.shape[0])

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    def to(self, device: torch.device | str) -> Cifar10:
        """A new Cifar10 with all tensors on ``device``."""
        return replace(
            self,
            train_x=self.train_x.to(device),
            train_y=self.train_y.to(device),
            test_x=self.test_x.to(device),
            test_y=self.test_y.to(device),
        )

    def subset(self, n_train: int, n_test: int, seed: int = 0) -> Cifar10:
        """Class-balanced deterministic subset; 0 keeps a split whole.

        Classes are filled round-robin (each class gets ``n // 10`` or one more,
        as far as it has images), the images of a class are chosen at random
        from ``seed``, and the kept images stay in their original order.
        """
        tr = _balanced_indices(self.train_y, n_train, seed, "training", self.source)
        te = _balanced_indices(self.test_y, n_test, seed + 1_000_003, "test", self.source)
        out = self
        if tr is not None:
            tr = tr.to(self.train_x.device)
            out = replace(out, train_x=self.train_x[tr], train_y=self.train_y[tr])
        if te is not None:
            te = te.to(self.test_x.device)
            out = replace(out, test_x=self.test_x[te], test_y=self.test_y[te])
        if tr is not None or te is not None:
            out = replace(out, source=f"{self.source} (subset {out.n_train}/{out.n_test}, seed {seed})")
        return out


def _balanced_indices(y: torch.Tensor, n: int, seed: int, split: str, source: str):
    total = int(y.shape[0])
    if n < 0:
        raise ConfigError(f"subset size for the {split} split must be >= 0, got {n}")
    if n == 0 or n == total:
        return None
    if n > total:
        raise DataError(f"{source}: asked for {n} {split} images but it holds only {total}")
    labels = y.cpu().numpy()
    g = torch.Generator().manual_seed(_derive_seed("subset", seed))
    perm = torch.randperm(total, generator=g).numpy()
    lp = labels[perm]
    order = np.argsort(lp, kind="stable")
    sorted_lab = lp[order]
    starts = np.searchsorted(sorted_lab, sorted_lab, side="left")
    rank = np.empty(total, dtype=np.int64)
    rank[order] = np.arange(total) - starts  # rank of each perm position within its class
    key = rank * total + np.arange(total)
    chosen = perm[np.argsort(key, kind="stable")[:n]]
    return torch.from_numpy(np.sort(chosen))


# --------------------------------------------------------------------------- #
# reading batches from a folder or an archive
# --------------------------------------------------------------------------- #


def _assemble(parsed: dict[str, tuple[np.ndarray, np.ndarray]], source: str) -> Cifar10:
    def cat(names):
        xs = [parsed[n][0] for n in names]
        ys = [parsed[n][1] for n in names]
        x = np.concatenate(xs) if len(xs) > 1 else xs[0]
        y = np.concatenate(ys) if len(ys) > 1 else ys[0]
        x = torch.from_numpy(np.ascontiguousarray(x)).reshape(-1, 3, 32, 32)
        return x, torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))

    train_x, train_y = cat(TRAIN_FILES)
    test_x, test_y = cat([TEST_FILE])
    if train_x.shape[0] == 0:
        raise DataError(f"{source}: the training batches hold no images")
    return Cifar10(train_x, train_y, test_x, test_y, source=source)


def _missing_error(where: Path, missing: list[str]) -> DataError:
    return DataError(f"{where}: missing CIFAR-10 batch file(s) {', '.join(missing)}")


def _read_folder(folder: Path) -> Cifar10:
    missing = [n for n in BATCH_FILES if not (folder / n).is_file()]
    if missing:
        raise _missing_error(folder, missing)
    parsed = {}
    for n in BATCH_FILES:
        path = folder / n
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise DataError(f"{path}: cannot read ({_one_line(e)})") from None
        parsed[n] = _parse_batch(raw, str(path))
    return _assemble(parsed, str(folder))


def _member_batch_name(name: str) -> str | None:
    name = name.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    parts = name.split("/")
    if len(parts) == 2 and parts[0] == FOLDER_NAME and parts[1] in BATCH_FILES:
        return parts[1]
    return None


def _read_archive(archive: Path) -> Cifar10:
    raws: dict[str, bytes] = {}
    with _tar_errors(archive, "not a readable tar.gz archive, it may be truncated or corrupt"):
        with tarfile.open(archive, mode="r|gz") as tf:  # one forward pass, no seeking
            for m in tf:
                n = _member_batch_name(m.name)
                if n is None:
                    continue
                if not m.isfile():
                    raise DataError(f"{archive}: member {m.name} is not a regular file")
                if m.size > MAX_MEMBER_BYTES:
                    raise DataError(f"{archive}: member {m.name} is implausibly large ({m.size} bytes)")
                f = tf.extractfile(m)
                raw = f.read() if f is not None else b""
                if len(raw) != m.size:
                    raise DataError(f"{archive}: member {m.name} is truncated")
                raws[n] = raw
    missing = [n for n in BATCH_FILES if n not in raws]
    if missing:
        raise _missing_error(archive, [f"{FOLDER_NAME}/{n}" for n in missing])
    parsed = {n: _parse_batch(raws.pop(n), f"{archive}:{FOLDER_NAME}/{n}") for n in BATCH_FILES}
    return _assemble(parsed, str(archive))


def _stat_key(path: Path) -> tuple:
    st = path.stat()
    return (st.st_mtime_ns, st.st_size, st.st_ino)


@functools.lru_cache(maxsize=4)
def _load_cached(kind: str, path: str, key: tuple) -> Cifar10:
    del key  # only part of the cache key: a changed file is read again
    return _read_folder(Path(path)) if kind == "folder" else _read_archive(Path(path))


def clear_cache() -> None:
    """Forget the decoded datasets cached in this process."""
    _load_cached.cache_clear()


# --------------------------------------------------------------------------- #
# download
# --------------------------------------------------------------------------- #


def _download(root: Path) -> Path:
    dest = root / ARCHIVE_NAME
    hint = f"put {ARCHIVE_NAME} in {root} or pass --data DIR / set BNWD_DATA"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"could not create the data folder {root} ({_one_line(e)}); {hint}") from None
    tmp_path: Path | None = None
    md5 = hashlib.md5()
    try:
        fd, tmp_name = tempfile.mkstemp(dir=root, prefix=ARCHIVE_NAME + ".", suffix=".part")
        tmp_path = Path(tmp_name)
        print(f"bnwd: downloading {CIFAR10_URL} to {dest}", file=sys.stderr)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(CIFAR10_URL, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            while True:
                chunk = resp.read(1 << 20)
                if not chunk:
                    break
                md5.update(chunk)
                out.write(chunk)
    except Exception as e:  # URLError, timeouts, HTTP errors, IncompleteRead, disk full...
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise DataError(f"could not download CIFAR-10 from {CIFAR10_URL} ({_one_line(reason)}); {hint}") from None
    got = md5.hexdigest()
    if got != CIFAR10_MD5:
        tmp_path.unlink(missing_ok=True)
        raise DataError(
            f"{dest}: downloaded file has md5 {got}, expected {CIFAR10_MD5}; deleted it, try again or {hint}"
        )
    os.replace(tmp_path, dest)
    return dest


# --------------------------------------------------------------------------- #
# public loader
# --------------------------------------------------------------------------- #


def load_cifar10(data: str | os.PathLike | None = None, download: bool | None = None) -> Cifar10:
    """Load CIFAR-10 from a data folder (see :func:`resolve_root`).

    The folder may hold ``cifar-10-batches-py/`` (preferred when present) or
    ``cifar-10-python.tar.gz`` (read in memory, not extracted). ``data`` may
    also name such an archive file directly. When neither is there and
    ``download`` is true (or the folder is the default cache), the official
    archive is downloaded into the folder and md5-checked. ``download=None``
    (the default) downloads only when ``data`` is not given: a folder the user
    named must exist and hold the data, so a typo is an error, not a download
    into a new folder. Decoded tensors are
    cached per process, keyed by path and modification time. Any problem raises
    :class:`~bnwd.errors.DataError` with a one-line message.
    """
    root = resolve_root(data)
    named = data is not None and str(data) != ""
    if download is None:
        download = not named
    if named and not download and not root.exists():
        raise DataError(
            f"data folder {root} does not exist; pass the folder that holds {ARCHIVE_NAME} or {FOLDER_NAME}/"
        )
    if root.is_file():
        if not root.name.endswith((".tar.gz", ".tgz")):
            raise DataError(
                f"{root}: expected a folder holding {FOLDER_NAME}/ or {ARCHIVE_NAME}, or the .tar.gz archive itself"
            )
        return _load_cached("archive", str(root.resolve()), _stat_key(root))
    folder = root / FOLDER_NAME
    archive = root / ARCHIVE_NAME
    if folder.is_dir():
        missing = [n for n in BATCH_FILES if not (folder / n).is_file()]
        if missing:
            raise _missing_error(folder, missing)
        key = tuple(_stat_key(folder / n) for n in BATCH_FILES)
        return _load_cached("folder", str(folder.resolve()), key)
    if not archive.is_file():
        if not (download or root.expanduser().resolve() == default_root().resolve()):
            raise DataError(
                f"no CIFAR-10 in {root}: put {ARCHIVE_NAME} or {FOLDER_NAME}/ there, or pass --data DIR / set BNWD_DATA"
            )
        _download(root)
    return _load_cached("archive", str(archive.resolve()), _stat_key(archive))


def run_data(
    dataset: Cifar10 | None,
    data: str | os.PathLike | None,
    device: torch.device,
    train_subset: int = 0,
    test_subset: int = 0,
    batch_size: int = 1,
) -> Cifar10:
    """What a run trains on: `dataset` (else `load_cifar10(data)`), its class-balanced subset
    when either subset size is set, on `device`. A batch larger than the training set is a ConfigError."""
    ds = dataset if dataset is not None else load_cifar10(data)
    if train_subset or test_subset:
        ds = ds.subset(train_subset, test_subset, seed=0)
    ds = ds.to(device)
    if batch_size > ds.n_train:
        raise ConfigError(f"batch_size={batch_size} is larger than the training set ({ds.n_train} images)")
    return ds


# --------------------------------------------------------------------------- #
# augmentation and standardization
# --------------------------------------------------------------------------- #


def augment_params(batch: int, generator: torch.Generator, device: torch.device | str | None = None):
    """Random (dx, dy, flip) for ``batch`` images: offsets in 0..8, flip with p=0.5.

    Drawn on the generator's device and moved to ``device``.
    """
    gdev = generator.device
    dx = torch.randint(0, 2 * PAD + 1, (batch,), generator=generator, device=gdev)
    dy = torch.randint(0, 2 * PAD + 1, (batch,), generator=generator, device=gdev)
    flip = torch.rand(batch, generator=generator, device=gdev) < 0.5
    if device is not None:
        dx, dy, flip = dx.to(device), dy.to(device), flip.to(device)
    return dx, dy, flip


def crop_flip(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Window ``[dy:dy+32, dx:dx+32]`` of each zero-padded (40x40) image, then a
    horizontal flip where ``flip`` is true. One gather, no per-image loop."""
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (PAD, PAD, PAD, PAD))  # zeros, any dtype
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = dy.to(x.device).view(b, 1) + ar_h.view(1, h)  # [B, H]
    cols_fwd = ar_w.view(1, w).expand(b, w)
    cols = torch.where(flip.to(x.device).view(b, 1), (w - 1) - cols_fwd, cols_fwd)
    cols = dx.to(x.device).view(b, 1) + cols  # [B, W]
    bidx = torch.arange(b, device=x.device).view(b, 1, 1)
    hwc = padded.permute(0, 2, 3, 1)  # [B, H+8, W+8, C]
    out = hwc[bidx, rows.view(b, h, 1), cols.view(b, 1, w)]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad to 40x40, random 32x32 crop, random horizontal flip (p=0.5).

    ``x`` is uint8 (or any dtype) ``[B, 3, 32, 32]``; the result has the same
    shape, dtype and device. All randomness comes from ``generator``.
    """
    dx, dy, flip = augment_params(x.shape[0], generator, x.device)
    return crop_flip(x, dx, dy, flip)


def standardize(x: torch.Tensor) -> torch.Tensor:
    """TF ``per_image_standardization`` in 0..255 units, as float32.

    ``(x - mean) / max(std, 1/sqrt(n))`` with mean and population std over all
    ``n = C*H*W`` values of each image.
    """
    xf = x.to(torch.float32)
    b = xf.shape[0]
    flat = xf.reshape(b, -1)
    n = flat.shape[1]
    mean = flat.mean(dim=1, keepdim=True)
    std = flat.std(dim=1, correction=0, keepdim=True)
    denom = std.clamp_min(1.0 / math.sqrt(n))
    return ((flat - mean) / denom).reshape(xf.shape)


# --------------------------------------------------------------------------- #
# deterministic batching
# --------------------------------------------------------------------------- #


def _derive_seed(*parts: object) -> int:
    h = hashlib.sha256(repr(("bnwd",) + parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


class TrainLoader:
    """Training batches as a pure function of ``(seed, step)``.

    ``steps_per_epoch = N // batch_size`` (the last partial batch is dropped).
    Step ``s`` belongs to epoch ``s // steps_per_epoch``; that epoch's order is
    a permutation drawn from a generator seeded by ``(seed, epoch)``, and the
    crop/flip of step ``s`` from a generator seeded by ``(seed, s)``. So a run
    resumed at step ``s`` sees the same batches as an uninterrupted one (on the
    same device type: CPU and CUDA generators give different streams).
    """

    def __init__(self, data: Cifar10, batch_size: int, seed: int):
        if batch_size <= 0:
            raise ConfigError(f"batch size must be positive, got {batch_size}")
        n = data.n_train
        if batch_size > n:
            raise ConfigError(f"batch size {batch_size} is larger than the {n} training images")
        self.data = data
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.steps_per_epoch = n // self.batch_size
        self.device = data.train_x.device
        self._perm_epoch: int | None = None
        self._perm: torch.Tensor | None = None

    def _generator(self, *parts: object) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed(_derive_seed(*parts))
        return g

    def epoch_permutation(self, epoch: int) -> torch.Tensor:
        """The order of the training images in ``epoch`` (cached for the current epoch)."""
        if self._perm_epoch != epoch:
            g = self._generator("epoch", self.seed, int(epoch))
            self._perm = torch.randperm(self.data.n_train, generator=g, device=self.device)
            self._perm_epoch = epoch
        return self._perm

    def indices(self, step: int) -> torch.Tensor:
        """Indices into the training set used at ``step``."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch, i = divmod(int(step), self.steps_per_epoch)
        perm = self.epoch_permutation(epoch)
        return perm[i * self.batch_size : (i + 1) * self.batch_size]

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` for ``step``: x float32 ``[B,3,32,32]`` augmented and
        standardized, y int64 ``[B]``, on the data's device."""
        idx = self.indices(step)
        x = augment(self.data.train_x[idx], self._generator("augment", self.seed, int(step)))
        return standardize(x), self.data.train_y[idx]


def test_batches(data: Cifar10, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Standardized (not augmented) test batches ``(x float32, y int64)``, in
    order, the last one possibly smaller."""
    if batch_size <= 0:
        raise ConfigError(f"batch size must be positive, got {batch_size}")
    for i in range(0, data.n_test, batch_size):
        yield standardize(data.test_x[i : i + batch_size]), data.test_y[i : i + batch_size]


test_batches.__test__ = False  # not a pytest test despite the name
