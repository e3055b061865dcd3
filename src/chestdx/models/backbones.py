"""2D backbones from torchvision, adapted to single-channel input, with offline weight loading.

``weights``:
    - ``"none"``: random initialisation (train from scratch);
    - ``"imagenet"``: torchvision's ImageNet weights from a local file: ``$CHESTDX_WEIGHTS_DIR/<file>``
      or the torch hub cache ``<torch hub dir>/checkpoints/<file>``. chestdx never downloads; when the
      file is absent a :class:`~chestdx.errors.WeightsNotFoundError` says which file to put where;
    - a path: a state dict (or a checkpoint with ``state_dict``) for the backbone.

The first convolution is adapted to ``in_chans`` as timm does: for one channel the RGB kernels are
summed; the ImageNet classifier (``fc``) is dropped, and missing / unexpected keys are logged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from chestdx.errors import ConfigError, WeightsNotFoundError

log = logging.getLogger(__name__)

# name -> (constructor, torchvision weights enum name, feature channels)
_TORCHVISION: dict[str, tuple[Callable[..., nn.Module], str, int]] = {
    "resnet18": (torchvision.models.resnet18, "ResNet18_Weights", 512),
    "resnet34": (torchvision.models.resnet34, "ResNet34_Weights", 512),
    "resnet50": (torchvision.models.resnet50, "ResNet50_Weights", 2048),
    "resnet101": (torchvision.models.resnet101, "ResNet101_Weights", 2048),
    "wide_resnet50_2": (torchvision.models.wide_resnet50_2, "Wide_ResNet50_2_Weights", 2048),
}


def backbone_names() -> list[str]:
    """Names accepted by :func:`build_resnet`."""
    return sorted(_TORCHVISION)


def imagenet_weight_file(name: str) -> tuple[str, list[Path]]:
    """The torchvision file name of ``name``'s ImageNet weights and the places searched for it."""
    if name not in _TORCHVISION:
        raise ConfigError(f"unknown backbone '{name}'; choose one of {backbone_names()}")
    enum = getattr(torchvision.models, _TORCHVISION[name][1])
    url = enum.IMAGENET1K_V1.url
    fname = url.rsplit("/", 1)[-1]
    places = []
    if os.environ.get("CHESTDX_WEIGHTS_DIR"):
        places.append(Path(os.environ["CHESTDX_WEIGHTS_DIR"]) / fname)
    places.append(Path(torch.hub.get_dir()) / "checkpoints" / fname)
    return fname, places


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read the file is the user's to fix
        raise WeightsNotFoundError(f"{path}: cannot read weights ({e})") from None
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WeightsNotFoundError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return obj


def adapt_first_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Adapt a first-conv kernel ``(O, 3, k, k)`` to ``(O, in_chans, k, k)``.

    One channel: sum over RGB (the response to a grey image is unchanged). Other counts: repeat the
    RGB kernels cyclically and rescale by ``3 / in_chans``.
    """
    if weight.shape[1] == in_chans:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = -(-in_chans // weight.shape[1])
    w = weight.repeat(1, reps, 1, 1)[:, :in_chans]
    return w * (weight.shape[1] / in_chans)


def load_backbone_weights(model: nn.Module, name: str, weights: str, in_chans: int) -> None:
    """Load ``weights`` (``none`` / ``imagenet`` / path) into a torchvision ResNet in place.

    Raises:
        WeightsNotFoundError: the file is absent or unreadable (the message says where to put it).
    """
    if weights in ("none", "", None):
        return
    if weights == "imagenet":
        fname, places = imagenet_weight_file(name)
        found = next((p for p in places if p.is_file()), None)
        if found is None:
            enum = getattr(torchvision.models, _TORCHVISION[name][1])
            raise WeightsNotFoundError(
                f"ImageNet weights for {name} not found and chestdx never downloads at run time.\n"
                f"Put the file {fname} (torchvision's {enum.__name__}.IMAGENET1K_V1, from "
                f"{enum.IMAGENET1K_V1.url}) into one of:\n"
                + "\n".join(f"  {p.parent}/" for p in places)
                + "\nor train from scratch with --weights none."
            )
        path = found
    else:
        path = Path(weights)
        if not path.is_file():
            raise WeightsNotFoundError(f"weights file not found: {path}")
    state = _load_state(path)
    state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}
    if "conv1.weight" in state:
        state["conv1.weight"] = adapt_first_conv(state["conv1.weight"], in_chans)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("fc.")]
    if missing:
        log.warning("weights %s: %d missing keys, e.g. %s", path, len(missing), missing[:3])
    if result.unexpected_keys:
        log.warning("weights %s: %d unexpected keys, e.g. %s", path, len(result.unexpected_keys),
                    result.unexpected_keys[:3])
    log.info("loaded backbone weights from %s", path)


def build_resnet(name: str, in_chans: int = 1, weights: str = "none") -> tuple[nn.Module, int]:
    """A torchvision ResNet without its classifier, first conv adapted to ``in_chans``.

    Returns:
        the network (call :func:`resnet_features` on it) and its feature channels (512 or 2048).
    """
    if name not in _TORCHVISION:
        raise ConfigError(f"unknown backbone '{name}'; choose one of {backbone_names()}")
    ctor, _, channels = _TORCHVISION[name]
    net = ctor(weights=None)
    old: Any = net.conv1
    net.conv1 = nn.Conv2d(in_chans, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
    net.fc = nn.Identity()
    load_backbone_weights(net, name, weights, in_chans)
    return net, channels


def resnet_features(net: Any, x: torch.Tensor, return_stages: bool = False) -> Any:
    """Run a torchvision ResNet up to ``layer4``.

    Args:
        x: ``(B, in_chans, H, W)``.
        return_stages: also return the outputs of layer1..layer4.

    Returns:
        ``(B, C, H/32, W/32)``, or that and a list of the four stage outputs.
    """
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    stages = []
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        x = layer(x)
        stages.append(x)
    return (x, stages) if return_stages else x
