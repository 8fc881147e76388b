#!/usr/bin/env bash
# On a GPU box with TensorRT and pycuda: build the FP16 engine, check it against ONNX Runtime
# FP32, and print latency p50/p99 at batch 1 and throughput at batch 8.
#
#   engines/check_gpu.sh MODEL_DIR [IMAGES_DIR] [WORK_DIR]
#
# MODEL_DIR/model.onnx and MODEL_DIR/model.fp16.onnx are used when present (a Jetson has no
# torch to export with); otherwise both are exported here. The engine goes to WORK_DIR
# (default ./engines, where built engines are git-ignored), never into the model directory.
set -euo pipefail
model=${1:?usage: engines/check_gpu.sh MODEL_DIR [IMAGES_DIR] [WORK_DIR]}
images=${2:-}
work=${3:-engines}
python=${PYTHON:-python3}
mkdir -p "$work"

fp32="$model/model.onnx"
fp16="$model/model.fp16.onnx"
if [[ ! -f $fp32 ]]; then fp32="$work/fp32.onnx"; $python -m edge.cli export --model "$model" --out "$fp32" --max-batch 8; fi
if [[ ! -f $fp16 ]]; then fp16="$work/fp16.onnx"; $python -m edge.cli export --model "$model" --out "$fp16" --fp16 --max-batch 8; fi
$python -m edge.cli engine build --onnx "$fp16" --out "$work/check.plan" --max-batch 8 --model "$model"
$python -m edge.cli engine check --engine "$work/check.plan" --model "$model" --max-batch 8

$python - "$model" "$fp32" "$work/check.plan" "$images" <<'PY'
import sys, time
import numpy as np
from scipy.stats import spearmanr
from edge.backends.base import open_backend
from edge.model_dir import load_model_info
from edge.preprocess import preprocess

model, fp32, engine, images = sys.argv[1:5]
size = load_model_info(model).preprocess.input_size
if images:
    from calibrate.dataset import list_images, read_image
    paths = list_images(images)[:64]
    batch = preprocess([read_image(p) for p in paths], load_model_info(model).preprocess)
else:
    batch = np.random.default_rng(0).standard_normal((64, 3) + size).astype(np.float32)
ort = open_backend("onnxruntime", model, onnx=fp32, max_batch=8)
trt = open_backend("tensorrt", model, engine=engine, max_batch=8)
trt.warmup()
ref_maps, ref_scores, maps, scores = [], [], [], []
for start in range(0, len(batch), 8):
    m, s = ort.infer(batch[start:start + 8]); ref_maps.append(m); ref_scores.append(s)
    m, s = trt.infer(batch[start:start + 8]); maps.append(m); scores.append(s)
ref_maps, maps = np.concatenate(ref_maps), np.concatenate(maps)
ref_scores, scores = np.concatenate(ref_scores), np.concatenate(scores)
diff = np.abs(maps - ref_maps)
print(f"parity vs ORT FP32 on {len(batch)} images: max |map diff| {diff.max():.3g} "
      f"(map range {ref_maps.max() - ref_maps.min():.3g}), mean {diff.mean():.3g}, "
      f"score Spearman {spearmanr(scores, ref_scores).statistic:.5f}, max |score diff| {np.abs(scores - ref_scores).max():.3g}")
one = batch[:1].copy()
for _ in range(20):
    trt.infer(one)
times = []
for _ in range(500):
    began = time.perf_counter(); trt.infer(one); times.append((time.perf_counter() - began) * 1000)
print(f"batch 1 latency (host to host): p50 {np.percentile(times, 50):.2f} ms, p99 {np.percentile(times, 99):.2f} ms")
eight = batch[:8].copy()
for _ in range(10):
    trt.infer(eight)
began = time.perf_counter()
for _ in range(100):
    trt.infer(eight)
print(f"batch 8 throughput: {800 / (time.perf_counter() - began):.0f} images/s")
trt.close(); ort.close()
PY
