"""One camera's log lines, and the levels `hlgfa run` takes from the config's [logging] section."""

import argparse
import logging
import signal

import pytest

from edge.service import daemon_cli
from edge.core.logs import camera_log
from edge.core.signals import SignalRequests


def test_a_camera_log_line_starts_with_the_camera_and_carries_it_as_a_field(caplog):
    with caplog.at_level(logging.INFO, logger="edge.test"):
        camera_log("edge.test", "line-7").info("source is back (%s)", "idle")
    (record,) = caplog.records
    assert record.getMessage() == "camera line-7: source is back (idle)" and record.camera == "line-7"
    assert record.name == "edge.test"


@pytest.fixture
def restored():
    """The root and edge.transport.publisher levels, and the signal handlers `hlgfa run` installs, as they were."""
    names = ("", "edge.transport.publisher")
    levels = {name: logging.getLogger(name).level for name in names}
    handlers = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    for number, handler in handlers.items():
        signal.signal(number, handler)


@pytest.mark.parametrize("flag, root", [(None, logging.WARNING), ("ERROR", logging.ERROR)])
def test_run_sets_the_configured_levels_and_the_flag_replaces_the_root_level(tmp_path, restored, flag, root):
    config = tmp_path / "cam.toml"
    config.write_text('model = "m"\n[source]\nkind = "folder"\npath = "x"\n'
                      '[logging]\nlevel = "warning"\nlevels = { "edge.transport.publisher" = "debug" }\n')
    signals = SignalRequests()
    signals.request_stop()  # a stop before the start: the run returns once its config is applied
    args = argparse.Namespace(config=str(config), model=None, set=[], signals=signals, log_level=flag)
    assert daemon_cli._run_handler(args) == 0
    assert logging.getLogger().level == root and logging.getLogger("edge.transport.publisher").level == logging.DEBUG
