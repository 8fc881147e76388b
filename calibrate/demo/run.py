"""`hlgfa demo`: the whole line on a laptop, on real electroluminescence images of solar cells.

train on good cells → export ONNX → calibrate on held-out good cells → run the daemon (a real
`hlgfa run` process, ONNX Runtime backend) on a replay of mixed good/defective cells → receive
every decision over ZeroMQ on the acknowledged channel → compare with the dataset's labels.

Data: the `elpv-dataset` package (Deitsch et al., 300×300 EL cell images with a defect
probability per cell): probability 0 = good, 1 = defective, the rest unused. A second run reuses
the model, ONNX file and thresholds when their inputs did not change.

The replay also holds a few frames no model can judge (UNUSABLE: black, dark, uniform grey,
overexposed, white, defocused — a failed light, a lens cap, a camera staring at the conveyor):
each must be a `frame_quality` fault, never a pass; the result says so, and the demo fails if not.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from calibrate.demo.processes import DEMO_CAMERA, free_port, hlgfa
from edge.core.errors import HlgfaError, InputDataError

UNUSABLE_LABEL = 2  # replay label of a frame the frame-quality gate must fault
UNUSABLE = ("black", "dark", "grey128", "overexposed", "white", "defocused")


def unusable_frame(kind: str, cell: np.ndarray) -> np.ndarray:
    """A frame a line camera can deliver but no model can judge, made from a good cell's shape
    and pixels."""
    import cv2

    levels = cell.astype(np.float32)
    frames = {
        "black": lambda: np.zeros_like(cell),
        "dark": lambda: levels * 0.15,            # the light failed; the cell is barely visible
        "grey128": lambda: np.full_like(cell, 128),
        "overexposed": lambda: levels * 3.0,      # exposure far too long: most of the cell clips
        "white": lambda: np.full_like(cell, 255),
        "defocused": lambda: cv2.GaussianBlur(cell, (0, 0), 4),
    }
    return np.clip(frames[kind](), 0, 255).astype(np.uint8)


def configure(parser) -> None:
    """The arguments and handler of `hlgfa demo` (edge/cli.py names the command and its one-line help)."""
    parser.add_argument("--out", default="demo_out", help="working folder (reused by a second run)")
    parser.add_argument("--train-cells", type=int, default=400, help="good cells to train on")
    parser.add_argument("--calibration-cells", type=int, default=200, help="held-out good cells to calibrate on")
    parser.add_argument("--replay-good", type=int, default=150)
    parser.add_argument("--replay-defective", type=int, default=150)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--target-frr", type=float, default=0.05)
    parser.add_argument("--line-rate", type=float, default=10.0,
                        help="frames/s the replay is paced at, like parts passing a camera")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fresh", action="store_true", help="rebuild everything instead of reusing")
    parser.set_defaults(handler=run)


def step(number: int, text: str) -> None:
    print(f"\n[{number}/7] {text}", flush=True)


def elpv_cells() -> tuple[list[Path], list[Path]]:
    try:
        import elpv_dataset
    except ImportError as error:
        raise InputDataError("demo: the elpv-dataset package is not installed (pip install elpv-dataset)") from error
    data = Path(elpv_dataset.__file__).parent / "data"
    good, defective = [], []
    for line in (data / "labels.csv").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2:
            probability = float(parts[1])
            if probability == 0.0:
                good.append(data / parts[0])
            elif probability == 1.0:
                defective.append(data / parts[0])
    return sorted(good), sorted(defective)


def prepare_data(out: Path, args) -> dict:
    """Seeded, disjoint splits written as folders; the replay's order mixes good and defective."""
    good, defective = elpv_cells()
    needed = args.train_cells + args.calibration_cells + args.replay_good
    if needed > len(good) or args.replay_defective > len(defective):
        raise InputDataError(f"demo: asked for {needed} good and {args.replay_defective} defective cells; "
                             f"the dataset has {len(good)} and {len(defective)}")
    rng = np.random.default_rng(args.seed)
    good = [good[i] for i in rng.permutation(len(good))]
    defective = [defective[i] for i in rng.permutation(len(defective))]
    splits = {
        "train": good[:args.train_cells],
        "calibration": good[args.train_cells:args.train_cells + args.calibration_cells],
    }
    replay = [(p, 0) for p in good[args.train_cells + args.calibration_cells:needed]] + \
             [(p, 1) for p in defective[:args.replay_defective]]
    replay = [replay[i] for i in rng.permutation(len(replay))]
    # Unusable frames, made from the first good replay cell, spread evenly through the replay.
    source_cell = good[args.train_cells + args.calibration_cells]
    for number, kind in reversed(list(enumerate(UNUSABLE, start=1))):
        replay.insert(number * len(replay) // (len(UNUSABLE) + 1), (kind, UNUSABLE_LABEL))
    manifest = {"seed": args.seed, "train": [p.name for p in splits["train"]],
                "calibration": [p.name for p in splits["calibration"]],
                "replay": [[p if label == UNUSABLE_LABEL else p.name, label] for p, label in replay],
                "unusable_from": source_cell.name}
    manifest_path = out / "data" / "manifest.json"
    if manifest_path.is_file() and json.loads(manifest_path.read_text()) == manifest:
        return manifest
    shutil.rmtree(out / "data", ignore_errors=True)
    for name, paths in splits.items():
        folder = out / "data" / name
        folder.mkdir(parents=True)
        for path in paths:
            shutil.copy(path, folder / path.name)
    folder = out / "data" / "replay"
    folder.mkdir(parents=True)
    # Zero-padded index first: the folder source replays in name order, frame id = position.
    for index, (path, label) in enumerate(replay):
        if label == UNUSABLE_LABEL:
            import cv2

            cell = cv2.imread(str(source_cell), cv2.IMREAD_UNCHANGED)
            cv2.imwrite(str(folder / f"{index:05d}_unusable_{path}.png"), unusable_frame(path, cell))
        else:
            shutil.copy(path, folder / f"{index:05d}_{'defective' if label else 'good'}_{path.name}")
    manifest_path.write_text(json.dumps(manifest))
    return manifest


def train_model(out: Path, args, manifest: dict) -> Path:
    model = out / "model"
    description = model / "model.json"
    if not args.fresh and description.is_file():
        described = json.loads(description.read_text())
        training = described.get("training", {})
        # Training holds some of its cells out for validation: together they are the cells it was given.
        given = sorted([*training.get("train_files", []), *(training.get("validation_files") or [])])
        same_run = (training.get("epochs"), training.get("seed")) == (args.epochs, args.seed)
        if (given == sorted(manifest["train"]) and same_run
                and described["architecture"].get("input_size") == [args.image_size] * 2):
            print(f"reusing {model} (same cells, epochs and seed)")
            return model
    shutil.rmtree(model, ignore_errors=True)
    hlgfa("--log-level", "WARNING", "train", "--data", str(out / "data" / "train"), "--out", str(model),
          "--epochs", str(args.epochs), "--image-size", str(args.image_size), "--seed", str(args.seed))
    return model


def export_model(model: Path, args) -> Path:
    from edge.artifacts.model_dir import load_model_info

    onnx_path = model / "model.onnx"
    if not args.fresh and onnx_path.is_file():
        import onnx

        metadata = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
        if metadata.get("hlgfa.model_hash") == load_model_info(model).model_hash:
            print(f"reusing {onnx_path} (exported from this model)")
            return onnx_path
    hlgfa("--log-level", "WARNING", "export", "--model", str(model), "--out", str(onnx_path))
    return onnx_path


def calibrate_model(out: Path, model: Path, onnx_path: Path, args) -> Path:
    from edge.artifacts.model_dir import load_model_info
    from edge.artifacts.thresholds import load_thresholds

    thresholds = model / "thresholds.json"
    if not args.fresh and thresholds.is_file():
        try:
            fitted = load_thresholds(thresholds, load_model_info(model).model_hash)
            if fitted.details.get("image", {}).get("target_frr") == args.target_frr and fitted.quality:
                print(f"reusing {thresholds} (fitted on this model)")
                return thresholds
        except HlgfaError:
            pass
    hlgfa("--log-level", "WARNING", "calibrate", "--model", str(model), "--normals", str(out / "data" / "calibration"),
          "--target-frr", str(args.target_frr), "--backend", "onnxruntime", "--onnx", str(onnx_path),
          "--out", str(thresholds), "--force", "--report", str(out / "calibration_report"))
    return thresholds


def inspect(out: Path, model: Path, onnx_path: Path, thresholds: Path, manifest: dict, line_rate: float) -> dict:
    """Run the daemon on the replay and collect every decision on the acknowledged channel."""
    from edge.transport.subscriber import ReliableClient

    total = len(manifest["replay"])
    labels = [label for _, label in manifest["replay"]]
    publish = f"tcp://127.0.0.1:{free_port()}"
    reliable = f"tcp://127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "edge.cli", "--log-level", "WARNING", "run", "--camera", DEMO_CAMERA,
               "--model", str(model), "--thresholds", str(thresholds), "--source", f"folder:{out / 'data' / 'replay'}",
               "--publish", publish, "--reliable", reliable, "--backend", "onnxruntime", "--onnx", str(onnx_path),
               "--set", f"source.fps={line_rate}"]
    view = start_view(out, publish)
    decisions: dict[int, object] = {}
    client = ReliableClient(reliable)
    daemon = subprocess.Popen(command)
    began = None
    try:
        last_print = 0.0
        while len(decisions) < total:
            decision = client.recv(timeout=1.0)
            if decision is None:
                if daemon.poll() is not None:
                    break
                continue
            client.ack(decision)
            began = began or time.monotonic()
            decisions[decision.frame_id] = decision
            if time.monotonic() - last_print > 1.0 or len(decisions) == total:
                last_print = time.monotonic()
                counts = {v: sum(1 for d in decisions.values() if d.verdict == v) for v in ("ok", "reject", "fault")}
                rate = (len(decisions) - 1) / max(time.monotonic() - began, 1e-9)
                print(f"  line: {len(decisions):4d}/{total} frames | ok {counts['ok']:4d} | reject {counts['reject']:4d} "
                      f"| fault {counts['fault']:3d} | {rate:5.1f} frames/s | last: frame {decision.frame_id} "
                      f"{decision.verdict} score {decision.score if decision.score is not None else float('nan'):.4f}",
                      flush=True)
        elapsed = time.monotonic() - began if began else float("nan")
    finally:
        if daemon.poll() is None:
            daemon.terminate()
        exit_code = daemon.wait(timeout=60)
        client.close()
    return {"decisions": decisions, "labels": labels, "elapsed": elapsed, "daemon_exit": exit_code,
            "line_rate": line_rate, "view": view}


def report(result: dict) -> int:
    from calibrate.metrics import image_auroc

    decisions, labels = result["decisions"], result["labels"]
    total = len(labels)
    verdicts = [decisions[i].verdict if i in decisions else "missing" for i in range(total)]
    scores = [decisions[i].score if i in decisions else None for i in range(total)]
    scored = [(s, y) for s, y in zip(scores, labels) if s is not None and y != UNUSABLE_LABEL]
    good = [v for v, y in zip(verdicts, labels) if y == 0]
    bad = [v for v, y in zip(verdicts, labels) if y == 1]
    unusable = [(verdicts[i], decisions[i].reason if i in decisions else "missing")
                for i in range(total) if labels[i] == UNUSABLE_LABEL]
    latencies = np.array([d.latency_ms for d in decisions.values()])
    auroc = image_auroc(np.array([y for _, y in scored]), np.array([s for s, _ in scored])) if scored else None
    rows = [
        ("frames replayed", f"{total}"),
        ("decisions received", f"{len(decisions)} (missing {total - len(decisions)})"),
        ("ok / reject / fault", f"{verdicts.count('ok')} / {verdicts.count('reject')} / {verdicts.count('fault')}"),
        ("image AUROC vs labels", f"{auroc:.3f}" if auroc is not None else "n/a (scores of one class only)"),
        ("false-reject rate (good cells rejected)", f"{good.count('reject') / max(len(good), 1):.3f} ({good.count('reject')}/{len(good)})"),
        ("escape rate (defective cells passed)", f"{bad.count('ok') / max(len(bad), 1):.3f} ({bad.count('ok')}/{len(bad)})"),
        ("unusable frames faulted by the gate", f"{sum(r.startswith('frame_quality:') for _, r in unusable)}/"
         f"{len(unusable)} frame_quality ({', '.join(UNUSABLE)}); {sum(v != 'fault' for v, _ in unusable)} "
         f"passed or rejected"),
        ("cells faulted (good / defective)",
         f"{good.count('fault')}/{len(good)} / {bad.count('fault')}/{len(bad)}"),
        ("fault reasons", ", ".join(sorted({decisions[i].reason.split(':')[0] for i in decisions
                                           if decisions[i].verdict == "fault"})) or "none"),
        ("frames/s (first to last decision)", f"{(len(decisions) - 1) / result['elapsed']:.1f}"
         f" (replay paced at {result['line_rate']:g})"),
        ("latency p50 / p99 (receipt → decision)", f"{np.percentile(latencies, 50):.1f} / {np.percentile(latencies, 99):.1f} ms"
         if latencies.size else "n/a"),
        ("daemon exit code", f"{result['daemon_exit']}"),
    ]
    width = max(len(name) for name, _ in rows)
    print("\n" + "\n".join(f"  {name:<{width}}  {value}" for name, value in rows))
    complete = len(decisions) == total and result["daemon_exit"] == 0
    if not complete:
        print("\ndemo: not every frame got a decision or the daemon failed; see the messages above", file=sys.stderr)
    gated = all(reason.startswith("frame_quality:") for _, reason in unusable)
    if not gated:
        print("\ndemo: an unusable frame was not faulted by the frame-quality gate:\n  " + "\n  ".join(
            f"frame {i}: {verdicts[i]} {decisions[i].reason if i in decisions else ''}" for i in range(total)
            if labels[i] == UNUSABLE_LABEL and not (i in decisions and decisions[i].reason.startswith("frame_quality:"))),
            file=sys.stderr)
    return 0 if complete and gated else 1


def run(args) -> int:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", str(min(2, os.cpu_count() or 1)))
    started = time.monotonic()
    step(1, "data: good and defective solar cells from elpv-dataset")
    manifest = prepare_data(out, args)
    print(f"train {len(manifest['train'])} good, calibrate on {len(manifest['calibration'])} held-out good, "
          f"replay {len(manifest['replay'])} frames: mixed cells and {len(UNUSABLE)} unusable frames "
          f"({', '.join(UNUSABLE)})")
    step(2, "train HLGFA on the good cells (CPU)")
    model = train_model(out, args, manifest)
    step(3, "export the model to ONNX")
    onnx_path = export_model(model, args)
    step(4, f"calibrate thresholds on held-out good cells (target false-reject rate {args.target_frr:.0%})")
    thresholds = calibrate_model(out, model, onnx_path, args)
    step(5, f"inspect: `hlgfa run` on the replay at {args.line_rate:g} frames/s (ONNX Runtime), decisions over ZeroMQ")
    result = inspect(out, model, onnx_path, thresholds, manifest, args.line_rate)
    step(6, "result")
    code = report(result)
    step(7, "PLC side: `hlgfa bridge` serving the daemon over Modbus TCP and OPC UA; a PLC hands over part ids")
    from calibrate.demo.plc import plc_step

    code = plc_step(out, model, onnx_path, thresholds, len(manifest["replay"])) or code
    print(f"\ndemo finished in {time.monotonic() - started:.0f} s; everything it built is in {out}")
    keep_view(result["view"], out)
    return code


def start_view(out: Path, publish: str) -> subprocess.Popen | None:
    """`hlgfa view` on the demo run (docs/VIEW.md), subscribed before the daemon publishes: its records
    in OUT/records, the replay as its frames. The demo goes on without it if it cannot start."""
    records = out / "records"
    shutil.rmtree(records, ignore_errors=True)
    with socket.socket() as probe:
        port = 8080 if probe.connect_ex(("127.0.0.1", 8080)) != 0 else free_port()
    view = subprocess.Popen([sys.executable, "-m", "edge.cli", "--log-level", "WARNING", "view", "--connect", publish,
                             "--http", f"127.0.0.1:{port}", "--records", str(records),
                             "--frames", f"{DEMO_CAMERA}={out / 'data' / 'replay'}"], stdout=subprocess.PIPE, text=True)
    line = view.stdout.readline()
    if not line.startswith("view: "):
        print("demo: the operator's view did not start; going on without it", file=sys.stderr)
        view.terminate()
        return None
    view.url = line.split()[1]
    return view


def keep_view(view: subprocess.Popen | None, out: Path) -> None:
    """Print the view's URL; keep it up until Ctrl-C when run from a terminal."""
    if view is None:
        return
    print(f"\nthe operator's view of this run: {view.url}  (records in {out / 'records'})")
    if sys.stdin.isatty():
        print("it stays up until Ctrl-C", flush=True)
        try:
            view.wait()
        except KeyboardInterrupt:
            pass
    if view.poll() is None:
        view.terminate()
    view.wait(timeout=30)
