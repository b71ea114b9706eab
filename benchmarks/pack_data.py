"""Pack CIFAR-10 into checksummed chunks to carry it where nothing can be downloaded; unpack and verify.

    python benchmarks/pack_data.py pack --data /work/shared/data --out data_pack
    python benchmarks/pack_data.py pack --data /work/shared/data --out data_pack --subset 10000,2000
    python benchmarks/pack_data.py unpack data_pack --out /tmp/cifar     # then: bnwd train --data /tmp/cifar
    python benchmarks/pack_data.py verify data_pack
    python benchmarks/pack_data.py synth --out /tmp/fake --n-train 50000 --n-test 10000   # no real data

`pack` without `--subset` splits the archive itself (`cifar-10-python.tar.gz`, byte for byte);
with `--subset N,M` it reads the data with `bnwd.run.data.load_cifar10`, keeps a class-balanced
subset of N training and M test images (`Cifar10.subset(N, M, seed)`, as `train_subset=N
test_subset=M` does) and writes it as a CIFAR-format `cifar-10-python.tar.gz` that
`load_cifar10` reads. `--compress xz` compresses that payload before splitting (little gain
on a .tar.gz, and slow: off by default). `--compress pred-xz` packs the decoded uint8 arrays
instead, as the 2-D differences of each image plane (x - left - up + up-left, mod 256; the
inverse is a 2-D cumulative sum), red and blue differences taken minus green's, labels as
uint8, then xz: the whole of CIFAR-10 in ~85 MiB instead of 166 MiB (two chunks instead of
three; the arrays and their sha256 are exact). Its `unpack` rebuilds a CIFAR-format
`cifar-10-python.tar.gz` from the verified arrays (gzip level 0, stored: fast; the manifest
checks the arrays' sha256, `arrays_sha256`, and records the source archive's, `source_sha256`).

Chunks are at most `--chunk-mib` MiB (default 60) and named `<payload>.partNNN`;
`manifest.json` records the sha256 and size of every chunk, of the whole stream of chunks and
of the unpacked archive (pred-xz: of the arrays).

`synth` writes a CIFAR-format archive of learnable synthetic images (a fixed colour per class
plus noise) for timing where no real data can be carried; accuracies on it mean nothing.

`unpack` checks every chunk's size and sha256 before using it (a damaged or missing chunk is
named and nothing is written), then the whole stream's, decompresses, checks the archive's
sha256 and writes `<out>/cifar-10-python.tar.gz` atomically. Exit status 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import hashlib
import io
import json
import lzma
import os
import pickle
import sys
import tarfile
from pathlib import Path

FORMAT = "bnwd-pack/1"
MANIFEST = "manifest.json"
ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
MIB = 1 << 20
# `bnwd` from this checkout when it is not installed (PYTHONPATH=src does the same).
_SRC = Path(__file__).resolve().parents[1] / "src"
if _SRC.is_dir() and str(_SRC) not in sys.path:
    sys.path.append(str(_SRC))


class PackError(Exception):
    """A pack that cannot be trusted (missing, damaged or foreign chunk); the message names it."""


def sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MIB), b""):
            h.update(block)
    return h.hexdigest()


def _find_archive(data: Path) -> Path | None:
    if data.is_file():
        return data
    return data / ARCHIVE if (data / ARCHIVE).is_file() else None


def cifar_archive_bytes(train_x, train_y, test_x, test_y, compresslevel: int = 6) -> bytes:
    """A CIFAR-10 python-layout tar.gz (5 training batches, test batch, meta) in memory, deterministic."""
    import numpy as np

    from bnwd.run.data import CLASSES

    tx = train_x.reshape(len(train_x), -1).numpy().astype(np.uint8)
    ty = train_y.numpy().astype(np.int64)
    parts = np.array_split(np.arange(len(tx)), 5)
    batches = [
        (f"data_batch_{i + 1}", {b"batch_label": f"training batch {i + 1} of 5".encode(), "idx": idx})
        for i, idx in enumerate(parts)
    ]
    buf = io.BytesIO()
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=compresslevel) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tf,
    ):

        def add(name: str, obj) -> None:
            payload = pickle.dumps(obj, protocol=4)
            info = tarfile.TarInfo(f"{FOLDER}/{name}")
            info.size, info.mode, info.mtime = len(payload), 0o644, 0
            tf.addfile(info, io.BytesIO(payload))

        d = tarfile.TarInfo(FOLDER)
        d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, 0
        tf.addfile(d)
        for name, b in batches:
            idx = b.pop("idx")
            add(name, {**b, b"labels": [int(v) for v in ty[idx]], b"data": tx[idx]})
        te = test_x.reshape(len(test_x), -1).numpy().astype(np.uint8)
        add("test_batch", {b"batch_label": b"testing batch 1 of 1", b"labels": [int(v) for v in test_y], b"data": te})
        add(
            "batches.meta",
            {b"label_names": [c.encode() for c in CLASSES], b"num_cases_per_batch": 10000, b"num_vis": 3072},
        )
    return buf.getvalue()


PRED_MAGIC = b"bnwd-pred/1\n"
COMPRESSIONS = ("none", "xz", "pred-xz")


def arrays_sha256(train_x, train_y, test_x, test_y) -> str:
    """sha256 of the data itself: uint8 images [N,3,32,32] then int64 labels, train then test."""
    import numpy as np

    h = hashlib.sha256()
    for a, dt in ((train_x, np.uint8), (train_y, np.int64), (test_x, np.uint8), (test_y, np.int64)):
        h.update(np.ascontiguousarray(np.asarray(a), dtype=dt).tobytes())
    return h.hexdigest()


def pred_encode(train_x, train_y, test_x, test_y) -> bytes:
    """uint8 arrays -> xz payload: per plane the 2-D difference r = x - left - up + upleft (mod 256,
    zero outside the image), then red and blue minus green; labels as uint8."""
    import numpy as np

    x = np.concatenate([np.asarray(train_x), np.asarray(test_x)]).astype(np.uint8).reshape(-1, 3, 32, 32)
    r = np.diff(x, axis=3, prepend=np.uint8(0))  # uint8 arithmetic wraps: mod 256
    r = np.diff(r, axis=2, prepend=np.uint8(0))
    r[:, 0] -= r[:, 1]
    r[:, 2] -= r[:, 1]
    y = np.concatenate([np.asarray(train_y), np.asarray(test_y)])
    if y.size and (y.min() < 0 or y.max() > 255):
        raise PackError("labels must be 0..255 for pred-xz")
    head = json.dumps({"n_train": len(train_x), "n_test": len(test_x)}).encode() + b"\n"
    return lzma.compress(PRED_MAGIC + head + r.tobytes() + y.astype(np.uint8).tobytes(), preset=6)


def pred_decode(payload: bytes):
    """The inverse of `pred_encode`: (train_x, train_y, test_x, test_y) as torch uint8 / int64."""
    import numpy as np
    import torch

    try:
        raw = lzma.decompress(payload)
    except lzma.LZMAError as e:
        raise PackError(f"pred-xz payload does not decompress ({e})") from None
    if not raw.startswith(PRED_MAGIC):
        raise PackError("pred-xz payload: bad magic")
    nl = raw.index(b"\n", len(PRED_MAGIC))
    head = json.loads(raw[len(PRED_MAGIC) : nl])
    n_tr, n_te = int(head["n_train"]), int(head["n_test"])
    n = n_tr + n_te
    body = memoryview(raw)[nl + 1 :]
    if len(body) != n * 3073:
        raise PackError(f"pred-xz payload: {len(body)} bytes of data, expected {n * 3073}")
    r = np.frombuffer(body[: n * 3072], dtype=np.uint8).reshape(n, 3, 32, 32).copy()
    r[:, 0] += r[:, 1]
    r[:, 2] += r[:, 1]
    x = np.cumsum(np.cumsum(r, axis=2, dtype=np.uint8), axis=3, dtype=np.uint8)
    y = np.frombuffer(body[n * 3072 :], dtype=np.uint8).astype(np.int64)
    t = torch.from_numpy
    return t(x[:n_tr].copy()), t(y[:n_tr].copy()), t(x[n_tr:].copy()), t(y[n_tr:].copy())


def synthetic_arrays(n_train: int, n_test: int, seed: int = 0):
    """(train_x, train_y, test_x, test_y) torch uint8 [N,3,32,32] / int64: class colour + N(0, 40) noise."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    palette = rng.integers(30, 226, size=(10, 3)).astype(np.float32)

    def make(n: int):
        y = rng.permutation(np.arange(n) % 10)
        x = np.empty((n, 3, 32, 32), dtype=np.uint8)
        for a in range(0, n, 5000):  # in pieces: 50,000 float images at once would need GBs
            b = min(n, a + 5000)
            noise = rng.standard_normal((b - a, 3, 32, 32), dtype=np.float32) * 40
            x[a:b] = np.clip(np.rint(palette[y[a:b]][:, :, None, None] + noise), 0, 255).astype(np.uint8)
        return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))

    return (*make(n_train), *make(n_test))


def write_synthetic(out: str | os.PathLike, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Write `<out>/cifar-10-python.tar.gz` with synthetic images (see `synthetic_arrays`); return its path."""
    if n_train < 1 or n_test < 1:
        raise PackError(f"synthetic data needs at least one image per split, got {n_train} and {n_test}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dest, tmp = out / ARCHIVE, out / (ARCHIVE + ".part")
    tmp.write_bytes(cifar_archive_bytes(*synthetic_arrays(n_train, n_test, seed)))
    os.replace(tmp, dest)
    return dest


def pack(
    data: str | os.PathLike,
    out: str | os.PathLike,
    chunk_mib: float = 60.0,
    subset: tuple[int, int] | None = None,
    seed: int = 0,
    compress: str = "none",
    command: str | None = None,
) -> dict:
    """Write chunks and `manifest.json` into `out` (created; must not hold a pack already); return the manifest."""
    data, out = Path(data), Path(out)
    if compress not in COMPRESSIONS:
        raise PackError(f"compress must be one of {', '.join(COMPRESSIONS)}, got {compress!r}")
    chunk = int(chunk_mib * MIB)
    if chunk < 1:
        raise PackError(f"chunk size must be positive, got {chunk_mib} MiB")
    archive = _find_archive(data)
    arrays_sum = source_sum = None
    if compress == "pred-xz":
        from bnwd.run.data import load_cifar10

        ds = load_cifar10(data, download=False)
        if subset is not None:
            ds = ds.subset(subset[0], subset[1], seed=seed)
        arrays = (ds.train_x, ds.train_y, ds.test_x, ds.test_y)
        arrays_sum = arrays_sha256(*arrays)
        raw = b""  # the archive is rebuilt at unpack from the verified arrays
        source = ds.source
        if archive is not None:
            source_sum = sha256_file(archive)
    elif subset is None and archive is not None:
        raw = archive.read_bytes()
        source = str(archive)
    else:
        from bnwd.run.data import load_cifar10

        ds = load_cifar10(data, download=False)
        if subset is not None:
            ds = ds.subset(subset[0], subset[1], seed=seed)
        raw = cifar_archive_bytes(ds.train_x, ds.train_y, ds.test_x, ds.test_y)
        source = ds.source
    if compress == "pred-xz":
        payload = pred_encode(*arrays)
    else:
        payload = lzma.compress(raw, preset=6) if compress == "xz" else raw
    name = {"none": ARCHIVE, "xz": ARCHIVE + ".xz", "pred-xz": "cifar-10-arrays.pred.xz"}[compress]
    out.mkdir(parents=True, exist_ok=True)
    if (out / MANIFEST).exists():
        raise PackError(f"{out / MANIFEST} exists: choose an empty folder")
    chunks = []
    for i, start in enumerate(range(0, len(payload), chunk)):
        part = payload[start : start + chunk]
        fname = f"{name}.part{i:03d}"
        (out / fname).write_bytes(part)
        chunks.append({"file": fname, "size": len(part), "sha256": sha256_bytes(part)})
    manifest = {
        "format": FORMAT,
        "payload": name,
        "compression": compress,
        "size": len(payload),
        "sha256": sha256_bytes(payload),
        "archive": ARCHIVE,
        "archive_size": len(raw) if compress != "pred-xz" else None,
        "archive_sha256": sha256_bytes(raw) if compress != "pred-xz" else None,
        "arrays_sha256": arrays_sum,
        "source_sha256": source_sum,
        "chunk_bytes_max": chunk,
        "chunks": chunks,
        "source": source,
        "subset": list(subset) if subset else None,
        "subset_seed": seed if subset else None,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
    }
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, out / MANIFEST)
    return manifest


def read_manifest(pack_dir: str | os.PathLike) -> dict:
    path = Path(pack_dir) / MANIFEST
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PackError(f"{path}: not a readable manifest ({type(e).__name__}: {e})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT or not isinstance(m.get("chunks"), list):
        raise PackError(f"{path}: not a {FORMAT} manifest")
    return m


def assemble(pack_dir: str | os.PathLike) -> tuple[dict, bytes]:
    """Verified archive bytes: every chunk's size and sha256, the stream's, then the archive's."""
    pack_dir = Path(pack_dir)
    m = read_manifest(pack_dir)
    parts = []
    for c in m["chunks"]:
        name = str(c["file"])
        if Path(name).name != name:
            raise PackError(f"{pack_dir / MANIFEST}: chunk name {name!r} is not a plain file name")
        p = pack_dir / name
        try:
            b = p.read_bytes()
        except OSError as e:
            raise PackError(f"chunk {name}: cannot read ({e.strerror or e})") from None
        if len(b) != c["size"]:
            raise PackError(f"chunk {name}: {len(b)} bytes, the manifest says {c['size']}")
        got = sha256_bytes(b)
        if got != c["sha256"]:
            raise PackError(f"chunk {name}: sha256 {got} does not match the manifest's {c['sha256']}")
        parts.append(b)
    payload = b"".join(parts)
    if len(payload) != m["size"] or sha256_bytes(payload) != m["sha256"]:
        raise PackError(f"{pack_dir}: the chunks together do not match the manifest's sha256 (missing chunk?)")
    if m["compression"] == "pred-xz":
        arrays = pred_decode(payload)
        got = arrays_sha256(*arrays)
        if got != m.get("arrays_sha256"):
            raise PackError(f"{pack_dir}: decoded arrays' sha256 {got} does not match the manifest's")
        return m, cifar_archive_bytes(*arrays, compresslevel=0)
    if m["compression"] == "xz":
        try:
            raw = lzma.decompress(payload)
        except lzma.LZMAError as e:
            raise PackError(f"{pack_dir}: xz payload does not decompress ({e})") from None
    elif m["compression"] == "none":
        raw = payload
    else:
        raise PackError(f"{pack_dir / MANIFEST}: unknown compression {m['compression']!r}")
    if sha256_bytes(raw) != m["archive_sha256"]:
        raise PackError(f"{pack_dir}: unpacked archive's sha256 does not match the manifest's")
    return m, raw


def unpack(pack_dir: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Verify and write `<out>/cifar-10-python.tar.gz`; return its path. Nothing is written on a mismatch."""
    m, raw = assemble(pack_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dest = out / m["archive"]
    tmp = out / (m["archive"] + ".part")
    tmp.write_bytes(raw)
    os.replace(tmp, dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="archive (or a class-balanced subset) -> chunks + manifest.json")
    p.add_argument(
        "--data", required=True, help="folder with cifar-10-python.tar.gz or cifar-10-batches-py/, or the archive"
    )
    p.add_argument("--out", required=True, help="folder for the chunks and manifest.json")
    p.add_argument("--chunk-mib", type=float, default=60.0, help="largest chunk in MiB (default 60)")
    p.add_argument("--subset", default=None, metavar="N,M", help="N training and M test images, class-balanced")
    p.add_argument("--seed", type=int, default=0, help="subset seed (bnwd train uses 0)")
    p.add_argument("--compress", default="none", choices=list(COMPRESSIONS))
    u = sub.add_parser("unpack", help="verify the chunks and write <out>/cifar-10-python.tar.gz")
    u.add_argument("pack_dir")
    u.add_argument("--out", required=True)
    v = sub.add_parser("verify", help="verify the chunks only")
    v.add_argument("pack_dir")
    y = sub.add_parser("synth", help="write a CIFAR-format archive of synthetic (learnable) images")
    y.add_argument("--out", required=True, help="folder for cifar-10-python.tar.gz")
    y.add_argument("--n-train", type=int, default=50000)
    y.add_argument("--n-test", type=int, default=10000)
    y.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    try:
        if a.cmd == "pack":
            subset = None
            if a.subset:
                try:
                    n, k = (int(x) for x in a.subset.split(","))
                except ValueError:
                    ap.error(f"--subset takes N,M (two integers), got {a.subset!r}")
                subset = (n, k)
            cmd = "python benchmarks/pack_data.py " + " ".join(sys.argv[1:] if argv is None else argv)
            m = pack(a.data, a.out, a.chunk_mib, subset, a.seed, a.compress, command=cmd)
            print(
                f"{a.out}: {len(m['chunks'])} chunk(s), {m['size'] / MIB:.1f} MiB, sha256 {m['sha256']} "
                + (
                    f"(arrays sha256 {m['arrays_sha256']})"
                    if m["arrays_sha256"]
                    else f"(archive sha256 {m['archive_sha256']})"
                )
            )
        elif a.cmd == "unpack":
            dest = unpack(a.pack_dir, a.out)
            m = read_manifest(a.pack_dir)
            what = f"arrays sha256 {m['arrays_sha256']}" if m.get("arrays_sha256") else f"sha256 {m['archive_sha256']}"
            print(f"{dest}: verified, {what}")
        elif a.cmd == "synth":
            dest = write_synthetic(a.out, a.n_train, a.n_test, a.seed)
            print(f"{dest}: {a.n_train} training and {a.n_test} test synthetic images, sha256 {sha256_file(dest)}")
        else:
            m, _ = assemble(a.pack_dir)
            print(f"{a.pack_dir}: {len(m['chunks'])} chunk(s) verified")
    except PackError as e:
        print(f"pack_data: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # DataError from bnwd and OSErrors: one line
        print(f"pack_data: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
