"""Encoders (registry `BACKBONES`) and the colorization net: encoder + upsampling decoder + head."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from colorbench.errors import ConfigError
from colorbench.registry import Registry

BACKBONES: Registry[nn.Module] = Registry("backbone")

Weights = Literal["none", "imagenet"]
# (children kept, output channels, output stride) of torchvision's ResNet18
RESNET18_CUTS = {6: (128, 8), 7: (256, 16), 8: (512, 32)}


class Encoder(nn.Sequential):
    """An nn.Sequential that knows its output width and stride."""

    def __init__(self, layers: list[nn.Module], channels: int, stride: int) -> None:
        super().__init__(*layers)
        self.channels = channels
        self.stride = stride


def imagenet_resnet18_state() -> dict[str, torch.Tensor]:
    """torchvision's ImageNet ResNet18 weights from the local torch cache; never downloads."""
    from torchvision.models import ResNet18_Weights

    url = ResNet18_Weights.IMAGENET1K_V1.url
    path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if not path.is_file():
        raise ConfigError(
            f"ImageNet ResNet18 weights are not in the local torch cache ({path}); with a network, fetch them once with "
            "`python -c \"import torchvision; torchvision.models.resnet18(weights='IMAGENET1K_V1')\"`, or use weights: none"
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def resnet18_cut(children: int, weights: Weights) -> Encoder:
    """ResNet18's first `children` children, conv1 summed to a single (lightness) input channel."""
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    if weights == "imagenet":
        net.load_state_dict(imagenet_resnet18_state())
    gray_conv = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    with torch.no_grad():
        gray_conv.weight.copy_(net.conv1.weight.sum(dim=1, keepdim=True))
    net.conv1 = gray_conv
    channels, stride = RESNET18_CUTS[children]
    return Encoder(list(net.children())[:children], channels, stride)


@BACKBONES.register("resnet18-6")
def resnet18_6(weights: Weights = "none") -> Encoder:
    """ResNet18 up to layer2 (the seed): 128 channels at 1/8 resolution."""
    return resnet18_cut(6, weights)


@BACKBONES.register("resnet18-7")
def resnet18_7(weights: Weights = "none") -> Encoder:
    """ResNet18 up to layer3: 256 channels at 1/16 resolution."""
    return resnet18_cut(7, weights)


@BACKBONES.register("resnet18-8")
def resnet18_8(weights: Weights = "none") -> Encoder:
    """ResNet18 up to layer4: 512 channels at 1/32 resolution."""
    return resnet18_cut(8, weights)


def decoder(channels: int, stride: int, out_channels: int) -> nn.Sequential:
    """Conv-BN-ReLU-upsample stages (halving width, at least 32) back to full resolution, then a 3x3 conv and a 1x1 head.

    The head is 1x1 (as Zhang et al.'s class logits) so that a several-hundred-bin head stays cheap at full resolution.
    """
    layers: list[nn.Module] = []
    while stride > 1:
        width = max(channels // 2, 32)
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
        channels, stride = width, stride // 2
    layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(channels, out_channels, 1)]
    return nn.Sequential(*layers)


class ColorizationNet(nn.Module):
    """L (B,1,H,W) in Lab units [0,100] -> raw head output (B,out_channels,H,W); the loss decodes it to ab."""

    def __init__(self, encoder: Encoder, out_channels: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder(encoder.channels, encoder.stride, out_channels)

    def forward(self, L: torch.Tensor) -> torch.Tensor:
        out = self.decoder(self.encoder(L / 100.0 - 0.5))
        if out.shape[-2:] != L.shape[-2:]:
            out = F.interpolate(out, size=L.shape[-2:], mode="bilinear", align_corners=False)
        return out


def build_model(name: str, options: dict, out_channels: int) -> ColorizationNet:
    """The net for backbone `name` with a head `out_channels` wide (2 for regression, Q for bins)."""
    return ColorizationNet(BACKBONES.build(name, options), out_channels)
