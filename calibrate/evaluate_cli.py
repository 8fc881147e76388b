"""`hlgfa eval`: the three MVTec AD metrics through any backend."""

import json
from pathlib import Path

from edge.backends.base import BACKEND_KINDS


def configure(parser) -> None:
    """The arguments and handler of `hlgfa eval` (edge/cli.py names the command and its one-line help)."""
    parser.add_argument("--model", required=True, help="model directory from `hlgfa train`")
    parser.add_argument("--data", required=True, help="MVTec category root (uses test/ and ground_truth/)")
    parser.add_argument("--backend", default="auto", choices=("auto",) + BACKEND_KINDS,
                        help="default auto: the exported graph when there is one, else the PyTorch module")
    parser.add_argument("--onnx", help="ONNX file for --backend onnxruntime (default MODEL/model.onnx)")
    parser.add_argument("--engine", help="TensorRT engine for --backend tensorrt")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, help="CPU threads for the backend")
    parser.add_argument("--out", help="write the metrics JSON here (always printed)")
    parser.add_argument("--scores", help="CSV, one row per image: path, class, label, score")
    parser.add_argument("--save-maps", help="folder for PNG overlays: image | heat map | ground truth")
    parser.add_argument("--thresholds", help="thresholds file of this model: also measure its frame-quality gate "
                                             "(false-fault rate on good images, defect images faulted)")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from calibrate.evaluate import evaluate

    options = {key: value for key, value in (("onnx", args.onnx), ("engine", args.engine), ("threads", args.threads))
               if value is not None}
    result = evaluate(args.model, args.data, backend=args.backend, batch_size=args.batch_size, scores_csv=args.scores,
                      save_maps=args.save_maps, progress=not args.no_progress, thresholds=args.thresholds,
                      **options)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0
