"""The command line's answers to bad input and interrupts: one line on stderr, the right exit code,
nothing written, nothing started; `bnwd config`; one default-preset rule."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import bnwd.batch.engine as G
import bnwd.batch.reproduce as E
import bnwd.batch.sweep as S
import bnwd.run.data as D
import bnwd.run.trainer as T
from bnwd.cli import build_parser, main
from bnwd.errors import ConfigError, DataError
from bnwd.run.config import HELP, PRESETS, Config, make_config


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("bnwd: ") and "\n" not in err and "Traceback" not in err, err
    return err


def _tree(path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# ------------------------------------------------------------------ 1. interrupts


def test_interrupted_reproduce_says_to_rerun_it(tmp_path, monkeypatch, capsys):
    """`reproduce` has no --resume: its interrupt message gives the same command, which resumes."""

    def stop(**kw):
        raise T.Interrupted("SIGINT", 3, 10)

    monkeypatch.setattr(E, "reproduce", stop)
    assert main(["reproduce", "--preset", "smoke", "--out", str(tmp_path / "o")]) == 130
    err = _one_line(capsys)
    assert "stopped by SIGINT at step 3/10" in err and "same command again" in err and "--resume" not in err
    # and the flag it must not suggest really does not exist
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["reproduce", "--resume"])
    assert e.value.code == 2
    capsys.readouterr()

    def ctrl_c(**kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(E, "reproduce", ctrl_c)
    assert main(["reproduce", "--preset", "smoke", "--out", str(tmp_path / "o")]) == 130
    err = _one_line(capsys)
    assert "same command again" in err and "--resume" not in err


def test_interrupted_train_says_plus_resume(tmp_path, fake_data_dir, monkeypatch, capsys):
    def stop(*a, **kw):
        raise T.Interrupted("SIGTERM", 5, 20)

    monkeypatch.setattr(T, "train", stop)
    rc = main(["train", "--preset", "smoke", "--data", str(fake_data_dir), "--out", str(tmp_path / "r")])
    assert rc == 130
    assert "stopped by SIGTERM at step 5/20" in (err := _one_line(capsys)) and "plus --resume" in err


# ------------------------------------------------------------------ 2., 3. train failing at start


@pytest.mark.parametrize("case", ["missing_folder", "file", "cuda"])
def test_train_that_cannot_start_writes_nothing(case, tmp_path, fake_data_dir, monkeypatch, capsys):
    """A missing data folder, --data naming a file, --device cuda without a GPU: one line, and no
    OUT/config.json left to block the corrected command."""
    monkeypatch.setattr(D, "_download", lambda root: pytest.fail("no download for a named --data folder"))
    work = tmp_path / "w"
    work.mkdir()
    args = ["train", "--preset", "smoke", "--out", str(work / "run"), "--no-progress"]
    if case == "missing_folder":
        args += ["--data", str(work / "typo")]
    elif case == "file":
        (work / "notes.txt").write_text("x")
        args += ["--data", str(work / "notes.txt")]
    else:
        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
        args += ["--data", str(fake_data_dir), "--device", "cuda"]
    before = _tree(work)
    assert main(args) == (2 if case == "cuda" else 1)
    _one_line(capsys)
    assert _tree(work) == before  # no run folder, no config.json, no data folder created


def test_named_data_folder_is_never_created_nor_downloaded_into(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "_download", lambda root: pytest.fail("download attempted"))
    with pytest.raises(DataError, match="does not exist"):
        D.load_cifar10(tmp_path / "typo")
    assert not (tmp_path / "typo").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no CIFAR-10 in"):
        D.load_cifar10(tmp_path / "empty")
    assert list((tmp_path / "empty").iterdir()) == []


def test_without_data_the_default_folder_downloads(tmp_path, monkeypatch):
    """No --data: $BNWD_DATA (or ~/.cache/bnwd) is where the download goes."""
    monkeypatch.setenv("BNWD_DATA", str(tmp_path / "cache"))
    called = []

    def fake_download(root):
        called.append(root)
        raise DataError("offline")

    monkeypatch.setattr(D, "_download", fake_download)
    with pytest.raises(DataError, match="offline"):
        D.load_cifar10()
    assert called == [tmp_path / "cache"]


# ------------------------------------------------------------------ 4., 8. audit


@pytest.mark.parametrize(
    "args",
    [
        ["--input-shape", "3,32,32"],
        ["--input-shape", "3"],
        ["--input-shape", "0,3,32,32"],
        ["--input-shape", "a,b"],
        ["--weight-decay", "-1"],
        ["--model", "resnet21"],
    ],
)
def test_audit_bad_input_is_one_line(args, capsys):
    assert main(["audit", *args]) == 2
    _one_line(capsys)


def test_audit_library_refuses_negative_weight_decay():
    from bnwd.nn.invariance import audit
    from bnwd.nn.models import resnet

    with pytest.raises(ConfigError, match="weight decay must be >= 0"):
        audit(resnet(8, width=2), torch.randn(2, 3, 8, 8), -1.0)


@pytest.mark.parametrize("value", ["1.5,1.0", "1.0,1.0"])
def test_lr_milestones_must_increase(value, tmp_path, capsys):
    with pytest.raises(ConfigError, match="increasing"):
        make_config("smoke", {"lr_milestones": value})
    assert main(["train", "--preset", "smoke", "--out", str(tmp_path / "r"), f"lr_milestones={value}"]) == 2
    _one_line(capsys)
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------ 5. --out names a file


@pytest.mark.parametrize("cmd", ["reproduce", "sweep"])
@pytest.mark.parametrize("where", ["file", "below_a_file"])
def test_out_that_is_a_file_is_refused_before_anything_starts(cmd, where, tmp_path, fake_data_dir, monkeypatch, capsys):
    monkeypatch.setattr(G, "run_local", lambda *a, **kw: pytest.fail("workers started"))
    monkeypatch.setattr(G, "run_ray", lambda *a, **kw: pytest.fail("workers started"))
    f = tmp_path / "taken"
    f.write_text("mine")
    out = f if where == "file" else f / "sub"
    args = ["--preset", "smoke", "--data", str(fake_data_dir), "--out", str(out), "--no-progress"]
    if cmd == "sweep":
        args = ["--grid", "lr=0.1,0.2", *args]
    assert main([cmd, *args]) == 2
    assert "--out" in _one_line(capsys)
    assert f.read_text() == "mine" and _tree(tmp_path) == ["taken"]


# ------------------------------------------------------------------ 7. config keys, default preset


def test_every_config_key_has_help():
    keys = [f.name for f in dataclasses.fields(Config)]
    missing = [k for k in keys if not HELP.get(k, "").strip()]
    assert not missing, f"add a line to config.HELP for: {missing}"
    assert not set(HELP) - set(keys), "config.HELP names keys Config does not have"


def test_config_command_lists_every_key_with_type_defaults_and_meaning(capsys):
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header[:2] == ["key", "type"] and header[2:5] == list(PRESETS)
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}
    for f in dataclasses.fields(Config):
        assert f.name in rows and HELP[f.name] in rows[f.name]
    assert "4.35e-03" not in rows["conv_weight_decay"]  # values as typed on the command line
    assert rows["epochs"].split()[2:5] == ["150", "6.9", "2"]
    assert main(["config", "--preset", "cpu"]) == 0
    assert capsys.readouterr().out.splitlines()[0].split()[:4] == ["key", "type", "cpu", "meaning"]
    assert main(["config", "--preset", "nope"]) == 2
    _one_line(capsys)


@pytest.mark.parametrize("cuda", [False, True])
def test_one_default_preset_rule_for_every_command(cuda, tmp_path, fake_data_dir, monkeypatch, capsys):
    """train, reproduce and sweep without --preset: blog with a CUDA GPU, cpu without; --help says so."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    want = "blog" if cuda else "cpu"
    seen = {}

    def fake_train(cfg, *a, **kw):
        seen["train"] = cfg.preset
        raise T.Interrupted("SIGINT", 0, 1)

    def fake_reproduce(**kw):
        seen["reproduce"] = kw["preset"] or E.default_preset()
        raise KeyboardInterrupt

    def fake_sweep(grid, out, **kw):
        seen["sweep"] = kw["preset"] or E.default_preset()
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "train", fake_train)
    monkeypatch.setattr(E, "reproduce", fake_reproduce)
    monkeypatch.setattr(S, "sweep", fake_sweep)
    data = ["--data", str(fake_data_dir), "--device", "cpu"]
    main(["train", "--out", str(tmp_path / "r"), *data])
    main(["reproduce", "--out", str(tmp_path / "p"), *data])
    main(["sweep", "--grid", "lr=0.1", "--out", str(tmp_path / "s"), *data])
    capsys.readouterr()
    assert seen == {"train": want, "reproduce": want, "sweep": want}
    for cmd in ("train", "reproduce", "sweep"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        assert "blog when torch sees a CUDA GPU, cpu otherwise" in " ".join(capsys.readouterr().out.split())


def test_optimizer_help_names_all_three(capsys):
    with pytest.raises(SystemExit):
        main(["reproduce", "--help"])
    assert "sgd | adam | adamw" in capsys.readouterr().out


# ------------------------------------------------------------------ 10. overrides typed before the engine


def test_reproduce_overrides_are_typed_before_the_waves(tmp_path, fake_data_dir, monkeypatch, capsys):
    """`threads=1` from the command line reaches the engine as the int 1: its progress line compares it."""

    class Started(Exception):
        pass

    def fake_run_local(specs, *a, **kw):
        assert all(s.overrides["threads"] == 1 for s in specs)
        raise Started

    monkeypatch.setattr(G, "run_local", fake_run_local)
    with pytest.raises(Started):
        main(
            ["reproduce", "--preset", "smoke", "--data", str(fake_data_dir), "--out", str(tmp_path / "o"),
             "--jobs", "2", "threads=1", "train_subset=0", "test_subset=0"]
        )  # fmt: skip
    assert "(2 at once, 1 thread each)" in capsys.readouterr().out


def test_audit_leaves_the_callers_thread_count(capsys):
    n = torch.get_num_threads()
    assert main(["audit", "--model", "resnet8", "--input-shape", "3,32,32"]) == 2
    assert main(["audit", "--model", "resnet8", "--input-shape", "2,3,8,8"]) == 0
    capsys.readouterr()
    assert torch.get_num_threads() == n
