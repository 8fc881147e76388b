"""README.md's walk-through — Training, Calibrating, Export, Running the daemon, subscribe — run top to
bottom as written, on a handful of magnetic tiles, so the commands users copy cannot rot.

The commands are read from README.md itself: every `.venv/bin/hlgfa` line of the code blocks under those
headings, continuation lines joined, trailing comments dropped. What the test changes, and only that:
ROOT and the folders the text leaves to the reader (good/, recording/) are made here from the data set;
port 5555 becomes a free one (other test runs share this machine); each `[optional]` group is dropped or
filled as OPTIONAL says (a README group this table does not know fails the test, so a new option gets a
decision); lines needing /etc (a deployed config) are left to tests/integration/test_daemon.py. Short:
10 training tiles at 128 px, 1 epoch.
"""

import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tests.ports import free_port

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

ROOT_DIR = Path(__file__).resolve().parents[2]
SECTIONS = ("## Training on your own images", "## Calibrating thresholds", "## Export and engines",
            "## Running the daemon")
TIMEOUT_S = 600  # per command, on a loaded 2-core box; a hang fails instead of blocking for ever
# First flag of each [optional] group → what this run puts there (None: drop the group).
OPTIONAL = {
    "--epochs": "--epochs 1", "--image-size": "--image-size 128", "--backbone": None, "--seed": "--seed 0",
    "--holdout": "--holdout 0.2", "--defects": None, "--backend": None, "--max-frames": None,
    "--set": "--set source.loop=true", "--save-maps": "--save-maps maps/", "--count": "--count 3",
}


def readme_commands() -> list[str]:
    text = (ROOT_DIR / "README.md").read_text()
    commands = []
    for heading in SECTIONS:
        start = text.index(heading)
        block = re.search(r"```sh\n(.*?)```", text[start:], re.S).group(1)
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line.startswith(".venv/bin/hlgfa") and "/etc/" not in line:
                commands.append(re.sub(r"\s+", " ", line))
    return commands


def fill_optionals(command: str) -> str:
    def choose(match):
        group = match.group(1)
        flag = group.split()[0]
        assert flag in OPTIONAL, f"README option group [{group}] is new: decide in OPTIONAL whether to run it"
        return OPTIONAL[flag] or ""

    return re.sub(r"\s+", " ", re.sub(r"\[([^\]]+)\]", choose, command)).strip()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, magnetic_tile) -> Path:
    """ROOT (MVTec layout: 10 good tiles to train on, a few test tiles with masks), good/ (20 good
    tiles the model never sees in training) and recording/ (good and defective tiles to replay)."""
    work = tmp_path_factory.mktemp("readme")
    goods = sorted((magnetic_tile / "train" / "good").iterdir())
    for sub, paths in (("ROOT/train/good", goods[:10]), ("good", goods[10:30]),
                       ("ROOT/test/good", sorted((magnetic_tile / "test" / "good").iterdir())[:2]),
                       ("recording", sorted((magnetic_tile / "test" / "good").iterdir())[2:4])):
        (work / sub).mkdir(parents=True)
        for path in paths:
            shutil.copy(path, work / sub / path.name)
    for path in sorted((magnetic_tile / "test" / "break").iterdir())[:2]:
        for sub in ("ROOT/test/break", "ROOT/ground_truth/break"):
            (work / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, work / "ROOT/test/break" / path.name)
        shutil.copy(path, work / "recording" / path.name)
        mask = magnetic_tile / "ground_truth" / "break" / f"{path.stem}_mask.png"
        shutil.copy(mask, work / "ROOT/ground_truth/break" / mask.name)
    return work


def test_the_readme_walkthrough_runs_top_to_bottom_as_written(workdir):
    hlgfa = Path(sys.executable).parent / "hlgfa"
    if not hlgfa.is_file():
        pytest.skip(f"{hlgfa} is not installed (make venv installs it)")
    port = str(free_port())
    commands = [fill_optionals(c).replace(".venv/bin/hlgfa", str(hlgfa)).replace("ROOT", str(workdir / "ROOT"))
                .replace("5555", port) for c in readme_commands()]
    words = [c.split()[1] for c in commands]
    assert words == ["train", "eval", "calibrate", "export", "export", "run", "subscribe"], commands
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    for command in commands[:5]:
        done = subprocess.run(command.split(), cwd=workdir, env=env, capture_output=True, text=True,
                              timeout=TIMEOUT_S)
        assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
    assert (workdir / "models/line1/thresholds.json").is_file() and (workdir / "calib/index.html").is_file()
    assert (workdir / "models/line1/model.onnx").is_file() and (workdir / "models/line1/model.fp16.onnx").is_file()

    # The daemon replays in a loop until stopped, so the subscriber (started after it, as written)
    # always finds decisions to read: --count 3 ends it; then SIGTERM ends the daemon.
    daemon = subprocess.Popen(commands[5].split(), cwd=workdir, env=env, stderr=subprocess.PIPE, text=True)
    try:
        subscribe = subprocess.run(commands[6].split(), cwd=workdir, env=env, capture_output=True, text=True,
                                   timeout=TIMEOUT_S)
        assert subscribe.returncode == 0, subscribe.stderr[-3000:]
        daemon.send_signal(signal.SIGTERM)
        _, daemon_err = daemon.communicate(timeout=TIMEOUT_S)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert daemon.returncode == 0, daemon_err[-3000:]
    assert "backend auto: chose onnxruntime" in daemon_err
    decisions = [json.loads(line) for line in subscribe.stdout.splitlines()]
    decisions = [d for d in decisions if d.get("type", "decision") == "decision" and "verdict" in d]
    assert len(decisions) == 3 and {d["camera"] for d in decisions} == {"line1"}
    assert all(d["verdict"] in ("ok", "reject") for d in decisions), decisions
    assert list((workdir / "maps").glob("line1_*.png")), "--save-maps wrote no map"
