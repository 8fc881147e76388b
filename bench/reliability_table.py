"""Every bad input and fault of issue 13 (items 2-13), run against the real CLI and daemon, printing one
Markdown row each: what was done, the command, and what was observed (exit status, published verdicts
and faults, whether a traceback appeared). RELIABILITY.md holds its output on the final code.

    .venv/bin/python -m bench.reliability_table [--work DIR]

Sets itself up on the elpv-dataset cells (always installed with the dev extras): a tiny model (24 good
cells, 128 px, 1 epoch; a second one with --holdout), its ONNX export and thresholds from `hlgfa calibrate`.
"""

import argparse
import json
import os
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

ROOT = Path(__file__).resolve().parents[1]
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "hlgfa_reliability")
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    s = setup(work)
    model, onnx, thresholds, replay = s["model"], s["onnx"], s["thresholds"], s["replay"]
    base = ["--model", model, "--onnx", onnx, "--threads", "1"]
    print("| item | bad input or fault | command | observed now |\n|---|---|---|---|")

    # 2. non-UTF-8 thresholds
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

    # 3. empty / oversized frames in a replay and in calibrate
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

    # 4. broken / foreign ONNX and auto
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

    # 5. training images as normals
    code, err = hlgfa("calibrate", "--model", model, "--normals", s["train"], "--out", work / "t_train.json",
                      "--force", "--backend", "onnxruntime")
    row("5", "normals = the model's training images", "hlgfa calibrate --normals TRAIN_DIR …",
        f"exit {code}, {traceback_note(err)}: {last_error(err)[:120]}")
    code, err = hlgfa("calibrate", "--model", s["held"], "--normals-from-model", "--out", work / "t_held.json",
                      "--force", "--backend", "torch", "--target-frr", "0.05")
    n = json.loads((work / "t_held.json").read_text())["details"]["n_normals"] if code == 0 else "-"
    row("5, 6", "calibrate on `train --holdout`'s images", "hlgfa calibrate --normals-from-model …",
        f"exit {code}, {n} held-out normals, {traceback_note(err)}")

    # 6. run before export
    bare = work / "model_not_exported"
    if not bare.exists():
        shutil.copytree(model, bare, ignore=shutil.ignore_patterns("*.onnx"))
    code, err = hlgfa("run", "--model", bare, "--thresholds", thresholds, "--source", f"folder:{replay}",
                      "--publish", free_endpoint())
    row("6", "`run` before `export`", "hlgfa run --model M (no model.onnx)",
        f"exit {code}, {traceback_note(err)}: {last_error(err)[:150]}")

    # 7. endpoints in config check
    for endpoint in ("tcp://127.0.0.1:99999", "tcp://127.0.0.1", "tcp://10.255.255.1:5555",
                     "ipc:///no/such/dir/x.sock"):
        config = work / "endpoint.toml"
        config.write_text(f'model = "{model}"\n[source]\nkind = "folder"\npath = "{replay}"\n[publish]\n'
                          f'endpoint = "{endpoint}"\n')
        code, err = hlgfa("config", "check", config)
        row("7", f"endpoint `{endpoint}`", "hlgfa config check FILE", f"exit {code}: {last_error(err)[:120]}")

    # 8. CURVE permissions
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

    # 9. threshold sanity and content-derived version
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

    # 10. evictions and unacknowledged decisions at exit
    process = subprocess.run(hlgfa_argv("run", *base, "--thresholds", thresholds, "--source", f"folder:{replay}",
                                        "--publish", free_endpoint(), "--reliable", free_endpoint(),
                                        "--set", "publish.reliable_capacity=2"),
                             cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    logged = [k for k in ("evicted unacknowledged", "never acknowledged") if k in process.stderr]
    row("10", "reliable channel without a bridge, capacity 2, 8 frames", "hlgfa run --reliable EP …",
        f"exit {process.returncode}; logged: {', '.join(f'`{k}`' for k in logged) or 'nothing'}")

    # 11. tracebacks
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

    # 12. camera that cannot be opened
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

    # 13. unpaced replay: deadline faults from the daemon's own queueing
    daemon = Daemon(*base, "--thresholds", thresholds, "--source", f"folder:{replay}", "--set", "source.loop=true",
                    "--max-frames", "400")
    code, err = daemon.finish()
    row("13", "unpaced looping replay, 400 frames, default deadline 500 ms, on the shared 2-core box",
        "hlgfa run --source folder:DIR --set source.loop=true --max-frames 400",
        f"{len(daemon.decisions)} decisions: {verdicts(daemon.decisions)}; exit {code}")


if __name__ == "__main__":
    main()
