"""The runtime runs on Python 3.10: a Jetson's JetPack 6 ships it, and every `hlgfa` command must start there.

vermin reads the source and knows, per module, function and syntax form, the first Python that has it;
unlike a type checker set to 3.10 (mypy, pyright) it needs no stubs and no clean typing to say only
that. It runs over everything the line box imports: edge/ (daemon, bridge, view, records) and engines/.
"""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FLOOR = "3.10"


def vermin(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "vermin"), f"--target={FLOOR}-", "--violations",
                           "--no-tips", "--eval-annotations", *map(str, paths)],
                          capture_output=True, text=True, timeout=300)


def test_the_runtime_and_the_engine_tools_use_nothing_newer_than_python_3_10():
    result = vermin(ROOT / "edge", ROOT / "engines")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("source", [
    "import tomllib\n",
    "from datetime import UTC\n",
    "from typing import Self\n",
    "try:\n    pass\nexcept* ValueError:\n    pass\n",
    "import enum\n\n\nclass Mode(enum.StrEnum):\n    A = 'a'\n",
])
def test_the_check_fails_on_a_module_or_syntax_newer_than_3_10(tmp_path, source):
    (tmp_path / "newer.py").write_text(source)
    result = vermin(tmp_path)
    assert result.returncode != 0 and "3.10" in result.stdout, result.stdout


def test_the_check_accepts_the_guarded_tomllib_import_the_runtime_uses(tmp_path):
    (tmp_path / "guarded.py").write_text("try:\n    import tomllib  # novermin - guarded\nexcept ModuleNotFoundError:\n"
                                         "    import tomli as tomllib\n")
    assert vermin(tmp_path).returncode == 0


HIDE_TOMLLIB = textwrap.dedent("""
    import importlib.abc, sys

    class Hide(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == HIDDEN:
                raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)")
            return None

    HIDDEN = "tomllib"  # Python 3.10 has none
    sys.meta_path.insert(0, Hide())
    from edge.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def hlgfa_without_tomllib(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", HIDE_TOMLLIB, *arguments], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def test_help_and_config_check_run_where_tomllib_does_not_exist(tmp_path):
    listing = hlgfa_without_tomllib("--help")
    assert listing.returncode == 0 and "engine" in listing.stdout and "bridge" in listing.stdout, listing.stderr
    config = tmp_path / "line1.toml"
    config.write_text('camera = "line1"\nmodel = "m"\n[source]\nkind = "folder"\npath = "."\n'
                      '[backend]\nkind = "onnxruntime"\nthreads = 2\n')
    check = hlgfa_without_tomllib("config", "check", "--schema-only", str(config))
    assert check.returncode == 0, check.stderr
    assert '"threads": 2' in check.stdout
    wrong = config.parent / "wrong.toml"
    wrong.write_text(config.read_text().replace("threads = 2", "threads = 2\nengine = \"x.plan\""))
    refused = hlgfa_without_tomllib("config", "check", "--schema-only", str(wrong))
    assert refused.returncode == 78 and "key backend.engine (line 9): unknown key" in refused.stderr, refused.stderr


def test_a_command_whose_module_cannot_import_takes_down_no_other_command(tmp_path):
    """The CLI imports only the typed command's module: a missing optional library breaks that one only."""
    script = HIDE_TOMLLIB.replace('HIDDEN = "tomllib"', 'HIDDEN = "calibrate.train_cli"')
    ok = subprocess.run([sys.executable, "-c", script, "keys", "generate", str(tmp_path)], capture_output=True,
                        text=True, timeout=120, cwd=ROOT)
    assert ok.returncode == 0 and (tmp_path / "server.key").is_file(), ok.stderr
    broken = subprocess.run([sys.executable, "-c", script, "train", "--help"], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert broken.returncode != 0 and "calibrate.train_cli" in broken.stderr
