#!/usr/bin/env bash
# On a GPU box installed as docs/DEPLOYMENT.md says (TensorRT, pycuda, onnxruntime; no torch, no
# scipy): build the FP16 engine, check it against ONNX Runtime FP32 on real images, and print
# latency p50/p99 at batch 1 and throughput at batch 8.
#
#   engines/check_gpu.sh [--dry-run] MODEL_DIR IMAGES_DIR [WORK_DIR]
#
# MODEL_DIR holds model.onnx and model.fp16.onnx, exported where torch is installed
# (`hlgfa export --model MODEL_DIR` and `hlgfa export --model MODEL_DIR --fp16 --out
# MODEL_DIR/model.fp16.onnx`). IMAGES_DIR: 8 or more real part images; the first 16 in name order
# are compared. The engine goes to WORK_DIR (default ./engines, where built engines are
# git-ignored), never into the model directory. PYTHON selects the interpreter (default python3;
# for the documented install PYTHON=/opt/hlgfa-edge/venv/bin/python). --dry-run checks the inputs
# and prints the commands without running them.
set -euo pipefail

dry_run=0
if [[ ${1:-} == --dry-run ]]; then
    dry_run=1
    shift
fi
usage="usage: engines/check_gpu.sh [--dry-run] MODEL_DIR IMAGES_DIR [WORK_DIR]"
model=${1:?$usage}
images=${2:?$usage}
work=${3:-engines}
python=${PYTHON:-python3}
max_batch=8

fail() {
    echo "check_gpu.sh: $*" >&2
    exit 66
}
run() {
    echo "+ $*"
    if (( ! dry_run )); then
        "$@"
    fi
}

fp32=$model/model.onnx
fp16=$model/model.fp16.onnx
[[ -d $model ]] || fail "model directory $model does not exist"
for graph in "$fp32" "$fp16"; do
    [[ -f $graph ]] || fail "$graph is missing; export it where torch is installed: hlgfa export --model $model" \
        "(FP32) and hlgfa export --model $model --fp16 --out $fp16, then copy both here"
done
[[ -d $images ]] || fail "image folder $images does not exist (expected 8 or more real part images)"
command -v "$python" >/dev/null || fail "no Python interpreter $python (set PYTHON=/opt/hlgfa-edge/venv/bin/python)"

if (( ! dry_run )); then
    # Everything the check imports, named before the slow build starts.
    "$python" - <<'PY' || exit 70
import importlib
import sys

missing = []
for name in ("edge", "tensorrt", "pycuda.driver", "onnxruntime", "onnx"):
    try:
        importlib.import_module(name)
    except Exception as error:  # ImportError, or a library that fails to load (libcuda, libnvinfer)
        missing.append(f"{name} ({error})")
if missing:
    sys.exit("check_gpu.sh: cannot import " + "; ".join(missing) + "; install as docs/DEPLOYMENT.md says")
PY
fi

engine=$work/check.plan
run mkdir -p "$work"
run "$python" -m edge.cli engine build --onnx "$fp16" --out "$engine" --max-batch "$max_batch" --model "$model" \
    --precision fp16
run "$python" -m edge.cli engine check --engine "$engine" --model "$model" --max-batch "$max_batch"
run "$python" -m engines.gpu_check --model "$model" --onnx "$fp32" --engine "$engine" --images "$images" \
    --max-batch "$max_batch"
