"""Numbers of the same model through several backends on an MVTec-layout test set.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.detection.parity_backends --model MODEL_DIR --data DATA_ROOT \
        --onnx FP32.onnx [--onnx-fp16 FP16.onnx] [--torch-half] [--threads 1] [--json OUT]

Reference: torch FP32. For every other backend: max and mean absolute map difference, score
Spearman, and image / pixel AUROC next to the reference's. `--torch-half` adds a torch run
with the FP16 graph's precision split (backbone and aligners in half, the rest FP32): true
FP16 arithmetic on CPU, unlike ONNX Runtime's CPU provider, which computes FP16 nodes it has
no FP16 kernel for in FP32 between inserted casts (so it shows the weight rounding only).
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np


class TorchHalfSplit:
    """The torch model with the FP16 export's precision split, as a backend."""

    kind = "torch-half-split"

    def __init__(self, model_dir, max_batch: int, threads: int, device: str = "cpu"):
        import torch
        import torch.nn.functional as F

        from calibrate.model.io import load_model

        torch.set_num_threads(threads)
        self._torch = torch
        model, info = load_model(model_dir)
        model.to(device)
        self.device = device
        backbone = model.backbone.half()
        # Weights in half; the fitted error statistics stay FP32, as in the FP16 graph (they feed its FP32 tail).
        for parameter in model.aligners.parameters():
            parameter.data = parameter.data.half()

        def features(images):
            with torch.no_grad():
                hr = [f.float() for f in backbone(images.half())]
                factor = model.config.lr_factor
                lr_view = F.avg_pool2d(images, factor, stride=factor)
                lr = [F.interpolate(f.float(), size=h.shape[-2:], mode="bilinear", align_corners=False)
                      for f, h in zip(backbone(lr_view.half()), hr)]
            return hr, lr

        def align(hr, lr):
            outputs = [aligner(l.half(), h.half()) for aligner, l, h in zip(model.aligners, lr, hr)]
            return [r.float() for r, _ in outputs], [s.float() if s is not None else None for _, s in outputs]

        model.features, model.align = features, align
        self.model = model
        self.input_size = info.preprocess.input_size
        self.max_batch = max_batch

    def infer(self, batch):
        with self._torch.inference_mode():
            maps, scores = self.model(self._torch.from_numpy(batch).to(self.device))
        return maps.float().cpu().numpy(), scores.float().cpu().numpy()

    def warmup(self):
        self.infer(np.zeros((1, 3) + self.input_size, np.float32))

    def close(self):
        self.model = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--onnx", required=True)
    parser.add_argument("--onnx-fp16")
    parser.add_argument("--torch-half", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json")
    args = parser.parse_args()

    from scipy.stats import spearmanr

    from calibrate.dataset import evaluation_samples
    from calibrate.evaluate import compute_metrics, score_samples
    from edge.backends.base import open_backend
    from edge.artifacts.model_dir import load_model_info

    info = load_model_info(args.model)
    samples = evaluation_samples(args.data)
    runs = {
        "torch": lambda: open_backend("torch", args.model, max_batch=args.batch_size, threads=args.threads),
        "onnxruntime": lambda: open_backend("onnxruntime", args.model, onnx=args.onnx, max_batch=args.batch_size,
                                            threads=args.threads),
    }
    if args.onnx_fp16:
        runs["onnxruntime-fp16graph"] = lambda: open_backend(
            "onnxruntime", args.model, onnx=args.onnx_fp16, max_batch=args.batch_size, threads=args.threads)
    if args.torch_half:
        runs["torch-half-split"] = lambda: TorchHalfSplit(args.model, args.batch_size, args.threads)
    outputs, results = {}, {}
    for name, opener in runs.items():
        backend = opener()
        backend.warmup()
        began = time.perf_counter()
        maps, scores, masks, _, seconds = score_samples(backend, samples, info.preprocess, args.batch_size, False)
        backend.close()
        metrics = compute_metrics(samples, maps, scores, masks)
        outputs[name] = (maps, scores)
        row = {"image_auroc": metrics["image_auroc"], "pixel_auroc": metrics["pixel_auroc"],
               "infer_ms_per_image": round(1000 * seconds / len(samples), 1),
               "wall_s": round(time.perf_counter() - began, 1)}
        if name != "torch":
            ref_maps, ref_scores = outputs["torch"]
            difference = np.abs(maps - ref_maps)
            row.update({"max_abs_map_diff": float(difference.max()), "mean_abs_map_diff": float(difference.mean()),
                        "map_range": float(ref_maps.max() - ref_maps.min()),
                        "score_spearman": float(spearmanr(scores, ref_scores).statistic),
                        "max_abs_score_diff": float(np.abs(scores - ref_scores).max()),
                        "d_image_auroc": metrics["image_auroc"] - results["torch"]["image_auroc"],
                        # None on a set without masks (ELPV): no pixel metric to compare
                        "d_pixel_auroc": None if metrics["pixel_auroc"] is None
                        else metrics["pixel_auroc"] - results["torch"]["pixel_auroc"]})
        if name == "onnxruntime-fp16graph" or name == "torch-half-split":
            fp32_maps, fp32_scores = outputs.get("onnxruntime", outputs["torch"])
            row["vs_ort_fp32_spearman"] = float(spearmanr(scores, fp32_scores).statistic)
        results[name] = row
        print(name, json.dumps(row), flush=True)
    summary = {"model": str(args.model), "model_hash": info.model_hash, "data": args.data, "n_images": len(samples),
               "threads": args.threads, "results": results}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
