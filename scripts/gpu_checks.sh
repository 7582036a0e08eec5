#!/usr/bin/env bash
# Every GPU check in one call, for a session that is lent a GPU (device time is scarce, so batch it):
# the GPU tests, the Triton quantize bandwidth, the layer and a training step against bf16.
# Logs go to $OUT (or ./gpu-checks) so the figures come back with the command that produced them.
#
#   bash scripts/gpu_checks.sh               # tests + all benchmarks
#   bash scripts/gpu_checks.sh --quick       # tests + the quantize benchmark only
#
# Runs from a bare checkout: the package is put on PYTHONPATH instead of being pip-installed, so the
# machine's own CUDA torch and Triton are used (installing ours would pull a CPU torch).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-checks}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
quick=0
[[ "${1:-}" == "--quick" ]] && quick=1
status=0

step() {  # step NAME COMMAND...: run, tee to $out/NAME.log, remember a failure but go on
    local name="$1"; shift
    echo "=== $name: $*" | tee "$out/$name.log"
    "$@" 2>&1 | tee -a "$out/$name.log" || status=1
}

python3 - <<'EOF' | tee "$out/device.log"
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
try:
    import triton
    print("triton", triton.__version__)
except ImportError:
    print("triton missing")
EOF

step tests python3 -m pytest -q -p no:cacheprovider -m "gpu or not slow" tests/kernels/test_triton_backend.py tests/test_linear.py
step gpu_bench python3 benchmarks/gpu.py
if [[ $quick == 0 ]]; then
    for recipe in nvfp4 mxfp4 fp8; do
        step "linear_$recipe" python3 benchmarks/linear.py --device cuda --recipe "$recipe" --tokens 16384 --repeats 20
    done
    step train_step python3 benchmarks/train_step.py --device cuda --model base --batch-size 8 --seq-len 1024 \
        --recipes bf16,nvfp4,mxfp4,fp8 --repeats 10
fi
echo "logs in $out; exit status $status"
exit $status
