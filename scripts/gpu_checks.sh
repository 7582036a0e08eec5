#!/usr/bin/env bash
# Every GPU check and benchmark in one device call (device time is scarce: 15 minutes a session, when lent at all).
#
#   bash scripts/gpu_checks.sh          # on the device machine, from a bare checkout
#
# - Exits 2 at once when there is no CUDA device (a GPU check without a GPU has not passed).
# - Runs from the checkout as it is: the package goes on PYTHONPATH, so the machine's own CUDA torch and Triton are
#   used (pip-installing ours would pull a CPU torch). Nothing is installed.
# - Every step runs under `timeout`, and the whole script stays within a deadline (BUDGET_S, default 540 s = 9 min):
#   a step gets its own limit or what is left of the budget, whichever is smaller; a hung step costs only itself.
# - Steps in priority order (the most important figures come first if time runs out).
# - $OUT/summary.txt: one line per step: status, seconds, and the step's key figures (its SUMMARY: lines, or the
#   last line it printed); $OUT/NAME.log: the step's whole output. OUT defaults to ./gpu-checks.
# Exit status: 0 every step passed, 1 a step failed or timed out, 2 no CUDA device.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-checks}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
budget="${BUDGET_S:-540}"
start=$SECONDS
status=0
summary="$out/summary.txt"
: > "$summary"

if ! python3 -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 2)'; then
    echo "gpu_checks.sh: no CUDA device on this machine; nothing was checked" | tee "$summary"
    exit 2
fi
python3 - <<'EOF' | tee "$out/device.log" >> "$summary"
import torch
try:
    import triton
    tv = triton.__version__
except ImportError:
    tv = "missing"
print(f"device {torch.cuda.get_device_name()} (sm_{''.join(map(str, torch.cuda.get_device_capability()))}), "
      f"torch {torch.__version__}, CUDA {torch.version.cuda}, Triton {tv}")
EOF

step() {  # step NAME LIMIT_S COMMAND...
    local name="$1" limit="$2"; shift 2
    local left=$(( budget - (SECONDS - start) ))
    if (( left < 10 )); then
        printf '%-14s %-8s %5s s  %s\n' "$name" "SKIPPED" 0 "out of time budget" >> "$summary"
        status=1
        return
    fi
    (( limit > left )) && limit=$left
    local t0=$SECONDS rc
    echo "=== $name (limit ${limit}s): $*" > "$out/$name.log"
    timeout --kill-after=10 "$limit" "$@" >> "$out/$name.log" 2>&1
    rc=$?
    local word="ok"
    if (( rc == 124 || rc == 137 )); then word="TIMEOUT"; status=1
    elif (( rc != 0 )); then word="FAIL($rc)"; status=1; fi
    local figures
    figures=$(grep -h '^SUMMARY:' "$out/$name.log" | sed 's/^SUMMARY: //' | paste -sd ';' -)
    [[ -z "$figures" ]] && figures=$(grep -v '^\s*$' "$out/$name.log" | tail -n 1 | cut -c1-200)
    printf '%-14s %-8s %5d s  %s\n' "$name" "$word" $(( SECONDS - t0 )) "$figures" | tee -a "$summary"
}

step smoke_ops      60  python3 scripts/gpu_smoke.py operands
step smoke_layer    40  python3 scripts/gpu_smoke.py layer
step smoke_sync     40  python3 scripts/gpu_smoke.py sync
step cuda_graphs    40  python3 scripts/gpu_smoke.py graphs
step gpu_tests     120  python3 -m pytest -q -p no:cacheprovider -x -m "gpu or not slow" \
                        tests/kernels/test_triton_backend.py tests/kernels/test_conformance.py tests/test_linear.py \
                        tests/test_gpu_path.py
step quantize_bw    60  python3 benchmarks/gpu.py --size 8192
step linear         60  python3 benchmarks/linear.py --device cuda --recipe nvfp4 --tokens 16384 --repeats 20
step train_step    120  python3 benchmarks/train_step.py --device cuda --model base --batch-size 8 --seq-len 1024 \
                        --recipes bf16,nvfp4,mxfp4,fp8,nvfp4-4over6 --repeats 5
step compile        60  python3 scripts/gpu_smoke.py compile
step profile        40  python3 benchmarks/profile_step.py --device cuda --model base --recipe nvfp4 \
                        --out "$out/profile_nvfp4.txt"

echo "total $(( SECONDS - start )) s; exit status $status" | tee -a "$summary"
exit $status
