"""HLGFA → one ONNX graph (FP32, or mixed FP16 for TensorRT's strongly typed mode).

The graph takes the preprocessed HR batch `images` [N,3,H,W] float32 and returns `anomaly_map`
[N,H,W] float32 and `score` [N] float32; everything of the model (LR view, backbone, aligners,
discrepancy, reliability weighting, smoothing, score) is inside it, with a dynamic batch axis.

Exporter: the TorchScript exporter (`dynamo=False`), then two small passes of our own.
Measured on the tiny test model (2 loaded cores): the dynamo exporter takes ~70 s and the
TorchScript one ~4 s, with the same numbers (max map difference to torch 5e-7 for both). The
dynamo graph is cleaner as it comes out (zero pads fused into Conv, no pad arithmetic), but
the TorchScript graph's only mess is the pads vector of every `F.pad`, computed at run time
(a Slice with step -1 that torch's folder refuses), and EfficientNet's TF-style "same" zero
pads as separate ops. `fold_constants` evaluates those constant subgraphs and `fuse_zero_pads`
moves the zero pads into the convs' own (asymmetric) pads, leaving plain Conv/Clip/Resize/
AveragePool/Reduce* ops and one reflect Pad (the smoothing). What remains of shape arithmetic
feeds the Resize sizes of the dynamic batch, which TensorRT handles as shape tensors. A fast
export keeps the export tests inside the suite's time budget.

Opset 17 by default: TensorRT's ONNX parser accepts opset 9 and later (its opset guide; 11.x up
to 25), ONNX Runtime ≥ 1.12 runs it, and at 17 the reductions still take `axes` as an attribute.
The ops left (Conv, Clip with initializer bounds, Resize linear, AveragePool, Pad reflect,
ReduceMax/Sum/Mean, Cast) are all in onnx-tensorrt's operator list. Not proven by a TensorRT
build here (no GPU): `engines/check_gpu.sh` does that on a GPU box.
"""

import io
import json
import logging
import warnings
from pathlib import Path

from edge.core.errors import ConfigError, ModelFileError
from edge.artifacts.graph import (
    INPUT_NAME,
    META_FORMAT,
    META_INPUT_SIZE,
    META_MAX_BATCH,
    META_MODEL_HASH,
    META_PRECISION,
    META_PREPROCESS,
    OUTPUT_NAMES,
)
from edge.artifacts.model_dir import load_model_info
from edge.core.paths import write_atomic

log = logging.getLogger(__name__)

ONNX_FORMAT = "hlgfa-onnx/1"
DEFAULT_OPSET = 17
SUPPORTED_OPSETS = range(13, 21)
# The backbone and the aligners hold nearly all the arithmetic and are FP16-safe (bounded
# activations, batch-norm folded into the convs). What follows them stays FP32: the cosine
# similarity (a normalisation: sums of squares overflow/underflow in FP16), the upsampled
# per-level discrepancies and their mean, the reliability division, the 25-tap Gaussian
# smoothing (sums of many small terms) and the score reduction.
FP16_NODE_PREFIXES = ("/backbone/", "/aligners.")
# Bounds of the folding pass: a constant subgraph larger than this is left to the runtime.
_FOLD_MAX_ELEMENTS = 1 << 16


def metadata_of(model_proto) -> dict[str, str]:
    return {prop.key: prop.value for prop in model_proto.metadata_props}


def fold_constants(model_proto):
    """Evaluate every node whose inputs are all constants and store the result as an initializer.

    Works on the small index/pad tensors the TorchScript exporter leaves computed at run time;
    weights pass through untouched (Identity on an initializer is resolved by renaming).
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = model_proto.graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    graph_outputs = {output.name for output in graph.output}
    aliases: dict[str, str] = {}
    kept = []
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in aliases:
                node.input[index] = aliases[name]
        if node.op_type == "Constant" and len(node.output) == 1:
            value = ReferenceEvaluator(_single_node_model(node, model_proto)).run(None, {})[0]
            constants[node.output[0]] = np.asarray(value)
            continue
        inputs = [name for name in node.input if name]
        if (node.op_type == "Identity" and inputs and inputs[0] in constants
                and node.output[0] not in graph_outputs):
            # An alias, not a copy: the exporter shares one weight between call sites this way.
            aliases[node.output[0]] = inputs[0]
            continue
        foldable = (node.domain in ("", "ai.onnx") and node.op_type not in ("RandomNormal", "RandomUniform")
                    and all(name in constants for name in inputs)
                    and all(constants[name].size <= _FOLD_MAX_ELEMENTS for name in inputs)
                    and not any(output in graph_outputs for output in node.output))
        if foldable:
            feeds = {name: constants[name] for name in inputs}
            try:
                values = ReferenceEvaluator(_single_node_model(node, model_proto, feeds)).run(None, feeds)
            except Exception as error:  # an op the reference evaluator lacks stays in the graph
                log.debug("not folding %s (%s): %s", node.name, node.op_type, error)
                kept.append(node)
                continue
            for name, value in zip(node.output, values):
                constants[name] = np.asarray(value)
            continue
        kept.append(node)
    used = {name for node in kept for name in node.input} | graph_outputs
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(numpy_helper.from_array(constants[name], name)
                             for name in sorted(used) if name in constants)
    # Inputs listed as initializers (old exporters do this) would make them overridable.
    initializer_names = {init.name for init in graph.initializer}
    real_inputs = [value for value in graph.input if value.name not in initializer_names]
    del graph.input[:]
    graph.input.extend(real_inputs)
    del graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model_proto)


def fuse_zero_pads(model_proto) -> int:
    """Fold each zero `Pad` that only feeds one Conv into that Conv's (asymmetric) pads.

    EfficientNet's TF-style "same" padding exports as a Pad before every strided conv; ONNX
    Conv takes asymmetric pads itself, so the graph gets one op fewer per block and no
    padded copy of the activation. Returns the number of pads fused.
    """
    from onnx import helper, numpy_helper

    graph = model_proto.graph
    initializers = {init.name: init for init in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {output.name for output in graph.output}
    removed = set()
    for pad in graph.node:
        if pad.op_type != "Pad" or pad.output[0] in graph_outputs:
            continue
        mode = next((a.s for a in pad.attribute if a.name == "mode"), b"constant")
        users = consumers.get(pad.output[0], [])
        if mode != b"constant" or len(users) != 1 or users[0].op_type != "Conv" or len(pad.input) < 2:
            continue
        if pad.input[1] not in initializers or (len(pad.input) > 3 and pad.input[3]):
            continue
        if len(pad.input) > 2 and pad.input[2]:
            if pad.input[2] not in initializers or numpy_helper.to_array(initializers[pad.input[2]]).any():
                continue
        pads = [int(v) for v in numpy_helper.to_array(initializers[pad.input[1]])]
        rank = len(pads) // 2
        begins, ends = pads[:rank], pads[rank:]
        if any(begins[:2]) or any(ends[:2]) or min(pads) < 0:
            continue
        conv = users[0]
        attributes = {a.name: a for a in conv.attribute}
        if "auto_pad" in attributes and attributes["auto_pad"].s not in (b"", b"NOTSET"):
            continue
        spatial = rank - 2
        old = list(attributes["pads"].ints) if "pads" in attributes else [0] * (2 * spatial)
        new = [old[i] + begins[2 + i] for i in range(spatial)] + [old[spatial + i] + ends[2 + i] for i in range(spatial)]
        kept = [a for a in conv.attribute if a.name != "pads"]
        del conv.attribute[:]
        conv.attribute.extend(kept + [helper.make_attribute("pads", new)])
        conv.input[0] = pad.input[0]
        removed.add(id(pad))
    kept_nodes = [node for node in graph.node if id(node) not in removed]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    used = {name for node in graph.node for name in node.input}
    kept_initializers = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept_initializers)
    return len(removed)


def _single_node_model(node, model_proto, feeds=None):
    from onnx import helper

    feeds = feeds or {}
    inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)
              for name, value in feeds.items()]
    outputs = [helper.make_value_info(name, helper.TypeProto()) for name in node.output]
    graph = helper.make_graph([node], "fold", inputs, outputs)
    return helper.make_model(graph, opset_imports=list(model_proto.opset_import), ir_version=model_proto.ir_version)


def convert_to_fp16(model_proto):
    """Mixed precision: FP16 backbone and aligners, FP32 inputs, outputs and post-processing.

    Our own pass rather than onnxconverter-common's: with `keep_io_types` that converter casts
    a graph output that is also consumed inside the graph (our `anomaly_map` feeds the score)
    to FP16 and back, and the result fails onnx.checker. The region split here is simple: FP16
    nodes get FP16 copies of their float initializers, and a Cast is inserted wherever a float
    tensor crosses the border, once per tensor. The result is explicitly typed (every precision
    change is a Cast in the graph), which is what TensorRT's strongly typed mode builds from.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = model_proto.graph
    inferred = onnx.shape_inference.infer_shapes(model_proto)
    elem_type = {value.name: value.type.tensor_type.elem_type
                 for value in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    initializers = {init.name: init for init in graph.initializer}
    for name, init in initializers.items():
        elem_type[name] = init.data_type
    half = {node.name: node.name.startswith(FP16_NODE_PREFIXES) for node in graph.node}
    if not any(half.values()):
        raise ModelFileError("--fp16: no backbone/aligner nodes found in the exported graph "
                             f"(expected names starting with {FP16_NODE_PREFIXES}); the exporter's naming changed")
    producer_half = {output: half[node.name] for node in graph.node for output in node.output}
    half_initializers: dict[str, str] = {}
    casts: dict[tuple[str, int], str] = {}
    new_nodes = []
    new_initializers = []

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in casts:
            casts[key] = f"{name}_as_{'fp16' if to == TensorProto.FLOAT16 else 'fp32'}"
            new_nodes.append(helper.make_node("Cast", [name], [casts[key]], to=to,
                                              name=f"{name}/cast_{'fp16' if to == TensorProto.FLOAT16 else 'fp32'}"))
        return casts[key]

    for node in graph.node:
        for index, name in enumerate(node.input):
            if not name or elem_type.get(name) != TensorProto.FLOAT:
                continue
            if half[node.name]:
                if name in initializers:
                    if name not in half_initializers:
                        half_initializers[name] = f"{name}_fp16"
                        array = numpy_helper.to_array(initializers[name]).astype(np.float16)
                        new_initializers.append(numpy_helper.from_array(array, half_initializers[name]))
                    node.input[index] = half_initializers[name]
                elif not producer_half.get(name, False):
                    node.input[index] = cast(name, TensorProto.FLOAT16)
            elif producer_half.get(name, False) and node.op_type != "Shape":
                # Shape reads only the dimensions, whatever the type.
                node.input[index] = cast(name, TensorProto.FLOAT)
        new_nodes.append(node)
    for output in graph.output:
        if producer_half.get(output.name, False):
            raise ModelFileError(f"--fp16: graph output {output.name} would be FP16; expected FP32 outputs")
    still_used = {name for node in new_nodes for name in node.input}
    kept_initializers = [init for init in graph.initializer if init.name in still_used]
    del graph.node[:]
    graph.node.extend(_topological(new_nodes, {v.name for v in graph.input} | set(initializers) | set(half_initializers.values())))
    del graph.initializer[:]
    graph.initializer.extend(kept_initializers + new_initializers)
    del graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model_proto)


def _topological(nodes, available: set[str]):
    """Casts were appended before their consumers but after nothing in particular: order them."""
    available = set(available) | {""}
    ordered, pending = [], list(nodes)
    while pending:
        remaining = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                remaining.append(node)
        if len(remaining) == len(pending):
            raise ModelFileError(f"--fp16: graph has a cycle or a dangling input at {remaining[0].name}")
        pending = remaining
    return ordered


def export_onnx(model_dir, out=None, *, fp16: bool = False, max_batch: int = 8, opset: int = DEFAULT_OPSET) -> Path:
    """Export the model directory to one ONNX file; returns its path. Deterministic."""
    import onnx
    import torch

    from calibrate.model.io import load_model

    if opset not in SUPPORTED_OPSETS:
        raise ConfigError(f"--opset {opset}: expected {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1} "
                          f"(17 is what TensorRT 10 and ONNX Runtime both take)")
    if max_batch < 1:
        raise ConfigError(f"--max-batch {max_batch}: expected ≥ 1")
    info = load_model_info(model_dir)
    out = Path(out) if out is not None else info.default_onnx
    model, info = load_model(model_dir)
    size = info.preprocess.input_size
    # Batch 2 so the tracer cannot specialise anything to a batch of one.
    example = torch.zeros((2, 3) + size)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter's deprecation and constant-folding notes: handled here (see module doc).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example,), buffer, dynamo=False, opset_version=opset, do_constant_folding=True,
            input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAMES[0]: {0: "batch"}, OUTPUT_NAMES[1]: {0: "batch"}})
    proto = fold_constants(onnx.load_from_string(buffer.getvalue()))
    fused = fuse_zero_pads(proto)
    log.debug("fused %d zero pads into convolutions", fused)
    _fix_io_shapes(proto, size)
    precision = "fp16" if fp16 else "fp32"
    if fp16:
        proto = convert_to_fp16(proto)
    proto.producer_name = "hlgfa export"
    proto.doc_string = f"HLGFA model {info.model_hash}, {precision}"
    del proto.metadata_props[:]
    for key, value in {
        META_FORMAT: ONNX_FORMAT,
        META_MODEL_HASH: info.model_hash,
        META_INPUT_SIZE: f"{size[0]}x{size[1]}",
        META_PRECISION: precision,
        META_MAX_BATCH: str(max_batch),
        META_PREPROCESS: json.dumps(info.description["preprocess"], sort_keys=True),
    }.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as error:
        raise ModelFileError(f"export of {info.directory}: the ONNX graph fails onnx.checker ({error})") from error
    data = proto.SerializeToString(deterministic=True)
    write_atomic(out, data)
    log.info("exported %s (%s, opset %d, %d nodes, %.1f MB) to %s", info.directory, precision, opset,
             len(proto.graph.node), len(data) / 1e6, out)
    return out


def onnx_input_size(metadata: dict[str, str]) -> tuple[int, int]:
    """(height, width) from an exported graph's metadata."""
    if META_INPUT_SIZE not in metadata:
        raise ModelFileError(f"ONNX graph without {META_INPUT_SIZE} metadata: not written by this version of "
                             f"`hlgfa export`; re-export it")
    height, width = metadata[META_INPUT_SIZE].split("x")
    return int(height), int(width)


def _fix_io_shapes(proto, size: tuple[int, int]) -> None:
    """Name the dynamic axis `batch` everywhere and pin the spatial ones the tracer left symbolic."""
    height, width = size
    expected = {INPUT_NAME: ("batch", 3, height, width), OUTPUT_NAMES[0]: ("batch", height, width),
                OUTPUT_NAMES[1]: ("batch",)}
    for value in list(proto.graph.input) + list(proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        want = expected[value.name]
        if len(dims) != len(want):
            raise ModelFileError(f"exported graph: {value.name} has rank {len(dims)}, expected {len(want)}")
        for dim, target in zip(dims, want):
            if isinstance(target, str):
                dim.dim_param = target
            else:
                dim.dim_value = target
