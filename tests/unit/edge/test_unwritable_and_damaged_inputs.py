"""Paths that cannot be written and a damaged model.json end in a message and an exit code from
edge/core/errors.py, before any work is done, never in a traceback. The test runs as any user (root
included, who ignores permission bits), so "cannot be written" is a folder path under a regular file."""

import json
import shutil
import socket

import pytest

from edge.cli import main


def _unwritable(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("a file where a folder is needed")
    return blocker / "maps"


def test_subscribe_save_maps_to_a_path_that_cannot_be_written_is_exit_78_before_connecting(tmp_path, capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    target = _unwritable(tmp_path)
    code = main(["subscribe", "--connect", f"tcp://127.0.0.1:{port}", "--save-maps", str(target), "--timeout", "30"])
    assert code == 78
    assert f"--save-maps {target}: cannot write in {target}" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--out", "--report"])
def test_calibrate_to_a_path_that_cannot_be_written_is_exit_78_before_scoring(tiny_model_dir, elpv_good_dir, tmp_path,
                                                                               capsys, caplog, flag):
    target = _unwritable(tmp_path)
    paths = {"--out": tmp_path / "t.json", "--report": tmp_path / "report"}
    paths[flag] = target / ("t.json" if flag == "--out" else "report")
    with caplog.at_level("INFO"):
        code = main(["calibrate", "--backend", "torch", "--model", str(tiny_model_dir), "--normals", str(elpv_good_dir),
                     "--allow-training-normals", "--out", str(paths["--out"]), "--report", str(paths["--report"])])
    assert code == 78
    assert f"{flag} {paths[flag]}: cannot write in {target}" in capsys.readouterr().err
    assert not [r for r in caplog.records if r.getMessage().startswith("scored")], "scored before checking the output"


def test_a_model_json_without_input_size_is_exit_66_naming_it_even_with_a_recomputed_hash(tiny_model_dir, tmp_path):
    from edge.core.errors import ModelFileError
    from edge.artifacts.model_dir import compute_model_hash, load_model_info

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    description = json.loads((model / "model.json").read_text())
    del description["preprocess"]["input_size"]
    description["hash"] = compute_model_hash(description, model / "module.pt")
    (model / "model.json").write_text(json.dumps(description))
    with pytest.raises(ModelFileError, match=r"model.json: 'preprocess' must hold input_size.*'input_size'") as caught:
        load_model_info(model)
    assert caught.value.exit_code == 66
