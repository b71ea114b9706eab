"""The article's stage 1 (blog preset, 19,500 steps at lr 0.1) for baseline and lr_scaled on one
lent GPU, in legs of one device command each. `benchmarks/gpu_stage1.sh` is the entry point and its
header the plan (the sequence of device calls, the budget); `docs/gpu/stage1.md` the same in prose.

    python benchmarks/gpu_stage1.py pack --data /work/shared/data         # here: gpu_stage1/send1, send2
    python benchmarks/gpu_stage1.py chunk gpu_stage1/send1                 # device: keep a chunk
    python benchmarks/gpu_stage1.py leg gpu_stage1/send2 --out $OUT        # device: data complete, leg 1
    python benchmarks/gpu_stage1.py leg gpu_stage1/carry --out $OUT        # device: leg 2, 3, ...
    python benchmarks/gpu_stage1.py rehearse                               # here: all of it on CPU, tiny

A leg: keeps the chunks of the folders it is given in STAGE1_HOME/pack (they stay there while the
machine is held), unpacks the data once all chunks are there (every chunk's sha256, then the
decoded arrays'), restores the run folders from the carried `stage1_<run>.tar.gz` (else continues
those in STAGE1_HOME/runs), trains baseline and lr_scaled at once (lr_scaled follows the baseline
as it trains: `lr_scaling=reference reference=baseline reference_wait=`), both with
`--stop-after` so that they checkpoint and exit 130 before the leg's budget is spent, and writes
`stage1_baseline.tar.gz`, `stage1_lr_scaled.tar.gz` (run folder with checkpoint, log), `leg.json` and `leg.log` to --out.
The next leg is given that folder back (copied into an ignored folder of the repo and carried).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
if str(ROOT / "src") not in sys.path:
    sys.path.append(str(ROOT / "src"))

import pack_data  # noqa: E402

RUNS = ("baseline", "lr_scaled")
TAR = "stage1_{}.tar.gz"  # one per run: its folder (checkpoint included, ~4.3 MiB at width 16) and log
LEG_JSON = "leg.json"
FILE_LIMIT = 16 * 2**20  # a file that comes back from $OUT
CALL_LIMIT = 64 * 2**20  # what one device call may send
# The article's stage 1: blog preset, stopped at the first lr drop (epoch 50 = 19,500 steps); the
# BN statistics views at every evaluation of it. lr_scaled follows the baseline while both train.
GPU_SET = ["epochs=50", "bn_views=stage1", "threads=8"]
FOLLOW = ["lr_scaling=reference", "reference=baseline", "reference_wait=600"]
# The rehearsal: the same commands on CPU, ResNet-8 at width 4 on 640 + 200 real images, batch 32
# (20 steps per epoch), 1.5 epochs with the lr drop at epoch 1 (30 steps): 6 sample points, 3
# evaluations with the views, 3 checkpoints per run.
REHEARSE_SET = [
    "depth=8",
    "width=4",
    "batch_size=32",
    "epochs=1.5",
    "lr_milestones=1,2",
    "sample_every=0.25",
    "eval_every=0.5",
    "checkpoint_every=0.5",
    "precise_batches=2",
    "bn_views=stage1",
    "threads=1",
    "device=cpu",
]
REHEARSE_SUBSET = (640, 200)
# Leg ends: leg 1 stops both runs mid-window (lr_scaled behind its baseline), leg 2 at other
# steps (the baseline at a sample point), leg 3 finishes.
REHEARSE_STOPS = [{"baseline": 7, "lr_scaled": 6}, {"baseline": 20, "lr_scaled": 13}, {}]


def home_dir() -> Path:
    return Path(os.environ.get("STAGE1_HOME") or "/tmp/bnwd_stage1")


def say(*a) -> None:
    print(time.strftime("[%H:%M:%S]"), *a, flush=True)


# ---------------------------------------------------------------- data
def cmd_pack(data: str, dest: Path, chunk_mib: float, subset=None, compress: str = "pred-xz") -> list[Path]:
    """Pack CIFAR-10 into dest/pack, then one folder per device call (dest/send1, send2, ...):
    the manifest and one chunk each. Returns the send folders."""
    pack_dir = dest / "pack"
    if pack_dir.exists():
        shutil.rmtree(pack_dir)
    m = pack_data.pack(data, pack_dir, chunk_mib=chunk_mib, subset=subset, compress=compress, command="gpu_stage1 pack")
    sends = []
    for i, c in enumerate(m["chunks"]):
        s = dest / f"send{i + 1}"
        if s.exists():
            shutil.rmtree(s)
        s.mkdir(parents=True)
        shutil.copy2(pack_dir / pack_data.MANIFEST, s / pack_data.MANIFEST)
        shutil.copy2(pack_dir / c["file"], s / c["file"])
        sends.append(s)
    return sends


def stash(folders: list[Path], home: Path) -> list[str]:
    """Copy the pack chunks found in `folders` into home/pack (their manifests must agree)."""
    got = []
    pack = home / "pack"
    for f in folders:
        mf = f / pack_data.MANIFEST
        if not mf.exists():
            continue
        m = pack_data.read_manifest(f)
        pack.mkdir(parents=True, exist_ok=True)
        if (pack / pack_data.MANIFEST).exists():
            old = pack_data.read_manifest(pack)
            if old["sha256"] != m["sha256"]:  # another pack: start over with this one
                say(f"{f}: a different pack than the one in {pack}; replacing it")
                shutil.rmtree(pack)
                pack.mkdir(parents=True)
        shutil.copy2(mf, pack / pack_data.MANIFEST)
        for c in m["chunks"]:
            src = f / c["file"]
            if src.exists():
                if pack_data.sha256_file(src) != c["sha256"]:
                    raise pack_data.PackError(f"chunk {src}: sha256 does not match its manifest (damaged in transit?)")
                shutil.copy2(src, pack / c["file"])
                got.append(c["file"])
    if got:
        have = [c["file"] for c in pack_data.read_manifest(pack)["chunks"] if (pack / c["file"]).exists()]
        n = len(pack_data.read_manifest(pack)["chunks"])
        say(f"kept {', '.join(got)} in {pack}: {len(have)}/{n} chunks here")
    return got


def ensure_data(home: Path) -> Path:
    """home/data with the verified, unpacked CIFAR-10 of home/pack (unpacked once per pack)."""
    data, pack = home / "data", home / "pack"
    m = pack_data.read_manifest(pack)
    mark = data / "from_pack.sha256"
    if mark.exists() and mark.read_text().strip() == m["sha256"] and (data / pack_data.ARCHIVE).exists():
        return data
    missing = [c["file"] for c in m["chunks"] if not (pack / c["file"]).exists()]
    if missing:
        raise pack_data.PackError(
            f"{pack}: chunk(s) {', '.join(missing)} not on this machine (a fresh machine? send them again, "
            "one device call each: bash benchmarks/gpu_stage1.sh chunk gpu_stage1/sendN)"
        )
    t = time.monotonic()
    pack_data.unpack(pack, data)
    mark.write_text(m["sha256"] + "\n")
    say(f"data: {pack} verified and unpacked to {data} in {time.monotonic() - t:.1f} s ({m['compression']})")
    return data


# ---------------------------------------------------------------- runs
def restore_runs(folders: list[Path], home: Path) -> str:
    runs = home / "runs"
    tars = [f / TAR.format(v) for f in folders for v in RUNS if (f / TAR.format(v)).exists()]
    names = [t.name for t in tars]
    if len(set(names)) < len(names):
        raise SystemExit(f"gpu_stage1: the same run's tar twice: {', '.join(map(str, tars))}")
    runs.mkdir(parents=True, exist_ok=True)
    if tars:
        for t in tars:  # a carried run replaces its folder and log here; a run not carried stays
            v = t.name[len("stage1_") : -len(".tar.gz")]
            shutil.rmtree(runs / v, ignore_errors=True)
            (runs / f"{v}.log").unlink(missing_ok=True)
            with tarfile.open(t) as tf:
                tf.extractall(runs, filter="data")
        return f"run folders from {', '.join(map(str, tars))}"
    have = [v for v in RUNS if (runs / v / "config.json").exists()]
    return f"run folders in {runs} ({', '.join(have)})" if have else "new runs"


def run_state(runs: Path, v: str) -> dict:
    """Where a run folder stands: steps done (checkpoint), total, finished, last test accuracy."""
    d = runs / v
    st: dict = {"run": v}
    cfg = d / "config.json"
    if cfg.exists():
        c = json.loads(cfg.read_text())
        st["total_steps"] = c.get("total_steps")
        st["batch_size"] = c.get("batch_size")
    st["finished"] = (d / "summary.json").exists()
    st["step"] = 0
    ck = d / "checkpoint.pt"
    if st["finished"]:
        st["step"] = st.get("total_steps")
    elif ck.exists():
        # the step of the checkpoint: from the run's own stop message, else from the checkpoint
        log = runs / f"{v}.log"
        stops = re.findall(r"stopped by \S+ at step (\d+)/", log.read_text()) if log.exists() else []
        if stops and _stamp(log) >= _stamp(ck):
            st["step"] = int(stops[-1])
        else:
            import torch

            st["step"] = int(torch.load(ck, map_location="cpu", weights_only=False)["step"])
    if ck.exists():
        st["checkpoint_bytes"] = ck.stat().st_size
    rows = (
        [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        if (d / "metrics.jsonl").exists()
        else []
    )
    ev = [r for r in rows if "test_acc" in r]
    if ev:
        st["last_eval"] = {k: ev[-1][k] for k in ev[-1] if k.startswith("test_acc") or k in ("step", "epoch")}
    return st


def _stamp(p: Path) -> int:
    return p.stat().st_mtime_ns


def train_cmd(py: str, v: str, data: Path, settings: list[str], stop_after: float, stop_step: int | None) -> list[str]:
    cmd = [py, "-m", "bnwd", "train", "--preset", "blog", "--variant", v, "--seed", "0", "--out", v]
    cmd += ["--data", str(data), "--resume", "--no-progress", "--stop-after", f"{stop_after:.0f}"]
    if stop_step is not None:
        cmd += ["--stop-at-step", str(stop_step)]
    return cmd + settings + (FOLLOW if v == "lr_scaled" else [])


def cmd_leg(
    folders: list[Path],
    out: Path,
    leg_s: float,
    reserve_s: float,
    settings: list[str],
    stops: dict[str, int] | None = None,
    py: str = sys.executable,
) -> int:
    t0 = time.monotonic()
    home = home_dir()
    out.mkdir(parents=True, exist_ok=True)
    stash(folders, home)
    data = ensure_data(home)
    say(restore_runs(folders, home))
    runs = home / "runs"
    before = {v: run_state(runs, v) for v in RUNS}
    budget = leg_s - reserve_s - (time.monotonic() - t0)
    if budget < 30:
        say(f"only {budget:.0f} s left of the leg's {leg_s:.0f} s: no training in this leg")
        budget = 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    env["PYTHONUNBUFFERED"] = "1"
    procs, logs, started = {}, {}, time.monotonic()
    if budget:
        say(f"training {', '.join(RUNS)} for at most {budget:.0f} s: {' '.join(settings)}")
        for v in RUNS:
            if before[v]["finished"]:
                continue
            stop = (stops or {}).get(v)
            logs[v] = open(runs / f"{v}.log", "a")
            logs[v].write(f"\n=== leg at {time.strftime('%Y-%m-%d %H:%M:%S')}: from step {before[v]['step']}\n")
            logs[v].flush()
            procs[v] = subprocess.Popen(
                train_cmd(py, v, data, settings, budget, stop),
                cwd=runs,
                env=env,
                stdout=logs[v],
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
    rc = _wait(procs, started + budget + 90)
    for f in logs.values():
        f.close()
    wall = time.monotonic() - started
    after = {v: run_state(runs, v) for v in RUNS}
    res = {"leg_s": leg_s, "train_wall_s": wall, "settings": settings, "stops": stops or {}, "runs": []}
    for v in RUNS:
        a, b = after[v], before[v]
        r = {**a, "rc": rc.get(v), "steps_this_leg": a["step"] - b["step"]}
        if r["steps_this_leg"] and a.get("batch_size"):
            r["img_per_s_this_leg"] = r["steps_this_leg"] * a["batch_size"] / max(wall, 1e-9)
        tail = (runs / f"{v}.log").read_text().strip().splitlines()[-1:] if (runs / f"{v}.log").exists() else []
        r["log_tail"] = tail[0] if tail else ""
        res["runs"].append(r)
        what = "finished" if a["finished"] else ("stopped, resumable" if rc.get(v) == 130 else f"exit {rc.get(v)}")
        acc = a.get("last_eval", {}).get("test_acc")
        say(
            f"{v}: step {a['step']}/{a.get('total_steps')} (+{r['steps_this_leg']} in {wall:.0f} s"
            + (f", {r['img_per_s_this_leg']:.0f} img/s" if "img_per_s_this_leg" in r else "")
            + f"), {what}"
            + (f", last test acc {100 * acc:.2f}%" if acc is not None else "")
        )
    # the run folders, checkpoints included, for the next leg (and the results)
    sizes = {}
    for v in RUNS:  # one tar per run: its folder (checkpoint included) and its log
        if not (runs / v).exists():
            continue
        dest = out / TAR.format(v)
        tmp = dest.with_name(dest.name + ".part")
        with tarfile.open(tmp, "w:gz", compresslevel=6) as tf:
            tf.add(runs / v, arcname=v)
            if (runs / f"{v}.log").exists():
                tf.add(runs / f"{v}.log", arcname=f"{v}.log")
        os.replace(tmp, dest)
        sizes[dest.name] = dest.stat().st_size
        big = " (OVER the 16 MiB a file may come back with!)" if sizes[dest.name] > FILE_LIMIT else ""
        say(f"{dest}: {sizes[dest.name] / 2**20:.2f} MiB{big}")
    res["tar_bytes"] = sizes
    res["done"] = all(a["finished"] for a in after.values())
    (out / LEG_JSON).write_text(json.dumps(res, indent=1) + "\n")
    size = max(sizes.values(), default=0)
    say("stage 1 done: both runs finished" if res["done"] else "not done: run the next leg with this output carried")
    bad = [v for v in RUNS if rc.get(v) not in (None, 0, 130)]
    return 1 if bad or size > FILE_LIMIT else 0


def _wait(procs: dict[str, subprocess.Popen], hard: float) -> dict[str, int]:
    """Wait for the runs; when the baseline has stopped (not finished), lr_scaled, which may be
    waiting for baseline rows that will not come in this leg, gets a SIGTERM after FOLLOW_GRACE s;
    past `hard`, every run gets SIGTERM, then SIGKILL 30 s later."""
    rc: dict[str, int] = {}
    termed: dict[str, float] = {}
    grace = float(os.environ.get("STAGE1_FOLLOW_GRACE", "20"))
    base_stopped_at = None
    while len(rc) < len(procs):
        now = time.monotonic()
        for v, p in procs.items():
            if v not in rc and p.poll() is not None:
                rc[v] = p.returncode
        if "baseline" in rc and rc["baseline"] != 0 and base_stopped_at is None:
            base_stopped_at = now
        for v, p in procs.items():
            if v in rc:
                continue
            follow_stuck = v != "baseline" and base_stopped_at is not None and now - base_stopped_at > grace
            if v not in termed and (now > hard or follow_stuck):
                say(f"{v}: SIGTERM ({'past the leg limit' if now > hard else 'its baseline stopped'})")
                p.send_signal(signal.SIGTERM)
                termed[v] = now
            elif v in termed and now - termed[v] > 30:
                say(f"{v}: SIGKILL")
                p.kill()
        time.sleep(0.2)
    return rc


# ---------------------------------------------------------------- rehearsal
def _sh(args: list[str], env: dict, log) -> int:
    p = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_stage1.sh"), *args], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    return p.returncode


def _fetch(out: Path, carry: Path) -> None:
    """What to do with a leg's files: copy them into an ignored folder that the next call carries."""
    if carry.exists():
        shutil.rmtree(carry)
    carry.mkdir(parents=True)
    for f in out.iterdir():
        shutil.copy2(f, carry / f.name)


def cmd_rehearse(data: str, keep: bool) -> int:
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="gpu_stage1_rehearse."))
    log_path = work / "rehearse.log"
    ok = False
    try:
        from bnwd.run.data import load_cifar10

        load_cifar10(data, download=False)  # read once (cached in this process for both packs)
        sends = cmd_pack(data, work / "split", chunk_mib=0.45, subset=REHEARSE_SUBSET)
        plain = cmd_pack(data, work / "one", chunk_mib=60, subset=REHEARSE_SUBSET, compress="none")
        m = pack_data.read_manifest(sends[0])
        say(
            f"packed {REHEARSE_SUBSET[0]} + {REHEARSE_SUBSET[1]} real images: pred-xz {m['size']} bytes in "
            f"{len(sends)} chunks of <= 0.45 MiB (the unsplit run reads a plain archive of the same subset)"
        )
        base_env = {**os.environ, "PY": sys.executable, "STAGE1_PROFILE": "rehearse", "LEG_S": "600"}
        base_env["STAGE1_FOLLOW_GRACE"] = "60"
        split_env = {**base_env, "STAGE1_HOME": str(work / "home_split")}
        with open(log_path, "w") as log:
            for s in sends[:-1]:  # one device call per chunk
                if _sh(["chunk", str(s)], split_env, log):
                    raise RuntimeError(f"chunk {s} failed")
            carry = sends[-1]
            for i, stops in enumerate(REHEARSE_STOPS, 1):
                out = work / f"out{i}"
                if (work / "home_split" / "runs").exists():  # the runs must travel in the carried tar
                    shutil.rmtree(work / "home_split" / "runs")
                env = {**split_env, "OUT": str(out), "STAGE1_STOPS": json.dumps(stops)}
                rc = _sh(["leg", str(carry)], env, log)
                leg = json.loads((out / LEG_JSON).read_text())
                say(
                    f"leg {i}: rc {rc}; "
                    + "; ".join(f"{r['run']} step {r['step']}/{r['total_steps']} rc {r['rc']}" for r in leg["runs"])
                )
                if rc:
                    raise RuntimeError(f"leg {i} failed (rc {rc})")
                carry = work / f"carry{i}"
                _fetch(out, carry)
            one_env = {**base_env, "STAGE1_HOME": str(work / "home_one"), "OUT": str(work / "out_one")}
            if _sh(["leg", str(plain[0])], one_env, log):
                raise RuntimeError("unsplit run failed")
        split, one = work / "cmp_split", work / "cmp_one"
        for src, dest in ((carry, split), (work / "out_one", one)):
            for v in RUNS:
                with tarfile.open(src / TAR.format(v)) as tf:
                    tf.extractall(dest, filter="data")
        problems = []
        legs = [json.loads((work / f"out{i}" / LEG_JSON).read_text()) for i in range(1, len(REHEARSE_STOPS) + 1)]
        for v in RUNS:
            rcs = [next(r["rc"] for r in leg["runs"] if r["run"] == v) for leg in legs]
            if rcs[:-1] != [130] * (len(legs) - 1) or rcs[-1] != 0:
                problems.append(f"{v}: exit codes per leg {rcs}, expected 130 then 0 (not split as planned)")
            for d in (split, one):
                if not (d / v / "summary.json").exists():
                    problems.append(f"{d / v}: no summary.json (not finished)")
            a, b = (split / v / "metrics.jsonl").read_bytes(), (one / v / "metrics.jsonl").read_bytes()
            if a != b:
                problems.append(f"{v}: metrics.jsonl differs: {_first_difference(a, b)}")
        dt = time.monotonic() - t0
        if problems:
            print("\n".join(["rehearsal FAILED:"] + problems + [f"(log: {log_path})"]), flush=True)
            keep = True
            return 1
        rows = {v: len((one / v / "metrics.jsonl").read_bytes().splitlines()) for v in RUNS}
        ok = True
        print(
            f"rehearsal ok: {len(sends)} data chunks, {len(legs)} legs (stops {REHEARSE_STOPS[:-1]}), "
            f"metrics.jsonl of {', '.join(f'{v} ({n} rows)' for v, n in rows.items())} bit-identical to one unsplit "
            f"go; {dt:.0f} s",
            flush=True,
        )
        return 0
    except Exception as e:
        print(f"rehearsal FAILED: {type(e).__name__}: {e} (log: {log_path})", flush=True)
        keep = True
        if log_path.exists():
            print(log_path.read_text()[-4000:], flush=True)
        return 1
    finally:
        if not keep and ok:
            shutil.rmtree(work, ignore_errors=True)
        elif keep:
            print(f"rehearsal files kept in {work}", flush=True)


def _first_difference(a: bytes, b: bytes) -> str:
    la, lb = a.splitlines(), b.splitlines()
    if len(la) != len(lb):
        return f"{len(la)} rows split vs {len(lb)} unsplit"
    for i, (x, y) in enumerate(zip(la, lb)):
        if x != y:
            rx, ry = json.loads(x), json.loads(y)
            keys = [k for k in sorted(set(rx) | set(ry)) if rx.get(k) != ry.get(k)]
            return (
                f"row {i} (step {rx.get('step')}): {', '.join(f'{k} {rx.get(k)!r} vs {ry.get(k)!r}' for k in keys[:4])}"
            )
    return "same rows, different bytes"


# ---------------------------------------------------------------- entry
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="here: CIFAR-10 -> gpu_stage1/send1, send2, ... (one chunk per device call)")
    p.add_argument("--data", default=os.environ.get("BNWD_DATA", "/work/shared/data"))
    p.add_argument("--dest", default=str(ROOT / "gpu_stage1"))
    p.add_argument("--chunk-mib", type=float, default=56.0, help="largest chunk (default 56: + the tree < 64 MiB)")
    c = sub.add_parser("chunk", help="device: keep the chunk(s) of these folders in STAGE1_HOME/pack")
    c.add_argument("folders", nargs="+", type=Path)
    g = sub.add_parser("leg", help="device: data, runs from the carried tar, train until the budget, tar to --out")
    g.add_argument("folders", nargs="*", type=Path, help="carried folders: chunks and/or stage1_<run>.tar.gz")
    g.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "gpu_stage1" / "out"))
    g.add_argument("--leg-s", type=float, default=float(os.environ.get("LEG_S", "450")))
    g.add_argument("--reserve-s", type=float, default=float(os.environ.get("RESERVE_S", "25")))
    g.add_argument("--profile", default=os.environ.get("STAGE1_PROFILE", "gpu"), choices=["gpu", "rehearse"])
    g.add_argument("--set", nargs="*", default=os.environ.get("STAGE1_SET", "").split(), help="more overrides")
    g.add_argument("--stops", default=os.environ.get("STAGE1_STOPS", ""), help='JSON {"baseline": N, ...}')
    r = sub.add_parser("rehearse", help="here: the whole sequence on CPU, tiny; `rehearsal ok` if bit-identical")
    r.add_argument("--data", default=os.environ.get("BNWD_DATA", "/work/shared/data"))
    r.add_argument("--keep", action="store_true", help="keep the rehearsal's folder")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "pack":
            sends = cmd_pack(a.data, Path(a.dest), a.chunk_mib)
            m = pack_data.read_manifest(sends[0])
            for s in sends:
                size = sum(f.stat().st_size for f in s.iterdir())
                say(f"{s}: {size / 2**20:.1f} MiB")
            say(
                f"pack: {m['size'] / 2**20:.1f} MiB ({m['compression']}) in {len(sends)} chunks; arrays sha256 {m['arrays_sha256']}"
            )
            return 0
        if a.cmd == "chunk":
            if not stash(a.folders, home_dir()):
                print("gpu_stage1: no chunk found in " + ", ".join(map(str, a.folders)), file=sys.stderr)
                return 1
            return 0
        if a.cmd == "leg":
            settings = (GPU_SET if a.profile == "gpu" else REHEARSE_SET) + list(a.set)
            stops = json.loads(a.stops) if a.stops.strip() else None
            return cmd_leg(a.folders, a.out, a.leg_s, a.reserve_s, settings, stops)
        return cmd_rehearse(a.data, a.keep)
    except pack_data.PackError as e:
        print(f"gpu_stage1: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
