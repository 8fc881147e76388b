"""One camera's log lines, and the levels `hlgfa run` takes from the config's [logging] section."""

import argparse
import logging
import signal

import pytest

from edge.service import daemon_cli
from edge.core.logs import RepeatLimiter, camera_log
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


def test_repeated_lines_of_one_peer_and_cause_are_held_back_and_counted(caplog):
    now = [0.0]
    limiter = RepeatLimiter(interval_s=60.0, max_keys=2, clock=lambda: now[0])
    logger = logging.getLogger("edge.test.limited")
    with caplog.at_level(logging.INFO, logger="edge.test.limited"):
        shown = [limiter.log(logger, logging.WARNING, ("10.0.0.9", "junk"), "junk from %s", "10.0.0.9")
                 for _ in range(1000)]
        other = limiter.log(logger, logging.WARNING, ("10.0.0.8", "junk"), "junk from %s", "10.0.0.8")
        now[0] = 61.0
        limiter.log(logger, logging.WARNING, ("10.0.0.9", "junk"), "junk from %s", "10.0.0.9")
    assert shown.count(True) == 1 and other
    assert [r.getMessage() for r in caplog.records] == [
        "junk from 10.0.0.9", "junk from 10.0.0.8", "junk from 10.0.0.9 (999 more like this in the last 61 s)"]


def test_a_flood_of_peers_is_remembered_only_up_to_the_bound():
    limiter = RepeatLimiter(interval_s=60.0, max_keys=16, clock=lambda: 0.0)
    logger = logging.getLogger("edge.test.limited")
    for peer in range(10_000):
        limiter.log(logger, logging.DEBUG, (peer, "junk"), "junk")
    assert len(limiter._keys) == 16
