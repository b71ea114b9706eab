"""benchmarks/gpu_stage1.sh (issue 24): the article's stage 1 in legs on a lent GPU. Its CPU
rehearsal (chunks, reassembly, legs resumed from carried run folders, lr_scaled following its
baseline) must end bit-identical to one unsplit go; the pred-xz data codec must be exact."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fakes import benchmark_script, write_fake_cifar

ROOT = Path(__file__).resolve().parents[1]
REAL = Path(os.environ.get("BNWD_DATA", "/work/shared/data"))

pack_data = benchmark_script("pack_data")
stage1 = benchmark_script("gpu_stage1")


def test_pred_xz_is_exact():
    """2-D differences + colour decorrelation + xz: the decoded arrays are the packed ones, bit for bit
    (edge values 0/255 included, where the mod-256 arithmetic wraps)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (37, 3, 32, 32), dtype=torch.uint8, generator=g)
    x[0], x[1] = 0, 255
    y = torch.randint(0, 10, (37,), generator=g)
    xt = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=g)
    yt = torch.randint(0, 10, (5,), generator=g)
    out = pack_data.pred_decode(pack_data.pred_encode(x, y, xt, yt))
    for a, b in zip(out, (x, y, xt, yt)):
        assert torch.equal(a, b.to(a.dtype))
    assert pack_data.arrays_sha256(*out) == pack_data.arrays_sha256(x, y, xt, yt)


def test_pred_xz_pack_unpack_and_damage(tmp_path):
    """pack --compress pred-xz -> chunks; unpack rebuilds an archive load_cifar10 reads as the same
    data; a damaged chunk is named and nothing is written."""
    from bnwd.run.data import load_cifar10

    src = tmp_path / "src"
    write_fake_cifar(src, n_train=120, n_test=40, seed=3)
    m = pack_data.pack(src, tmp_path / "p", chunk_mib=0.05, compress="pred-xz")
    assert len(m["chunks"]) >= 2 and m["arrays_sha256"]
    pack_data.unpack(tmp_path / "p", tmp_path / "u")
    a, b = load_cifar10(src, download=False), load_cifar10(tmp_path / "u", download=False)
    for k in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, k), getattr(b, k)), k
    part = tmp_path / "p" / m["chunks"][1]["file"]
    part.write_bytes(b"x" + part.read_bytes()[1:])
    with pytest.raises(pack_data.PackError, match=m["chunks"][1]["file"]):
        pack_data.unpack(tmp_path / "p", tmp_path / "u2")
    assert not (tmp_path / "u2" / pack_data.ARCHIVE).exists()


@pytest.mark.timeout(420)
def test_rehearsal_split_equals_unsplit(tmp_path):
    """`bash benchmarks/gpu_stage1.sh --rehearse`: 3 data chunks (one per simulated device call),
    3 legs stopped at fixed steps (lr_scaled behind its baseline, mid-window), each resumed from the
    previous leg's tar only, then one unsplit go: `rehearsal ok` only when both runs' metrics.jsonl
    are bit-identical. Real CIFAR-10 when it is here (a 640 + 200 subset), else fake images."""
    data = REAL if (REAL / "cifar-10-python.tar.gz").exists() else tmp_path / "fake"
    if data != REAL:
        write_fake_cifar(data, n_train=800, n_test=300, seed=0)
    env = {**os.environ, "PY": sys.executable, "TMPDIR": str(tmp_path)}
    p = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_stage1.sh"), "--rehearse", "--data", str(data)],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    lines = p.stdout.strip().splitlines()
    assert p.returncode == 0 and lines and lines[-1].startswith("rehearsal ok"), p.stdout[-3000:] + p.stderr[-2000:]
    assert "3 legs" in lines[-1] and "bit-identical" in lines[-1]


def test_stop_at_step_and_after_then_resume_equals_one_go(tmp_path, fake_data, one_thread):
    """`bnwd train --stop-at-step N` checkpoints at N and exits 130; --resume continues to the end,
    with the same metrics as one go (the legs' mechanism, in-process)."""
    from bnwd.run import trainer as T
    from bnwd.run.config import make_config
    from bnwd.run.trainer import Interrupted

    ov = {"epochs": 1.0, "lr_milestones": [0.5, 0.75], "train_subset": 0, "test_subset": 64, "sample_every": 0.5}
    cfg = make_config("smoke", ov)  # 6 steps of 64 images
    with pytest.raises(Interrupted, match="stop_step=2 at step 2/6"):
        T.train(cfg, tmp_path / "s", dataset=fake_data, progress=False, stop_step=2)
    with pytest.raises(Interrupted, match="stop_after"):
        T.train(cfg, tmp_path / "s", dataset=fake_data, progress=False, resume=True, stop_after=0)
    T.train(cfg, tmp_path / "s", dataset=fake_data, progress=False, resume=True)
    T.train(cfg, tmp_path / "o", dataset=fake_data, progress=False)
    rows = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert rows(tmp_path / "s") == rows(tmp_path / "o")
