"""Mask R-CNN lesion segmentation and the lesion-mask affinity classifier (maskrcnn-lesion-affinity.txt).

One network does two jobs (paper Fig. 1):

- **segmentation**: a torchvision Mask R-CNN (ResNet-18/34/50 + FPN, one ``lesion`` class) trained
  with its own loss ``L_SEG`` on images with lesion instances;
- **classification**: a *copy* of the RoI detection branch scores the RPN proposals, the RoI batch
  selection keeps the top ``B`` boxes (any score, NMS, zero-padded when fewer), a *copy* of the mask
  branch turns each into lesion mask features ``(B, C, H, W)``, and the :class:`AffinityLayer`
  (mask sieve, vectorisation, affinity matrix ``W1 (B, C')``, affinity vector ``w2 (C',)``) gives
  one ``C``-vector per image, which two FC layers map to ``K`` logits (per-class BCE, Eq. 7).

The copies (``cls_box_head``, ``cls_box_predictor``, ``cls_mask_head``, ``cls_mask_features``)
have ``requires_grad=False``: no loss reaches them (Eq. 8). :meth:`AffinityModel.maybe_copy_branches`
copies the segmentation branches into them when the segmentation loss improves (Algorithm 1).
The sieve, affinity and FC parameters get gradients from ``L_CLS`` only (Eq. 9-10); the backbone
(``Theta_1``) from both losses.

Readings chosen where the paper is open:

- RPN and RoI run on all FPN levels (torchvision's multi-scale RoIAlign) rather than on the last
  FPN level only (Fig. 1): the torchvision Mask R-CNN is used unchanged.
- "weights copied when the segmentation loss improves" compares ``L_SEG(t)`` with ``L_SEG(t-1)``,
  the previous step's loss (Algorithm 1 read literally, not best-so-far); the weights copied are
  the ones that produced ``L_SEG(t)`` (copy before the optimiser step); ``L_SEG(0) = +inf`` so the
  first step always copies.
- The lesion mask features are the mask branch up to and including its transposed convolution and
  ReLU (torchvision ``mask_head`` + ``mask_predictor.conv5_mask``), i.e. ``C x 28 x 28`` for the
  default 14 px mask RoIAlign, as the paper's ``8 x 256 x 28 x 28``; only the 1x1 logit layer is left out.
- Padding: when fewer than ``B`` boxes survive NMS, the missing lesion mask features are zeros.
- A sieve stage is ``Conv 3x3 stride 2 + ReLU`` (``H -> H/2``) then ``ConvTranspose 2x2 stride 2
  + ReLU`` (``H/2 -> H``); vectorisation is the spatial mean.
- Paper Algorithm 1 writes ``X2 = W2^T X1``; Eq. 3 writes ``W1``: ``W1 (B, C')`` is used.
- The image classification module is ``Linear(C, F) + ReLU, Linear(F, F) + ReLU, Linear(F, K)``.

The defaults are torchvision's Mask R-CNN (ResNet-50, all FPN levels, 1024-wide box head, 4-conv
mask head: 64.4M parameters with C' = 128). The paper's Table 3 gives 14.19M; recipe
``affinity_paper`` builds that size with the options ``backbone_stages: 3`` + ``fpn_levels: last``
(ResNet-18 to layer3, one FPN level, RPN and RoIAlign on it alone, Fig. 1), ``box_hidden: 128``,
``mask_convs: 1``, ``mask_feature_convs: 1``, ``sieve_width: 128``, ``sieve_kernel: 2`` and
``vectorise: conv``: 3.43M / 6.15M (3.07M) / 4.57M / 14.16M against Table 3's 3.44M / 6.17M
(3.06M) / 4.58M / 14.19M (:meth:`AffinityModel.parameter_counts`; docs/affinity.md says which
size fixes which choice).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from chestdx.errors import ConfigError
from chestdx.models.base import ChestModel, ModelOutput
from chestdx.models.registry import MODELS

#: torchvision ResNets that can carry the FPN.
FPN_BACKBONES = ("resnet18", "resnet34", "resnet50")


@contextmanager
def _training(*modules: nn.Module, mode: bool = True) -> Iterator[None]:
    """Temporarily set ``.train(mode)`` on ``modules`` (restored afterwards)."""
    saved = [[m.training for m in mod.modules()] for mod in modules]
    for mod in modules:
        mod.train(mode)
    try:
        yield
    finally:
        for mod, flags in zip(modules, saved, strict=True):
            for m, f in zip(mod.modules(), flags, strict=True):
                m.training = f


class _RelativeAnchorGenerator(AnchorGenerator):
    """torchvision's anchors (ratios 0.5, 1, 2) with sizes given as fractions of the padded image side:
    one size per feature level, or, ``single_level``, every size on the one level (``5 x 3 = 15``
    anchors per location)."""

    def __init__(self, fractions: tuple[float, ...], min_px: float = 4.0, single_level: bool = False):
        if single_level:
            super().__init__((tuple(32.0 * 2**i for i in range(len(fractions))),), ((0.5, 1.0, 2.0),))
        else:
            super().__init__(tuple((32.0 * 2**i,) for i in range(len(fractions))),
                             ((0.5, 1.0, 2.0),) * len(fractions))
        self.fractions, self.min_px, self.single_level, self._side = fractions, min_px, single_level, -1

    def forward(self, image_list: Any, feature_maps: list[Tensor]) -> list[Tensor]:
        side = int(max(image_list.tensors.shape[-2:]))
        if side != self._side:
            sizes = tuple((max(self.min_px, f * side),) for f in self.fractions)
            self.sizes = (tuple(s[0] for s in sizes),) if self.single_level else sizes
            self.cell_anchors = [self.generate_anchors(s, a)  # type: ignore[arg-type]
                                 for s, a in zip(self.sizes, self.aspect_ratios, strict=True)]
            self._side = side
        return super().forward(image_list, feature_maps)  # type: ignore[no-any-return]


class _PassThroughTransform(GeneralizedRCNNTransform):
    """torchvision's detector transform without the resize: chestdx images come preprocessed
    (``(1, S, S)``, normalised), so boxes and masks stay in the input's pixels."""

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None
               ) -> tuple[Tensor, dict[str, Tensor] | None]:
        return image, target


class SieveStage(nn.Module):
    """One mask sieve stage: ``(M, C, H, W) -> (M, W', H/2, W/2) -> (M, C, H, W)``.

    Args:
        channels: ``C``.
        width: ``W'``, channels between the two convolutions (default ``C``).
        kernel: the downsampling convolution's kernel: 3 (padding 1) or 2 (no padding); stride 2.
    """

    def __init__(self, channels: int, width: int | None = None, kernel: int = 3):
        super().__init__()
        if kernel not in (2, 3):
            raise ConfigError(f"affinity layer: sieve_kernel must be 2 or 3, got {kernel!r}")
        mid = int(width or channels)
        self.down = nn.Conv2d(channels, mid, kernel, stride=2, padding=kernel - 2)
        self.up = nn.ConvTranspose2d(mid, channels, 2, stride=2)
        # He init, zero bias: PyTorch's default init shrinks the features ~3x per layer, so after
        # 3 stages (6 layers) the image-to-image differences were ~1e-4 of a bias-driven constant
        # and the classifier saw the same vector for every image (measured: spread 8e-5 vs 3.7e-2).
        for conv in (self.down, self.up):
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)  # type: ignore[arg-type]

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        y = F.relu(self.up(F.relu(self.down(x))))
        if y.shape[-2:] != (h, w):  # odd sizes: back to exactly H x W
            y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
        return y


class AffinityLayer(nn.Module):
    """Mask sieve, vectorisation, affinity matrix and affinity vector (paper Sec. 3.3-3.5).

    Args:
        channels: ``C``, features per lesion mask.
        roi_batch: ``B``, lesion masks per image.
        affinities: ``C'``, affinities learned per feature (the paper tests 32..512).
        sieve_stages: ``N`` down/up stages (the paper uses 3; 0 skips the sieve).
        sieve_width, sieve_kernel: see :class:`SieveStage` (default ``C`` and 3).
        vectorise: ``H x W -> 1 x 1`` by the spatial ``mean`` (default), or ``conv``: learned
            downsampling, conv 2x2 stride 2 + ReLU twice (``H -> H/4``) then one conv of kernel
            ``H/4`` + ReLU (``-> 1``), all ``C -> C`` (the paper-sized model; needs ``mask_size``
            divisible by 4).
        mask_size: ``H = W`` of the lesion mask features (28 for the 14 px mask RoIAlign).
    """

    def __init__(self, channels: int, roi_batch: int = 8, affinities: int = 128, sieve_stages: int = 3,
                 sieve_width: int | None = None, sieve_kernel: int = 3, vectorise: str = "mean",
                 mask_size: int = 28):
        super().__init__()
        for name, v in (("channels", channels), ("roi_batch", roi_batch), ("affinities", affinities)):
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"affinity layer: {name} must be a positive integer, got {v!r}")
        if not isinstance(sieve_stages, int) or sieve_stages < 0:
            raise ConfigError(f"affinity layer: sieve_stages must be >= 0, got {sieve_stages!r}")
        if sieve_width is not None and (not isinstance(sieve_width, int) or sieve_width < 1):
            raise ConfigError(f"affinity layer: sieve_width must be a positive integer, got {sieve_width!r}")
        if vectorise not in ("mean", "conv"):
            raise ConfigError(f"affinity layer: vectorise must be 'mean' or 'conv', got {vectorise!r}")
        if vectorise == "conv" and (mask_size < 4 or mask_size % 4):
            raise ConfigError(f"affinity layer: vectorise 'conv' needs a mask size divisible by 4, got {mask_size}")
        self.channels, self.roi_batch, self.affinities = channels, roi_batch, affinities
        self.vectorise_mode, self.mask_size = vectorise, mask_size
        self.sieve = nn.Sequential(*[SieveStage(channels, sieve_width, sieve_kernel) for _ in range(sieve_stages)])
        self.to_vector = nn.Sequential()
        if vectorise == "conv":
            convs = [nn.Conv2d(channels, channels, 2, stride=2), nn.Conv2d(channels, channels, 2, stride=2),
                     nn.Conv2d(channels, channels, mask_size // 4)]
            for conv in convs:  # He init, zero bias, as the sieve
                nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
                nn.init.zeros_(conv.bias)  # type: ignore[arg-type]
            self.to_vector = nn.Sequential(*(m for conv in convs for m in (conv, nn.ReLU())))
        bound1, bound2 = 1.0 / math.sqrt(roi_batch), 1.0 / math.sqrt(affinities)
        self.W1 = nn.Parameter(torch.empty(roi_batch, affinities).uniform_(-bound1, bound1))
        self.w2 = nn.Parameter(torch.empty(affinities).uniform_(-bound2, bound2))

    def vectorise(self, masks: Tensor) -> Tensor:
        """Sieve and vectorisation (spatial mean, or the learned convolutions): ``(N, B, C, H, W)``
        -> ``X1 (N, B, C)``.

        Raises:
            ConfigError: when ``B`` or ``C`` differ from the layer's (or ``H, W`` from its
                ``mask_size`` with ``vectorise: conv``).
        """
        n, b, c, h, w = masks.shape
        if b != self.roi_batch or c != self.channels:
            raise ConfigError(f"affinity layer expects (N, {self.roi_batch}, {self.channels}, H, W) lesion "
                              f"mask features, got {tuple(masks.shape)}")
        if self.vectorise_mode == "conv" and (h, w) != (self.mask_size, self.mask_size):
            raise ConfigError(f"affinity layer (vectorise: conv) expects {self.mask_size} x {self.mask_size} lesion "
                              f"mask features, got {tuple(masks.shape)}")
        y = self.to_vector(self.sieve(masks.reshape(n * b, c, h, w)))
        return y.mean(dim=(2, 3)).reshape(n, b, c)

    def forward(self, masks: Tensor) -> tuple[Tensor, Tensor]:
        """``(N, B, C, H, W)`` lesion mask features -> affinity vector ``x3 (N, C)`` and ``X2 (N, C', C)``.

        ``X2 = W1^T X1`` (Eq. 3: ``x2[r, j] = w1_r . x1[:, j]``, the r-th affinity of feature j
        across the B lesions) and ``x3 = X2^T w2`` (Eq. 5).
        """
        x1 = self.vectorise(masks)
        x2 = torch.einsum("br,nbc->nrc", self.W1, x1)
        x3 = torch.einsum("nrc,r->nc", x2, self.w2)
        return x3, x2


class _LastLevelFPN(nn.Module):
    """A ResNet cut after ``layer`` with a one-level FPN on it (lateral 1x1 + output 3x3 conv):
    ``(N, C, S, S)`` -> ``{"0": (N, F, S/s, S/s)}`` (``s`` the layer's stride)."""

    def __init__(self, net: nn.Module, layer: str, in_channels: int, out_channels: int):
        super().__init__()
        from torchvision.models._utils import IntermediateLayerGetter
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork

        self.body = IntermediateLayerGetter(net, return_layers={layer: "0"})  # drops the layers after it
        self.fpn = FeaturePyramidNetwork([in_channels], out_channels, extra_blocks=None)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.fpn(self.body(x))  # type: ignore[no-any-return]


def _fpn_backbone(name: str, in_chans: int, weights: str, fpn_channels: int, stages: int = 4,
                  levels: str = "all") -> nn.Module:
    """A torchvision ResNet (first conv adapted to ``in_chans``) with an FPN.

    ``levels: all`` (with ``stages`` 4): the FPN on layer1..layer4, an ``OrderedDict`` of 5 maps
    (``"0".."3"`` and ``"pool"``), ``fpn_channels`` each. ``levels: last``: the ResNet cut after
    ``layer<stages>`` (3 or 4) with one FPN level on it, one map ``"0"`` (the paper's Fig. 1: "RPN
    and RoI are connected to the FPN feature output only").
    """
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    from chestdx.models.backbones import build_resnet

    if name not in FPN_BACKBONES:
        raise ConfigError(f"affinity model: backbone '{name}' has no FPN here; choose one of {FPN_BACKBONES}")
    if levels not in ("all", "last"):
        raise ConfigError(f"affinity model: fpn_levels must be 'all' or 'last', got {levels!r}")
    if stages not in (3, 4) or (levels == "all" and stages != 4):
        raise ConfigError(f"affinity model: backbone_stages={stages!r}: use 4, or 3 with fpn_levels 'last' "
                          "(ResNet to layer3 with one FPN level, the paper-sized model)")
    net, channels = build_resnet(name, in_chans, weights)
    stage = channels // 8  # layer1 channels: 64 (ResNet-18/34), 256 (ResNet-50)
    if levels == "last":
        return _LastLevelFPN(net, f"layer{stages}", stage * 2 ** (stages - 1), fpn_channels)
    return BackboneWithFPN(net, {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
                           [stage, stage * 2, stage * 4, stage * 8], fpn_channels, extra_blocks=LastLevelMaxPool())


class AffinityModel(ChestModel):
    """Mask R-CNN + lesion mask feature branch + affinity layer + image classifier.

    ``forward(x)`` runs the classification stage and returns a :class:`ModelOutput` with
    ``logits (N, K)``, ``embedding`` = the affinity vector ``x3 (N, C)``, ``features`` None (no
    spatial map: CAM does not apply) and ``maps``: ``affinity`` ``X2 (N, C', C)``, ``roi_boxes``
    ``(N, B, 4)`` and ``roi_scores`` ``(N, B)`` (padding rows score ``-1``).
    :meth:`segmentation_losses` is ``L_SEG``; :meth:`detect` the segmentation answer.

    Args:
        num_classes: ``K`` image classes (3: normal / pneumonia / COVID-19).
        backbone: ``resnet18`` / ``resnet34`` / ``resnet50`` (+ FPN).
        in_chans: image channels (1).
        weights: backbone weights: ``none`` or ``imagenet`` (local file, never downloaded) or a path.
        affinities: ``C'``.
        roi_batch: ``B`` lesion masks per image.
        sieve_stages: ``N``.
        fpn_channels: FPN width (256 in the paper / torchvision).
        mask_channels: ``C`` of the mask branch (256 in the paper).
        box_hidden: width of the box head's two FC layers (1024 in torchvision).
        fc_hidden: width of the image classifier's two FC layers.
        anchor_fractions: one anchor size per FPN level as a fraction of the image side; the
            default ``(1/16, 1/8, 1/4, 1/2, 1)`` gives torchvision's 32..512 px on the paper's 512 px
            slices and scales with the input (at least 4 px), so one model works at any size.
        rpn_pre_nms_top_n, rpn_post_nms_top_n: proposals kept by the RPN (train, test) before / after NMS.
        rpn_batch_size_per_image, box_batch_size_per_image: sampled anchors / RoIs for ``L_SEG``.
        box_nms_thresh: NMS IoU for detections and for the RoI batch selection.
        box_score_thresh: score threshold of :meth:`detect` only (the RoI batch selection keeps any score).
        detections_per_img: detections :meth:`detect` returns at most.
        backbone_stages: ResNet stages used, 4 (default) or 3 (cut after layer3; with
            ``fpn_levels: last``).
        fpn_levels: ``all`` (the FPN on layer1..layer4 plus a pooled level; RPN and RoIAlign on
            all levels, torchvision's Mask R-CNN) or ``last`` (one FPN level on the last stage and
            RPN / RoIAlign on it alone, as the paper's Fig. 1; the 5 anchor sizes then all sit on
            that level, 15 anchors per location).
        mask_convs: 3x3 convolutions of the mask head (torchvision: 4).
        mask_feature_convs: 3x3 convolutions + ReLU (``C -> C``) after the copied transposed
            convolution of the lesion mask-feature branch (default 0). They have no segmentation
            counterpart to be copied from, so ``L_CLS`` trains them (like the sieve).
        sieve_width, sieve_kernel, vectorise: of the :class:`AffinityLayer`.
    """

    def __init__(self, num_classes: int = 3, backbone: str = "resnet50", in_chans: int = 1, weights: str = "none",
                 affinities: int = 128, roi_batch: int = 8, sieve_stages: int = 3,
                 fpn_channels: int = 256, mask_channels: int = 256, box_hidden: int = 1024, fc_hidden: int = 1024,
                 anchor_fractions: Sequence[float] = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0),
                 rpn_pre_nms_top_n: tuple[int, int] = (2000, 1000), rpn_post_nms_top_n: tuple[int, int] = (2000, 1000),
                 rpn_batch_size_per_image: int = 256, box_batch_size_per_image: int = 512,
                 box_nms_thresh: float = 0.5, box_score_thresh: float = 0.05, detections_per_img: int = 100,
                 backbone_stages: int = 4, fpn_levels: str = "all", mask_convs: int = 4, mask_feature_convs: int = 0,
                 sieve_width: int | None = None, sieve_kernel: int = 3, vectorise: str = "mean"):
        super().__init__()
        from torchvision.models.detection import MaskRCNN
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
        from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
        from torchvision.ops import MultiScaleRoIAlign

        self.num_classes, self.in_chans, self.feature_dim = num_classes, in_chans, mask_channels
        self.roi_batch = roi_batch
        if len(anchor_fractions) != 5 or not all(0 < f <= 4 for f in anchor_fractions):
            raise ConfigError("affinity model: anchor_fractions needs 5 fractions of the image side in (0, 4], "
                              f"one per FPN level; got {anchor_fractions}")
        for key, v, low in (("mask_convs", mask_convs, 1), ("mask_feature_convs", mask_feature_convs, 0)):
            if not isinstance(v, int) or v < low:
                raise ConfigError(f"affinity model: {key} must be an integer >= {low}, got {v!r}")
        single = fpn_levels == "last"
        anchors = _RelativeAnchorGenerator(tuple(float(f) for f in anchor_fractions), single_level=single)
        body = _fpn_backbone(backbone, in_chans, weights, fpn_channels, backbone_stages, fpn_levels)
        pools: dict[str, Any] = ({"box_roi_pool": MultiScaleRoIAlign(["0"], 7, 2),
                                  "mask_roi_pool": MultiScaleRoIAlign(["0"], 14, 2)} if single else {})
        box_head = TwoMLPHead(fpn_channels * 7 * 7, box_hidden)
        mask_head = MaskRCNNHeads(fpn_channels, (mask_channels,) * mask_convs, 1)
        self.detector = MaskRCNN(
            body, num_classes=None, min_size=1, max_size=1,
            image_mean=[0.0] * in_chans, image_std=[1.0] * in_chans,
            rpn_anchor_generator=anchors,
            rpn_pre_nms_top_n_train=rpn_pre_nms_top_n[0], rpn_pre_nms_top_n_test=rpn_pre_nms_top_n[1],
            rpn_post_nms_top_n_train=rpn_post_nms_top_n[0], rpn_post_nms_top_n_test=rpn_post_nms_top_n[1],
            rpn_batch_size_per_image=rpn_batch_size_per_image,
            box_head=box_head, box_predictor=FastRCNNPredictor(box_hidden, 2),
            box_batch_size_per_image=box_batch_size_per_image, box_nms_thresh=box_nms_thresh,
            box_score_thresh=box_score_thresh, box_detections_per_img=detections_per_img,
            mask_head=mask_head, mask_predictor=MaskRCNNPredictor(mask_channels, mask_channels, 2), **pools,
        )
        self.detector.transform = _PassThroughTransform(1, 1, [0.0] * in_chans, [1.0] * in_chans)
        rh: Any = self.detector.roi_heads
        # Theta_3^RoI: copies of the detection and mask branches, changed only by maybe_copy_branches
        self.cls_box_head = copy.deepcopy(rh.box_head)
        self.cls_box_predictor = copy.deepcopy(rh.box_predictor)
        self.cls_mask_head = copy.deepcopy(rh.mask_head)
        self.cls_mask_features = nn.Sequential(copy.deepcopy(rh.mask_predictor.conv5_mask), nn.ReLU())
        for m in self.roi_copies():
            m.requires_grad_(False)
        # mask_feature_convs: trained by L_CLS (nothing to copy them from); empty by default
        self.mask_feature_convs = nn.Sequential()
        for _ in range(mask_feature_convs):
            conv = nn.Conv2d(mask_channels, mask_channels, 3, padding=1)
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)  # type: ignore[arg-type]
            self.mask_feature_convs.extend([conv, nn.ReLU()])
        self.affinity = AffinityLayer(mask_channels, roi_batch, affinities, sieve_stages, sieve_width, sieve_kernel,
                                      vectorise, mask_size=2 * 14)  # 14 px mask RoIAlign, x2 by the transposed conv
        self.classifier = nn.Sequential(
            nn.Linear(mask_channels, fc_hidden), nn.ReLU(inplace=True),
            nn.Linear(fc_hidden, fc_hidden), nn.ReLU(inplace=True),
            nn.Linear(fc_hidden, num_classes),
        )
        self.register_buffer("prev_seg_loss", torch.tensor(float("inf")))
        self.register_buffer("copies", torch.tensor(0, dtype=torch.long))

    # ------------------------------------------------------------------------------ weight copy

    def roi_copies(self) -> list[nn.Module]:
        """The classification RoI branches ``Theta_3^RoI`` (no gradient ever reaches them)."""
        return [self.cls_box_head, self.cls_box_predictor, self.cls_mask_head, self.cls_mask_features]

    def parameter_counts(self) -> dict[str, int]:
        """Parameters by the columns of the paper's Table 3 ("model sizes"):

        ``backbone_fpn`` (ResNet + FPN), ``rpn_roi`` (RPN, the segmentation RoI branches and the
        classification branch), ``classification_branch`` (the RoI copies ``Theta_3^RoI`` and the
        ``mask_feature_convs``), ``affinity_layer`` (sieve, vectorisation, ``W1``, ``w2`` and the
        image classifier's FC layers: the paper's column sums to its total only with them) and
        ``total``. Frozen and trainable parameters both count; buffers do not.
        """
        def n(*mods: nn.Module) -> int:
            return sum(p.numel() for m in mods for p in m.parameters())

        cls_branch = n(*self.roi_copies(), self.mask_feature_convs)
        return {"backbone_fpn": n(self.detector.backbone),
                "rpn_roi": n(self.detector.rpn, self.detector.roi_heads) + cls_branch,
                "classification_branch": cls_branch,
                "affinity_layer": n(self.affinity, self.classifier),
                "total": n(self)}

    @torch.no_grad()
    def copy_branches(self) -> None:
        """Copy the segmentation RoI branches ``Theta_2^RoI`` into ``Theta_3^RoI``."""
        rh: Any = self.detector.roi_heads
        self.cls_box_head.load_state_dict(rh.box_head.state_dict())
        self.cls_box_predictor.load_state_dict(rh.box_predictor.state_dict())
        self.cls_mask_head.load_state_dict(rh.mask_head.state_dict())
        self.cls_mask_features[0].load_state_dict(rh.mask_predictor.conv5_mask.state_dict())

    @torch.no_grad()
    def maybe_copy_branches(self, seg_loss: Tensor | float) -> bool:
        """Algorithm 1: copy the branches when ``L_SEG(t) < L_SEG(t-1)``; remember ``L_SEG(t)``.

        Call after the backward pass of ``L_SEG(t)`` and before the optimiser step.

        Returns:
            whether the weights were copied.
        """
        value = float(seg_loss)
        prev: Tensor = self.prev_seg_loss  # type: ignore[assignment]
        count: Tensor = self.copies  # type: ignore[assignment]
        improved = value < float(prev)
        if improved:
            self.copy_branches()
            count.add_(1)
        prev.fill_(value)
        return improved

    # ------------------------------------------------------------------------------ segmentation

    def _prepare(self, images: Tensor | Sequence[Tensor], targets: list[dict[str, Tensor]] | None = None
                 ) -> tuple[Any, list[dict[str, Tensor]] | None]:
        imgs = list(images) if isinstance(images, Tensor) else list(images)
        return self.detector.transform(imgs, targets)

    def segmentation_losses(self, images: Tensor | Sequence[Tensor],
                            targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Mask R-CNN's ``L_SEG`` terms (RPN objectness / box, RoI class / box / mask).

        Works in eval mode too (the RPN and RoI heads are switched to training behaviour for the
        call; the backbone keeps its mode), so validation can score ``L_SEG``.

        Args:
            images: ``(N, 1, S, S)`` or a list of ``(1, S, S)``.
            targets: per image ``boxes (n, 4)`` float (x0, y0, x1, y1), ``labels (n,)`` long (1 =
                lesion), ``masks (n, S, S)`` uint8; ``n = 0`` for negative images.

        Returns:
            ``loss_objectness``, ``loss_rpn_box_reg``, ``loss_classifier``, ``loss_box_reg``, ``loss_mask``.
        """
        il, tg = self._prepare(images, [dict(t) for t in targets])
        feats = self.detector.backbone(il.tensors)
        with _training(self.detector.rpn, self.detector.roi_heads):
            proposals, rpn_losses = self.detector.rpn(il, feats, tg)
            _, roi_losses = self.detector.roi_heads(feats, proposals, il.image_sizes, tg)
        return {**rpn_losses, **roi_losses}

    @torch.no_grad()
    def detect(self, images: Tensor | Sequence[Tensor]) -> list[dict[str, Tensor]]:
        """The segmentation answer (eval behaviour, whatever the module's mode).

        Returns:
            per image ``boxes (m, 4)``, ``scores (m,)``, ``labels (m,)`` and ``masks (m, 1, S, S)``
            probabilities pasted into the image (threshold 0.5 = the paper's mask logit > 0).
        """
        with _training(self.detector, mode=False):
            return self.detector(list(images))  # type: ignore[no-any-return]

    # ------------------------------------------------------------------------------ classification

    @torch.no_grad()
    def _select_rois(self, feats: dict[str, Tensor], proposals: list[Tensor],
                     image_sizes: list[tuple[int, int]]) -> tuple[list[Tensor], list[Tensor]]:
        """RoI batch selection: score the proposals with the copied box branch, keep any score,
        drop empty boxes, NMS, top ``B``.

        Returns:
            per image boxes ``(b_i, 4)`` and lesion scores ``(b_i,)``, ``b_i <= B``, best first.
        """
        from torchvision.ops import boxes as box_ops

        rh: Any = self.detector.roi_heads
        x = rh.box_roi_pool(feats, proposals, image_sizes)
        logits, regression = self.cls_box_predictor(self.cls_box_head(x))
        boxes = rh.box_coder.decode(regression, proposals)[:, 1]  # the lesion class
        scores = F.softmax(logits, -1)[:, 1]
        out_b, out_s = [], []
        for b, s, size in zip(boxes.split([len(p) for p in proposals]), scores.split([len(p) for p in proposals]),
                              image_sizes, strict=True):
            b = box_ops.clip_boxes_to_image(b, size)
            keep = box_ops.remove_small_boxes(b, min_size=1e-2)
            b, s = b[keep], s[keep]
            keep = box_ops.nms(b, s, rh.nms_thresh)[: self.roi_batch]
            out_b.append(b[keep])
            out_s.append(s[keep])
        return out_b, out_s

    def lesion_mask_features(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Classification stage up to the affinity layer.

        Args:
            images: ``(N, 1, S, S)``.

        Returns:
            lesion mask features ``(N, B, C, H, W)`` (zeros where padded), boxes ``(N, B, 4)`` and
            scores ``(N, B)`` (``-1`` where padded). Gradients reach the backbone through RoIAlign
            and the frozen mask-feature copy; not the RPN or the box selection.
        """
        il, _ = self._prepare(images)
        feats = self.detector.backbone(il.tensors)
        with _training(self.detector.rpn, mode=False), torch.no_grad():
            proposals, _ = self.detector.rpn(il, feats)
        boxes, scores = self._select_rois(feats, proposals, il.image_sizes)
        rh: Any = self.detector.roi_heads
        n, bsz = len(boxes), self.roi_batch
        m = self.cls_mask_features(self.cls_mask_head(rh.mask_roi_pool(feats, boxes, il.image_sizes)))
        m = self.mask_feature_convs(m)
        out = m.new_zeros((n, bsz) + tuple(m.shape[1:]))
        box_out = images.new_zeros((n, bsz, 4))
        score_out = images.new_full((n, bsz), -1.0)
        start = 0
        for i, (b, s) in enumerate(zip(boxes, scores, strict=True)):
            k = len(b)
            out[i, :k] = m[start:start + k]
            box_out[i, :k], score_out[i, :k] = b, s
            start += k
        return out, box_out, score_out

    def forward(self, x: Tensor) -> ModelOutput:
        """``(N, 1, S, S)`` -> :class:`ModelOutput` (logits ``(N, K)``, see the class docstring)."""
        masks, boxes, scores = self.lesion_mask_features(x)
        x3, x2 = self.affinity(masks)
        logits = self.classifier(x3)
        return ModelOutput(logits=logits, features=None, embedding=x3,
                           maps={"affinity": x2, "roi_boxes": boxes, "roi_scores": scores})


@MODELS.register("affinity", accepts=AffinityModel, fixed=("backbone", "weights", "fc_hidden"))
def build_affinity_model(cfg: Any, num_classes: int, in_chans: int) -> AffinityModel:
    """Mask R-CNN + lesion-mask affinity classifier from a recipe's ``model`` section (``params`` are
    :class:`AffinityModel` keywords: affinities, roi_batch, sieve_stages, fpn_channels, ...;
    ``model.head_hidden`` is ``fc_hidden``).

    Raises:
        ConfigError: unknown or bad ``params``.
    """
    params = dict(cfg.params)
    for key in ("rpn_pre_nms_top_n", "rpn_post_nms_top_n", "anchor_fractions"):
        if key in params:
            params[key] = tuple(params[key])
    try:
        return AffinityModel(num_classes, cfg.backbone, in_chans, cfg.weights, fc_hidden=cfg.head_hidden, **params)
    except TypeError as e:
        raise ConfigError(f"model 'affinity': bad params {cfg.params}: {e}") from None
