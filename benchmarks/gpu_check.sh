#!/usr/bin/env bash
# GPU check, under 8 minutes on one H100/H200 (torch with CUDA, no internet, bnwd via PYTHONPATH=src):
#
#   1. `bnwd bench --device cuda --json`: eager fp32 (plain) and eager bf16+channels_last in one process,
#      then bf16+channels_last eager vs torch.compile (compile time reported apart);
#   2. the `blog` preset's four runs (baseline, no_conv_l2, lr_scaled, lr_scaled_bn098) for EPOCHS epochs,
#      in parallel as background processes sharing the GPU, each timed;
#   3. PAR (default 8) baseline runs of one epoch at once: the aggregate img/s of runs sharing the GPU;
#   4. a PROJECTION of the article's full 4 x 150 epochs from the measured per-step times.
#
# Data: PACK_DIR (argument, or env PACK, default ./data_pack) holding a pack from
# `benchmarks/pack_data.py pack` (manifest.json + chunks; a class-balanced subset is fine) is
# verified and unpacked. Without it: 50,000 + 10,000 synthetic learnable images
# (`pack_data.py synth`): the timing is that of real-size epochs, the accuracies mean nothing.
#
#   bash benchmarks/gpu_check.sh [PACK_DIR]
#   DRY=1 bash benchmarks/gpu_check.sh        # the same commands on CPU with tiny sizes (~3 min)
#
# env: OUT (default ./gpu_check_out), PY (python), EPOCHS (default: 2, or as many steps as 2 article
# epochs when the data is a subset), BUDGET_S (460: phases are cut to fit), COMPILE_LAYOUTS
# (channels_last), DRY (0), DRY_COMPILE (1: DRY also tries torch.compile).
# Writes at most 8 files to $OUT: gpu_check.log, env.txt, bench_eager.json, bench_compile.json,
# train_runs.json, parallel.json, projection.txt, runs.tar.gz (metrics, summaries, logs; no checkpoints).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-./gpu_check_out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PY:-python}
command -v "$PY" >/dev/null 2>&1 || PY=python3
DRY=${DRY:-0}
EPOCHS=${EPOCHS:-}
BUDGET_S=${BUDGET_S:-$([[ $DRY == 1 ]] && echo 900 || echo 460)}
PACK=${1:-${PACK:-data_pack}}
COMPILE_LAYOUTS=${COMPILE_LAYOUTS:-channels_last}
COMPILE_MODE=${COMPILE_MODE:-default}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
SECONDS=0

say() { printf '[%4ds] %s\n' "$SECONDS" "$*"; }
left() { echo $((BUDGET_S - SECONDS)); }
# cap SECONDS_WANTED RESERVE: a timeout that leaves RESERVE seconds of the budget for what follows
cap() {
	local want=$1 reserve=$2 l
	l=$(($(left) - reserve))
	((l < want)) && want=$l
	((want < 5)) && want=5
	echo "$want"
}
run() { # run TIMEOUT CMD...: timed, exit status reported, never fatal
	local t=$1 rc
	shift
	say "\$ $*"
	timeout --kill-after=10 "$t" "$@"
	rc=$?
	((rc == 124 || rc == 137)) && say "timed out after ${t}s: $1 ..."
	((rc != 0)) && say "exit $rc"
	return $rc
}

if [[ $DRY == 1 ]]; then
	DEV=cpu
	# width 8: torch.compile'd ResNet-20 at width 4 crashes in the compiled kernels on some CPUs (the bench survives it)
	BENCH=(--device cpu --width 8 --batch-size 16 --steps 2 --eval-batch-size 32 --eval-batches 1 --threads 1)
	EAGER_LAYOUTS=plain # never channels_last on CPU (upstream backward hang, see bench.py)
	COMPILE_LAYOUTS=plain
	N_TRAIN=640 N_TEST=128
	TRAIN_EXTRA=(width=4 depth=8 batch_size=64 threads=1)
else
	DEV=cuda
	BENCH=(--device cuda --steps 200 --eval-batches 10)
	EAGER_LAYOUTS=plain,channels_last # plain = fp32; channels_last = bf16 autocast + channels_last on CUDA
	N_TRAIN=50000 N_TEST=10000
	TRAIN_EXTRA=()
fi

say "gpu_check: DRY=$DRY device=$DEV budget ${BUDGET_S}s out=$OUT work=$WORK"
{
	date -u '+date: %Y-%m-%d %H:%M:%S UTC'
	echo "git: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?') (working tree as sent)"
	command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
	"$PY" -c 'import platform, torch; print("python", platform.python_version(), "| torch", torch.__version__,
"| cuda", torch.version.cuda, "| gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else None,
"| cpu threads", torch.get_num_threads())'
	"$PY" -c 'import bnwd.run.trainer, bnwd.run.bench; print("bnwd imports ok from", bnwd.__file__)'
	grep -m1 'model name' /proc/cpuinfo
	nproc
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# ------------------------------------------------------------------ data
DATA=$WORK/data
DATA_DESC=
if [[ -f $PACK/manifest.json ]]; then
	run "$(cap 120 150)" "$PY" benchmarks/pack_data.py unpack "$PACK" --out "$DATA" && DATA_DESC="pack $PACK (verified)"
fi
if [[ ! -f $DATA/cifar-10-python.tar.gz ]]; then
	say "no usable pack in $PACK: FALLBACK to $N_TRAIN + $N_TEST synthetic images (timing only, accuracies meaningless)"
	run "$(cap 120 150)" "$PY" benchmarks/pack_data.py synth --out "$DATA" --n-train "$N_TRAIN" --n-test "$N_TEST"
	DATA_DESC="synthetic $N_TRAIN/$N_TEST (fallback)"
fi

# as many steps as 2 epochs of the article's 50,000 images (10 epochs of a 10,000-image pack), unless EPOCHS is set
N_DATA=$("$PY" -c "import sys; from bnwd.run.data import load_cifar10; print(load_cifar10(sys.argv[1], download=False).n_train)" "$DATA" 2>/dev/null || echo 50000)
if [[ -z $EPOCHS ]]; then
	EPOCHS=2
	[[ $DRY != 1 && $N_DATA -lt 50000 ]] && EPOCHS=$(((100000 + N_DATA - 1) / N_DATA))
fi
say "data: $DATA_DESC, $N_DATA training images; runs of $EPOCHS epochs"

# ------------------------------------------------------------------ bench, eager
run "$(cap 120 240)" "$PY" -m bnwd bench "${BENCH[@]}" --layouts "$EAGER_LAYOUTS" --compile off --json \
	--json-out "$OUT/bench_eager.json" >"$WORK/bench_eager.out"
tail -n +1 "$WORK/bench_eager.out" | grep -v '^{' || true

# ------------------------------------------------------------------ where a step's time goes
run "$(cap 90 240)" "$PY" benchmarks/step_profile.py --device "$DEV" $([[ $DRY == 1 ]] && echo --width 8 --batch-size 16 --steps 3) |
	grep -v '^\(STAGE\|USDT\|\[W\)' || true

# ------------------------------------------------------------------ the blog runs, in parallel
MS=$("$PY" -c "e=float('$EPOCHS'); print(f'{e/2:g},{3*e/4:g}')") # the schedule's two drops, scaled into the run
TRAIN_T=$(cap 240 150)
mkdir -p "$WORK/runs"
SMI_PID=
if [[ $DEV == cuda ]] && command -v nvidia-smi >/dev/null; then
	nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 2 >"$WORK/runs/nvidia_smi.csv" 2>&1 &
	SMI_PID=$!
fi
say "training 4 blog runs in parallel: epochs=$EPOCHS lr_milestones=$MS, limit ${TRAIN_T}s each"
PIDS=()
for V in baseline no_conv_l2 lr_scaled lr_scaled_bn098; do
	EXTRA=()
	[[ $V == lr_scaled* ]] && EXTRA=(lr_scaling=article)
	(
		T0=$(date +%s.%N)
		timeout --kill-after=10 "$TRAIN_T" "$PY" -m bnwd train --preset blog --variant "$V" --out "$WORK/runs/$V" \
			--data "$DATA" --device "$DEV" --no-progress --force \
			epochs="$EPOCHS" lr_milestones="$MS" "${EXTRA[@]}" "${TRAIN_EXTRA[@]}" >"$WORK/runs/$V.log" 2>&1
		RC=$?
		echo "{\"variant\": \"$V\", \"rc\": $RC, \"start\": $T0, \"end\": $(date +%s.%N)}" >"$WORK/runs/$V.time.json"
	) &
	PIDS+=($!)
done
wait "${PIDS[@]}"
[[ -n $SMI_PID ]] && kill "$SMI_PID" 2>/dev/null
for V in baseline no_conv_l2 lr_scaled lr_scaled_bn098; do
	say "$V: $(tail -n 1 "$WORK/runs/$V.log")"
done

# ------------------------------------------------------------------ how many runs share one device well
# PAR runs of the baseline (1 epoch, seeds 0..PAR-1) at once: aggregate img/s against the one-run
# figure of the blog phase says how many runs per GPU a sweep should place (`--jobs`, Ray's num_gpus).
PAR=${PAR:-$([[ $DRY == 1 ]] && echo 2 || echo 8)}
if ((PAR > 0)); then
	PAR_T=$(cap 120 120)
	say "parallel scaling: $PAR baseline runs of 1 epoch at once, limit ${PAR_T}s"
	T0=$(date +%s.%N)
	PIDS=()
	for ((i = 0; i < PAR; i++)); do
		timeout --kill-after=10 "$PAR_T" "$PY" -m bnwd train --preset blog --variant baseline --seed "$i" \
			--out "$WORK/par/s$i" --data "$DATA" --device "$DEV" --no-progress --force epochs=1 lr_milestones=0.5,0.75 \
			threads=$((($(nproc) + PAR - 1) / PAR)) "${TRAIN_EXTRA[@]}" >"$WORK/par_s$i.log" 2>&1 &
		PIDS+=($!)
	done
	wait "${PIDS[@]}"
	T1=$(date +%s.%N)
	WORK=$WORK PAR=$PAR T0=$T0 T1=$T1 OUT=$OUT "$PY" - <<'EOF2'
import json, os
from pathlib import Path
w, n = Path(os.environ["WORK"]), int(os.environ["PAR"])
s = [json.loads((w / "par" / f"s{i}" / "summary.json").read_text()) for i in range(n) if (w / "par" / f"s{i}" / "summary.json").exists()]
wall = float(os.environ["T1"]) - float(os.environ["T0"])
r = {"runs": n, "finished": len(s), "process_wall_s": wall,
     "img_per_s_each": [x["images_per_s"] for x in s], "train_wall_s_each": [x["wall_s"] for x in s]}
if s:
    r["aggregate_img_per_s"] = sum(x["images_per_s"] for x in s)
    print(f"parallel: {len(s)}/{n} runs finished; each {min(r['img_per_s_each']):.0f}-{max(r['img_per_s_each']):.0f} img/s "
          f"in its training loop, together {r['aggregate_img_per_s']:.0f} img/s; {wall:.1f} s for all, start-up included")
(Path(os.environ["OUT"]) / "parallel.json").write_text(json.dumps(r, indent=1) + "\n")
EOF2
fi

# ------------------------------------------------------------------ bench, eager vs compiled
if [[ $DRY == 1 && ${DRY_COMPILE:-1} != 1 ]]; then
	say "DRY_COMPILE=0: compiled bench skipped"
else
	run "$(cap 220 25)" "$PY" -m bnwd bench "${BENCH[@]}" --layouts "$COMPILE_LAYOUTS" --compile on --compile-mode "$COMPILE_MODE" --json \
		--json-out "$OUT/bench_compile.json" >"$WORK/bench_compile.out"
	grep -v '^{' "$WORK/bench_compile.out" || true
fi

# ------------------------------------------------------------------ summary and projection
WORK=$WORK OUT=$OUT DATA_DESC=$DATA_DESC "$PY" - <<'EOF'
import json, os
from pathlib import Path

work, out = Path(os.environ["WORK"]), Path(os.environ["OUT"])
runs, lines = [], []
for v in ("baseline", "no_conv_l2", "lr_scaled", "lr_scaled_bn098"):
    d = work / "runs" / v
    t = json.loads((work / "runs" / f"{v}.time.json").read_text())
    r = {"variant": v, "rc": t["rc"], "process_s": t["end"] - t["start"]}
    if (d / "summary.json").exists():
        s, c = json.loads((d / "summary.json").read_text()), json.loads((d / "config.json").read_text())
        r.update(steps=s["steps"], epochs=s["epochs"], steps_per_epoch=s["steps_per_epoch"], wall_s=s["wall_s"],
                 img_per_s=s["images_per_s"], n_train=c["n_train"], n_test=c["n_test"], batch_size=c["batch_size"],
                 final_test_acc=s["final_test_acc"], device=s["device"])
        r["s_per_step"] = s["wall_s"] / s["steps"]
        r["startup_s"] = r["process_s"] - s["wall_s"]
    runs.append(r)
done = [r for r in runs if "s_per_step" in r]
res = {"data": os.environ.get("DATA_DESC", "?"), "runs": runs}
lines.append(f"data: {res['data']}")
for r in runs:
    if "s_per_step" in r:
        lines.append(f"{r['variant']:>16}: {r['steps']} steps ({r['epochs']:g} epochs of {r['steps_per_epoch']}) in "
                     f"{r['wall_s']:.1f} s = {r['wall_s'] / r['epochs']:.1f} s/epoch of {r['n_train']} images = "
                     f"{1e3 * r['s_per_step']:.1f} ms/step, {r['img_per_s']:.0f} img/s; "
                     f"process {r['process_s']:.1f} s (start-up + data {r['startup_s']:.1f} s); "
                     f"test acc {100 * r['final_test_acc']:.1f}%")
    else:
        lines.append(f"{r['variant']:>16}: no summary (exit {r['rc']}), see runs.tar.gz")
if done:
    bs = done[0]["batch_size"]
    spe = 50000 // bs  # the article's epoch: 50,000 images at batch 128 = 390 steps
    slow = max(r["s_per_step"] for r in done)
    start = max(r["startup_s"] for r in done)
    par_h = (150 * spe * slow + start) / 3600
    ratio = done[0]["n_test"] / done[0]["n_train"]
    proj = {"article_steps_per_epoch": spe, "epochs": 150, "runs": 4,
            "parallel_4_runs_h": par_h, "slowest_s_per_step": slow,
            "measured_test_to_train_ratio": ratio}
    lines += [
        "",
        "PROJECTION (not a measurement) of the article's 4 runs x 150 epochs on this machine:",
        f"  4 runs in parallel sharing the {done[0]['device']}, as measured here: 150 x {spe} steps x {1e3 * slow:.1f} ms "
        f"(slowest run's wall time per step, evaluation and checkpoints included) + {start:.0f} s start-up "
        f"= {par_h:.2f} h wall time",
    ]
    try:
        b = json.loads((out / "bench_eager.json").read_text())
        p = b["configs"][b["primary"]]
        seq_h = 4 * 150 * spe * bs / p["img_per_s_with_monitor"] / 3600
        proj.update(sequential_training_steps_only_h=seq_h, bench_config=b["primary"])
        lines.append(f"  one run at a time, training steps only (bench {b['primary']}, monitor on, "
                     f"{p['img_per_s_with_monitor']:.0f} img/s; no eval, no start-up): {seq_h:.2f} h")
    except (OSError, KeyError, ValueError) as e:
        lines.append(f"  (no sequential projection: bench_eager.json unusable: {e})")
    lines.append(f"  assumes the time per step does not change with the epoch, and the evaluation share as measured "
                 f"(test:train = {ratio:.2f}; the article's is 0.20); a short run's first steps include warm-up.")
    res["projection"] = proj
text = "\n".join(lines)
print(text)
(out / "projection.txt").write_text(text + "\n")
(out / "train_runs.json").write_text(json.dumps(res, indent=1) + "\n")
EOF
tar -czf "$OUT/runs.tar.gz" -C "$WORK" --exclude='checkpoint*' --exclude='*.pt' runs bench_eager.out \
	$([[ -f $WORK/bench_compile.out ]] && echo bench_compile.out) 2>/dev/null
say "done in ${SECONDS}s; outputs in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
rm -rf "$WORK"
