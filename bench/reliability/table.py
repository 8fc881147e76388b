"""Every bad input and fault of issue 13 (items 2-13) and the 96 hostile cases of issue 25 (the 65 that held,
the 31 that failed from 20 causes), run against the real CLI and daemon as separate processes, printing one
Markdown row each: what was done, the command, and what was observed (exit status, published verdicts
and faults, whether a traceback appeared). RELIABILITY.md holds its output on the final code.

    .venv/bin/python -m bench.reliability.table [--work DIR] [--only issue13|issue25]

Sets itself up on the elpv-dataset cells (always installed with the dev extras): a tiny model (24 good
cells, 128 px, 1 epoch; a second one with --holdout), its ONNX export and thresholds from `hlgfa calibrate`.
"""

import argparse
import collections
import io
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

from bench.harness import ROOT

ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
ROWS: list[tuple[str, str, str, str]] = []


def free_endpoint() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


def hlgfa_argv(*args) -> list[str]:
    return [sys.executable, "-m", "edge.cli", *map(str, args)]


def hlgfa(*args, timeout=600) -> tuple[int, str]:
    done = subprocess.run(hlgfa_argv(*args), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stderr


def last_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    text = lines[-1] if lines else (stderr.strip().splitlines() or [""])[-1]
    return text[:160].replace("|", "\\|")


def traceback_note(stderr: str) -> str:
    return "**traceback**" if "Traceback" in stderr else "no traceback"


def row(item: str, what: str, command: str, observed: str) -> None:
    ROWS.append((item, what, command, observed))
    print(f"| {item} | {what} | `{command}` | {observed} |", flush=True)


def claiming_png(png: bytes, width: int, height: int) -> bytes:
    ihdr = png[12:16] + struct.pack(">II", width, height) + png[24:29]
    return png[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


class Daemon:
    """`hlgfa run` in a process, with a reliable bridge (every decision, acked) and a PUB subscriber."""

    def __init__(self, *args):
        from edge.transport.subscriber import ReliableClient, Subscriber

        self.publish, self.reliable = free_endpoint(), free_endpoint()
        self.bridge = ReliableClient(self.reliable)
        self.subscriber = Subscriber(self.publish)
        self.decisions, self.messages = [], []
        self.process = subprocess.Popen(hlgfa_argv("run", "--publish", self.publish, "--reliable", self.reliable,
                                                   *args), cwd=ROOT, env=ENV, stderr=subprocess.PIPE, text=True)

    def pump(self, until=None, timeout_s=120.0) -> bool:
        """Collect until `until(self)` holds or the daemon exits (then drain); True if `until` held."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            decision = self.bridge.recv(timeout=0.05)
            if decision is not None:
                self.bridge.ack(decision)
                self.decisions.append(decision)
            while (message := self.subscriber.recv(timeout=0.0)) is not None:
                self.messages.append(message)
            if until is not None and until(self):
                return True
            if decision is None and self.process.poll() is not None:
                return False
        raise TimeoutError("daemon neither met the condition nor ended")

    def faults(self):
        from edge.transport import wire

        return [m for m in self.messages if isinstance(m, wire.Fault)]

    def finish(self, sig=None) -> tuple[int, str]:
        if sig is not None and self.process.poll() is None:
            self.process.send_signal(sig)
        self.pump(timeout_s=120)
        _, stderr = self.process.communicate(timeout=120)
        self.bridge.close()
        self.subscriber.close()
        return self.process.returncode, stderr


def verdicts(decisions) -> str:
    counts = {}
    for d in decisions:
        key = d.verdict if d.verdict != "fault" else f"fault/{d.reason.split(':')[0]}"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


def setup(work: Path) -> dict:
    import elpv_dataset

    from calibrate.train import train
    from engines.export import export_onnx

    data = Path(elpv_dataset.__file__).parent / "data"
    rows = [line.split() for line in (data / "labels.csv").read_text().split("\n") if len(line.split()) >= 2]
    good = sorted(data / r[0] for r in rows if float(r[1]) == 0.0)
    folders = {name: work / name for name in ("train", "normals", "replay", "holdout_train")}
    for name, paths in (("train", good[:24]), ("normals", good[24:54]), ("replay", good[60:68]),
                        ("holdout_train", good[100:160])):
        folders[name].mkdir(parents=True, exist_ok=True)
        for path in paths:
            shutil.copy(path, folders[name] / path.name)
    model = work / "model"
    if not (model / "model.json").is_file():
        train(folders["train"], model, epochs=1, image_size=128, seed=0, batch_size=8, progress=False)
    onnx = model / "model.onnx"
    if not onnx.is_file():
        export_onnx(model, onnx, max_batch=4)
    thresholds = model / "thresholds.json"
    if not thresholds.is_file():
        code, err = hlgfa("calibrate", "--model", model, "--normals", folders["normals"], "--target-frr", "0.05",
                          "--backend", "onnxruntime", "--out", thresholds, "--force")
        assert code == 0, err
    held = work / "model_holdout"
    if not (held / "model.json").is_file():
        train(folders["holdout_train"], held, epochs=1, image_size=128, seed=0, batch_size=8, progress=False,
              holdout=0.4)
    return {**folders, "model": model, "onnx": onnx, "thresholds": thresholds, "held": held}


def run_args(s: dict, with_thresholds: bool = False) -> list:
    """`hlgfa run`'s model arguments for the bench's model, on one thread."""
    args = ["--model", s["model"], "--onnx", s["onnx"], "--threads", "1"]
    return args + ["--thresholds", s["thresholds"]] if with_thresholds else args


def config_head(s: dict) -> str:
    """The start of a valid daemon config replaying the bench's frames, for a bad setting to follow."""
    return f'model = "{s["model"]}"\n[source]\nkind = "folder"\npath = "{s["replay"]}"\n'


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "hlgfa_reliability")
    parser.add_argument("--only", choices=("issue13", "issue25"), help="one issue's rows (default: both)")
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    s = setup(work)
    print("| item | bad input or fault | command | observed now |\n|---|---|---|---|")
    for issue, items in (("issue13", ISSUE13), ("issue25", ISSUE25)):
        if args.only in (None, issue):
            for item in items:
                item(work, s)


def thresholds_not_utf8(work: Path, s: dict) -> None:
    """Item 2 of issue 13: non-UTF-8 thresholds."""
    thresholds, replay = s["thresholds"], s["replay"]
    base = run_args(s)
    latin = work / "latin1.json"
    latin.write_bytes(b"\xff\xfe" + thresholds.read_bytes())
    code, err = hlgfa("run", *base, "--thresholds", latin, "--source", f"folder:{replay}", "--publish",
                      free_endpoint())
    row("2", "thresholds file not UTF-8, at start", "hlgfa run --thresholds latin1.json …",
        f"exit {code}, {traceback_note(err)}: {last_error(err)}")
    live = work / "live_thresholds.json"
    shutil.copy(thresholds, live)
    daemon = Daemon(*base, "--thresholds", live, "--source", f"folder:{replay}", "--set", "source.loop=true",
                    "--set", "source.fps=20")
    daemon.pump(lambda d: len(d.decisions) >= 2)
    live.write_bytes(b"\xff\xfe" + thresholds.read_bytes())
    daemon.process.send_signal(signal.SIGHUP)
    daemon.pump(lambda d: d.faults())
    n = len(daemon.decisions)
    daemon.pump(lambda d: len(d.decisions) >= n + 3)
    versions = {d.thresholds_version for d in daemon.decisions}
    code, err = daemon.finish(signal.SIGTERM)
    row("2", "thresholds file not UTF-8, on SIGHUP", "kill -HUP (daemon running)",
        f"fault `{daemon.faults()[0].code}` published; {len(daemon.decisions)} decisions, all under "
        f"{len(versions)} version(s) (old kept); after SIGTERM exit {code}, {traceback_note(err)}")


def empty_and_oversized_frames(work: Path, s: dict) -> None:
    """Item 3 of issue 13: empty / oversized frames in a replay and in calibrate."""
    model, thresholds, replay = s["model"], s["thresholds"], s["replay"]
    base = run_args(s)
    for label, damage in (("zero-byte file", lambda p: p.write_bytes(b"")),
                          ("PNG header claiming 60000×60000 px", lambda p: p.write_bytes(
                              claiming_png(p.read_bytes(), 60000, 60000)))):
        folder = work / f"replay_{label[:4]}"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(replay, folder)
        damage(sorted(folder.iterdir())[3])
        daemon = Daemon(*base, "--thresholds", thresholds, "--source", f"folder:{folder}")
        code, err = daemon.finish()
        frame3 = [d for d in daemon.decisions if d.frame_id == 3]
        later = [d for d in daemon.decisions if d.frame_id > 3]
        row("3", f"{label} in a folder replay (frame 3 of 8)", "hlgfa run --source folder:DIR",
            f"frame 3: `{frame3[0].verdict}` ({frame3[0].reason.split(':')[0]}); frames 4-7 scored "
            f"({verdicts(later)}); exit {code}, {traceback_note(err)}")
    normals = work / "normals_bad"
    shutil.rmtree(normals, ignore_errors=True)
    shutil.copytree(s["normals"], normals)
    victim = sorted(normals.glob("*.png"))[0]
    victim.write_bytes(claiming_png(victim.read_bytes(), 60000, 60000))
    code, err = hlgfa("calibrate", "--model", model, "--normals", normals, "--backend", "onnxruntime",
                      "--target-frr", "0.05", "--out", work / "t_bad.json", "--force")
    row("3, 11", "PNG header claiming 60000×60000 px among 30 normals", "hlgfa calibrate --normals DIR …",
        f"exit {code}, {traceback_note(err)}; " + ("warned: skipped unreadable image" if "skipped unreadable" in err
                                                   else last_error(err)))


def broken_and_foreign_onnx(work: Path, s: dict) -> None:
    """Item 4 of issue 13: broken / foreign ONNX and auto."""
    model, onnx, thresholds, replay = s["model"], s["onnx"], s["thresholds"], s["replay"]
    base = run_args(s)
    truncated = work / "truncated.onnx"
    truncated.write_bytes(onnx.read_bytes()[: onnx.stat().st_size // 3])
    code, err = hlgfa("run", "--model", model, "--onnx", truncated, "--thresholds", thresholds, "--source",
                      f"folder:{replay}", "--publish", free_endpoint())
    row("4", "`--onnx` names a truncated file (backend auto)", "hlgfa run --onnx truncated.onnx …",
        f"exit {code}, {traceback_note(err)}: {last_error(err)}")
    foreign = work / "foreign_model"
    if not foreign.exists():
        from edge.artifacts.model_dir import compute_model_hash

        shutil.copytree(model, foreign)
        description = json.loads((foreign / "model.json").read_text())
        description["fitted"]["reliability_strength"] = 1.5
        description["hash"] = compute_model_hash(description, foreign / "module.pt")
        (foreign / "model.json").write_text(json.dumps(description))
    code, err = hlgfa("calibrate", "--model", foreign, "--normals", s["normals"], "--out", work / "t_foreign.json",
                      "--force")
    row("4", "MODEL/model.onnx present but exported from another model (auto)", "hlgfa calibrate --model M …",
        f"exit {code}, {traceback_note(err)}: {last_error(err)}")
    daemon = Daemon(*base, "--thresholds", thresholds, "--source", f"folder:{replay}", "--max-frames", "2")
    code, err = daemon.finish()
    chose = [line for line in err.splitlines() if "backend auto: chose" in line]
    row("4", "backend auto picks a backend", "hlgfa run (no --backend)",
        f"exit {code}; log: `{chose[0].split(' ', 2)[2][:110] if chose else 'no line'}`")


def training_images_as_normals(work: Path, s: dict) -> None:
    """Item 5 of issue 13: training images as normals."""
    model = s["model"]
    code, err = hlgfa("calibrate", "--model", model, "--normals", s["train"], "--out", work / "t_train.json",
                      "--force", "--backend", "onnxruntime")
    row("5", "normals = the model's training images", "hlgfa calibrate --normals TRAIN_DIR …",
        f"exit {code}, {traceback_note(err)}: {last_error(err)[:120]}")
    code, err = hlgfa("calibrate", "--model", s["held"], "--normals-from-model", "--out", work / "t_held.json",
                      "--force", "--backend", "torch", "--target-frr", "0.05")
    n = json.loads((work / "t_held.json").read_text())["details"]["n_normals"] if code == 0 else "-"
    row("5, 6", "calibrate on `train --holdout`'s images", "hlgfa calibrate --normals-from-model …",
        f"exit {code}, {n} held-out normals, {traceback_note(err)}")


def run_before_export(work: Path, s: dict) -> None:
    """Item 6 of issue 13: run before export."""
    model, thresholds, replay = s["model"], s["thresholds"], s["replay"]
    bare = work / "model_not_exported"
    if not bare.exists():
        shutil.copytree(model, bare, ignore=shutil.ignore_patterns("*.onnx"))
    code, err = hlgfa("run", "--model", bare, "--thresholds", thresholds, "--source", f"folder:{replay}",
                      "--publish", free_endpoint())
    row("6", "`run` before `export`", "hlgfa run --model M (no model.onnx)",
        f"exit {code}, {traceback_note(err)}: {last_error(err)[:150]}")


def endpoints_in_config_check(work: Path, s: dict) -> None:
    """Item 7 of issue 13: endpoints in config check."""
    model, replay = s["model"], s["replay"]
    for endpoint in ("tcp://127.0.0.1:99999", "tcp://127.0.0.1", "tcp://10.255.255.1:5555",
                     "ipc:///no/such/dir/x.sock"):
        config = work / "endpoint.toml"
        config.write_text(f'model = "{model}"\n[source]\nkind = "folder"\npath = "{replay}"\n[publish]\n'
                          f'endpoint = "{endpoint}"\n')
        code, err = hlgfa("config", "check", config)
        row("7", f"endpoint `{endpoint}`", "hlgfa config check FILE", f"exit {code}: {last_error(err)[:120]}")


def curve_key_permissions(work: Path, s: dict) -> None:
    """Item 8 of issue 13: CURVE permissions."""
    thresholds, replay = s["thresholds"], s["replay"]
    base = run_args(s)
    keys = work / "keys"
    shutil.rmtree(keys, ignore_errors=True)
    from edge.transport.curve_keys import generate

    generate(keys, "server")
    generate(keys / "clients", "plc")
    curve = ["--set", f"publish.curve_secret_key={keys / 'server.key_secret'}",
             "--set", f"publish.curve_allowed_clients={keys / 'clients'}"]
    for label, path, mode in (("secret key mode 0644", keys / "server.key_secret", 0o644),
                              ("secret key mode 0666", keys / "server.key_secret", 0o666),
                              ("allowed-clients folder mode 0777", keys / "clients", 0o777)):
        (keys / "server.key_secret").chmod(0o600)
        (keys / "clients").chmod(0o755)
        path.chmod(mode)
        code, err = hlgfa("run", *base, "--thresholds", thresholds, "--source", f"folder:{replay}", "--publish",
                          free_endpoint(), *curve)
        row("8", f"CURVE {label}", "hlgfa run --set publish.curve_… ", f"exit {code}: {last_error(err)[:140]}")
    (keys / "clients").chmod(0o755)


def threshold_sanity(work: Path, s: dict) -> None:
    """Item 9 of issue 13: threshold sanity and content-derived version."""
    thresholds, replay = s["thresholds"], s["replay"]
    base = run_args(s)
    data = json.loads(thresholds.read_text())
    for label, value in (("0", 0.0), ("-1", -1.0), ("1e9", 1e9)):
        bad = work / f"t_{label}.json"
        bad.write_text(json.dumps({**data, "image_threshold": value}))
        code, err = hlgfa("run", *base, "--thresholds", bad, "--source", f"folder:{replay}", "--publish",
                          free_endpoint())
        row("9", f"image_threshold {label}", "hlgfa run --thresholds FILE", f"exit {code}: {last_error(err)[:140]}")
    from edge.artifacts.thresholds import load_thresholds

    edited = work / "t_edited.json"
    edited.write_text(json.dumps({**data, "image_threshold": data["image_threshold"] * 1.01}))
    row("9", "threshold hand-edited, `version` unchanged", "load_thresholds (daemon start / SIGHUP)",
        f"`{load_thresholds(thresholds).version}` → `{load_thresholds(edited).version}`")


def unacknowledged_at_exit(work: Path, s: dict) -> None:
    """Item 10 of issue 13: evictions and unacknowledged decisions at exit."""
    thresholds, replay = s["thresholds"], s["replay"]
    base = run_args(s)
    process = subprocess.run(hlgfa_argv("run", *base, "--thresholds", thresholds, "--source", f"folder:{replay}",
                                        "--publish", free_endpoint(), "--reliable", free_endpoint(),
                                        "--set", "publish.reliable_capacity=2"),
                             cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    logged = [k for k in ("evicted unacknowledged", "never acknowledged") if k in process.stderr]
    row("10", "reliable channel without a bridge, capacity 2, 8 frames", "hlgfa run --reliable EP …",
        f"exit {process.returncode}; logged: {', '.join(f'`{k}`' for k in logged) or 'nothing'}")


def tracebacks(work: Path, s: dict) -> None:
    """Item 11 of issue 13: tracebacks."""
    model, thresholds, replay = s["model"], s["thresholds"], s["replay"]
    base = run_args(s)
    blocker = work / "a_file"
    blocker.write_text("x")
    code, err = hlgfa("subscribe", "--connect", free_endpoint(), "--save-maps", blocker / "maps", "--timeout", "5")
    row("11", "`subscribe --save-maps` to a path that cannot be written", "hlgfa subscribe --save-maps …",
        f"exit {code}, {traceback_note(err)}: {last_error(err)[:120]}")
    started = time.monotonic()
    code, err = hlgfa("calibrate", "--model", model, "--normals", s["normals"], "--out", blocker / "t.json",
                      "--backend", "onnxruntime")
    row("11", "`calibrate --out` to a path that cannot be written", "hlgfa calibrate --out …",
        f"exit {code} after {time.monotonic() - started:.1f} s (before scoring), {traceback_note(err)}")
    code, err = hlgfa("calibrate", "--model", model, "--normals", s["normals"], "--out", work / "t_r.json",
                      "--report", blocker / "report", "--backend", "onnxruntime", "--force")
    row("11", "`calibrate --report` to a path that cannot be written", "hlgfa calibrate --report …",
        f"exit {code}, {traceback_note(err)}: {last_error(err)[:100]}")
    damaged = work / "model_no_input_size"
    if not damaged.exists():
        from edge.artifacts.model_dir import compute_model_hash

        shutil.copytree(model, damaged)
        description = json.loads((damaged / "model.json").read_text())
        del description["preprocess"]["input_size"]
        description["hash"] = compute_model_hash(description, damaged / "module.pt")
        (damaged / "model.json").write_text(json.dumps(description))
    code, err = hlgfa("run", "--model", damaged, "--thresholds", thresholds, "--source", f"folder:{replay}",
                      "--publish", free_endpoint())
    row("11", "model.json without `input_size`, hash recomputed", "hlgfa run --model M …",
        f"exit {code}, {traceback_note(err)}: {last_error(err)[:110]}")
    for label, signals in (("SIGHUP", (signal.SIGHUP,)), ("Ctrl-C (SIGINT)", (signal.SIGINT,))):
        process = subprocess.Popen(hlgfa_argv("run", *base, "--thresholds", thresholds, "--source", f"folder:{replay}",
                                              "--publish", free_endpoint(), "--set", "source.loop=true"),
                                   cwd=ROOT, env=ENV, stderr=subprocess.PIPE, text=True)
        status = Path(f"/proc/{process.pid}/status")
        while process.poll() is None and not (int(next(line for line in status.read_text().splitlines()
                                                        if line.startswith("SigCgt:")).split()[1], 16) & 1):
            time.sleep(0.001)
        for sig in signals:
            process.send_signal(sig)
        alive_after_start = None
        try:
            _, err = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:  # SIGHUP alone is a reload: the daemon runs on; stop it
            alive_after_start = True
            process.send_signal(signal.SIGTERM)
            _, err = process.communicate(timeout=120)
        row("11", f"{label} in the first moments of `run`", "kill -HUP / -INT right after start",
            ("kept running (reload request), " if alive_after_start else "") +
            f"exit {process.returncode}, {traceback_note(err)}")


def absent_camera(work: Path, s: dict) -> None:
    """Item 12 of issue 13: camera that cannot be opened."""
    thresholds = s["thresholds"]
    base = run_args(s)
    from edge.sources.genicam import simulated_producer

    viky = simulated_producer()
    if viky is not None:
        daemon = Daemon(*base, "--thresholds", thresholds, "--camera", "absent", "--source", "genicam:cam-42",
                        "--set", f"source.cti={viky}", "--set", "pipeline.source_fault_repeat_s=0.5")
        daemon.pump(lambda d: len(d.faults()) >= 2, timeout_s=120)
        from edge.transport import wire

        states = {m.source.state for m in daemon.messages if isinstance(m, wire.Heartbeat)}
        code, err = daemon.finish(signal.SIGTERM)
        row("12", "GenICam camera that cannot be opened (viky, serial cam-42)", "hlgfa run --source genicam:cam-42",
            f"ran on: faults `{daemon.faults()[0].code}` repeated, heartbeats source.state {sorted(states)}; "
            f"SIGTERM → exit {code}")
    code, err = hlgfa("run", *base, "--thresholds", thresholds, "--source", f"folder:{work / 'nope'}", "--publish",
                      free_endpoint())
    row("12", "replay folder that does not exist", "hlgfa run --source folder:nope",
        f"exit {code}: {last_error(err)[:100]}")


def unpaced_replay_deadlines(work: Path, s: dict) -> None:
    """Item 13 of issue 13: unpaced replay: deadline faults from the daemon's own queueing."""
    thresholds, replay = s["thresholds"], s["replay"]
    base = run_args(s)
    daemon = Daemon(*base, "--thresholds", thresholds, "--source", f"folder:{replay}", "--set", "source.loop=true",
                    "--max-frames", "400")
    code, err = daemon.finish()
    row("13", "unpaced looping replay, 400 frames, default deadline 500 ms, on the shared 2-core box",
        "hlgfa run --source folder:DIR --set source.loop=true --max-frames 400",
        f"{len(daemon.decisions)} decisions: {verdicts(daemon.decisions)}; exit {code}")


# The rows of issue 13, items 2-13, in its order.
ISSUE13 = (
    thresholds_not_utf8,
    empty_and_oversized_frames,
    broken_and_foreign_onnx,
    training_images_as_normals,
    run_before_export,
    endpoints_in_config_check,
    curve_key_permissions,
    threshold_sanity,
    unacknowledged_at_exit,
    tracebacks,
    absent_camera,
    unpaced_replay_deadlines,
)


# ------------------------------------------------------------------------------------------ issue 25

def _replay_with(work: Path, s: dict, name: str, extra: dict) -> Path:
    """A copy of the replay folder with `extra` (file name → bytes, or a callable making the entry)."""
    folder = work / name
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(s["replay"], folder)
    for entry, content in extra.items():
        if callable(content):
            content(folder / entry)
        else:
            (folder / entry).write_bytes(content)
    return folder


def _encoded_frames(cell: Path) -> dict:
    """The same good cell in the formats a recording may hold."""
    import cv2
    import numpy as np
    from PIL import Image

    grey = cv2.imread(str(cell), cv2.IMREAD_GRAYSCALE)
    image = Image.fromarray(grey)

    def saved(picture, fmt, **options) -> bytes:
        out = io.BytesIO()
        picture.save(out, fmt, **options)
        return out.getvalue()

    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotated
    frames = [image, image.point(lambda v: 255 - v)]
    return {
        "a16bit.png": cv2.imencode(".png", grey.astype(np.uint16) * 257)[1].tobytes(),
        "apalette.png": saved(image.convert("P"), "PNG"),
        "acmyk.jpg": saved(image.convert("CMYK"), "JPEG"),
        "aexif.jpg": saved(image, "JPEG", exif=exif),
        "amultipage.tif": saved(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
        "aanimated.png": saved(frames[0], "PNG", save_all=True, append_images=frames[1:]),
        "atruncated.png": cv2.imencode(".png", grey)[1].tobytes()[:2000],
        "atruncated.jpg": cv2.imencode(".jpg", grey)[1].tobytes()[:1500],
    }


def _by_file(daemon: "Daemon", folder: Path) -> dict:
    """file name → verdict (fault with its kind) of one replay pass of a plain folder."""
    from edge.imaging.files import image_files

    names = [path.name for path in image_files(folder)]
    out = {}
    for decision in daemon.decisions:
        if decision.frame_id < len(names):
            out[names[decision.frame_id]] = (decision.verdict if decision.verdict != "fault"
                                             else f"fault/{decision.reason.split(':')[0]}")
    return out


def _fd_limited(limit: int):
    import resource

    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


def frame_formats_and_damaged_files(work: Path, s: dict) -> None:
    """Held on main 3b775e0 of issue 25: frame formats and damaged files."""
    base = run_args(s, with_thresholds=True)
    cell = sorted(s["replay"].iterdir())[0]
    folder = _replay_with(work, s, "formats", _encoded_frames(cell))
    daemon = Daemon(*base, "--source", f"folder:{folder}")
    code, err = daemon.finish()
    seen = _by_file(daemon, folder)
    row("held", "16-bit, palette, CMYK, EXIF-rotated, multi-page TIFF, animated PNG frames and a truncated PNG "
        "and JPEG among 8 normals", "hlgfa run --source folder:DIR",
        f"the cell as PNG `{seen.get(cell.name)}`; "
        + "; ".join(f"{name[1:]} `{verdict}`" for name, verdict in sorted(seen.items()) if name.startswith("a"))
        + f"; {len(daemon.decisions)} decisions for {len(seen)} files; exit {code}, {traceback_note(err)}")
    folder = _replay_with(work, s, "entries", {
        "loop.png": lambda p: p.symlink_to(p), "fifo.png": lambda p: os.mkfifo(p),
        "dir.png": lambda p: p.mkdir(), "clip.gif": b"GIF89a" + bytes(20)})
    daemon = Daemon(*base, "--source", f"folder:{folder}")
    code, err = daemon.finish()
    warned = [line for line in err.splitlines() if "left out" in line]
    row("held, 13", "a symlink loop, a FIFO and a directory named like images, and a `.gif`, in a replay folder",
        "hlgfa run --source folder:DIR",
        f"{len(daemon.decisions)} decisions (the 8 images); exit {code}; WARNING: `{warned[0].split(': ', 2)[-1][:150]}`"
        if warned else f"{len(daemon.decisions)} decisions; exit {code}; **no line names what was left out**")


def config_errors(work: Path, s: dict) -> None:
    """Held on main 3b775e0 of issue 25: 11 config errors."""
    model = s["model"]
    config = work / "bad.toml"
    head = config_head(s)
    errors = {"misspelt key": head + "[pipeline]\ndeadline = 200\n",
              "string for a number": head + '[pipeline]\ndeadline_ms = "fast"\n',
              "unknown source kind": head.replace('"folder"', '"usb"'),
              "unknown backend kind": head + '[backend]\nkind = "openvino"\n',
              "threads under tensorrt": head + '[backend]\nkind = "tensorrt"\nengine = "x.plan"\nthreads = 2\n',
              "no [source]": f'model = "{model}"\n',
              "negative queue": head + "[pipeline]\ninfer_queue = -1\n",
              "overload policy `drop`": head + '[pipeline]\noverload = "drop"\n',
              "log level `verbose`": head + '[logging]\nlevel = "verbose"\n',
              "map_format `png`": head + '[publish]\nmap_format = "png"\n',
              "quality range low > high": head + "[quality]\nmean = [200, 40]\n"}
    codes = []
    for label, text in errors.items():
        config.write_text(text)
        code, err = hlgfa("config", "check", config)
        codes.append(f"{label}: {code}")
    row("held", "11 config errors", "hlgfa config check FILE", "; ".join(codes))


def nan_in_thresholds(work: Path, s: dict) -> None:
    """Held on main 3b775e0 of issue 25: NaN / Infinity in thresholds."""
    thresholds, replay = s["thresholds"], s["replay"]
    base = run_args(s, with_thresholds=True)
    data = json.loads(thresholds.read_text())
    results = []
    for label, literal in (("NaN", "NaN"), ("Infinity", "Infinity")):
        bad = work / f"t_{label}.json"
        bad.write_text(json.dumps(data).replace(f'"image_threshold": {json.dumps(data["image_threshold"])}',
                                                f'"image_threshold": {literal}'))
        code, err = hlgfa("run", *base[:-2], "--thresholds", bad, "--source", f"folder:{replay}", "--publish",
                          free_endpoint())
        results.append(f"{label}: exit {code} (`{last_error(err)[-90:]}`)")
    row("held", "`image_threshold` NaN / Infinity in the thresholds file", "hlgfa run --thresholds FILE",
        "; ".join(results))


def sighup_storm(work: Path, s: dict) -> None:
    """Held on main 3b775e0 of issue 25: SIGHUP storm, SIGHUP on a half-written file."""
    thresholds, replay = s["thresholds"], s["replay"]
    base = run_args(s, with_thresholds=True)
    live = work / "t_live.json"
    shutil.copy(thresholds, live)
    daemon = Daemon(*base[:-2], "--thresholds", live, "--source", f"folder:{replay}", "--set", "source.loop=true",
                    "--set", "source.fps=50")
    daemon.pump(lambda d: len(d.decisions) >= 5)
    for _ in range(100):
        daemon.process.send_signal(signal.SIGHUP)
        time.sleep(0.01)
    n = len(daemon.decisions)
    daemon.pump(lambda d: len(d.decisions) >= n + 20)
    live.write_text(thresholds.read_text()[:200])  # half written
    daemon.process.send_signal(signal.SIGHUP)
    daemon.pump(lambda d: any(f.code == "thresholds_reload_failed" for f in d.faults()))
    n = len(daemon.decisions)
    daemon.pump(lambda d: len(d.decisions) >= n + 5)
    code, err = daemon.finish(signal.SIGTERM)
    seqs = [d.seq for d in daemon.decisions]
    row("held", "100 SIGHUPs in 1 s, then one on a half-written thresholds file", "kill -HUP ×100; kill -HUP",
        f"{len(seqs)} decisions at the bridge, seqs 1..{max(seqs)} with {max(seqs) - len(set(seqs))} holes; "
        f"half-written: fault `thresholds_reload_failed`, old version kept "
        f"({len({d.thresholds_version for d in daemon.decisions})} version in all); exit {code}, {traceback_note(err)}")


def sigterm_during_startup(work: Path, s: dict) -> None:
    """Held on main 3b775e0 of issue 25: SIGTERM at 20 random start-up moments."""
    replay = s["replay"]
    base = run_args(s, with_thresholds=True)
    rng = random.Random(0)
    outcomes = collections.Counter()
    for _ in range(20):
        process = subprocess.Popen(hlgfa_argv("run", *base, "--source", f"folder:{replay}", "--set", "source.loop=true",
                                              "--publish", free_endpoint()), cwd=ROOT, env=ENV,
                                   stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.0, 4.0))
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
        outcomes[f"exit {process.returncode}{', traceback' if 'Traceback' in err else ''}"] += 1
    row("held", "SIGTERM at 20 random moments of the first 4 s (start-up included)", "kill -TERM",
        ", ".join(f"{k} ×{v}" for k, v in sorted(outcomes.items())))


def sigkill_and_restart(work: Path, s: dict) -> None:
    """Held on main 3b775e0 of issue 25: 5 × SIGKILL and restart, one bridge throughout."""
    from edge.transport.subscriber import ReliableClient

    replay = s["replay"]
    base = run_args(s, with_thresholds=True)
    reliable = free_endpoint()
    bridge = ReliableClient(reliable)
    got = []
    for _ in range(5):
        process = subprocess.Popen(hlgfa_argv("run", *base, "--source", f"folder:{replay}", "--set", "source.loop=true",
                                              "--set", "source.fps=50", "--publish", free_endpoint(), "--reliable",
                                              reliable), cwd=ROOT, env=ENV, stderr=subprocess.DEVNULL)
        start = len(got)
        while len(got) < start + 30:
            decision = bridge.recv(timeout=60)
            assert decision is not None, "no decision from the restarted daemon"
            bridge.ack(decision)
            got.append(decision)
        process.kill()
        process.wait()
    bridge.close()
    sessions = {}
    for decision in got:
        sessions.setdefault(decision.session, []).append(decision.seq)
    holes = sum(max(seqs) - len(set(seqs)) for seqs in sessions.values())
    duplicates = sum(len(seqs) - len(set(seqs)) for seqs in sessions.values())
    row("held", "SIGKILL and restart, 5 times, one bridge throughout", "kill -KILL; hlgfa run …",
        f"{len(sessions)} sessions, {len(got)} decisions acked, {holes} holes, {duplicates} duplicates")


def stalled_subscribers_and_junk(work: Path, s: dict) -> None:
    """Held on main 3b775e0 of issue 25: 20 subscribers that never read; garbage and 64 MB frames at the
    reliable endpoint; 1000 reconnects."""
    from edge.transport.subscriber import ReliableClient, Subscriber

    replay = s["replay"]
    base = run_args(s, with_thresholds=True)
    import zmq

    context = zmq.Context()
    daemon = Daemon(*base, "--source", f"folder:{replay}", "--set", "source.loop=true", "--set", "source.fps=50",
                    "--set", "publish.map_format=float16")
    stalled = [Subscriber(daemon.publish, rcvhwm=1, context=context) for _ in range(20)]
    daemon.pump(lambda d: len(d.decisions) >= 50)
    rss_before = _rss_mib(daemon.process.pid)
    junk = context.socket(zmq.DEALER)
    junk.connect(daemon.reliable)
    for _ in range(100):
        junk.send_multipart([b"garbage", os.urandom(64)])
    junk.send_multipart([b"HELLO", b"1", bytes(64 << 20)])
    raw = socket.create_connection(daemon.reliable.rsplit("//", 1)[1].rsplit(":", 1))
    raw.sendall(os.urandom(1 << 20))
    raw.close()
    fds_before = len(os.listdir(f"/proc/{daemon.process.pid}/fd"))
    for _ in range(1000):
        client = ReliableClient(daemon.reliable, context=context)
        client.close()
    n = len(daemon.decisions)
    daemon.pump(lambda d: len(d.decisions) >= n + 50, timeout_s=300)
    fds_after = len(os.listdir(f"/proc/{daemon.process.pid}/fd"))
    rss_after = _rss_mib(daemon.process.pid)
    code, err = daemon.finish(signal.SIGTERM)
    for subscriber in stalled:
        subscriber.close()
    junk.close(linger=0)
    context.term()
    seqs = [d.seq for d in daemon.decisions]
    warnings = [line for line in err.splitlines() if " WARNING " in line]
    infos = [line for line in err.splitlines() if "reliable bridge at" in line and "connected" in line]
    row("held, 15", "20 subscribers that never read; 100 junk messages, a 64 MB HELLO and 1 MB of random bytes at "
        "the reliable endpoint; 1000 bridge connects", "DEALER / raw TCP / ReliableClient ×1000",
        f"the bridge got {len(seqs)} decisions, {max(seqs) - len(set(seqs))} holes; RSS {rss_before:.0f} → "
        f"{rss_after:.0f} MiB, fds {fds_before} → {fds_after}; log: {len(warnings)} WARNING lines, "
        f"{len(infos)} 'connected' lines; exit {code}, {traceback_note(err)}")


def junk_http_and_curve(work: Path, s: dict) -> None:
    """Held on main 3b775e0 of issue 25: garbage HTTP at the metrics port; CURVE."""
    from edge.transport.subscriber import ReliableClient, Subscriber

    replay = s["replay"]
    base = run_args(s, with_thresholds=True)
    port = int(free_endpoint().rsplit(":", 1)[1])
    daemon = Daemon(*base, "--source", f"folder:{replay}", "--set", "source.loop=true", "--set", "source.fps=50",
                    "--metrics-port", port)
    daemon.pump(lambda d: len(d.decisions) >= 5)
    for payload in (b"GARBAGE\r\n\r\n", b"GET /" + b"x" * 70000 + b" HTTP/1.1\r\n\r\n", os.urandom(4096)):
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(payload)
    import urllib.request

    scraped = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).status
    n = len(daemon.decisions)
    daemon.pump(lambda d: len(d.decisions) >= n + 10)
    code, err = daemon.finish(signal.SIGTERM)
    row("held", "junk HTTP at the metrics port (garbage, a 70 KB request line, random bytes)", "raw TCP",
        f"/metrics then answered {scraped}; decisions went on; exit {code}, {traceback_note(err)}")
    from edge.transport.curve_keys import ClientCurve, generate

    keys = work / "keys25"
    shutil.rmtree(keys, ignore_errors=True)
    generate(keys, "server")
    generate(keys / "clients", "plc")
    generate(keys / "stranger", "stranger")
    daemon = Daemon(*base, "--source", f"folder:{replay}", "--set", "source.loop=true", "--set", "source.fps=50",
                    "--set", f"publish.curve_secret_key={keys / 'server.key_secret'}",
                    "--set", f"publish.curve_allowed_clients={keys / 'clients'}")
    daemon.subscriber.close()
    daemon.subscriber = Subscriber(daemon.publish, curve=ClientCurve(keys / "clients" / "plc.key_secret",
                                                                      keys / "server.key"))
    daemon.bridge.close()
    daemon.bridge = ReliableClient(daemon.reliable, curve=ClientCurve(keys / "clients" / "plc.key_secret",
                                                                      keys / "server.key"))
    stranger = Subscriber(daemon.publish, curve=ClientCurve(keys / "stranger" / "stranger.key_secret",
                                                            keys / "server.key"))
    plain = Subscriber(daemon.publish)
    daemon.pump(lambda d: len(d.decisions) >= 10 and len(d.messages) >= 10)
    foreign = sum(1 for sub in (stranger, plain) if sub.recv(timeout=1.0) is not None)
    code, err = daemon.finish(signal.SIGTERM)
    stranger.close()
    plain.close()
    row("held", "CURVE on: a subscriber with an allowed key, one with a stranger's key, one without", "hlgfa run --set "
        "publish.curve_…", f"allowed: {len(daemon.messages)} messages; stranger and keyless: {foreign} received; "
        f"exit {code}")


def deadline_at_handover(work: Path, s: dict) -> None:
    """Item 1 of issue 25: deadline at hand-over."""
    replay = s["replay"]
    base = run_args(s, with_thresholds=True)
    daemon = Daemon(*base, "--source", f"folder:{replay}", "--set", "source.loop=true", "--max-frames", "400",
                    "--deadline-ms", "8")
    code, err = daemon.finish()
    late = [d for d in daemon.decisions if d.verdict != "fault" and d.latency_ms > 8]
    row("1", "`--deadline-ms 8`, 400 frames of an unpaced replay", "hlgfa run --deadline-ms 8 …",
        f"{verdicts(daemon.decisions)}; ok/reject later than 8 ms: {len(late)}; exit {code}")


def subscription_flood(work: Path, s: dict) -> None:
    """Item 2 of issue 25: subscription flood."""
    from bench.reliability.hostile import flood

    result = flood(s, work, 2000, 20.0)
    row("2", "one peer: 2,000 subscriptions of 50 KB, reconnecting every 100 ms, 20 s, daemon at 20 fps",
        "python -m bench.reliability.hostile flood --seconds 20",
        f"peer dropped at its first message ({result['flooder_connections']} connections); RSS "
        f"{result['before']['rss_mib_max']} → {result['during']['rss_mib_max']} MiB; delivery p99 "
        f"{result['before']['delivery_ms_p99']} → {result['during']['delivery_ms_p99']} ms; "
        f"{result['lost_decisions_at_subscriber']} lost")


def thresholds_schema(work: Path, s: dict) -> None:
    """Item 3 of issue 25: thresholds schema."""
    thresholds, replay = s["thresholds"], s["replay"]
    base = run_args(s, with_thresholds=True)
    results = []
    for label, change in (("without `details`, threshold 1e9", lambda d: (d.pop("details"),
                                                                            d.update(image_threshold=1e9))),
                          ("an unknown top-level key", lambda d: d.update(note="tuned by hand")),
                          ("without `quality`", lambda d: d.pop("quality"))):
        changed = json.loads(thresholds.read_text())
        change(changed)
        bad = work / "t_schema.json"
        bad.write_text(json.dumps(changed))
        code, err = hlgfa("run", *base[:-2], "--thresholds", bad, "--source", f"folder:{replay}", "--publish",
                          free_endpoint())
        results.append(f"{label}: exit {code} (`{last_error(err).split('.json: ', 1)[-1][:70]}`)")
    row("3", "thresholds files `hlgfa calibrate` never writes", "hlgfa run --thresholds FILE", "; ".join(results))


def gate_floor_of_normals(work: Path, s: dict) -> None:
    """Item 3b of issue 25: the gate's floor of normals."""
    model = s["model"]
    code, err = hlgfa("calibrate", "--model", model, "--normals", s["normals"], "--backend", "onnxruntime",
                      "--target-frr", "0.05", "--out", work / "t_floor.json", "--force")
    floor = [line for line in err.splitlines() if "frame-quality gate's ranges were fitted on" in line]
    row("3b", "gate fitted on 30 normals (floor 100: bench/detection/quality_floor.py)", "hlgfa calibrate --normals DIR",
        f"exit {code}; `{floor[0].split('WARNING: ')[-1][:150]}`" if floor else f"exit {code}; no floor warning")


def frame_ids(work: Path, s: dict) -> None:
    """Item 4 of issue 25: frame ids."""
    replay = s["replay"]
    base = run_args(s, with_thresholds=True)
    recording = work / "recording"
    shutil.rmtree(recording, ignore_errors=True)
    recording.mkdir()
    for index, path in enumerate(sorted(replay.iterdir())[:3]):
        shutil.copy(path, recording / path.name)
    lines = lambda ids: "".join(json.dumps({"file": p.name, "frame_id": i}) + "\n"  # noqa: E731
                                for p, i in zip(sorted(recording.glob("*.png")), ids))
    (recording / "frames.jsonl").write_text(lines([0, -5, 2]))
    code, err = hlgfa("run", *base, "--source", f"folder:{recording}", "--publish", free_endpoint(), "--reliable",
                      free_endpoint())
    negative = f"negative id: exit {code} (`{last_error(err).split('recording/', 1)[-1][:90]}`)"
    (recording / "frames.jsonl").write_text(lines([2 ** 64 - 3, 2 ** 64 - 2, 2 ** 64 - 1]))
    daemon = Daemon(*base, "--source", f"folder:{recording}", "--set", "source.loop=true", "--max-frames", "9")
    code, err = daemon.finish()
    row("4", "a negative frame id, and ids at 2^64 − 3 … 2^64 − 1 looped 3 times, reliable channel on",
        "hlgfa run --source folder:RECORDING", f"{negative}; near 2^64: {len(daemon.decisions)} decisions, ids "
        f"{sorted({d.frame_id - (2 ** 64 - 3) for d in daemon.decisions})} (+2^64 − 3), seqs "
        f"{[d.seq for d in daemon.decisions] == list(range(1, 10))}; exit {code}")


def one_bridge_per_channel(work: Path, s: dict) -> None:
    """Item 5 of issue 25: one bridge per channel."""
    import zmq

    from edge.transport import wire
    from edge.transport.subscriber import ReliableClient

    replay = s["replay"]
    base = run_args(s, with_thresholds=True)
    daemon = Daemon(*base, "--source", f"folder:{replay}", "--set", "source.loop=true", "--set", "source.fps=50")
    daemon.pump(lambda d: len(d.decisions) >= 5)
    second = ReliableClient(daemon.reliable, hello_interval_s=0.1)

    def saying_hello(schema: bytes):
        peer = zmq.Context.instance().socket(zmq.DEALER)
        peer.connect(daemon.reliable)
        peer.send_multipart([wire.RELIABLE_HELLO, schema])
        return peer

    rogue, schema99 = saying_hello(b"1"), saying_hello(b"99")
    to_second = []
    n = len(daemon.decisions)
    end = time.monotonic() + 20
    while time.monotonic() < end and len(daemon.decisions) < n + 100:
        daemon.pump(lambda d: True, timeout_s=5)
        if (decision := second.recv(timeout=0)) is not None:
            to_second.append(decision)
        while rogue.poll(0):
            verb, *rest = rogue.recv_multipart()
            if verb == wire.RELIABLE_DECISION:
                decision = wire.decode(rest)
                rogue.send_multipart([wire.RELIABLE_ACK, wire.ack_body(decision.session, decision.seq)])
    refused_99 = schema99.poll(5000) and schema99.recv_multipart()[0] == wire.RELIABLE_REFUSED
    code, err = daemon.finish(signal.SIGTERM)
    seqs = [d.seq for d in daemon.decisions]
    second.close()
    rogue.close(linger=0)
    schema99.close(linger=0)
    refusals = [line for line in err.splitlines() if "refused 127.0.0.1" in line]
    row("5", "a second bridge, a rogue saying HELLO and ACKing, a HELLO of schema 99, while a bridge owns the channel",
        "ReliableClient / DEALER", f"owner got {len(seqs)} decisions, {max(seqs) - len(set(seqs))} holes; second "
        f"bridge got {len(to_second)} (refused: {second.refused is not None}); schema 99 REFUSED: {bool(refused_99)}; "
        f"{len(refusals)} WARNING lines naming 127.0.0.1; exit {code}")


def values_config_check_accepted(work: Path, s: dict) -> None:
    """Items 6, 9, 12 of issue 25: values config check used to accept."""
    replay = s["replay"]
    base = run_args(s, with_thresholds=True)
    values = {"6": ["pipeline.drain_timeout_s=inf"],
              "9": ["publish.map_size=[100000,100000]", "publish.map_value_range=[nan,nan]",
                    "publish.heartbeat_period_s=1e300", "publish.linger_ms=99999999999", "publish.sndhwm=99999999999",
                    "pipeline.deadline_ms=inf", "pipeline.max_batch_wait_ms=inf", "publish.ack_timeout_s=1e300",
                    "publish.reliable_endpoint=RELIABLE"],
              "12": ['camera="line1\\n"']}
    for item, settings in values.items():
        results = []
        for setting in settings:
            endpoint = free_endpoint()
            setting = setting.replace("RELIABLE", f'"{endpoint}"')
            code, err = hlgfa("run", *base, "--source", f"folder:{replay}", "--publish", endpoint, "--max-batch", "4",
                              "--set", setting, timeout=120)
            results.append(f"`{setting.split('=')[0].split('.')[-1]}`: {code}")
        row(item, "values `config check` used to accept: " + ", ".join(f"`{v}`" for v in settings),
            "hlgfa run --set KEY=VALUE (config check alike)", "exit " + "; ".join(results))


def idle_metrics_connections(work: Path, s: dict) -> None:
    """Item 7 of issue 25: idle connections at the metrics port, 128 descriptors."""
    replay = s["replay"]
    base = run_args(s, with_thresholds=True)
    port = int(free_endpoint().rsplit(":", 1)[1])
    process = subprocess.Popen(hlgfa_argv("run", *base, "--source", f"folder:{replay}", "--set", "source.loop=true",
                                          "--set", "source.fps=50", "--max-frames", "454", "--publish", free_endpoint(),
                                          "--metrics-port", port), cwd=ROOT, env=ENV, stderr=subprocess.PIPE,
                               text=True, preexec_fn=_fd_limited(128))
    idle = []
    deadline = time.monotonic() + 120
    while len(idle) < 200 and time.monotonic() < deadline and process.poll() is None:
        try:
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=1))
        except OSError:
            time.sleep(0.05)
    _, err = process.communicate(timeout=600)
    for conn in idle:
        conn.close()
    errors = err.count("Too many open files")
    row("7", "200 idle connections to the metrics port, the daemon under a 128-descriptor limit, 454 frames",
        "prlimit --nofile=128 hlgfa run --metrics-port …", f"exit {process.returncode}; 'Too many open files' "
        f"{errors} times; {traceback_note(err)}")


def view_recorder_full_disk(work: Path, s: dict) -> None:
    """Item 8 of issue 25: the operator view's recorder on a full disk (the fix belongs to the view)."""
    row("8", "the view's recorder on a full disk", "hlgfa view --records FULL_DISK",
        "not re-observed here: the operator view's issue (#23) owns the fix and its test")


def huge_fifo_and_zero_files(work: Path, s: dict) -> None:
    """Items 10, 11 of issue 25: FIFO, /dev/zero, a 20000 × 20000 TIFF."""
    base = run_args(s, with_thresholds=True)
    big = io.BytesIO()
    from PIL import Image

    Image.new("L", (20000, 20000)).save(big, "TIFF", compression="tiff_deflate")
    folder = _replay_with(work, s, "hostile_files", {"zzbig.tif": big.getvalue()})
    names = sorted(p.name for p in folder.iterdir())
    (folder / "fifo.png").unlink(missing_ok=True)
    os.mkfifo(folder / "fifo.png")
    (folder / "zero.png").symlink_to("/dev/zero")
    (folder / "frames.jsonl").write_text("".join(json.dumps({"file": name, "frame_id": i}) + "\n"
                                                 for i, name in enumerate(names + ["fifo.png", "zero.png"])))
    started = time.monotonic()
    daemon = Daemon(*base, "--source", f"folder:{folder}")
    code, err = daemon.finish()
    faults = {d.frame_id: d.reason.replace(str(folder) + "/", "")[:110] for d in daemon.decisions
              if d.verdict == "fault"}
    row("10, 11", f"a {len(big.getvalue()) // 1024} KB TIFF of 20000 × 20000 px, a FIFO and /dev/zero in a recording's "
        "index", "hlgfa run --source folder:RECORDING",
        f"{len(daemon.decisions)} decisions in {time.monotonic() - started:.1f} s; faults: "
        + "; ".join(f"`{reason}`" for reason in faults.values()) + f"; exit {code}, {traceback_note(err)}")


def stderr_on_full_disk(work: Path, s: dict) -> None:
    """Item 14 of issue 25: stderr on a full disk."""
    head = config_head(s)
    bad = work / "bad14.toml"
    bad.write_text(head + "[pipeline]\ndeadline_ms = -4\n")
    with open("/dev/full", "w") as full:
        done = subprocess.run(hlgfa_argv("run", "--config", bad), cwd=ROOT, env=ENV, stderr=full, timeout=120)
    row("14", "a refusal with stderr on a full disk (/dev/full)", "hlgfa run --config BAD 2>/dev/full",
        f"exit {done.returncode}")


# The 96 hostile cases of issue 25: the 65 that held on main 3b775e0, then the 31 that failed (20 causes).
ISSUE25 = (
    frame_formats_and_damaged_files,
    config_errors,
    nan_in_thresholds,
    sighup_storm,
    sigterm_during_startup,
    sigkill_and_restart,
    stalled_subscribers_and_junk,
    junk_http_and_curve,
    deadline_at_handover,
    subscription_flood,
    thresholds_schema,
    gate_floor_of_normals,
    frame_ids,
    one_bridge_per_channel,
    values_config_check_accepted,
    idle_metrics_connections,
    view_recorder_full_disk,
    huge_fifo_and_zero_files,
    stderr_on_full_disk,
)


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS:")).split()[1]) / 1024


if __name__ == "__main__":
    main()
