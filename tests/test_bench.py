"""`bnwd bench`, `benchmarks/pack_data.py` and `benchmarks/recipe_vs_bnwd.py`: small and fast."""

import json
from pathlib import Path

import pytest
from fakes import benchmark_script

from bnwd.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--device", "cpu", "--width", "4", "--batch-size", "8", "--steps", "2"]
TINY += ["--eval-batch-size", "8", "--eval-batches", "1", "--threads", "1"]


@pytest.fixture(scope="module")
def threads_restored():
    """`--threads 1` sets torch's thread count for the whole process: put it back afterwards."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_json(tmp_path_factory, threads_restored):
    """One tiny `bnwd bench --json --json-out FILE` run shared by the tests of its output."""
    import contextlib
    import io

    out_file = tmp_path_factory.mktemp("bench") / "b.json"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["bench", *TINY, "--json", "--json-out", str(out_file)])
    return rc, out.getvalue(), err.getvalue(), out_file


def test_bench_json_flag_prints_one_json_object_last(tiny_json):
    """With --json the last stdout line is one JSON object with the documented keys."""
    from bnwd.run.bench import JSON_KEYS

    rc, out, _, _ = tiny_json
    assert rc == 0
    res = json.loads(out.strip().splitlines()[-1])
    for k in (*JSON_KEYS, "device", "torch", "threads", "cpu", "batch_size", "width", "configs"):
        assert k in res, k
    assert res["device"] == "cpu" and res["batch_size"] == 8 and res["width"] == 4 and res["threads"] == 1
    assert res["peak_rss_mb"] > 10 and res["cpu"]


def test_bench_json_out_file_matches_stdout(tiny_json):
    """--json-out writes the same object as the --json line."""
    _, out, _, path = tiny_json
    assert json.loads(path.read_text()) == json.loads(out.strip().splitlines()[-1])


def test_bench_img_per_s_matches_ms_per_step(tiny_json):
    """Every img/s figure is batch / (ms per step or batch / 1000), and the overhead is t_with / t_without - 1."""
    res = json.loads(tiny_json[1].strip().splitlines()[-1])
    r = res["configs"]["channels_last"]
    assert r["img_per_s"] == pytest.approx(8 / (r["ms_per_step"] / 1e3))
    assert r["img_per_s_with_monitor"] == pytest.approx(8 / (r["ms_per_step_with_monitor"] / 1e3))
    assert r["eval_img_per_s"] == pytest.approx(8 / (r["eval_ms_per_batch"] / 1e3))
    assert r["monitor_overhead"] == pytest.approx(r["ms_per_step_with_monitor"] / r["ms_per_step"] - 1)
    assert res["train_img_per_s"] == r["img_per_s_with_monitor"]
    assert res["train_img_per_s_no_monitor"] == r["img_per_s"]


def test_bench_times_training_layout_on_cpu_by_default(tiny_json):
    """On CPU the default bench times training's layout (channels_last) only, eager (compile
    auto = off on CPU), and announces each phase on stderr before timing it."""
    _, _, err, _ = tiny_json
    res = json.loads(tiny_json[1].strip().splitlines()[-1])
    assert list(res["configs"]) == ["channels_last"] and res["primary"] == "channels_last"
    assert res["compile"]["enabled"] is False
    assert "timing channels_last: train with and without monitor, interleaved (2 steps each of batch 8)" in err
    assert "timing channels_last: eval (1 batches of 8)" in err


def tiny_compiled_bench(steps: int, compile_probe_on: bool = False) -> dict:
    """`bnwd bench --compile on` at the smallest sizes (width 4, batch 8, one thread)."""
    from bnwd.run.bench import bench

    return bench(
        device="cpu",
        batch_size=8,
        steps=steps,
        width=4,
        threads=1,
        compile="on",
        eval_batch_size=8,
        eval_batches=1,
        compile_probe_on=compile_probe_on,
    )


def test_bench_compile_failure_falls_back_to_eager(monkeypatch, capsys, threads_restored):
    """If torch.compile fails, one line says so and the eager numbers are still reported."""
    import torch

    def broken(model, **kw):
        def fail(*a, **k):
            raise RuntimeError("no C compiler\nsecond line")

        return fail

    monkeypatch.setattr(torch, "compile", broken)
    res = tiny_compiled_bench(steps=1)
    assert (
        list(res["configs"]) == ["channels_last"]
        and "RuntimeError: no C compiler second line" in res["compile"]["error"]
    )
    err = capsys.readouterr().err
    assert err.count("torch.compile failed") == 1 and "continuing with eager" in err


def test_bench_compile_on_times_eager_and_compiled_side_by_side(monkeypatch, capsys, threads_restored):
    """--compile on adds a `channels_last+compile` configuration, timed interleaved with eager, with its
    one-time compile cost (first step less a steady step, apart from the step time) and speed-up
    over eager; the top-level numbers are the fastest configuration's (Monitor on).
    (torch.compile is replaced by a pass-through: a real compile takes minutes on a 2-core CPU.)"""
    import torch

    monkeypatch.setattr(torch, "compile", lambda model, **kw: model)
    res = tiny_compiled_bench(steps=2)
    assert list(res["configs"]) == ["channels_last", "channels_last+compile"]
    fastest = max(res["configs"], key=lambda n: res["configs"][n]["img_per_s_with_monitor"])
    assert res["primary"] == fastest and res["train_img_per_s"] == res["configs"][fastest]["img_per_s_with_monitor"]
    c = res["configs"]["channels_last+compile"]
    # the one-time costs are the first step (eval batch) less a steady one, floored at 0
    assert c["compiled"] and c["compile_s"] == pytest.approx(max(0.0, c["first_step_s"] - c["ms_per_step"] / 1e3))
    assert c["compile_eval_s"] == pytest.approx(max(0.0, c["eval_first_batch_s"] - c["eval_ms_per_batch"] / 1e3))
    assert c["speedup_vs_eager"] == pytest.approx(res["configs"]["channels_last"]["ms_per_step"] / c["ms_per_step"])
    assert res["compile_s"] == c["compile_s"]
    assert "timing channels_last and channels_last+compile: train with and without monitor" in capsys.readouterr().err


def test_bench_compile_probe_crash_falls_back_to_eager(monkeypatch, capsys, threads_restored):
    """A compiled kernel that kills its process (seen: "double free or corruption" on this CPU)
    kills only the probe child: one line names the signal and the bench goes on eagerly."""
    import bnwd.run.bench as B

    monkeypatch.setattr(
        B, "_PROBE_CODE", "import os, sys; print('double free or corruption', file=sys.stderr); os.abort()"
    )
    res = tiny_compiled_bench(steps=1, compile_probe_on=True)
    assert list(res["configs"]) == ["channels_last"]
    assert (
        res["compile"]["error"] == "compiled step crashed with SIGABRT in a child process (double free or corruption)"
    )
    assert capsys.readouterr().err.count("torch.compile failed") == 1


def test_bench_rejects_unknown_layout(capsys):
    """An unknown --layouts entry is a one-line usage error (exit 2) naming the option."""
    assert main(["bench", "--device", "cpu", "--layouts", "plain,nhwc"]) == 2
    assert "--layouts" in capsys.readouterr().err


def test_bench_watchdog_names_the_stuck_configuration(capsys):
    """A configuration that outlives the watchdog gets one line on stderr naming it."""
    import time

    from bnwd.run.bench import Watchdog

    with Watchdog("channels_last", 0.05, "hint text"):
        time.sleep(0.3)
    assert "still timing channels_last after 0 s; hint text" in capsys.readouterr().err


# --------------------------------------------------------------------------- pack_data


@pytest.fixture(scope="module")
def pack_mod():
    return benchmark_script("pack_data")


def test_pack_unpack_round_trip_whole_archive(tmp_path, fake_data_dir, pack_mod):
    """An archive packed into small chunks unpacks byte for byte, and bnwd reads the result."""
    from bnwd.run.data import load_cifar10

    src = fake_data_dir / "cifar-10-python.tar.gz"
    m = pack_mod.pack(fake_data_dir, tmp_path / "p", chunk_mib=0.25)  # the 1.5 MB archive in 256 KiB chunks
    assert len(m["chunks"]) > 3 and all(c["size"] <= 2**18 for c in m["chunks"])
    assert m["archive_sha256"] == pack_mod.sha256_file(src)
    dest = pack_mod.unpack(tmp_path / "p", tmp_path / "u")
    assert dest.read_bytes() == src.read_bytes()
    assert load_cifar10(tmp_path / "u", download=False).n_train == 400


def test_pack_subset_is_class_balanced_and_readable(tmp_path, fake_data_dir, pack_mod):
    """--subset N,M packs the class-balanced subset bnwd would train on, as a readable archive (xz-compressed)."""
    import torch

    from bnwd.run.data import load_cifar10

    assert (
        pack_mod.main(
            ["pack", "--data", str(fake_data_dir), "--out", str(tmp_path / "p")]
            + ["--subset", "100,20", "--compress", "xz", "--chunk-mib", "0.01"]
        )
        == 0
    )
    pack_mod.unpack(tmp_path / "p", tmp_path / "u")
    got = load_cifar10(tmp_path / "u", download=False)
    want = load_cifar10(fake_data_dir, download=False).subset(100, 20, seed=0)
    assert torch.equal(got.train_x, want.train_x) and torch.equal(got.test_y, want.test_y)
    assert torch.bincount(got.train_y, minlength=10).tolist() == [10] * 10


def test_unpack_refuses_a_corrupted_chunk_by_name(tmp_path, fake_data_dir, pack_mod, capsys):
    """A flipped byte in one chunk: unpack exits 1 naming that chunk and writes nothing."""
    m = pack_mod.pack(fake_data_dir, tmp_path / "p", chunk_mib=4096 / 2**20)
    bad = tmp_path / "p" / m["chunks"][1]["file"]
    b = bytearray(bad.read_bytes())
    b[10] ^= 0xFF
    bad.write_bytes(bytes(b))
    assert pack_mod.main(["unpack", str(tmp_path / "p"), "--out", str(tmp_path / "u")]) == 1
    err = capsys.readouterr().err
    assert f"chunk {m['chunks'][1]['file']}: sha256" in err
    assert not (tmp_path / "u" / "cifar-10-python.tar.gz").exists()


def test_unpack_refuses_a_missing_chunk_by_name(tmp_path, fake_data_dir, pack_mod):
    """A deleted chunk is named too."""
    m = pack_mod.pack(fake_data_dir, tmp_path / "p", chunk_mib=4096 / 2**20)
    (tmp_path / "p" / m["chunks"][0]["file"]).unlink()
    with pytest.raises(pack_mod.PackError, match=f"chunk {m['chunks'][0]['file']}: cannot read"):
        pack_mod.unpack(tmp_path / "p", tmp_path / "u")


def test_synth_writes_a_readable_balanced_archive(tmp_path, pack_mod):
    """`pack_data.py synth` (the GPU check's fallback) writes a CIFAR-format archive bnwd reads."""
    import torch

    from bnwd.run.data import load_cifar10

    pack_mod.write_synthetic(tmp_path, n_train=30, n_test=10)
    d = load_cifar10(tmp_path, download=False)
    assert (d.n_train, d.n_test) == (30, 10) and torch.bincount(d.train_y).tolist() == [3] * 10


# --------------------------------------------------------------------------- recipe_vs_bnwd


def test_side_by_side_statistics():
    """min / median / max of each side and the ratio of medians (bnwd / recipe) on given numbers."""
    rv = benchmark_script("recipe_vs_bnwd")
    c = rv.compare([300.0, 100.0, 200.0], [500.0, 300.0, 400.0, 900.0])
    assert c["recipe"] == {"n": 3, "min": 100.0, "median": 200.0, "max": 300.0}
    assert c["bnwd"] == {"n": 4, "min": 300.0, "median": 450.0, "max": 900.0}
    assert c["ratio"] == pytest.approx(450.0 / 200.0)


def test_hand_transform_is_pad_crop_flip_totensor_normalize():
    """The hand-written recipe transform draws (row, column, flip) like torchvision and computes
    crop of the zero-padded image, optional mirror, /255, (x - mean) / std."""
    import numpy as np
    import torch

    rv = benchmark_script("recipe_vs_bnwd")
    img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    torch.manual_seed(5)
    x = rv.HandTransform()(img)
    torch.manual_seed(5)
    i, j = int(torch.randint(0, 9, (1,))), int(torch.randint(0, 9, (1,)))
    flip = bool(torch.rand(1) < 0.5)
    ref = np.pad(img, ((4, 4), (4, 4), (0, 0)))[i : i + 32, j : j + 32]
    ref = ref[:, ::-1] if flip else ref
    ref = torch.tensor(ref.transpose(2, 0, 1).copy(), dtype=torch.float32) / 255
    ref = (ref - torch.tensor(rv.MEAN).view(3, 1, 1)) / torch.tensor(rv.STD).view(3, 1, 1)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert torch.allclose(x, ref, atol=1e-6)
