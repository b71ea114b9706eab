"""`bnwd sweep` (issue 13): grid parsing, local and Ray engines, resume after a killed driver, bad input."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bnwd.batch.sweep import expand, parse_grid
from bnwd.cli import main
from bnwd.errors import ConfigError

GRID = ["lr=0.05,0.1,0.2", "conv_weight_decay=5e-3,1e-2,2e-2"]
FIXED = ["threads=1", "train_subset=0", "test_subset=0", "epochs=1", "lr_milestones=0.5,0.75"]


def sweep_cli(out, data, *extra, grid=GRID, fixed=FIXED):
    return main(["sweep", "--grid", *grid, "--seeds", "2", "--preset", "smoke", "--out", str(out), "--data",
                 str(data), "--no-progress", "--set", *fixed, *extra])  # fmt: skip


def rows(out):
    with open(out / "summary.csv") as f:
        return list(csv.DictReader(f))


def results(out):
    """Per run: what the run measured (not its wall time)."""
    keep = ("run", "status", "final_test_acc", "final_train_loss", "rel_step_measured", "conv_sqsum_measured")
    return {r["run"]: {k: r[k] for k in keep} for r in rows(out)}


def test_parse_grid_typed_values():
    """Values are typed as the config field (float, int, bool, str); duplicates collapse."""
    g = parse_grid(["lr=0.05,0.1,0.1", "width=8,16", "log_layers=true", "optimizer=sgd,adamw"])
    assert g == {"lr": [0.05, 0.1], "width": [8, 16], "log_layers": [True], "optimizer": ["sgd", "adamw"]}


@pytest.mark.parametrize(
    "item, msg",
    [
        ("lrr=0.1", "unknown config key"),
        ("lr=", "empty value"),
        ("lr=0.1,,0.2", "empty value"),
        ("width=8.5", "width"),
        ("lr=abc", "lr"),
        ("seed=1,2", "--seeds"),
        ("lr_milestones=1,2", "list"),
        ("lr0.1", "key=v1,v2"),
    ],
)
def test_bad_grid_one_line_exit_2_nothing_written(item, msg, tmp_path, fake_data_dir, capsys):
    """Bad input: one line on stderr naming the problem, exit 2, no sweep folder."""
    out = tmp_path / "sw"
    assert sweep_cli(out, fake_data_dir, grid=[item]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and msg in err, err
    assert not out.exists()


def test_invalid_combination_rejected_before_anything_runs(tmp_path, fake_data_dir, capsys):
    """Each cell's config is validated up front: depth=9 fails before any run starts."""
    out = tmp_path / "sw"
    assert sweep_cli(out, fake_data_dir, grid=["depth=8,9"]) == 2
    assert "depth" in capsys.readouterr().err and not out.exists()


def test_huge_grid_needs_yes(tmp_path, fake_data_dir, capsys):
    """More than 10,000 runs is refused without --yes (101 x 100 cells x 1 seed)."""
    lrs = ",".join(str(0.001 * (i + 1)) for i in range(101))
    wds = ",".join(str(1e-5 * (i + 1)) for i in range(100))
    out = tmp_path / "sw"
    assert main(["sweep", "--grid", f"lr={lrs}", f"weight_decay={wds}", "--out", str(out), "--preset", "smoke",
                 "--data", str(fake_data_dir)]) == 2  # fmt: skip
    assert "--yes" in capsys.readouterr().err and not out.exists()
    with pytest.raises(ConfigError, match="--yes"):
        expand(parse_grid([f"lr={lrs}", f"weight_decay={wds}"]), [0], "smoke", "baseline", {})


def test_ray_missing_says_how_to_install(tmp_path, fake_data_dir, monkeypatch, capsys):
    """Without Ray installed, --engine ray says in one line how to install it."""
    monkeypatch.setitem(sys.modules, "ray", None)
    assert sweep_cli(tmp_path / "sw", fake_data_dir, "--engine", "ray") == 2
    assert "pip install 'bnwd[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "sw").exists()


def test_unreachable_address_names_it(tmp_path, fake_data_dir, capsys):
    """An address where nothing listens: one line naming it, exit 2, within seconds."""
    pytest.importorskip("ray")
    t = time.time()
    assert sweep_cli(tmp_path / "sw", fake_data_dir, "--engine", "ray", "--address", "127.0.0.1:9") == 2
    err = capsys.readouterr().err.strip()
    assert "127.0.0.1:9" in err and len(err.splitlines()) == 1 and time.time() - t < 30


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory, fake_data_dir):
    """The smoke-sized 3x3 grid x 2 seeds with --engine local, run once for the tests below."""
    out = tmp_path_factory.mktemp("sweep") / "local"
    assert sweep_cli(out, fake_data_dir) == 0
    return out


@pytest.mark.timeout(600)
def test_local_sweep_3x3x2_summary_figures_and_rerun(local_sweep, fake_data_dir):
    """A 3x3 grid x 2 seeds: 18 finished run folders, one summary row each, 9 cells with 2 seeds,
    the three figures; the same command again skips every finished run and gives the same summary."""
    out = local_sweep
    r = rows(out)
    assert len(r) == 18 and {x["status"] for x in r} == {"done"}
    assert len({x["run"] for x in r}) == 18
    assert all((out / "runs" / x["run"] / "summary.json").exists() for x in r)
    s = json.loads((out / "summary.json").read_text())
    assert len(s["cells"]) == 9 and all(c["seeds_done"] == 2 for c in s["cells"])
    for c in s["cells"]:  # theory column: sqrt(2 lr wd / (1 + mu)), mu = 0.9
        assert c["rel_step_predicted_mean"] == pytest.approx((2 * c["lr"] * c["conv_weight_decay"] / 1.9) ** 0.5)
    for name in ("sweep_accuracy", "sweep_rel_step", "sweep_norm"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
    before = results(out)
    mtimes = {p: p.stat().st_mtime for p in (out / "runs").glob("*/summary.json")}
    assert sweep_cli(out, fake_data_dir) == 0
    assert results(out) == before
    assert {p: p.stat().st_mtime for p in (out / "runs").glob("*/summary.json")} == mtimes
    assert main(["sweep", "--plot", str(out)]) == 0 and results(out) == before


def test_other_grid_in_same_folder_refused(tmp_path, fake_data_dir, capsys):
    """A sweep folder belongs to one grid: another grid there is refused (more seeds are not)."""
    out = tmp_path / "sw"
    assert sweep_cli(out, fake_data_dir, grid=["lr=0.1"], fixed=[*FIXED, "epochs=0.5"]) == 0
    capsys.readouterr()
    assert sweep_cli(out, fake_data_dir, grid=["lr=0.2"], fixed=[*FIXED, "epochs=0.5"]) == 2
    assert "another sweep" in capsys.readouterr().err


def test_failed_run_retried_then_reported(tmp_path, fake_data_dir, monkeypatch, capsys):
    """A run that fails twice is reported with its error in the summary, never dropped; exit 1."""
    from bnwd.batch import engine as G

    calls = []
    real = G.train_run

    def flaky(spec, out, data, force=False):
        calls.append(spec.name)
        if "lr=0.2" in spec.name:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(spec, out, data, force)

    monkeypatch.setattr(G, "train_run", flaky)
    out = tmp_path / "sw"
    assert sweep_cli(out, fake_data_dir, "--jobs", "1", grid=["lr=0.1,0.2"], fixed=[*FIXED, "epochs=0.5"]) == 1
    r = {x["run"]: x for x in rows(out)}
    assert len(r) == 4 and calls.count("lr=0.2__s0") == 2
    assert r["lr=0.2__s0"]["status"] == "failed" and "illegal memory access" in r["lr=0.2__s0"]["error"]
    assert r["lr=0.1__s1"]["status"] == "done"
    assert "lr=0.2__s1: failed" in capsys.readouterr().out


@pytest.mark.timeout(600)
def test_ray_engine_matches_local(tmp_path, fake_data_dir, local_sweep):
    """--engine ray on a local Ray instance (started and stopped by the command): the same 18 runs
    and the same results as the local engine (CPU, one thread each, so bit-identical)."""
    pytest.importorskip("ray")
    ray_out = tmp_path / "ray"
    assert sweep_cli(ray_out, fake_data_dir, "--engine", "ray", "--cpus-per-run", "1") == 0
    assert results(ray_out) == results(local_sweep)
    for name in ("sweep_accuracy", "sweep_rel_step", "sweep_norm"):
        assert (ray_out / "figures" / f"{name}.png").exists()
    import ray

    assert not ray.is_initialized()


def children(pid: int) -> list[int]:
    """Child processes of `pid` (Linux /proc), of all its threads."""
    out = []
    for f in Path(f"/proc/{pid}/task").glob("*/children"):
        out += [int(x) for x in f.read_text().split()]
    return out


def alive(pid: int) -> bool:
    """`pid` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


@pytest.mark.timeout(600)
def test_killed_driver_rerun_resumes_each_run_once(tmp_path, fake_data_dir):
    """SIGKILL the driver mid-sweep (2 worker processes); the same command again finishes the sweep:
    every run exactly once in the summary, with the results of an uninterrupted sweep."""
    fixed = [*FIXED, "epochs=3", "lr_milestones=2,2.5", "checkpoint_every=0.5"]
    grid = ["lr=0.05,0.1", "conv_weight_decay=5e-3"]
    out, ref = tmp_path / "sw", tmp_path / "ref"
    cmd = [sys.executable, "-m", "bnwd", "sweep", "--grid", *grid, "--seeds", "2", "--preset", "smoke", "--out",
           str(out), "--data", str(fake_data_dir), "--no-progress", "--jobs", "2", "--set", *fixed]  # fmt: skip
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=False)
    deadline = time.time() + 240
    while time.time() < deadline and len(list((out / "runs").glob("*/summary.json"))) < 2:
        time.sleep(0.2)
    kids = children(p.pid)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    done_at_kill = len(list((out / "runs").glob("*/summary.json")))
    assert 2 <= done_at_kill < 4, "the kill should land mid-sweep"
    # orphaned workers got SIGTERM (PR_SET_PDEATHSIG): they checkpoint and exit; idle ones exit too
    deadline = time.time() + 60
    while time.time() < deadline and any(alive(k) for k in kids):
        time.sleep(0.2)
    assert len(kids) >= 2 and not [k for k in kids if alive(k)], "worker processes outlived the driver"
    assert subprocess.run(cmd, capture_output=True, text=True, timeout=400).returncode == 0
    got = rows(out)
    assert len(got) == 4 and len({r["run"] for r in got}) == 4 and {r["status"] for r in got} == {"done"}
    assert sweep_cli(ref, fake_data_dir, "--jobs", "2", grid=grid, fixed=fixed) == 0
    assert results(out) == results(ref)


@pytest.mark.timeout(600)
def test_reproduce_on_ray_equals_local(tmp_path, fake_data_dir):
    """`reproduce --engine ray`: one Ray task per seed (its runs in order); the metrics equal a
    local reproduce's line for line (one thread each), the bn098 view included."""
    pytest.importorskip("ray")
    from bnwd.batch.reproduce import reproduce

    kw = dict(data=str(fake_data_dir), progress=False, seed_list="0,1")
    ov = {"train_subset": 0, "test_subset": 0, "threads": 1, "epochs": 1.0, "lr_milestones": [0.5, 0.75]}
    reproduce("smoke", out=str(tmp_path / "local"), overrides=ov, **kw)
    res = reproduce("smoke", out=str(tmp_path / "ray"), overrides=ov, engine="ray", cpus_per_run=1, **kw)
    assert (tmp_path / "ray" / "report.md").exists() and res["figures"]
    runs = sorted(p.name for p in (tmp_path / "local/runs").iterdir())
    assert runs == sorted(p.name for p in (tmp_path / "ray/runs").iterdir()) and len(runs) == 8
    for run in runs:
        a = (tmp_path / "local/runs" / run / "metrics.jsonl").read_text()
        assert a and a == (tmp_path / "ray/runs" / run / "metrics.jsonl").read_text(), run


def test_run_progress_reads_each_runs_last_sample_point(tmp_path):
    """The pool's bar shows, per running run, the last logged step over config.json's total_steps;
    a run that has not written its config yet is 'starting'."""
    from bnwd.batch.engine import _run_progress

    rd = tmp_path / "runs" / "baseline-s0"
    rd.mkdir(parents=True)
    (rd / "config.json").write_text(json.dumps({"total_steps": 200}))
    (rd / "metrics.jsonl").write_text("")
    assert _run_progress(tmp_path, ["baseline-s0"]) == "baseline-s0 0%"
    (rd / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in (25, 50)))
    assert _run_progress(tmp_path, ["baseline-s0", "no_conv_l2-s0"]) == "baseline-s0 25%  no_conv_l2-s0 starting"


@pytest.mark.timeout(300)
def test_a_dead_worker_breaks_no_run(tmp_path, fake_data_dir):
    """A worker killed mid-run takes the whole process pool with it; run_local rebuilds the pool
    and every run it held trains again, so all four runs finish."""
    from fakes import die_once

    from bnwd.batch.engine import run_local

    fixed = {"threads": 1, "epochs": 0.5, "train_subset": 0, "test_subset": 0}
    specs = expand(parse_grid(["lr=0.1,0.2"]), [0, 1], "smoke", "baseline", fixed)
    res = run_local(specs, tmp_path, str(fake_data_dir), jobs=2, progress=False, fn=die_once)
    assert {k: v["status"] for k, v in res.items()} == dict.fromkeys((s.name for s in specs), "done")
    assert sorted(p.name for p in tmp_path.glob("*.died")) == ["lr=0.1__s1.died", "lr=0.2__s1.died"]


@pytest.mark.timeout(300)
def test_a_run_that_kills_every_pool_is_reported_not_retried_forever(tmp_path):
    """A pool is rebuilt at most once per run: runs whose workers always die end as failed."""
    from fakes import always_die

    from bnwd.batch.engine import run_local

    specs = expand(parse_grid(["lr=0.1,0.2"]), [0], "smoke", "baseline", {})
    res = run_local(specs, tmp_path, None, jobs=2, progress=False, fn=always_die)
    assert [v["status"] for v in res.values()] == ["failed", "failed"]
    assert all("terminated abruptly" in v["error"] or "Broken" in v["error"] for v in res.values())


def test_a_run_given_up_on_is_marked_failed_and_the_mark_cleared_on_the_next_call(tmp_path):
    """run_local writes RUN/failed.txt with the error of a run it gives up on (a reader of that run
    stops waiting: `train.ReferenceNorms`), and removes it before it runs that run again."""
    from bnwd.batch.engine import run_local

    specs = expand(parse_grid(["lr=0.1"]), [0], "smoke", "baseline", {})
    mark = tmp_path / "runs" / specs[0].name / "failed.txt"

    def boom(spec, out, data, force):
        raise RuntimeError("boom")

    res = run_local(specs, tmp_path, None, jobs=1, progress=False, fn=boom)
    assert res[specs[0].name]["status"] == "failed" and mark.read_text().strip() == "RuntimeError: boom"
    seen = []
    res = run_local(specs, tmp_path, None, jobs=1, progress=False, fn=lambda *a: seen.append(mark.exists()) or {})
    assert res[specs[0].name]["status"] == "done" and seen == [False] and not mark.exists()
