"""`hlgfa run`'s exit status when a thread the daemon started is still inside native code at exit.

Each case is its own process, since what is tested is how that process ends. `Daemon.run` is
replaced there by one that leaves a thread looping onnxruntime's `session.run` (what an infer stage
stuck past the drain timeout does) and then returns or raises; the real daemon, doing the same
through a SIGTERM, is tested in tests/integration/test_daemon.py.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

DAEMON_LEAVING_A_THREAD_IN_ONNXRUNTIME = """
import sys, threading
import numpy as np, onnxruntime
from edge.service import daemon
from edge.cli import main
from edge.core.errors import BackendError

onnx_file, outcome = sys.argv[1], sys.argv[2]
options = onnxruntime.SessionOptions()
options.intra_op_num_threads = 1
session = onnxruntime.InferenceSession(onnx_file, options)
x = np.ones((256, 256), np.float32)

def infer_for_ever():
    while True:
        session.run(None, {"x": x})

def run(self):
    threading.Thread(target=infer_for_ever, name="infer-cam0", daemon=True).start()
    if outcome == "error":
        raise BackendError("injected backend error")
    if outcome == "bug":
        raise RuntimeError("injected bug")
    return int(outcome)

daemon.Daemon.run = run
sys.exit(main(["run", "--model", "unused", "--source", "folder:unused"]))
"""


@pytest.fixture(scope="module")
def matmul_onnx(tmp_path_factory) -> Path:
    """A graph of 20 chained 256×256 MatMuls: each run spends milliseconds inside onnxruntime."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.full((256, 256), 1 / 256, np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"y{i - 1}", "w"], [f"y{i}"]) for i in range(20)]
    graph = helper.make_graph(nodes, "matmuls", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [256, 256])],
                              [helper.make_tensor_value_info("y19", TensorProto.FLOAT, [256, 256])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("matmul") / "matmul.onnx"
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("outcome, status, says", [
    ("0", 0, None),
    ("70", 70, None),
    ("error", 70, "hlgfa run: error: injected backend error"),
    ("bug", 1, "RuntimeError: injected bug"),
])
def test_exit_status_is_the_daemons_not_an_abort_while_a_thread_is_inside_onnxruntime(matmul_onnx, outcome, status,
                                                                                     says):
    done = subprocess.run([sys.executable, "-c", DAEMON_LEAVING_A_THREAD_IN_ONNXRUNTIME, str(matmul_onnx), outcome],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == status, done.stderr
    assert "threads still running at exit: infer-cam0" in done.stderr
    assert says is None or says in done.stderr


def test_a_refusal_exits_78_even_when_stderr_cannot_be_written(tmp_path):
    """stderr on a full disk (/dev/full): the message is lost, the status must not be (1 would make
    systemd restart a daemon it should leave stopped)."""
    config = tmp_path / "bad.toml"
    config.write_text('model = "m"\n[source]\nkind = "folder"\npath = "."\n[pipeline]\ndeadline_ms = -4\n')
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "edge.cli", "config", "check", str(config)], cwd=ROOT,
                              stderr=full, stdout=subprocess.DEVNULL, timeout=120)
    assert done.returncode == 78
