"""`hlgfa export`: model directory → one ONNX graph (FP32 or mixed FP16)."""

from pathlib import Path


def configure(parser) -> None:
    """The arguments and handler of `hlgfa export` (edge/cli.py names the command and its one-line help)."""
    parser.add_argument("--model", required=True, help="model directory from `hlgfa train`")
    parser.add_argument("--out", help="ONNX file to write (default MODEL/model.onnx)")
    parser.add_argument("--fp16", action="store_true",
                        help="mixed-precision graph: FP16 backbone/aligners, FP32 in/out and post-processing "
                             "(for TensorRT strongly typed builds)")
    parser.add_argument("--max-batch", type=int, default=8,
                        help="largest batch the deployment uses; recorded for `hlgfa engine build` (default 8)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17, TensorRT 10 compatible)")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from engines.export import export_onnx

    path = export_onnx(args.model, Path(args.out) if args.out else None, fp16=args.fp16,
                       max_batch=args.max_batch, opset=args.opset)
    print(path)
    return 0
