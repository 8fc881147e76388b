"""`hlgfa export` on the session's tiny trained model: a valid, deterministic, self-describing graph."""

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from edge.core.errors import ConfigError  # noqa: E402


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    from engines.export import export_onnx

    folder = tmp_path_factory.mktemp("export")
    return {"fp32": export_onnx(tiny_model_dir, folder / "fp32.onnx", max_batch=4),
            "fp16": export_onnx(tiny_model_dir, folder / "fp16.onnx", fp16=True, max_batch=4)}


def io_signature(proto):
    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return ({v.name: (v.type.tensor_type.elem_type, dims(v)) for v in proto.graph.input},
            {v.name: (v.type.tensor_type.elem_type, dims(v)) for v in proto.graph.output})


def test_graph_passes_checker_and_carries_metadata(exported, tiny_model_dir):
    from edge.artifacts.model_dir import load_model_info
    from engines.export import metadata_of

    info = load_model_info(tiny_model_dir)
    proto = onnx.load(exported["fp32"])
    onnx.checker.check_model(proto, full_check=True)
    height, width = info.preprocess.input_size
    inputs, outputs = io_signature(proto)
    f32 = onnx.TensorProto.FLOAT
    assert inputs == {"images": (f32, ["batch", 3, height, width])}
    assert outputs == {"anomaly_map": (f32, ["batch", height, width]), "score": (f32, ["batch"])}
    meta = metadata_of(proto)
    assert meta["hlgfa.model_hash"] == info.model_hash
    assert meta["hlgfa.input_size"] == f"{height}x{width}"
    assert meta["hlgfa.precision"] == "fp32"
    assert meta["hlgfa.max_batch"] == "4"
    assert json.loads(meta["hlgfa.preprocess"]) == info.description["preprocess"]
    # The constant-folding pass left nothing to compute from constants alone at run time (pads, shapes).
    assert {node.op_type for node in proto.graph.node}.isdisjoint({"Constant", "ConstantOfShape", "Identity"})
    constants = {init.name for init in proto.graph.initializer}
    assert not [node.name for node in proto.graph.node if node.input and set(node.input) <= constants]
    # The backbone's zero "same" pads are fused into its convs: no Pad feeds a Conv any more. What is
    # left pads the smoothing (reflect) and the structure gradient (one row or column of zeros).
    pads = [node for node in proto.graph.node if node.op_type == "Pad"]
    conv_inputs = {name for node in proto.graph.node if node.op_type == "Conv" for name in node.input}
    assert pads and not any(node.output[0] in conv_inputs for node in pads if
                            next(a.s for a in node.attribute if a.name == "mode") == b"constant")
    assert b"reflect" in [next(a.s for a in node.attribute if a.name == "mode") for node in pads]


def test_cli_export_is_deterministic(exported, tiny_model_dir, tmp_path):
    from edge.cli import main

    again = tmp_path / "again.onnx"
    assert main(["export", "--model", str(tiny_model_dir), "--out", str(again), "--max-batch", "4"]) == 0
    assert again.read_bytes() == exported["fp32"].read_bytes()


def test_fp16_graph_is_mixed_precision_with_fp32_io_and_close(exported, tiny_model_dir, elpv_images):
    from scipy.stats import spearmanr

    from calibrate.dataset import read_image
    from edge.artifacts.model_dir import load_model_info
    from edge.imaging.preprocess import preprocess
    from engines.export import metadata_of

    proto = onnx.load(exported["fp16"])
    onnx.checker.check_model(proto, full_check=True)
    assert metadata_of(proto)["hlgfa.precision"] == "fp16"
    assert io_signature(proto) == io_signature(onnx.load(exported["fp32"]))
    # Every weight of the backbone and the aligners is FP16; the fitted error statistics feed the FP32 tail.
    kinds = {i.name: i.data_type for i in proto.graph.initializer}
    half_inputs = {name for node in proto.graph.node if node.name.startswith(("/backbone/", "/aligners."))
                   for name in node.input if name in kinds}
    half_kinds = [kinds[name] for name in half_inputs]
    assert onnx.TensorProto.FLOAT16 in half_kinds and onnx.TensorProto.FLOAT not in half_kinds
    # The cosine/smoothing/score tail stays FP32: the reductions read FP32 tensors.
    casts_to_fp32 = [n for n in proto.graph.node if n.op_type == "Cast"
                     and n.attribute[0].i == onnx.TensorProto.FLOAT]
    assert casts_to_fp32

    spec = load_model_info(tiny_model_dir).preprocess
    paths = elpv_images["good"][30:33] + elpv_images["defect"][:5]
    batch = preprocess([read_image(p) for p in paths], spec)
    full = ort.InferenceSession(str(exported["fp32"]), providers=["CPUExecutionProvider"])
    mixed = ort.InferenceSession(str(exported["fp16"]), providers=["CPUExecutionProvider"])
    maps32, scores32 = full.run(None, {"images": batch})
    maps16, scores16 = mixed.run(None, {"images": batch})
    assert maps16.dtype == np.float32 and maps16.shape == maps32.shape
    assert np.abs(maps16 - maps32).max() <= 0.02 * (maps32.max() - maps32.min())
    assert spearmanr(scores16, scores32).statistic >= 0.95


def test_bad_options_are_refused(tiny_model_dir, tmp_path):
    from engines.export import export_onnx

    with pytest.raises(ConfigError, match="--opset 9"):
        export_onnx(tiny_model_dir, tmp_path / "x.onnx", opset=9)
    with pytest.raises(ConfigError, match="--max-batch 0"):
        export_onnx(tiny_model_dir, tmp_path / "x.onnx", max_batch=0)
    assert not (tmp_path / "x.onnx").exists()


def test_both_terms_are_in_the_graph_with_their_per_position_statistics(exported, tiny_model_dir):
    # Batched MatMuls against a (positions × C × C) precision: per level, the alignment error's;
    # on the finer grid, the joint appearance term's over both levels' projected HR features.
    from edge.artifacts.model_dir import load_model_info

    proto = onnx.load(exported["fp32"])
    description = load_model_info(tiny_model_dir).description
    height, width = description["preprocess"]["input_size"]
    assert description["architecture"]["appearance_levels"] == "joint"
    shapes = {init.name: tuple(init.dims) for init in proto.graph.initializer}
    precisions = [shapes[name] for node in proto.graph.node if node.op_type == "MatMul" for name in node.input
                  if name in shapes and len(shapes[name]) == 3]
    grids = [(height // stride) * (width // stride) for stride in (8, 16)]
    channels = description["architecture"]["appearance_channels"]
    assert sorted(precisions) == sorted([(grids[0], 40, 40), (grids[1], 112, 112), (grids[0], channels, channels)])


@pytest.mark.parametrize("overrides", [{}, {"lowfreq_pool": 2}], ids=["default", "low-frequency term"])
def test_a_non_square_model_trains_exports_and_runs_the_same_in_onnx_runtime(tmp_path, elpv_images, overrides):
    # A wide input (64×192): height and width must stay apart from preprocessing through the graph
    # (the low-frequency term's cells too).
    import shutil

    import torch

    from calibrate.dataset import read_image
    from calibrate.model.io import load_model
    from calibrate.train import train
    from edge.backends.base import open_backend
    from edge.imaging.preprocess import preprocess
    from engines.export import export_onnx

    folder = tmp_path / "good"
    folder.mkdir()
    for path in elpv_images["good"][:12]:
        shutil.copy(path, folder / path.name)
    info = train(folder, tmp_path / "model", epochs=1, input_size=(64, 192), seed=0, progress=False,
                 config_overrides=overrides)
    assert info.preprocess.input_size == (64, 192)
    assert bool(info.description["fitted"]["lowfreq_scale"]) == bool(overrides)
    export_onnx(info.directory, max_batch=2)
    batch = preprocess([read_image(p) for p in elpv_images["defect"][:2]], info.preprocess)
    assert batch.shape == (2, 3, 64, 192)
    model, _ = load_model(info.directory)
    with torch.no_grad():
        torch_maps, torch_scores = (t.numpy() for t in model(torch.from_numpy(batch)))
    backend = open_backend("onnxruntime", info.directory, max_batch=2)
    try:
        maps, scores = backend.infer(batch)
    finally:
        backend.close()
    assert maps.shape == (2, 64, 192)
    assert np.allclose(maps, torch_maps, rtol=1e-4, atol=1e-4 * float(np.abs(torch_maps).max()))
    assert np.allclose(scores, torch_scores, rtol=1e-4)


def test_the_input_size_is_read_from_the_graph_metadata_and_a_graph_without_it_is_refused():
    from edge.core.errors import ModelFileError
    from engines.export import onnx_input_size

    assert onnx_input_size({"hlgfa.input_size": "192x448"}) == (192, 448)
    with pytest.raises(ModelFileError, match="re-export it"):
        onnx_input_size({"hlgfa.image_size": "256"})
