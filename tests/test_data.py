"""Tests of bnwd.run.data on tiny generated archives (never the real CIFAR-10)."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
import tarfile
import urllib.error

import numpy as np
import pytest
import torch
from fakes import fake_batch, fake_members, write_fake_cifar, write_fake_cifar_folder

from bnwd.errors import DataError
from bnwd.run import data as D

# --------------------------------------------------------------------------- helpers


def _replace_in(member, **fields):
    """transform for write_fake_cifar: replace fields of one batch dict."""

    def transform(name, obj):
        if name == member:
            obj = dict(obj)
            for k, v in fields.items():
                obj[k.encode()] = v(obj) if callable(v) else v
        return obj

    return transform


class _Py2StylePickler(pickle._Pickler):
    """Writes str/bytes as Python 2 BINSTRINGs, like the official CIFAR pickles."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)

    dispatch[str] = _save_py2_str
    dispatch[bytes] = _save_py2_str


def _py2_dumps(obj) -> bytes:
    buf = io.BytesIO()
    _Py2StylePickler(buf, protocol=2).dump(obj)
    raw = buf.getvalue()
    # numpy 1.x (which wrote the official archive) names the module numpy.core.multiarray
    return raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def _tar_with(path, members):
    """Write a tar.gz whose members are (TarInfo, bytes|None)."""
    with tarfile.open(path, "w:gz") as tf:
        for info, payload in members:
            if payload is not None:
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
            else:
                tf.addfile(info)
    return path


class _Hostile:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return (self.fn, (self.arg,))


# --------------------------------------------------------------------------- loading


def test_load_archive_shapes_dtypes_counts(tmp_path):
    """A generated tar.gz loads to uint8 [N,3,32,32] images and int64 labels with the right counts."""
    path = write_fake_cifar(tmp_path, n_train=100, n_test=50, seed=1)
    assert path == tmp_path / "cifar-10-python.tar.gz"
    c = D.load_cifar10(tmp_path, download=False)
    assert c.train_x.shape == (100, 3, 32, 32) and c.train_x.dtype == torch.uint8
    assert c.test_x.shape == (50, 3, 32, 32) and c.test_x.dtype == torch.uint8
    assert c.train_y.shape == (100,) and c.train_y.dtype == torch.int64
    assert c.test_y.dtype == torch.int64
    assert c.train_y.bincount(minlength=10).tolist() == [10] * 10
    assert c.test_y.bincount(minlength=10).tolist() == [5] * 10
    assert str(path) in c.source


def test_load_extracted_folder_matches_archive_and_is_preferred(tmp_path):
    """An extracted cifar-10-batches-py/ loads identically and wins over a (corrupt) archive beside it."""
    write_fake_cifar(tmp_path / "a", n_train=40, n_test=20)
    from_archive = D.load_cifar10(tmp_path / "a", download=False)
    write_fake_cifar_folder(tmp_path / "b", n_train=40, n_test=20)
    (tmp_path / "b" / "cifar-10-python.tar.gz").write_bytes(b"garbage")
    from_folder = D.load_cifar10(tmp_path / "b", download=False)
    assert "cifar-10-batches-py" in from_folder.source
    for f in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(from_archive, f), getattr(from_folder, f))


def test_load_accepts_archive_path_directly(tmp_path):
    """`data` may name the .tar.gz file itself instead of its folder."""
    path = write_fake_cifar(tmp_path / "x.tar.gz", n_train=20, n_test=10)
    assert D.load_cifar10(path, download=False).n_train == 20


def test_loader_reads_python2_style_pickles(tmp_path):
    """Pickles written like the official archive (py2 BINSTRINGs, numpy.core.multiarray) load."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i, name in enumerate(D.BATCH_FILES):
        raw = _py2_dumps(fake_batch(10, seed=i, name=name))
        assert b"cnumpy.core.multiarray\n_reconstruct" in raw
        (folder / name).write_bytes(raw)
    c = D.load_cifar10(tmp_path, download=False)
    assert c.train_x.shape == (50, 3, 32, 32) and c.test_x.shape == (10, 3, 32, 32)


def test_resolve_root_argument_env_default(tmp_path, monkeypatch):
    """resolve_root uses the argument, else BNWD_DATA, else ~/.cache/bnwd."""
    monkeypatch.setenv("BNWD_DATA", str(tmp_path / "env"))
    assert D.resolve_root(tmp_path / "arg") == tmp_path / "arg"
    assert D.resolve_root(None) == tmp_path / "env"
    monkeypatch.delenv("BNWD_DATA")
    assert D.resolve_root(None) == D.default_root()
    assert D.default_root().parts[-2:] == (".cache", "bnwd")


def test_cache_returns_same_tensors_until_file_changes(tmp_path):
    """A second load is served from memory; rewriting the archive is noticed."""
    write_fake_cifar(tmp_path, n_train=20, n_test=10)
    a = D.load_cifar10(tmp_path, download=False)
    b = D.load_cifar10(tmp_path, download=False)
    assert a.train_x is b.train_x
    write_fake_cifar(tmp_path, n_train=30, n_test=10)
    assert D.load_cifar10(tmp_path, download=False).n_train == 30


# --------------------------------------------------------------------------- hostile / broken files


@pytest.mark.parametrize("kind", ["os.system", "eval"])
def test_restricted_unpickler_refuses_code_without_running_it(tmp_path, kind):
    """A pickle calling os.system or eval is refused with DataError and its payload never runs."""
    marker = tmp_path / "pwned"
    if kind == "os.system":
        payload = _Hostile(os.system, f"touch {marker}")
    else:
        payload = _Hostile(eval, f"open({str(marker)!r}, 'w').close()")
    write_fake_cifar(tmp_path / "d", 20, 10, transform=lambda name, obj: payload if name == "data_batch_2" else obj)
    with pytest.raises(DataError, match=r"data_batch_2: pickle refers to .*refusing to load"):
        D.load_cifar10(tmp_path / "d", download=False)
    assert not marker.exists()


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_corrupt_archive_raises_dataerror_naming_file(tmp_path, how):
    """A truncated or non-gzip archive gives a one-line DataError naming the archive."""
    good = write_fake_cifar(tmp_path / "good", 40, 20).read_bytes()
    bad = tmp_path / "bad" / "cifar-10-python.tar.gz"
    bad.parent.mkdir()
    bad.write_bytes(good[: len(good) // 2] if how == "truncated" else b"not a gzip file at all" * 10)
    with pytest.raises(DataError) as e:
        D.load_cifar10(bad.parent, download=False)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_missing_batch_is_named(tmp_path):
    """An archive without data_batch_3 gives a DataError listing that batch."""
    write_fake_cifar(tmp_path, 20, 10, omit=("data_batch_3",))
    with pytest.raises(DataError, match=r"missing .*data_batch_3"):
        D.load_cifar10(tmp_path, download=False)


def test_missing_batch_in_folder_is_named(tmp_path):
    """An extracted folder without test_batch gives a DataError listing it."""
    write_fake_cifar_folder(tmp_path / "b", 20, 10)
    (tmp_path / "b" / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DataError, match=r"missing .*test_batch"):
        D.load_cifar10(tmp_path / "b", download=False)


@pytest.mark.parametrize(
    "bad",
    [
        lambda o: o[b"data"].reshape(-1, 1024)[: len(o[b"labels"])],
        lambda o: o[b"data"].astype(np.float32),
        lambda o: [1, 2, 3],
    ],
)
def test_wrong_data_shape_or_dtype(tmp_path, bad):
    """'data' that is not a uint8 (N, 3072) array gives a DataError naming the batch."""
    write_fake_cifar(tmp_path, 20, 10, transform=_replace_in("data_batch_1", data=bad))
    with pytest.raises(DataError, match=r"data_batch_1: 'data' must be a uint8 array of shape \(N, 3072\)"):
        D.load_cifar10(tmp_path, download=False)


def test_labels_out_of_range(tmp_path):
    """A label of 10 gives a DataError naming the batch and the label."""
    write_fake_cifar(tmp_path, 20, 10, transform=_replace_in("test_batch", labels=lambda o: [10] + o[b"labels"][1:]))
    with pytest.raises(DataError, match=r"test_batch: label 10 is outside 0..9"):
        D.load_cifar10(tmp_path, download=False)


def test_label_count_mismatch(tmp_path):
    """Fewer labels than images gives a DataError naming the batch."""
    write_fake_cifar(tmp_path, 20, 10, transform=_replace_in("data_batch_4", labels=lambda o: o[b"labels"][:-1]))
    with pytest.raises(DataError, match=r"data_batch_4: 3 labels for 4 images"):
        D.load_cifar10(tmp_path, download=False)


# --------------------------------------------------------------------------- hostile archive members


def _info(name, type_=tarfile.REGTYPE, linkname=""):
    i = tarfile.TarInfo(name)
    i.type = type_
    i.linkname = linkname
    return i


def _archive_with(tmp_path, extra, omit=()):
    """A fake CIFAR archive in tmp_path/in whose members are the fake batches plus `extra`."""
    batches = [(_info(f"cifar-10-batches-py/{n}"), raw) for n, raw in fake_members(20, 10, omit=omit)]
    (tmp_path / "in").mkdir()
    return _tar_with(tmp_path / "in" / "cifar-10-python.tar.gz", batches + extra)


@pytest.mark.parametrize(
    "name",
    ["../escape.txt", "cifar-10-batches-py/../../escape.txt", "/tmp/bnwd_abs_escape.txt"],
    ids=["dotdot", "nested-dotdot", "absolute"],
)
def test_archive_is_read_in_memory_and_other_members_never_written(tmp_path, name):
    """The loader never extracts: a member with '..' or an absolute path is skipped, nothing is written."""
    archive = _archive_with(tmp_path, [(_info(name), b"x")])
    before = sorted(tmp_path.rglob("*"))
    assert D.load_cifar10(archive.parent, download=False).n_train == 20
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize(
    "type_", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE], ids=["symlink", "hardlink", "device"]
)
def test_archive_batch_member_that_is_a_link_or_device_is_refused(tmp_path, type_):
    """A batch member that is a link or a device is refused with DataError naming the member."""
    bad = (_info("cifar-10-batches-py/data_batch_2", type_, "/etc/passwd"), None)
    archive = _archive_with(tmp_path, [bad], omit=("data_batch_2",))
    with pytest.raises(DataError, match=r"member cifar-10-batches-py/data_batch_2 is not a regular file"):
        D.load_cifar10(archive.parent, download=False)


# --------------------------------------------------------------------------- download


def test_download_offline_says_where_to_put_archive(tmp_path, monkeypatch):
    """With no network, loading an empty folder raises DataError telling where to put the archive."""

    def offline(*a, **k):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(D.urllib.request, "urlopen", offline)
    root = tmp_path / "empty"
    with pytest.raises(DataError) as e:
        D.load_cifar10(root, download=True)
    msg = str(e.value)
    assert "could not download CIFAR-10" in msg and "no route to host" in msg
    assert f"put cifar-10-python.tar.gz in {root}" in msg and "BNWD_DATA" in msg
    assert list(root.iterdir()) == []


def test_download_wrong_md5_leaves_nothing(tmp_path, monkeypatch):
    """A download with the wrong md5 raises DataError with both sums and leaves no file behind."""
    body = b"this is not cifar"
    monkeypatch.setattr(D.urllib.request, "urlopen", lambda *a, **k: io.BytesIO(body))
    with pytest.raises(DataError) as e:
        D.load_cifar10(tmp_path, download=True)
    msg = str(e.value)
    assert D.CIFAR10_MD5 in msg and hashlib.md5(body).hexdigest() in msg
    assert "cifar-10-python.tar.gz" in msg
    assert list(tmp_path.iterdir()) == []


def test_download_success_is_checked_and_loaded(tmp_path, monkeypatch):
    """A download with the expected md5 is renamed into place and loaded."""
    body = write_fake_cifar(tmp_path / "src", 20, 10).read_bytes()
    monkeypatch.setattr(D, "CIFAR10_MD5", hashlib.md5(body).hexdigest())
    monkeypatch.setattr(D.urllib.request, "urlopen", lambda *a, **k: io.BytesIO(body))
    c = D.load_cifar10(tmp_path / "dl", download=True)
    assert c.n_train == 20
    assert [p.name for p in (tmp_path / "dl").iterdir()] == ["cifar-10-python.tar.gz"]


def test_no_download_when_disabled(tmp_path, monkeypatch):
    """download=False on an empty non-default folder raises DataError without touching the network."""

    def boom(*a, **k):
        raise AssertionError("network used")

    monkeypatch.setattr(D.urllib.request, "urlopen", boom)
    with pytest.raises(DataError, match="no CIFAR-10 in"):
        D.load_cifar10(tmp_path, download=False)


# --------------------------------------------------------------------------- augmentation


def _naive_crop_flip(x, dx, dy, flip):
    out = []
    for i in range(x.shape[0]):
        p = np.zeros((3, 40, 40), dtype=np.uint8)
        p[:, 4:36, 4:36] = x[i].numpy()
        w = p[:, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32]
        out.append(w[:, :, ::-1] if flip[i] else w)
    return torch.from_numpy(np.stack(out).copy())


def _rand_images(n, seed=0):
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_augment_preserves_shape_dtype_device():
    """augment returns uint8 [B,3,32,32] on the input's device."""
    x = _rand_images(7)
    y = D.augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.dtype == torch.uint8 and y.device == x.device


def test_crop_flip_matches_naive_reference():
    """crop_flip equals a per-image reference (pad 4, window [dy:dy+32, dx:dx+32], flip) incl. extremes."""
    x = _rand_images(6, seed=1)
    dx = torch.tensor([0, 8, 4, 0, 8, 3])
    dy = torch.tensor([0, 8, 4, 8, 0, 5])
    flip = torch.tensor([False, True, False, True, False, True])
    assert torch.equal(D.crop_flip(x, dx, dy, flip), _naive_crop_flip(x, dx.tolist(), dy.tolist(), flip.tolist()))


def test_augment_outputs_are_exact_windows_of_padded_image():
    """Every augmented image equals some (dx, dy, flip) window of its zero-padded source."""
    x = _rand_images(4, seed=2)
    y = D.augment(x, torch.Generator().manual_seed(3))
    for i in range(4):
        found = [
            (dx, dy, f)
            for dx in range(9)
            for dy in range(9)
            for f in (False, True)
            if torch.equal(_naive_crop_flip(x[i : i + 1], [dx], [dy], [f])[0], y[i])
        ]
        assert len(found) == 1


def test_augment_flips_about_half_and_uses_all_offsets():
    """With a fixed seed about half of 2000 images are flipped and all 9 offsets occur."""
    ramp = torch.arange(1, 33, dtype=torch.uint8).view(1, 1, 1, 32).expand(2000, 3, 32, 32).contiguous()
    y = D.augment(ramp, torch.Generator().manual_seed(0))
    row = y[:, 0, 16, :].to(torch.int64)
    nz = row > 0  # the ramp's nonzero part: increasing unless flipped
    first = nz.to(torch.int64).argmax(dim=1)
    last = 31 - nz.flip(1).to(torch.int64).argmax(dim=1)
    ar = torch.arange(len(row))
    flipped = row[ar, first] > row[ar, last]
    frac = flipped.float().mean().item()
    assert 0.45 < frac < 0.55
    _, _, flip = D.augment_params(2000, torch.Generator().manual_seed(0))
    assert flipped.tolist() == flip.tolist()
    dx, dy, _ = D.augment_params(2000, torch.Generator().manual_seed(1))
    assert set(dx.tolist()) == set(range(9)) == set(dy.tolist())


def test_augment_same_seed_same_output():
    """The same generator seed gives the same augmentation; another seed a different one."""
    x = _rand_images(16, seed=4)
    a = D.augment(x, torch.Generator().manual_seed(5))
    b = D.augment(x, torch.Generator().manual_seed(5))
    c = D.augment(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


# --------------------------------------------------------------------------- standardization


def test_standardize_zero_mean_unit_std():
    """Each standardized image has mean 0 and population std 1, as float32."""
    x = _rand_images(5, seed=7)
    s = D.standardize(x)
    assert s.dtype == torch.float32 and s.shape == x.shape
    flat = s.reshape(5, -1).double()
    assert flat.mean(1).abs().max() < 1e-5
    assert (flat.std(1, correction=0) - 1).abs().max() < 1e-5
    ref = (x.double() - x.double().mean((1, 2, 3), keepdim=True)) / x.double().std(
        (1, 2, 3), correction=0, keepdim=True
    )
    assert torch.allclose(s.double(), ref, atol=1e-5)
    assert torch.allclose(D.standardize(x.float()), s)


def test_standardize_constant_image_is_zero_not_nan():
    """A constant image standardizes to zeros (std floor 1/sqrt(3072)), and a nearly constant one is
    divided by the floor, not by its tiny std."""
    x = torch.full((2, 3, 32, 32), 77, dtype=torch.uint8)
    s = D.standardize(x)
    assert torch.isfinite(s).all() and (s == 0).all()
    y = torch.zeros(1, 3, 32, 32)
    y[0, 0, 0, 0] = 0.001  # std ~ 1.8e-5, far below the floor 0.018
    t = D.standardize(y)
    assert torch.allclose(t[0, 0, 0, 0], torch.tensor((0.001 - 0.001 / 3072) * 3072**0.5), rtol=1e-4)


# --------------------------------------------------------------------------- batching


@pytest.fixture
def tiny(tmp_path):
    write_fake_cifar(tmp_path, n_train=100, n_test=30, seed=3)
    return D.load_cifar10(tmp_path, download=False)


def test_trainloader_same_seed_step_same_batch_on_resume(tiny):
    """A fresh loader (as after a resume) gives the identical batch for the same (seed, step)."""
    a = D.TrainLoader(tiny, 16, seed=7)
    xa, ya = a.batch(13)
    a.batch(2)
    b = D.TrainLoader(tiny, 16, seed=7)
    xb, yb = b.batch(13)
    assert xb.dtype == torch.float32 and xb.shape == (16, 3, 32, 32) and yb.dtype == torch.int64
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert torch.equal(a.batch(13)[0], xa)  # also after the cached epoch changed
    assert not torch.equal(D.TrainLoader(tiny, 16, seed=8).batch(13)[0], xa)


def test_trainloader_each_index_once_per_epoch_and_epochs_differ(tiny):
    """Within an epoch each image is used at most once (exactly once when N % B == 0); epochs reorder."""
    ld = D.TrainLoader(tiny, 20, seed=0)
    assert ld.steps_per_epoch == 5
    for epoch in range(2):
        idx = torch.cat([ld.indices(epoch * 5 + i) for i in range(5)])
        assert sorted(idx.tolist()) == list(range(100))
    assert not torch.equal(ld.epoch_permutation(0), ld.epoch_permutation(1))
    ld2 = D.TrainLoader(tiny, 30, seed=0)  # drops the last partial batch
    assert ld2.steps_per_epoch == 3
    idx = torch.cat([ld2.indices(i) for i in range(3)])
    assert len(set(idx.tolist())) == 90
    assert torch.equal(ld2.indices(3), ld2.epoch_permutation(1)[:30])


def test_trainloader_labels_follow_images(tiny):
    """Batch labels are the labels of the batch's images."""
    ld = D.TrainLoader(tiny, 10, seed=1)
    _, y = ld.batch(4)
    assert torch.equal(y, tiny.train_y[ld.indices(4)])


def test_test_batches_cover_test_set_in_order(tiny):
    """test_batches yields every test image once, in order, standardized but not augmented."""
    xs, ys = zip(*D.test_batches(tiny, 8))
    assert [len(y) for y in ys] == [8, 8, 8, 6]
    assert torch.equal(torch.cat(ys), tiny.test_y)
    assert torch.equal(torch.cat(xs), D.standardize(tiny.test_x))


def test_subset_balanced_ordered_deterministic(tiny):
    """subset keeps n images per split, balanced over classes, in original order, same for a seed."""
    s = tiny.subset(30, 10, seed=2)
    assert s.n_train == 30 and s.n_test == 10
    assert s.train_y.bincount(minlength=10).tolist() == [3] * 10
    assert s.test_y.bincount(minlength=10).tolist() == [1] * 10
    # relative order kept: the kept images appear in the original in the same order
    pos = [next(j for j in range(tiny.n_train) if torch.equal(tiny.train_x[j], img)) for img in s.train_x]
    assert pos == sorted(pos)
    t = tiny.subset(30, 10, seed=2)
    assert torch.equal(s.train_x, t.train_x)
    assert not torch.equal(tiny.subset(30, 10, seed=3).train_x, s.train_x)
    assert tiny.subset(0, 0) is tiny
    with pytest.raises(DataError):
        tiny.subset(1000, 0)


def test_to_returns_new_object(tiny):
    """Cifar10.to returns a new object with tensors on the device, the original unchanged."""
    m = tiny.to("cpu")
    assert m is not tiny and m.train_x.device.type == "cpu" and m.source == tiny.source
