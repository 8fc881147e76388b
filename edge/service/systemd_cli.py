"""`hlgfa systemd install`: write the systemd units for this installation of hlgfa.

The unit files under systemd/ name /opt/hlgfa-edge/venv/bin/hlgfa, the documented install
location, so they are valid units as committed. Installing renders them with the absolute
path of the hlgfa that is actually installed (systemd needs an absolute ExecStart= and
does not search a virtualenv) and with the chosen service account.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from edge.core.errors import ConfigError, HlgfaError
from edge.core.paths import write_atomic

DEFAULT_HLGFA = "/opt/hlgfa-edge/venv/bin/hlgfa"
DEFAULT_USER = "hlgfa"
# The units that run the model (and so need the GPU device nodes) come first.
GPU_UNITS = ("hlgfa-edge@.service", "hlgfa-engine@.service")
SERVICE_UNITS = GPU_UNITS + ("hlgfa-view.service", "hlgfa-bridge.service")
# Runs no hlgfa and as root (it creates the NVIDIA device nodes): installed as written.
PLAIN_UNITS = ("hlgfa-gpu-nodes.service",)
SYSUSERS_SOURCE = "hlgfa-edge.sysusers.conf"
TMPFILES_SOURCE = "hlgfa-edge.tmpfiles.conf"
INSTALLED_SNIPPET_NAME = "hlgfa-edge.conf"

_USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_INSTANCE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# Characters that systemd would read as quoting, specifiers (%) or variables ($) in ExecStart=.
_UNSAFE_IN_EXEC = re.compile(r"[\s%$\"'\\;]")


@dataclass(frozen=True)
class RenderedFile:
    path: Path
    text: str


def unit_source_dir() -> Path:
    """Where the unit templates are: a source checkout, or the wheel's share/ data files."""
    candidates = (
        Path(__file__).resolve().parents[2] / "systemd",
        Path(sys.prefix) / "share" / "hlgfa-edge" / "systemd",
    )
    for candidate in candidates:
        if all((candidate / name).is_file() for name in SERVICE_UNITS + PLAIN_UNITS):
            return candidate
    raise HlgfaError("the systemd unit templates are missing; looked in "
                     + ", ".join(str(c) for c in candidates)
                     + f" (expected {', '.join(SERVICE_UNITS + PLAIN_UNITS)})")


def find_hlgfa(explicit: str | None) -> Path:
    """The absolute path of the hlgfa executable the units will run."""
    if explicit is not None:
        path = Path(explicit).absolute()
    else:
        beside_python = Path(sys.executable).parent / "hlgfa"  # the virtualenv we run in
        invoked = Path(sys.argv[0]) if Path(sys.argv[0]).name == "hlgfa" else None
        on_path = shutil.which("hlgfa")
        found = next((p for p in (invoked, beside_python, on_path and Path(on_path)) if p and p.is_file()),
                     None)
        if found is None:
            raise ConfigError("cannot find the hlgfa executable (looked beside "
                              f"{sys.executable} and on PATH); pass --hlgfa /absolute/path/to/hlgfa")
        path = found.absolute()
    if not path.is_file() or not os.access(path, os.X_OK):
        raise ConfigError(f"--hlgfa {path}: expected an executable file")
    if _UNSAFE_IN_EXEC.search(str(path)):
        raise ConfigError(f"--hlgfa {path}: the path contains whitespace, quotes, '%', '$', ';' or '\\', "
                          "which systemd's ExecStart= would reinterpret; install hlgfa under a plain path")
    return path


def render_service(text: str, source_name: str, hlgfa: Path, user: str) -> str:
    if DEFAULT_HLGFA not in text:
        raise HlgfaError(f"{source_name}: expected ExecStart= to name {DEFAULT_HLGFA}, the placeholder "
                         "that install replaces; the template was edited")
    text = text.replace(DEFAULT_HLGFA, str(hlgfa))
    text = re.sub(r"(?m)^User=.*$", f"User={user}", text)
    return re.sub(r"(?m)^Group=.*$", f"Group={user}", text)


def render_sysusers(text: str, user: str) -> str:
    def rename(match: re.Match) -> str:
        return f"{match.group(1)}{user}{match.group(3)}"
    return re.sub(rf"(?m)^([um]\s+)({DEFAULT_USER})(\s)", rename, text)


def render_all(source: Path, prefix: Path, sysusers_dir: Path, tmpfiles_dir: Path, hlgfa: Path,
               user: str) -> list[RenderedFile]:
    files = [RenderedFile(prefix / name, render_service((source / name).read_text(), name, hlgfa, user))
             for name in SERVICE_UNITS]
    files += [RenderedFile(prefix / name, (source / name).read_text()) for name in PLAIN_UNITS]
    files.append(RenderedFile(sysusers_dir / INSTALLED_SNIPPET_NAME,
                              render_sysusers((source / SYSUSERS_SOURCE).read_text(), user)))
    files.append(RenderedFile(tmpfiles_dir / INSTALLED_SNIPPET_NAME, (source / TMPFILES_SOURCE).read_text()))
    return files


def write_file(rendered: RenderedFile) -> str:
    """Write atomically (a half-written unit must never be loaded); say what changed."""
    path = rendered.path
    if path.is_file() and path.read_text() == rendered.text:
        return "unchanged"
    existed = path.exists()
    try:
        write_atomic(path, rendered.text.encode())
    except OSError as error:
        raise HlgfaError(f"cannot write {path}: {error} (run as root, or pass --prefix/--sysusers-dir/"
                         "--tmpfiles-dir to a writable place)") from error
    return "updated" if existed else "created"


def next_steps(user: str, camera: str) -> str:
    return f"""
Next, as root:
  systemd-sysusers {INSTALLED_SNIPPET_NAME}          # user '{user}' in groups video, plugdev
    # without systemd-sysusers: useradd --system --home-dir /var/lib/hlgfa-edge \\
    #   --shell /usr/sbin/nologin --groups video,plugdev {user}
  systemd-tmpfiles --create {INSTALLED_SNIPPET_NAME}  # usbfs buffers for USB3 Vision cameras
  install -d -m 0755 /etc/hlgfa-edge
  install -m 0644 {camera}.toml /etc/hlgfa-edge/{camera}.toml   # one config per camera
  systemctl daemon-reload
  systemctl enable --now hlgfa-edge@{camera}.service
  journalctl -u hlgfa-edge@{camera} -u hlgfa-engine@{camera} -f
  # the operator's page and the inspection record (docs/VIEW.md):
  install -m 0640 -g {user} view.toml /etc/hlgfa-edge/view.toml && systemctl enable --now hlgfa-view.service
"""


def handle_install(args) -> int:
    if not _USER_NAME.match(args.user):
        raise ConfigError(f"--user {args.user!r}: expected a system user name "
                          "(lowercase letters, digits, '_' or '-', at most 32 characters)")
    if not _INSTANCE_NAME.match(args.camera):
        raise ConfigError(f"--camera {args.camera!r}: expected an instance name of letters, digits, "
                          "'_', '.' or '-' (it becomes hlgfa-edge@NAME and /etc/hlgfa-edge/NAME.toml)")
    prefix = Path(args.prefix)
    if not args.dry_run and not prefix.is_dir():
        # Not created: a mistyped prefix would silently hold units systemd never reads.
        raise ConfigError(f"--prefix {prefix}: expected an existing directory systemd loads units from")
    hlgfa = find_hlgfa(args.hlgfa)
    files = render_all(unit_source_dir(), prefix, Path(args.sysusers_dir), Path(args.tmpfiles_dir), hlgfa,
                       args.user)
    if args.dry_run:
        for rendered in files:
            print(f"# ---- {rendered.path} (not written: --dry-run)")
            print(rendered.text, end="" if rendered.text.endswith("\n") else "\n")
    else:
        for rendered in files:
            print(f"{write_file(rendered):9} {rendered.path}")
    print(f"\nUnits run {hlgfa} as user '{args.user}'.")
    print(next_steps(args.user, args.camera), end="")
    return 0


def configure(parser) -> None:
    """The arguments and handler of `hlgfa systemd` (edge/cli.py names the command and its one-line help)."""
    actions = parser.add_subparsers(dest="systemd_command", required=True, metavar="ACTION")
    install = actions.add_parser(
        "install", help="write hlgfa-edge@.service, hlgfa-engine@.service and hlgfa-gpu-nodes.service for this hlgfa",
        description="Render the units with the absolute path of this hlgfa executable and the service "
                    "account, write them with the sysusers.d and tmpfiles.d snippets, and print the "
                    "commands that enable a camera.")
    install.add_argument("--prefix", default="/etc/systemd/system", help="unit directory (default: %(default)s)")
    install.add_argument("--hlgfa", default=None,
                         help="hlgfa executable the units run (default: the one beside this Python)")
    install.add_argument("--user", default=DEFAULT_USER, help="service account (default: %(default)s)")
    install.add_argument("--sysusers-dir", default="/etc/sysusers.d", help="(default: %(default)s)")
    install.add_argument("--tmpfiles-dir", default="/etc/tmpfiles.d", help="(default: %(default)s)")
    install.add_argument("--camera", default="line1",
                         help="instance name used in the printed next steps (default: %(default)s)")
    install.add_argument("--dry-run", action="store_true", help="print the rendered files, write nothing")
    install.set_defaults(handler=handle_install)
