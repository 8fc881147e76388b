"""Per-frame time of HLGFA's ONNX graph against the peers' own ONNX exports, as ratios, in one run.

    .venv/bin/hlgfa export --model MODEL_DIR
    .venv/bin/python -m bench.detection.peers ... --onnx          # PaDiM / PatchCore: OUT/weights/onnx/model.onnx
    .venv/bin/python -m bench.perf.peers_speed --graph hlgfa=MODEL_DIR/model.onnx --graph padim=FILE \
        --graph patchcore=FILE [--threads 2] [--calls 100] [--rounds 3] [--json FILE]

ONNX Runtime, `--threads` intra-op threads, batch 1, each graph alone in blocks of `--calls` calls,
the blocks alternated for `--rounds` rounds (so a machine whose load drifts slows every graph
alike); the median of each block, and the ratio of each graph's median of medians to the first
graph's. ONNX Runtime's default keeps idle intra-op threads spinning; `--no-spin` turns that off,
as the daemon's backend does (edge/backends/onnxruntime.py): a row per setting. Inputs are random
float32 frames of each graph's own input shape (the time does not depend on the pixels).
"""

import argparse
import json
import statistics
import time

import numpy as np

from bench.harness import load_average, machine


def open_session(path: str, threads: int, spin: bool):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def frame_for(session) -> dict[str, np.ndarray]:
    (inputs,) = session.get_inputs()
    shape = [1 if not isinstance(d, int) else d for d in inputs.shape]
    return {inputs.name: np.random.default_rng(0).random(shape, dtype=np.float32)}


def block_median(session, feed, calls: int) -> float:
    times = []
    for _ in range(calls):
        began = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graph", action="append", required=True, metavar="NAME=FILE.onnx",
                        help="repeatable; the first is the reference of the ratios")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--json")
    args = parser.parse_args()
    import onnxruntime

    graphs = dict(item.split("=", 1) for item in args.graph)
    results = {}
    for spin in (True, False):
        setting = "spinning on (ONNX Runtime's default)" if spin else "spinning off (the daemon's setting)"
        sessions = {name: open_session(path, args.threads, spin) for name, path in graphs.items()}
        feeds = {name: frame_for(session) for name, session in sessions.items()}
        for name, session in sessions.items():
            for _ in range(args.warmup):
                session.run(None, feeds[name])
        blocks = {name: [] for name in sessions}
        for _ in range(args.rounds):
            for name, session in sessions.items():
                blocks[name].append(round(block_median(session, feeds[name], args.calls), 2))
        reference = statistics.median(blocks[next(iter(graphs))])
        results[setting] = {name: {"block_medians_ms": medians, "ratio_to_first": round(statistics.median(medians) / reference, 2),
                                   "input": list(next(iter(feeds[name].values())).shape)}
                            for name, medians in blocks.items()}
        del sessions
    meta = {"machine": machine(), "load_average": load_average(),
            "onnxruntime": onnxruntime.__version__, "threads": args.threads, "calls_per_block": args.calls,
            "rounds": args.rounds, "graphs": graphs}
    print(f"ONNX Runtime {onnxruntime.__version__}, {args.threads} intra-op threads, batch 1, blocks of {args.calls} "
          f"calls alternated {args.rounds}×; load average {meta['load_average']}\n")
    print("| setting | graph | input | median ms per block | ÷ first graph |\n|---|---|---|---|---|")
    for setting, rows in results.items():
        for name, row in rows.items():
            print(f"| {setting} | {name} | {'×'.join(map(str, row['input'][2:]))} | "
                  f"{' / '.join(f'{v:.1f}' for v in row['block_medians_ms'])} | {row['ratio_to_first']:.2f} |")
    if args.json:
        with open(args.json, "w") as stream:
            json.dump({"results": results, "meta": meta}, stream, indent=2)


if __name__ == "__main__":
    main()
