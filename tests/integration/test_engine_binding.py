"""Thresholds bound to the engine they were calibrated on, end to end: `hlgfa calibrate --engine`,
`hlgfa run`, `hlgfa engine parity`, SIGHUP.

TensorRT and CUDA are the stand-ins of tests/gpu_fakes.py (no GPU here): engines are plan files whose
"kernels" map an image to a gain times its channel mean, so two builds of one graph give the same
scores from different bytes, as real rebuilds do, and a gain other than 1 is an engine that scores
differently. Everything else is real: the tiny trained model, real cells, the daemon's sockets.
"""

import json
import shutil

import pytest

from edge.artifacts.engine_sidecar import binding_problem, read_sidecar
from edge.artifacts.thresholds import load_thresholds
from edge.cli import main
from edge.core.errors import ConfigError, ModelFileError
from edge.transport import wire
from tests import gpu_fakes
from tests.gpu_fakes import write_engine
from tests.integration.test_daemon import Running
from tests.ports import free_endpoint


@pytest.fixture
def device(monkeypatch):
    return gpu_fakes.install(monkeypatch)


@pytest.fixture(scope="module")
def normals(elpv_images, tmp_path_factory):
    """24 good cells the tiny model was not trained on (it was on the first 24)."""
    folder = tmp_path_factory.mktemp("normals")
    for path in elpv_images["good"][30:54]:
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="module")
def frames(elpv_images, tmp_path_factory):
    folder = tmp_path_factory.mktemp("frames")
    for path in elpv_images["good"][60:63] + elpv_images["defect"][:3]:
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture
def line(tiny_model_dir, tmp_path, device, normals, capsys):
    """The model, engine A and thresholds calibrated on it with `hlgfa calibrate --engine`."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model, ignore=shutil.ignore_patterns("*.onnx"))
    engine_a = tmp_path / "engines" / "a.plan"
    write_engine(engine_a, model, device)
    thresholds = tmp_path / "thresholds.json"
    assert main(["calibrate", "--model", str(model), "--normals", str(normals), "--engine", str(engine_a),
                 "--out", str(thresholds), "--no-region-rule"]) == 0
    capsys.readouterr()
    return {"model": model, "engine": engine_a, "thresholds": thresholds, "dir": tmp_path}


def rebuild(line, device, name: str, **changes):
    """Another build of engine A's graph on the same GPU model (`changes`: what differs)."""
    path = line["dir"] / "engines" / name
    write_engine(path, line["model"], device, **changes)
    return path


def config_file(line, engine, frames, **backend):
    config = line["dir"] / "line1.toml"
    keys = "".join(f'{key} = "{value}"\n' for key, value in backend.items())
    config.write_text(f'camera = "line1"\nmodel = "{line["model"]}"\nthresholds = "{line["thresholds"]}"\n'
                      f'[source]\nkind = "folder"\npath = "{frames}"\n[publish]\nendpoint = "{free_endpoint()}"\n'
                      f'[backend]\nkind = "tensorrt"\nmax_batch = 4\nengine = "{engine}"\n{keys}')
    return config


def run(line, engine, frames, **backend) -> int:
    return main(["run", "--config", str(config_file(line, engine, frames, **backend))])


def test_calibration_on_an_engine_records_its_hash_graph_gpu_and_every_normals_score(line, normals):
    thresholds = load_thresholds(line["thresholds"])
    sidecar = read_sidecar(line["engine"])
    assert thresholds.engine_sha256 == sidecar["engine_sha256"]
    assert thresholds.details["engine"]["onnx_sha256"] == sidecar["onnx_sha256"]
    assert thresholds.details["engine"]["gpu_sm_clock_mhz"] == sidecar["gpu_sm_clock_mhz"]
    by_file = thresholds.details["normal_scores"]["by_file"]
    assert sorted(by_file) == sorted(path.name for path in normals.iterdir())
    assert min(by_file.values()) == thresholds.details["normal_scores"]["min"]


def test_the_daemon_runs_the_engine_the_thresholds_were_calibrated_on(line, frames, device):
    backend = {"kind": "tensorrt", "engine": str(line["engine"]), "max_batch": 4}
    daemon = Running({"model": str(line["model"]), "thresholds": str(line["thresholds"]), "backend": backend,
                      "source": {"kind": "folder", "path": str(frames)}})
    assert daemon.collect_until_stopped() == 0
    decisions = daemon.of(wire.Decision)
    assert len(decisions) == 6  # the frame-quality gate may fault a cell unlike the normals; nothing else may
    assert all(d.verdict != "fault" or d.reason.startswith("frame_quality") for d in decisions)
    assert all(d.thresholds_version == load_thresholds(line["thresholds"]).version for d in decisions)


def test_thresholds_calibrated_on_engine_a_are_refused_with_engine_b(line, frames, device, capsys):
    engine_b = rebuild(line, device, "b.plan")
    assert run(line, engine_b, frames) == ModelFileError.exit_code
    error = capsys.readouterr().err
    assert f"thresholds file {line['thresholds']}: they were calibrated on engine" in error
    assert "`hlgfa calibrate --model MODEL --engine ENGINE ...`" in error and "hlgfa engine parity" in error


def test_a_rebuild_that_passed_the_parity_check_runs_only_where_the_config_accepts_it(line, frames, device, capsys):
    engine_b = rebuild(line, device, "b.plan")
    assert main(["engine", "parity", "--model", str(line["model"]), "--engine", str(engine_b), "--thresholds",
                 str(line["thresholds"]), "--max-batch", "4"]) == 0
    record = read_sidecar(engine_b)["parity"]
    thresholds = load_thresholds(line["thresholds"])
    assert (record["calibrated_engine_sha256"], record["engine_sha256"], record["thresholds_version"]) == (
        thresholds.engine_sha256, read_sidecar(engine_b)["engine_sha256"], thresholds.version)
    assert record["images"] == 24 and record["max_score_diff"] <= record["limit"]
    assert run(line, engine_b, frames) == ModelFileError.exit_code  # exact, the default
    assert run(line, engine_b, frames, engine_binding="parity") == 0
    assert "they were calibrated on engine" in capsys.readouterr().err


def test_a_rebuild_that_scores_differently_fails_the_parity_check_and_stays_refused(line, frames, device, capsys):
    engine_c = rebuild(line, device, "c.plan", gain=1.25)
    assert main(["engine", "parity", "--model", str(line["model"]), "--engine", str(engine_c), "--thresholds",
                 str(line["thresholds"]), "--max-batch", "4"]) == ModelFileError.exit_code
    assert "does not reproduce the calibrated engine's scores" in capsys.readouterr().err
    assert "parity" not in read_sidecar(engine_c)
    assert run(line, engine_c, frames, engine_binding="parity") == ModelFileError.exit_code
    assert "holds no passed parity check" in capsys.readouterr().err


@pytest.mark.parametrize("changes, reason", [({"onnx_sha256": "b" * 64}, "onnx_sha256"),
                                             ({"precision": "fp32"}, "precision"),
                                             ({"gpu_sm_clock_mhz": 625}, "gpu_sm_clock_mhz")])
def test_an_engine_from_another_graph_precision_or_gpu_is_no_rebuild_to_check(line, device, capsys, changes, reason):
    engine = rebuild(line, device, "other.plan", **changes)
    assert main(["engine", "parity", "--model", str(line["model"]), "--engine", str(engine), "--thresholds",
                 str(line["thresholds"]), "--max-batch", "4"]) == ModelFileError.exit_code
    error = capsys.readouterr().err
    assert "is not a rebuild of the engine" in error and reason in error and "recalibrate on it" in error


def test_a_parity_record_for_other_thresholds_does_not_carry_over(line, frames, device, normals):
    engine_b = rebuild(line, device, "b.plan")
    assert main(["engine", "parity", "--model", str(line["model"]), "--engine", str(engine_b), "--thresholds",
                 str(line["thresholds"]), "--max-batch", "4"]) == 0
    assert main(["calibrate", "--model", str(line["model"]), "--normals", str(normals), "--engine", str(line["engine"]),
                 "--out", str(line["thresholds"]), "--force", "--target-frr", "0.05", "--no-region-rule"]) == 0
    assert run(line, engine_b, frames, engine_binding="parity") == ModelFileError.exit_code


def test_thresholds_without_an_engine_and_an_engine_without_thresholds_for_it_are_refused(line):
    thresholds = load_thresholds(line["thresholds"])
    sidecar = read_sidecar(line["engine"])
    unbound = thresholds.__class__(**{**thresholds.__dict__, "engine_sha256": None})
    assert "calibrated without an engine" in binding_problem(unbound, sidecar, "exact", "tensorrt")
    assert "the onnxruntime backend runs no engine" in binding_problem(thresholds, None, "parity", "onnxruntime")
    assert binding_problem(unbound, None, "exact", "onnxruntime") is None
    assert binding_problem(thresholds, sidecar, "exact", "tensorrt") is None


def test_parity_needs_thresholds_calibrated_on_an_engine(line, device, tmp_path, capsys):
    data = json.loads(line["thresholds"].read_text())
    data["engine_sha256"] = None
    unbound = tmp_path / "unbound.json"
    unbound.write_text(json.dumps(data))
    assert main(["engine", "parity", "--model", str(line["model"]), "--engine", str(line["engine"]),
                 "--thresholds", str(unbound)]) == ConfigError.exit_code
    assert "not calibrated on an engine" in capsys.readouterr().err


def test_thresholds_for_another_engine_on_sighup_are_a_fault_and_the_old_ones_stay(line, frames, device, tmp_path):
    live = tmp_path / "live.json"
    shutil.copy(line["thresholds"], live)
    backend = {"kind": "tensorrt", "engine": str(line["engine"]), "max_batch": 4}
    daemon = Running({"model": str(line["model"]), "thresholds": str(live), "backend": backend,
                      "source": {"kind": "folder", "path": str(frames), "loop": True, "fps": 20}})
    first = daemon._wait_for(lambda m: isinstance(m, wire.Decision))
    data = json.loads(live.read_text())
    live.write_text(json.dumps({**data, "engine_sha256": "e" * 64,
                                "details": {**data["details"], "engine": {**data["details"]["engine"],
                                                                          "engine_sha256": "e" * 64}}}))
    daemon.daemon.signals.request_reload()
    fault = daemon._wait_for(lambda m: isinstance(m, wire.Fault) and m.code == "thresholds_reload_failed")
    assert "calibrated on engine eeeeeeeeeeee" in fault.message
    after = daemon._wait_for(lambda m: isinstance(m, wire.Decision) and m.frame_id >= first.frame_id + 2)
    assert after.thresholds_version == first.thresholds_version
    daemon.daemon.signals.request_stop()
    assert daemon.collect_until_stopped() == 0


def test_a_rebuild_by_engine_ensure_says_the_daemon_will_refuse_the_thresholds(line, device, frames, caplog, capsys):
    from tests.gpu_fakes import graph_file

    graph_file(line["model"] / "model.fp16.onnx", line["model"], "fp16")  # another graph than engine A's: rebuilt
    config = config_file(line, line["engine"], frames)
    with caplog.at_level("WARNING", logger="engines.engine_cli"):
        assert main(["engine", "ensure", "--config", str(config)]) == 0
    assert "rebuilt (the ONNX file changed" in capsys.readouterr().out
    assert f"the daemon will refuse thresholds file {line['thresholds']} with the rebuilt engine: they were " \
           f"calibrated on engine" in caplog.text
    assert run(line, line["engine"], frames) == ModelFileError.exit_code
