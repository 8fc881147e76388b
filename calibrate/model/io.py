"""Writes and reads the model directory (format in `edge.artifacts.model_dir`) for torch users."""

import json
from dataclasses import asdict
from pathlib import Path

import torch

from calibrate.model.backbones import build_backbone
from calibrate.model.hlgfa import HLGFA, FittedConstants, HLGFAConfig
from edge.core.errors import ModelFileError
from edge.artifacts.model_dir import MODEL_FORMAT, MODEL_JSON, MODULE_WEIGHTS, ModelInfo, compute_model_hash, load_model_info
from edge.imaging.preprocess import PreprocessSpec


def save_model(model: HLGFA, directory: str | Path, backbone_weights: str | None, training: dict) -> ModelInfo:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights_path = directory / MODULE_WEIGHTS
    temp_weights = directory / f".{MODULE_WEIGHTS}.tmp"
    torch.save(model.aligners.state_dict(), temp_weights)
    description = {
        "format": MODEL_FORMAT,
        "backbone": {"name": model.backbone.name, "weights_file": backbone_weights, "strides": list(model.config.strides)},
        "preprocess": PreprocessSpec(model.config.input_size).to_dict(),
        "architecture": model.config.to_dict(),
        "fitted": asdict(model.fitted),
        "training": training,
    }
    description["hash"] = compute_model_hash(description, temp_weights)
    temp_weights.replace(weights_path)
    json_temp = directory / f".{MODEL_JSON}.tmp"
    json_temp.write_text(json.dumps(description, indent=2, sort_keys=True) + "\n")
    json_temp.replace(directory / MODEL_JSON)
    return load_model_info(directory)


def build_model(description: dict) -> HLGFA:
    config = HLGFAConfig.from_dict(description["architecture"])
    backbone = build_backbone(description["backbone"]["name"], config.strides, description["backbone"].get("weights_file"))
    fitted = FittedConstants.from_dict(description["fitted"])
    return HLGFA(backbone, config, fitted)


def load_model(directory: str | Path) -> tuple[HLGFA, ModelInfo]:
    """The eval-mode torch model of a model directory, its hash verified."""
    info = load_model_info(directory)
    model = build_model(info.description)
    try:
        state = torch.load(info.weights_path, map_location="cpu", weights_only=True)
        model.aligners.load_state_dict(state)
    except Exception as error:  # a damaged file raises several types
        raise ModelFileError(f"{info.weights_path}: cannot load module weights ({error})") from error
    return model.eval(), info
