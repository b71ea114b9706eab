#!/usr/bin/env bash
# The article's stage 1 on one lent GPU: the blog preset (ResNet-20 v1, width 16, batch 128,
# real CIFAR-10) up to the first lr drop (epochs=50: 19,500 steps at lr 0.1) for `baseline` and
# `lr_scaled` (lr_scaling=reference, following the baseline while both train on the GPU), seed 0,
# with the BN statistics views (bn_views=stage1: own, bn098, comp, precise at every evaluation),
# in legs of one device command each, resumable from run folders carried there and back.
# The driver is benchmarks/gpu_stage1.py; docs/gpu/stage1.md says the same in prose.
#
#   bash benchmarks/gpu_stage1.sh pack [CIFAR_DIR]    # here, once: gpu_stage1/send1, send2 (~5 min of CPU)
#   bash benchmarks/gpu_stage1.sh chunk DIR...        # device: keep the chunk(s) in DIR on the machine
#   bash benchmarks/gpu_stage1.sh leg DIR...          # device: data + runs from DIRs, train, write $OUT
#   bash benchmarks/gpu_stage1.sh --rehearse          # here: the whole sequence on CPU, tiny (~1 min)
#
# THE DEVICE CALLS (with a lent GPU machine; the repo's root; `gpu_stage1/` is git-ignored):
#   0. here: bash benchmarks/gpu_stage1.sh pack     -> gpu_stage1/send1 (56 MiB), gpu_stage1/send2 (~29 MiB)
#      (all of CIFAR-10 as 2-D-differenced uint8 arrays + xz, 85 MiB, sha256-checked; see pack_data.py)
#   1. run(command="bash benchmarks/gpu_stage1.sh chunk gpu_stage1/send1",
#          carry=["gpu_stage1/send1"], timeout_s=120)                       # starts the machine
#   2. run(command="LEG_S=420 bash benchmarks/gpu_stage1.sh leg gpu_stage1/send2",
#          carry=["gpu_stage1/send2"], timeout_s=520)                       # leg 1, at once after 1.
#      then here: rm -rf gpu_stage1/carry && mkdir -p gpu_stage1/carry && cp FILES_AT/* gpu_stage1/carry/
#   3. run(command="LEG_S=<budget_left_s - 60, at most 520> bash benchmarks/gpu_stage1.sh leg gpu_stage1/carry",
#          carry=["gpu_stage1/carry"], timeout_s=LEG_S + 60)               # leg 2, at once after 2.
#      then copy FILES_AT into gpu_stage1/carry again; leg.json says "done": true when both finished.
#   Each call must follow the last within ~30 s (the machine goes back when idle, and the data with
#   it: a fresh machine needs the chunks again, call 1 then 2). Nothing is lost between legs: the
#   carried stage1_baseline.tar.gz / stage1_lr_scaled.tar.gz hold the run folders with their
#   checkpoints (4.3 MiB each at width 16: model, SGD momentum, Monitor, shadow BN statistics).
#   Escape hatches, as env on the leg's command: STAGE1_SET="compile=off" (a runtime key: a later
#   leg may differ), LEG_S, RESERVE_S (25: the stop, checkpoint and tar after --stop-after).
#   The first lr drop too: STAGE1_SET="epochs=60" on EVERY leg from the first (epochs is part of
#   the config: a resumed leg with another value is refused); +20% steps, beyond the budget below
#   unless the compiled step is fast (leg 1's leg.json says the img/s).
#
# BUDGET (15 min of device time, start-up included; an ESTIMATE from docs/gpu, not a measurement):
#   stage 1 = 19,500 steps x 128 = 2.50 M images per run; both runs at once share the GPU.
#   per run, img/s measured with runs sharing an H200: 5,000 (docs/gpu/shared_fp32.json: four runs, fp32) to 7,500
#   (docs/gpu/shared_bf16.json: four runs, bf16 + channels_last, eager) -> 333-499 s of steps; evaluations with the
#   views (50 x ~4 x 10,000 images + precise batches) ~40 s; per leg and process ~45 s of start-up,
#   data and compile (compile=auto: CUDA graphs, ~2.4x eager for one run in the bench: never run
#   end to end in training before this script; it falls back to eager on a compile failure).
#   | call             | device s   | s of steps per run (views off) | steps per run at 5,000 / 7,500 img/s |
#   | start-up         | ~90-120    | -                              | -                                    |
#   | 1 chunk          | ~30        | -                              | -                                    |
#   | 2 leg 1 (420 s)  | ~440       | ~300 (420-25-10-45-40)         | 11,700 / 17,600                      |
#   | 3 leg 2 (<=280s) | ~100-280   | ~200 / ~30                     | 7,800 / 1,900 (done)                 |
#   | total            | ~700-890 of 900: two legs; one if the compiled step runs at >= ~8,500 img/s per run |
#   At 5,000 img/s it is borderline: if leg 2 does not finish, the runs come back resumable and
#   more legs continue them (data again: calls 1 and 2, the carried tars in call 2 too).
#
# env: OUT (device: set by the tool; here ./gpu_stage1/out), STAGE1_HOME (/tmp/bnwd_stage1: chunks,
# data, runs on the machine), LEG_S (450), RESERVE_S (25), STAGE1_SET, PY (python).
# Writes to $OUT: stage1_baseline.tar.gz, stage1_lr_scaled.tar.gz (run folder: config, metrics,
# checkpoint, summary; its log),
# leg.json (per run: step, exit code, img/s in this leg, last evaluation), leg.log, env.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
command -v "$PY" >/dev/null 2>&1 || PY=python3
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

case "${1:-}" in
--rehearse | rehearse)
	shift
	exec "$PY" benchmarks/gpu_stage1.py rehearse "$@"
	;;
pack)
	shift
	exec "$PY" benchmarks/gpu_stage1.py pack ${1:+--data "$1"}
	;;
chunk | leg)
	OUT=${OUT:-$PWD/gpu_stage1/out}
	mkdir -p "$OUT"
	export OUT
	if command -v nvidia-smi >/dev/null; then # on the device: what ran where
		{
			date -u '+date: %Y-%m-%d %H:%M:%S UTC'
			echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo '?') (working tree as sent)"
			nvidia-smi --query-gpu=name,memory.total,memory.used,utilization.gpu --format=csv
			"$PY" -c 'import torch; print("torch", torch.__version__, "| cuda", torch.version.cuda, "|", torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")'
			nproc
		} >"$OUT/env.txt" 2>&1
	fi
	"$PY" benchmarks/gpu_stage1.py "$@" 2>&1 | tee -a "$OUT/leg.log"
	exit "${PIPESTATUS[0]}"
	;;
*)
	sed -n '2,/^set -uo/p' "$0" | sed '$d'
	exit 2
	;;
esac
