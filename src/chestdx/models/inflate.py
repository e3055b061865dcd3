"""Inflate 2D ImageNet networks to 3D (I3D style) and the 3D classifier of CMC-COV19D.

cmc-cov19d-3d-contrastive-mixup.txt, Sec. 3.4.1 ("Inflated Weight Transfer"): the 2D weights of a
ResNet-50 (torchvision) or a ResNeSt-50 (timm ``resnest50d``) are inflated along the slice axis
(Carreira and Zisserman's I3D): a 2D kernel ``(O, I, kh, kw)`` becomes ``(O, I, kt, kh, kw)`` by
repeating it ``kt`` times along depth and dividing by ``kt``, so that a volume made of one slice
repeated gives, at every depth, the 2D network's response to that slice. For the split-attention
blocks the cardinal groups and the radix are kept (the grouped convolution keeps ``groups``, the
attention is computed per radix split over the 3D positions).

Readings chosen where the paper is silent:

- ``time_kernel`` (``kt``) is the depth size of every convolution whose spatial kernel is larger than
  1x1 (1x1 convolutions stay ``1x1x1``); ``time_kernel=1`` applies each 2D kernel per slice.
- ``depth_stride=True`` (default) downsamples depth wherever the 2D network downsamples space (stem,
  max pool, stage transitions), as I3D does in time: a ``128 x 256 x 256`` volume gives ``4 x 8 x 8``
  features. ``False`` keeps the depth (memory grows accordingly).
- Depth is padded TF-"same" style with **replicated** slices (not zeros): the output depth is
  ``ceil(D / stride)`` and the repeated-slice property holds exactly at the first and last slices too.
  Spatial padding is the 2D layer's own (zeros).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from chestdx.errors import ConfigError, WeightsNotFoundError
from chestdx.models.base import ChestModel
from chestdx.models.registry import MODELS, SECTION_ARGS

log = logging.getLogger(__name__)

__all__ = ["DepthSame", "Inflated3DNet", "SplitAttn3d", "inflate_2d_to_3d", "inflated_backbone_names"]


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class DepthSame(nn.Module):
    """A 3D convolution or pool without depth padding, preceded by "same" replicate padding in depth.

    Input ``(B, C, D, H, W)`` -> output depth ``ceil(D / depth_stride)``; the ``total`` missing slices
    (``(out - 1) * stride + kernel - D``) are replicated, half before and half after. Pools get their
    spatial padding here too (``spatial_pad``, filled with ``pad_value``: 0 for average pools that
    count the padding, ``-inf`` for max pools), because PyTorch's 3D pools refuse inputs smaller than
    the kernel even where the padding would cover it (the 2D pools accept them).
    """

    def __init__(self, op: nn.Module, depth_kernel: int, depth_stride: int,
                 spatial_pad: tuple[int, int] = (0, 0), pad_value: float = 0.0):
        super().__init__()
        self.op = op
        self.depth_kernel = int(depth_kernel)
        self.depth_stride = int(depth_stride)
        self.spatial_pad = (int(spatial_pad[0]), int(spatial_pad[1]))
        self.pad_value = float(pad_value)

    def forward(self, x: Tensor) -> Tensor:
        ph, pw = self.spatial_pad
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph, 0, 0), value=self.pad_value)
        d = x.shape[2]
        out = -(-d // self.depth_stride)
        total = max((out - 1) * self.depth_stride + self.depth_kernel - d, 0)
        if total:
            x = F.pad(x, (0, 0, 0, 0, total // 2, total - total // 2), mode="replicate")
        return self.op(x)

    def extra_repr(self) -> str:
        return f"depth_kernel={self.depth_kernel}, depth_stride={self.depth_stride}, spatial_pad={self.spatial_pad}"


class SplitAttn3d(nn.Module):
    """timm's split attention (ResNeSt) on ``(B, C, D, H, W)``; radix and cardinality kept.

    The sub-layers are the inflated ones of the 2D block; the global context is the mean over the
    ``D x H x W`` positions (the 2D block averages over ``H x W``).
    """

    def __init__(self, src: Any, conv: nn.Module, bn0: nn.Module, drop: nn.Module, act0: nn.Module,
                 fc1: nn.Module, bn1: nn.Module, act1: nn.Module, fc2: nn.Module):
        super().__init__()
        self.radix = int(src.radix)
        self.conv, self.bn0, self.drop, self.act0 = conv, bn0, drop, act0
        self.fc1, self.bn1, self.act1, self.fc2 = fc1, bn1, act1, fc2
        self.rsoftmax: nn.Module = src.rsoftmax  # shape-agnostic: works on (B, C, 1, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act0(self.drop(self.bn0(self.conv(x))))
        b, rc, d, h, w = x.shape
        if self.radix > 1:
            x = x.reshape(b, self.radix, rc // self.radix, d, h, w)
            gap = x.sum(dim=1)
        else:
            gap = x
        gap = gap.mean((2, 3, 4), keepdim=True)
        gap = self.act1(self.bn1(self.fc1(gap)))
        attn = self.rsoftmax(self.fc2(gap)).view(b, -1, 1, 1, 1)
        if self.radix > 1:
            out = (x * attn.reshape(b, self.radix, rc // self.radix, 1, 1, 1)).sum(dim=1)
        else:
            out = x * attn
        return out.contiguous()


def _inflate_conv(c: nn.Conv2d, time_kernel: int, depth_stride: bool) -> nn.Module:
    if isinstance(c.padding, str):
        raise ConfigError(f"cannot inflate {c}: string padding '{c.padding}' is not supported")
    kh, kw = _pair(c.kernel_size)
    sh, sw = _pair(c.stride)
    ph, pw = _pair(c.padding)
    dh, dw = _pair(c.dilation)
    kt = int(time_kernel) if (kh > 1 or kw > 1) else 1
    st = max(sh, sw) if depth_stride else 1
    conv = nn.Conv3d(c.in_channels, c.out_channels, (kt, kh, kw), stride=(st, sh, sw), padding=(0, ph, pw),
                     dilation=(1, dh, dw), groups=c.groups, bias=c.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(c.weight.detach().unsqueeze(2).repeat(1, 1, kt, 1, 1) / kt)
        if c.bias is not None and conv.bias is not None:
            conv.bias.copy_(c.bias.detach())
    conv.to(device=c.weight.device, dtype=c.weight.dtype)
    if kt == 1 and st == 1:
        return conv
    return DepthSame(conv, kt, st)


def _inflate_bn(bn: nn.BatchNorm2d) -> nn.BatchNorm3d:
    new = nn.BatchNorm3d(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                         track_running_stats=bn.track_running_stats)
    new.load_state_dict(bn.state_dict())
    if bn.weight is not None:
        new.to(device=bn.weight.device, dtype=bn.weight.dtype)
    new.train(bn.training)
    return new


def _inflate_pool(p: Any, depth_stride: bool) -> nn.Module:
    k = _pair(p.kernel_size)
    s = _pair(p.stride if p.stride is not None else p.kernel_size)
    pad = _pair(p.padding)
    st = max(s) if depth_stride else 1
    kt = max(k) if depth_stride and st > 1 else 1
    op: nn.Module
    if isinstance(p, nn.MaxPool2d):
        if _pair(p.dilation) != (1, 1):
            raise ConfigError(f"cannot inflate {p}: dilated pooling")
        op = nn.MaxPool3d((kt, *k), (st, *s), 0, ceil_mode=p.ceil_mode)
        return DepthSame(op, kt, st, pad, float("-inf"))
    if p.count_include_pad or pad == (0, 0):
        op = nn.AvgPool3d((kt, *k), (st, *s), 0, ceil_mode=p.ceil_mode, count_include_pad=p.count_include_pad)
        return DepthSame(op, kt, st, pad, 0.0)
    op = nn.AvgPool3d((kt, *k), (st, *s), (0, *pad), ceil_mode=p.ceil_mode, count_include_pad=False)
    return op if (kt == 1 and st == 1) else DepthSame(op, kt, st)


def _convert(module: nn.Module, time_kernel: int, depth_stride: bool) -> nn.Module:
    """Return the 3D version of ``module`` (children converted in place where it is a container)."""
    name = type(module).__name__
    if isinstance(module, nn.Conv2d):
        return _inflate_conv(module, time_kernel, depth_stride)
    if isinstance(module, nn.BatchNorm2d):
        return _inflate_bn(module)
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        return _inflate_pool(module, depth_stride)
    if isinstance(module, nn.AdaptiveAvgPool2d):
        size = module.output_size
        return nn.AdaptiveAvgPool3d(1 if size in (1, (1, 1)) else (None, *_pair(size)))
    if isinstance(module, nn.Dropout2d):
        return nn.Dropout3d(module.p)
    if name == "SplitAttn":  # timm ResNeSt split-attention block
        sub = {k: _convert(getattr(module, k), time_kernel, depth_stride)
               for k in ("conv", "bn0", "drop", "act0", "fc1", "bn1", "act1", "fc2")}
        return SplitAttn3d(module, **sub)
    if name == "SelectAdaptivePool2d":
        if getattr(module, "pool_type", "") in ("", None) or module.is_identity():  # type: ignore[operator]
            return nn.Identity()
        return nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(1))
    for child_name, child in list(module.named_children()):
        new = _convert(child, time_kernel, depth_stride)
        if new is not child:
            setattr(module, child_name, new)
    if "2d" in name.lower() and not list(module.children()):
        raise ConfigError(f"cannot inflate layer {name} to 3D (no rule for it); inflate a network made of "
                          "Conv2d, BatchNorm2d, Max/AvgPool2d, ReLU and timm SplitAttn")
    return module


def inflate_2d_to_3d(net: nn.Module, time_kernel: int = 3, depth_stride: bool = True) -> nn.Module:
    """A 3D copy of a 2D convolutional network with I3D-inflated weights (the input is not changed).

    ``Conv2d (O, I/g, kh, kw)`` -> ``Conv3d (O, I/g, kt, kh, kw)`` with weights repeated along depth
    and divided by ``kt`` (groups, dilation and bias kept); ``BatchNorm2d`` -> ``BatchNorm3d`` with its
    statistics; pools and timm's ``SplitAttn`` (radix and cardinality kept) -> 3D versions. See the
    module docstring for the depth padding and striding chosen.

    Args:
        net: a 2D network (e.g. torchvision ``resnet50`` or timm ``resnest50d``); input
            ``(B, C, H, W)``.
        time_kernel: ``kt``, depth size of the inflated ``k x k`` kernels (``k > 1``); 1 = per slice.
        depth_stride: downsample depth where the 2D network downsamples space.

    Returns:
        the 3D network; input ``(B, C, D, H, W)``. With a volume made of one slice repeated, every
        depth position of every layer's output equals the 2D network's output on that slice.

    Raises:
        ConfigError: ``time_kernel < 1`` or a layer with no inflation rule.
    """
    if int(time_kernel) < 1:
        raise ConfigError(f"time_kernel must be >= 1, got {time_kernel}")
    net3d = copy.deepcopy(net)
    return _convert(net3d, int(time_kernel), bool(depth_stride))


# ---------------------------------------------------------------------------------- 3D classifier

_TIMM = {"resnest50d": 2048, "resnest26d": 2048, "resnest14d": 2048, "resnest101e": 2048}


def inflated_backbone_names() -> list[str]:
    """2D backbones :class:`Inflated3DNet` can inflate."""
    from chestdx.models.backbones import backbone_names

    return sorted([*backbone_names(), *_TIMM])


def _timm_weights(net: nn.Module, name: str, weights: str, in_chans: int) -> None:
    """Load local ImageNet (or other) weights into a timm network (never downloads)."""
    from chestdx.models.backbones import adapt_first_conv, find_timm_weights, load_state_dict_file

    if weights in ("none", "", None):
        return
    if weights == "imagenet":
        path = find_timm_weights(name)
    else:
        path = Path(weights)
        if not path.is_file():
            raise WeightsNotFoundError(f"weights file not found: {path}")
    state = {k.removeprefix("module."): v for k, v in load_state_dict_file(path).items()}
    own = net.state_dict()
    for k, v in list(state.items()):
        if k in own and v.ndim == 4 and own[k].ndim == 4 and v.shape[1] != own[k].shape[1]:
            state[k] = adapt_first_conv(v, own[k].shape[1])
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    result = net.load_state_dict(state, strict=False)
    if result.missing_keys:
        log.warning("weights %s: %d missing keys, e.g. %s", path, len(result.missing_keys), result.missing_keys[:3])
    log.info("loaded %s weights from %s (in_chans=%d)", name, path, in_chans)


def build_2d_backbone(name: str, in_chans: int = 1, weights: str = "none") -> tuple[nn.Module, int]:
    """The 2D network to inflate (no classifier) and its feature channels.

    Raises:
        ConfigError: unknown backbone; WeightsNotFoundError: weights asked for but absent.
    """
    if name in _TIMM:
        import timm

        net = timm.create_model(name, pretrained=False, num_classes=0, global_pool="", in_chans=in_chans)
        _timm_weights(net, name, weights, in_chans)
        return net, _TIMM[name]
    from chestdx.models.backbones import backbone_names, build_resnet

    if name not in backbone_names():
        raise ConfigError(f"backbone '{name}' cannot be inflated to 3D (inflation needs a ResNet-style stem and "
                          f"layer1..layer4); choose one of {inflated_backbone_names()}")
    return build_resnet(name, in_chans, weights)


class Inflated3DNet(ChestModel):
    """CMC-COV19D's encoder and classifier: an inflated 3D ResNet / ResNeSt, GAP, a linear layer.

    Shapes: input ``(B, in_chans, D, H, W)`` (volumes in ``[0, 1]``); features ``(B, C, d, h, w)``
    (C = 2048 for ResNet-50 / ResNeSt-50; ``d, h, w = ceil(D/32), H/32, W/32`` with depth striding);
    embedding ``r`` ``(B, C)`` (the average-pooling output, the paper's ``d_e = 2048``); logits
    ``(B, K)`` from one fully connected layer (the paper's classifier ``C``; the softmax is taken by
    the losses). The contrastive projection network lives in the ``supcon`` objective.

    Args:
        num_classes: K.
        backbone: ``resnet18`` / ``resnet50`` / ... (torchvision) or ``resnest50d`` (timm).
        in_chans: input channels (1 for CT).
        weights: ``none`` / ``imagenet`` (local file, never downloaded) / a path to 2D weights; they
            are loaded into the 2D network, then inflated.
        time_kernel: depth size of the inflated kernels (1 = per slice).
        depth_stride: downsample depth with space.
        dropout: before the classifier.
        checkpointing: activation checkpointing per stage while training (less memory, one more
            forward pass of each stage in the backward).
    """

    def __init__(self, num_classes: int, backbone: str = "resnet50", in_chans: int = 1, weights: str = "none",
                 time_kernel: int = 3, depth_stride: bool = True, dropout: float = 0.0,
                 checkpointing: bool = False):
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.checkpointing = bool(checkpointing)
        net2d: Any
        net2d, self.feature_dim = build_2d_backbone(backbone, in_chans, weights)
        act = net2d.relu if hasattr(net2d, "relu") else net2d.act1
        stem2d = nn.Sequential(net2d.conv1, net2d.bn1, act, net2d.maxpool)
        self.stem = inflate_2d_to_3d(stem2d, time_kernel, depth_stride)
        self.stages = nn.ModuleList(inflate_2d_to_3d(getattr(net2d, f"layer{i}"), time_kernel, depth_stride)
                                    for i in range(1, 5))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.feature_dim, num_classes))

    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, in_chans, D, H, W)`` -> ``(B, C, d, h, w)``.

        Raises:
            ValueError: the input is not 5D or has the wrong channel count.
        """
        if x.ndim != 5 or x.shape[1] != self.in_chans:
            raise ValueError(f"a 3D model takes volumes (B, {self.in_chans}, D, H, W); got {tuple(x.shape)}")
        x = self.stem(x)
        use_ckpt = self.checkpointing and self.training and torch.is_grad_enabled()
        for stage in self.stages:
            x = checkpoint(stage, x, use_reentrant=False) if use_ckpt else stage(x)  # type: ignore[assignment]
        return x

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The inflated 2D network's parameters (stem and stages), for ``optim.backbone_lr``."""
        return [*self.stem.parameters(), *self.stages.parameters()]

    def forward_head(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, C, d, h, w)`` -> logits ``(B, K)`` and the pooled representation ``(B, C)``."""
        emb = features.mean(dim=(2, 3, 4))
        return self.head(emb), emb


@MODELS.register("inflated3d", accepts=Inflated3DNet, fixed=SECTION_ARGS)
def _inflated3d(cfg: Any, num_classes: int, in_chans: int) -> ChestModel:
    """Inflated 3D ResNet / ResNeSt of CMC-COV19D; ``params``: time_kernel, depth_stride, checkpointing."""
    return Inflated3DNet(num_classes, cfg.backbone, in_chans, cfg.weights, dropout=cfg.dropout, **cfg.params)
