"""The systemd units as `hlgfa systemd install` writes them, checked by systemd's own tools."""

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from edge import cli
from edge.service.systemd_cli import DEFAULT_HLGFA, GPU_UNITS, PLAIN_UNITS, SERVICE_UNITS, unit_source_dir

REPO = Path(__file__).resolve().parents[2]
needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is not installed on this machine")


@pytest.fixture
def hlgfa_shim(tmp_path) -> Path:
    """A working `hlgfa` executable for this checkout: verify insists ExecStart= exists."""
    shim = tmp_path / "bin" / "hlgfa"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nPYTHONPATH="{REPO}" exec "{sys.executable}" -m edge.cli "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return shim


@pytest.fixture
def dirs(tmp_path) -> dict:
    paths = {name: tmp_path / name for name in ("units", "sysusers", "tmpfiles")}
    paths["units"].mkdir()
    return paths


def install(dirs, hlgfa, *extra) -> list[str]:
    return ["systemd", "install", "--prefix", str(dirs["units"]), "--sysusers-dir", str(dirs["sysusers"]),
            "--tmpfiles-dir", str(dirs["tmpfiles"]), "--hlgfa", str(hlgfa), *extra]


def directives(path: Path) -> dict[str, list[str]]:
    """`Section.Key` → values, in order (units repeat keys such as DeviceAllow=)."""
    found, section = {}, ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.setdefault(f"{section}.{key}", []).append(value)
    return found


def verify(*unit_paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", "--man=no", *map(str, unit_paths)],
                          capture_output=True, text=True, timeout=60)


@needs_analyze
def test_installed_units_pass_systemd_analyze_verify(dirs, hlgfa_shim, capsys):
    assert cli.main(install(dirs, hlgfa_shim)) == 0
    printed = capsys.readouterr().out
    assert "systemctl enable --now hlgfa-edge@line1.service" in printed
    for name in SERVICE_UNITS:
        text = (dirs["units"] / name).read_text()
        assert DEFAULT_HLGFA not in text and f"{hlgfa_shim} " in text

    # Instances are verified: a template alone has no %i to expand. The template file in the
    # same directory is what systemd-analyze loads for them.
    result = verify(dirs["units"] / "hlgfa-edge@line1.service", dirs["units"] / "hlgfa-engine@line1.service",
                    dirs["units"] / "hlgfa-gpu-nodes.service", dirs["units"] / "hlgfa-view.service",
                    dirs["units"] / "hlgfa-bridge.service")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # unknown keys and bad values are only warnings


@needs_analyze
def test_verify_would_catch_a_broken_unit(dirs, hlgfa_shim):
    """Guards the check above: an empty stderr really means systemd accepted every line."""
    cli.main(install(dirs, hlgfa_shim))
    unit = dirs["units"] / "hlgfa-edge@.service"
    unit.write_text(unit.read_text().replace("WatchdogSec=10", "WatchdogSec=10\nWatchDogSec=10"))
    result = verify(dirs["units"] / "hlgfa-edge@line1.service")
    assert "WatchDogSec" in result.stderr


@needs_analyze
def test_daemon_unit_stays_hardened(dirs, hlgfa_shim):
    cli.main(install(dirs, hlgfa_shim))
    # --threshold is the exposure ×10; 20 is "OK" (today's unit scores 1.8). Removing a
    # hardening line pushes it over and fails here.
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=20", "--no-pager",
                             str(dirs["units"] / "hlgfa-edge@line1.service")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr


def test_daemon_unit_has_the_contract_the_daemon_relies_on(dirs, hlgfa_shim):
    cli.main(install(dirs, hlgfa_shim))
    edge = directives(dirs["units"] / "hlgfa-edge@.service")
    assert edge["Service.Type"] == ["notify"] and edge["Service.NotifyAccess"] == ["main"]
    assert edge["Service.WatchdogSec"] == ["10"] and edge["Service.Restart"] == ["on-failure"]
    assert edge["Service.ExecStart"] == [f"{hlgfa_shim} run --config /etc/hlgfa-edge/%i.toml"]
    assert edge["Service.ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert edge["Service.RestartPreventExitStatus"] == ["78"]  # edge.core.errors.ConfigError.exit_code
    assert edge["Service.User"] == ["hlgfa"] and edge["Service.LimitMEMLOCK"] == ["infinity"]
    assert "Service.PrivateDevices" not in edge  # camera and GPU are device nodes
    assert "Service.DynamicUser" not in edge
    assert edge["Service.DevicePolicy"] == ["closed"]
    assert "char-usb_device rw" in edge["Service.DeviceAllow"]
    assert "hlgfa-engine@%i.service" in edge["Unit.Wants"][0] and "hlgfa-engine@%i.service" in edge["Unit.After"][0]

    engine = directives(dirs["units"] / "hlgfa-engine@.service")
    assert engine["Service.Type"] == ["oneshot"] and engine["Service.RemainAfterExit"] == ["no"]
    assert engine["Service.ExecStart"] == [f"{hlgfa_shim} engine ensure --config /etc/hlgfa-edge/%i.toml"]
    assert engine["Unit.Before"] == ["hlgfa-edge@%i.service"]

    view = directives(dirs["units"] / "hlgfa-view.service")
    assert view["Service.ExecStart"] == [f"{hlgfa_shim} view --config /etc/hlgfa-edge/view.toml"]
    assert view["Service.RestartPreventExitStatus"] == ["78"] and view["Service.PrivateDevices"] == ["yes"]


def test_gpu_nodes_are_created_outside_the_hardened_units(dirs, hlgfa_shim):
    """The hardened units cannot load nvidia_uvm or mknod /dev/nvidia-uvm, and a "+" ExecStartPre=
    in them would still be under their cgroup's DevicePolicy=closed, so a separate root unit does
    it before either starts."""
    cli.main(install(dirs, hlgfa_shim))
    nodes = directives(dirs["units"] / "hlgfa-gpu-nodes.service")
    assert nodes["Service.ExecStart"] == ["-/usr/bin/nvidia-modprobe -u -c=0"]
    assert nodes["Service.Type"] == ["oneshot"] and nodes["Service.RemainAfterExit"] == ["yes"]
    assert nodes["Unit.ConditionPathExists"] == ["/usr/bin/nvidia-modprobe"]  # skipped on a Jetson
    assert not {"Service.User", "Service.DevicePolicy", "Service.CapabilityBoundingSet"} & set(nodes)
    for name in GPU_UNITS:
        unit = directives(dirs["units"] / name)
        assert "hlgfa-gpu-nodes.service" in unit["Unit.Wants"] and "hlgfa-gpu-nodes.service" in unit["Unit.After"]
        assert unit["Service.DevicePolicy"] == ["closed"] and unit["Service.NoNewPrivileges"] == ["yes"]
        assert not any(line.startswith("+") for line in unit.get("Service.ExecStartPre", []))


def test_user_option_renames_the_account_everywhere(dirs, hlgfa_shim):
    cli.main(install(dirs, hlgfa_shim, "--user", "inspect"))
    for name in SERVICE_UNITS:
        found = directives(dirs["units"] / name)
        assert found["Service.User"] == ["inspect"] and found["Service.Group"] == ["inspect"]
    sysusers = (dirs["sysusers"] / "hlgfa-edge.conf").read_text()
    assert "u inspect " in sysusers and "m inspect video" in sysusers and "u hlgfa" not in sysusers


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers is not installed")
def test_sysusers_snippet_is_accepted_by_systemd_sysusers(dirs, hlgfa_shim, tmp_path):
    cli.main(install(dirs, hlgfa_shim))
    empty_root = tmp_path / "root"
    empty_root.mkdir()
    result = subprocess.run(["systemd-sysusers", "--dry-run", f"--root={empty_root}",
                             str(dirs["sysusers"] / "hlgfa-edge.conf")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Creating user 'hlgfa'" in result.stdout + result.stderr


def test_dry_run_writes_nothing_and_shows_the_rendered_units(dirs, hlgfa_shim, capsys):
    assert cli.main(install(dirs, hlgfa_shim, "--dry-run")) == 0
    assert list(dirs["units"].iterdir()) == [] and not dirs["sysusers"].exists()
    out = capsys.readouterr().out
    assert f"ExecStart={hlgfa_shim} run --config /etc/hlgfa-edge/%i.toml" in out


def test_install_again_reports_unchanged(dirs, hlgfa_shim, capsys):
    cli.main(install(dirs, hlgfa_shim))
    capsys.readouterr()
    cli.main(install(dirs, hlgfa_shim))
    out = capsys.readouterr().out
    assert out.count("unchanged") == len(SERVICE_UNITS) + len(PLAIN_UNITS) + 2 and "created" not in out


def test_the_real_command_line_runs_through_the_installed_executable(dirs, hlgfa_shim):
    result = subprocess.run([str(hlgfa_shim), *install(dirs, hlgfa_shim), "--camera", "press2"],
                            capture_output=True, text=True, timeout=60, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr
    assert "systemctl enable --now hlgfa-edge@press2.service" in result.stdout
    assert (dirs["units"] / "hlgfa-edge@.service").is_file()


@pytest.mark.parametrize("extra, expected", [
    (("--user", "Bad User"), "--user"),
    (("--camera", "line 1"), "--camera"),
])
def test_bad_flags_are_config_errors(dirs, hlgfa_shim, capsys, extra, expected):
    assert cli.main(install(dirs, hlgfa_shim, *extra)) == 78
    assert expected in capsys.readouterr().err


def test_hlgfa_path_must_be_an_executable_systemd_can_run(dirs, tmp_path, capsys):
    not_executable = tmp_path / "hlgfa"
    not_executable.write_text("#!/bin/sh\n")
    assert cli.main(install(dirs, not_executable)) == 78
    assert "expected an executable file" in capsys.readouterr().err

    spaced = tmp_path / "my tools" / "hlgfa"
    spaced.parent.mkdir()
    spaced.write_text("#!/bin/sh\n")
    spaced.chmod(0o755)
    assert cli.main(install(dirs, spaced)) == 78
    assert "whitespace" in capsys.readouterr().err


def test_missing_prefix_is_refused_not_created(dirs, hlgfa_shim, tmp_path, capsys):
    dirs["units"] = tmp_path / "etc" / "systemd" / "sytsem"
    assert cli.main(install(dirs, hlgfa_shim)) == 78
    assert "--prefix" in capsys.readouterr().err and not dirs["units"].exists()


def test_templates_are_found_in_this_checkout():
    assert unit_source_dir() == REPO / "systemd"


@needs_analyze
def test_the_bridge_unit_verifies_and_is_notify_with_a_watchdog(tmp_path, hlgfa_shim):
    unit = tmp_path / "hlgfa-bridge.service"
    unit.write_text((REPO / "systemd" / "hlgfa-bridge.service").read_text().replace(DEFAULT_HLGFA, str(hlgfa_shim)))
    result = verify(unit)
    assert result.returncode == 0, result.stderr
    found = directives(unit)
    assert found["Service.Type"] == ["notify"] and found["Service.WatchdogSec"] == ["10"]
    assert found["Service.RestartPreventExitStatus"] == ["78"]
    assert found["Service.ExecStart"][0].endswith("bridge --config /etc/hlgfa-edge/bridge.toml")
