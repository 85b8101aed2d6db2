#!/usr/bin/env bash
# One check of a GPU machine, in under 8 minutes, installing nothing beyond the project:
#   1. environment (torch, CUDA, GPU)          2. the CUDA tests (pytest)
#   3. model benchmark: training step (batch 2) and inference at 160x160x96 with AMP
#   4. a short training run on phantoms        5. a full-scan infer (512x512x200) with that model
# Summary: $OUT/summary.txt (or ./gpu_check/summary.txt when OUT is unset), one log per step beside it.
# Without CUDA the CUDA-only steps are skipped with a message and the others run CPU-sized.
# GPU_CHECK_QUICK=1: everything tiny (32^3 patches, 48x48x32 phantoms), seconds of work: what CI runs
# (tests/test_bench_scripts.py) so that the script does not rot.
# Usage: bench/gpu_check.sh      (PYTHON=/path/to/python to choose the interpreter)
# Exit status: the number of failed steps (0: all ran or were skipped).
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python}
DEST=$(mkdir -p "${OUT:-./gpu_check}" && cd "${OUT:-./gpu_check}" && pwd)
QUICK=${GPU_CHECK_QUICK:-0}
WORK="$DEST/work"
SUMMARY="$DEST/summary.txt"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
rm -rf "$WORK" && mkdir -p "$WORK"
: >"$SUMMARY"
FAILED=0

note() { echo "$*" | tee -a "$SUMMARY"; }

# step NAME COMMAND...: run it with its output in NAME.log; one summary line with its time
step() {
    local name=$1 start secs rc
    shift
    start=$(date +%s%N)
    (cd "$WORK" && "$@") >"$DEST/$name.log" 2>&1
    rc=$?
    secs=$(awk -v a="$start" -v b="$(date +%s%N)" 'BEGIN { printf "%7.1f", (b - a) / 1e9 }')
    if [ $rc -eq 0 ]; then
        note "$(printf '%-14s ok      %s s' "$name" "$secs")"
    else
        note "$(printf '%-14s FAILED  %s s  (exit %d; see %s)' "$name" "$secs" "$rc" "$DEST/$name.log")"
        FAILED=$((FAILED + 1))
    fi
}

skip() { note "$(printf '%-14s skipped           (%s)' "$1" "$2")"; }

note "gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ)  repo $REPO  quick=$QUICK"
step environment "$PY" -c '
import os, torch, monai
print("torch", torch.__version__, "monai", monai.__version__, "cores", os.cpu_count())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.0f} GiB", "bf16", torch.cuda.is_bf16_supported())
print("cuda", int(torch.cuda.is_available()))
'
CUDA=$(sed -n 's/^cuda \([01]\)$/\1/p' "$DEST/environment.log")
CUDA=${CUDA:-0}
sed 's/^/    /' "$DEST/environment.log" | tee -a "$SUMMARY"

if [ "$CUDA" = 1 ]; then
    step cuda_tests "$PY" -m pytest -q -x -p no:cacheprovider "$REPO/tests/pipeline/core/test_runtime.py" \
        "$REPO/tests/pipeline/core/test_config.py" "$REPO/tests/models"
else
    skip cuda_tests "no CUDA: the CUDA tests need a GPU"
fi

if [ "$QUICK" = 1 ]; then
    MODEL_ARGS=(--tiny --steps 1)
    SHAPE=(48 48 32)
    NET=(--set model.channels=[4,8,16,32,64] --set data.patch_size=[32,32,32] --set data.target_spacing=[3,3,3]
        --set train.epochs=1 --set train.iterations_per_epoch=2)
    CONFIG=demo
elif [ "$CUDA" = 1 ]; then
    MODEL_ARGS=(--device cuda --patch 160 160 96 --steps 10)
    SHAPE=(256 256 128)
    NET=(--set train.epochs=2 --set train.iterations_per_epoch=20 --set perf.device=cuda)
    CONFIG=default
else
    MODEL_ARGS=(--device cpu --patch 96 96 64 --steps 2)
    SHAPE=(160 160 64)
    NET=(--set train.epochs=1 --set train.iterations_per_epoch=4 --set perf.device=cpu)
    CONFIG=demo
fi
step model_bench "$PY" "$REPO/bench/gpu_model_check.py" "${MODEL_ARGS[@]}"
sed -n 's/^\(train step\|inference\|peak\)/    &/p' "$DEST/model_bench.log" | tee -a "$SUMMARY"

step training bash -c "set -e
    '$PY' -m pipeline.cli phantoms --n 4 --shape ${SHAPE[*]} --out phantoms --manifest
    '$PY' -m pipeline.cli folds phantoms/manifest.csv --k 2
    '$PY' -m pipeline.cli train --manifest phantoms/manifest.csv --fold 0 --out run --config $CONFIG ${NET[*]}"
grep -h '^fold' "$DEST/training.log" | sed 's/^/    /' | tee -a "$SUMMARY"

if [ "$QUICK" = 1 ]; then
    SCAN="$WORK/phantoms/images/phantom_003.nii.gz"
else  # the full-size scan of bench/infer_speed.py
    SCAN="$WORK/scan.nii.gz"
    step full_scan "$PY" -c "
import sys; from pathlib import Path; sys.path.insert(0, '$REPO')
from bench.infer_speed import prepare; prepare(Path('$WORK'))"
fi
if [ -f "$WORK/run/fold_0/checkpoints/best.pt" ]; then
    step infer "$PY" -m pipeline.cli infer --model "$WORK/run/fold_0/checkpoints/best.pt" --input "$SCAN" \
        --out "$WORK/infer"
    awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
        { printf "    case %s: total %s s (network %s s), peak RSS %s MB\n", $col["case_id"], $col["total_s"],
          $col["network_s"], $col["peak_rss_mb"] }' "$WORK/infer/timings.csv" 2>/dev/null | tee -a "$SUMMARY"
else
    skip infer "no model: the training step failed"
fi
note "failed steps: $FAILED; summary in $SUMMARY"
exit "$FAILED"
