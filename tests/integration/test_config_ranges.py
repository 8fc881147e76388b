"""Every numeric key of the daemon's config, walked with NaN, ±infinity, 0, −1 and 10^30: what `hlgfa
config check` accepts, `hlgfa run` runs to a clean end (exit 0, every frame read decided); what it
refuses (exit 78, naming the key), `hlgfa run` refuses alike. Values `config check` accepted used to end
the daemon (`map_size=[100000,100000]`, `linger_ms=99999999999`, `drain_timeout_s=1e300`, ...).

The keys are read from the config models themselves, so a key added later is walked too, and each must
be in docs/CONFIG.md. The run is the daemon `hlgfa run` starts (`Daemon(config).run()`), in a thread of
this process, on two frames of a folder replay (a video file for the opencv keys, the simulated GenTL
producer for the genicam keys).
"""

from __future__ import annotations

import shutil
import signal
import threading
import types
import typing
from pathlib import Path

import numpy as np
import pytest
from pydantic import BaseModel

from edge.backends.onnxruntime import OnnxRuntimeConfig
from edge.cli import main
from edge.config.daemon import DaemonConfig, build_config
from edge.core.errors import exit_status
from edge.core.paths import write_json_atomic
from edge.core.settings import parse_override
from edge.imaging.quality import STATISTIC_DOMAINS, QualityConfig
from edge.service.daemon import Daemon
from edge.sources.factory import FolderSourceConfig, GenicamSourceConfig, OpenCVSourceConfig
from edge.sources.genicam import simulated_producer
from edge.artifacts.thresholds import Thresholds
from tests.ports import free_endpoint
from tests.thresholds_file import calibrated_data

ROOT = Path(__file__).resolve().parents[2]
VALUES = {"nan": "nan", "inf": "inf", "-inf": "-inf", "0": "0", "-1": "-1", "1e30": "1e30"}
RUN_S = 120.0  # a bound on one run on a loaded machine, not a measurement
# The sections walked with the kind they are walked under; `[backend]` keys under onnxruntime (the
# kind that runs here; every kind shares BackendSettings), `[source]` keys under each kind.
SECTIONS = {"source": (FolderSourceConfig, OpenCVSourceConfig, GenicamSourceConfig), "backend": (OnnxRuntimeConfig,)}
# A valid value of each tuple key, so one element at a time is walked.
PAIRS = {("publish", "map_size"): [64, 64], ("publish", "map_value_range"): [0.0, 10.0],
         **{("quality", name): list(domain) for name, domain in STATISTIC_DOMAINS.items()}}


def _numeric(annotation) -> list[tuple[tuple, type]]:
    """(path within the annotation, int or float) of each number it holds."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _numeric(args[0])
    if origin in (typing.Union, types.UnionType):
        found = []
        for arg in args:
            found += [leaf for leaf in _numeric(arg) if leaf not in found]
        return found
    if origin is tuple:
        return [((index, *path), kind) for index, arg in enumerate(args) for path, kind in _numeric(arg)]
    if annotation in (int, float):
        return [((), annotation)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [((name, *path), kind) for name, field in annotation.model_fields.items()
                for path, kind in _numeric(field.annotation)]
    return []


def numeric_keys() -> list[tuple[str, tuple]]:
    """(source kind, key path) of every numeric key of DaemonConfig."""
    keys = []
    for name, field in DaemonConfig.model_fields.items():
        for model in SECTIONS.get(name, (field.annotation,)):
            kind = model.model_fields["kind"].default if name == "source" else "folder"
            keys += [(kind, (name, *path)) for path, _ in _numeric(model)]
    return keys


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir, elpv_images):
    pytest.importorskip("onnxruntime")
    import cv2

    from edge.artifacts.model_dir import load_model_info
    from engines.export import export_onnx

    work = tmp_path_factory.mktemp("config_ranges")
    onnx = export_onnx(tiny_model_dir, work / "model.onnx")
    info = load_model_info(tiny_model_dir)
    thresholds = work / "thresholds.json"
    write_json_atomic(thresholds, calibrated_data(Thresholds(info.model_hash, 1.0, "walk"),
                                                  {"min": -10.0, "median": 0.0, "max": 5.0}))
    frames = work / "frames"
    frames.mkdir()
    for path in elpv_images["good"][30:32]:
        shutil.copy(path, frames / path.name)
    video = work / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (300, 300))
    for path in sorted(frames.iterdir()):
        writer.write(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB))
    writer.release()
    base = work / "base.toml"
    base.write_text(f'camera = "walk"\nmodel = "{tiny_model_dir}"\nthresholds = "{thresholds}"\n'
                    f'[backend]\nkind = "onnxruntime"\nonnx = "{onnx}"\nthreads = 1\n'
                    f'[pipeline]\nmax_frames = 2\ndeadline_ms = 60000\n')
    sources = {"folder": {"kind": "folder", "path": str(frames)},
               "opencv": {"kind": "opencv", "target": str(video)} if video.stat().st_size else None,
               "genicam": {"kind": "genicam", "cti": str(simulated_producer()), "device": "0",
                           "settings": {"Width": 320, "Height": 240, "PixelFormat": "Mono8"}}
               if simulated_producer() is not None else None}
    return {"base": base, "sources": sources}


def _overrides(setup, kind, path, raw) -> list:
    overrides = [(["source"], setup["sources"][kind]), (["publish", "endpoint"], free_endpoint())]
    if path[:2] in PAIRS and len(path) == 3:
        value = list(PAIRS[path[:2]])
        value[path[2]] = parse_override(f"v={raw}")[1]
        return overrides + [(list(path[:2]), value)]
    return overrides + [(list(path), parse_override(f"v={raw}")[1])]


def _check(setup, overrides, capsys) -> int:
    """`hlgfa config check` with the overrides, as `--set` flags would give them."""
    args = ["config", "check", str(setup["base"])]
    for key, value in overrides:
        args += ["--set", f"{'.'.join(key)}={_toml(value)}"]
    code = main(args)
    capsys.readouterr()
    return code


def _toml(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, float) and not np.isfinite(value):
        return "nan" if np.isnan(value) else ("inf" if value > 0 else "-inf")
    return repr(value)


def _run(setup, overrides) -> tuple[int, str]:
    """What `hlgfa run --config BASE --set ...` ends with: (exit status, what it ended on)."""
    try:
        config = build_config(setup["base"], overrides)
    except Exception as error:  # noqa: BLE001 - the status is what is compared
        return exit_status("run", error), str(error)
    daemon = Daemon(config)
    outcome = {}

    def run():
        try:
            outcome["code"] = daemon.run()
        except BaseException as error:  # noqa: BLE001
            outcome["code"], outcome["error"] = exit_status("run", error), repr(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = threading.Event()
    # Until the two frames are decided (a replay ends by itself), or a camera that cannot deliver
    # has said so; then the stop `systemctl stop` would send.
    for _ in range(int(RUN_S / 0.05)):
        if not thread.is_alive():
            break
        pipeline = daemon.pipeline
        if pipeline is not None and (pipeline.done or pipeline.source_state == "unavailable"):
            break
        deadline.wait(0.05)
    daemon.signals.request_stop()
    thread.join(RUN_S)
    assert not thread.is_alive(), "the daemon did not stop"
    if daemon.pipeline is not None and outcome.get("code") == 0:
        counters = daemon.health.counters()
        assert counters.frames == daemon.pipeline.reads, "a frame read was not decided"
    return outcome["code"], outcome.get("error", "")


@pytest.fixture
def restored_signals():
    handlers = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    yield
    for number, handler in handlers.items():
        signal.signal(number, handler)


def test_every_numeric_key_is_walked_and_documented():
    keys = numeric_keys()
    names = {path for _, path in keys}
    assert ("pipeline", "drain_timeout_s") in names and ("publish", "map_size", 1) in names
    assert ("source", "reconnect_backoff_max_s") in names and ("quality", "map_mean", 0) in names
    documented = (ROOT / "docs" / "CONFIG.md").read_text()
    missing = sorted({path[-1] if isinstance(path[-1], str) else path[-2] for path in names} -
                     {word.strip("`") for word in documented.split() if word.startswith("`")})
    assert not missing, f"numeric keys without a documented range in docs/CONFIG.md: {missing}"


@pytest.mark.timeout(3600)
@pytest.mark.parametrize("kind, path", numeric_keys(), ids=lambda v: v if isinstance(v, str) else ".".join(map(str, v)))
def test_config_check_and_run_agree_on_every_value_of_a_numeric_key(setup, kind, path, capsys, restored_signals):
    if setup["sources"][kind] is None:
        pytest.skip(f"no {kind} source here (the simulated GenTL producer, or a video writer)")
    disagreements = []
    for label, raw in VALUES.items():
        overrides = _overrides(setup, kind, path, raw)
        checked = _check(setup, overrides, capsys)
        ran, ended_on = _run(setup, overrides)
        assert checked in (0, 78), f"{label}: config check exited {checked}"
        if (checked, ran) not in ((0, 0), (78, 78)):
            disagreements.append(f"{label}: config check {checked}, run {ran} ({ended_on[:200]})")
    assert not disagreements, f"{'.'.join(map(str, path))}: " + "; ".join(disagreements)


@pytest.mark.parametrize("key, value, message", [
    ("publish.reliable_endpoint", "ENDPOINT", "reliable_endpoint .* is the endpoint"),
    ("health.metrics_port", "PORT", "metrics_port .* is the port of publish.endpoint"),
    ("source.timeout_s", "40.0", "not less than pipeline.stall_timeout_s"),
    ("pipeline.deadline_ms", "1", "max_batch_wait_ms 2 is not less than deadline_ms 1"),
    ("health.metrics_address", '"10.255.255.1"', "cannot be listened on here"),
    ("camera", '"line1\\n"', "camera name"),
])
def test_rules_between_keys_are_refused_by_config_check_as_by_run(setup, key, value, message, capsys):
    endpoint = free_endpoint()
    value = value.replace("ENDPOINT", f'"{endpoint}"').replace("PORT", endpoint.rsplit(":", 1)[1])
    args = ["--set", f"publish.endpoint={endpoint}", "--set", f"{key}={value}",
            "--set", f"source.path={setup['sources']['folder']['path']}", "--set", 'source.kind="folder"']
    assert main(["config", "check", str(setup["base"]), *args]) == 78
    assert __import__("re").search(message, capsys.readouterr().err)
    overrides = [parse_override(text) for text in args[1::2]]
    assert _run(setup, overrides)[0] == 78
