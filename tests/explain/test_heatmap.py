"""The explanation shown to users: the kind measured best per model family (``auto``), or the kind asked for."""

from __future__ import annotations

import pytest
import torch

from chestdx.config import load_recipe
from chestdx.errors import ConfigError
from chestdx.explain.heatmap import heatmap
from chestdx.models import build_model


def _model(recipe: str):
    r = load_recipe(recipe, {"data": {"image_size": 32}, "model": {"backbone": "resnet18", "weights": "none"}})
    return build_model(r.model, num_classes=r.data.num_classes).eval()


@pytest.mark.parametrize(("recipe", "kind", "own"), [("demo", "intgrad", None), ("att2", "intgrad", "att2"),
                                                   ("magsd", "intgrad", "attention")])
def test_auto_picks_the_measured_default(recipe, kind, own):
    """``auto``: the kind that pointed best on the phantom per family (docs/explain.md; ATT2 and MAG-SD:
    ``intgrad``, not their own attention maps, which are still drawn when asked for); the answer stays."""
    from chestdx.explain.heatmap import auto_kind

    torch.manual_seed(0)
    model = _model(recipe)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        before = model(x).logits.clone()
    assert auto_kind(model) == kind and auto_kind(model, 5) is None
    maps, used = heatmap(model, x)
    assert used == kind and maps.shape == (2, 32, 32)
    assert maps.min() >= 0 and torch.allclose(maps.flatten(1).amax(1), torch.ones(2))
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, before)  # a heatmap never changes the answer
    assert all(p.grad is None for p in model.parameters())
    if own is not None:
        assert heatmap(model, x, own)[1] == own


def test_att2_map_is_sqrt_of_the_product():
    from chestdx.explain.attention_masks import combine_attention

    model = _model("att2")
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        out = model(x)
    want = combine_attention(out.maps["att1"], out.maps["att2"], (32, 32))
    got, _ = heatmap(model, x, "att2")
    torch.testing.assert_close(got, want / want.max())


def test_fine_kinds_keep_the_answer_and_state_their_grid():
    from chestdx.explain.cam import FINE_KINDS
    from chestdx.explain.heatmap import heatmap_grid

    torch.manual_seed(0)
    model = _model("demo")
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        before = model(x).logits.clone()
    assert heatmap_grid(model, "cam", (64, 64)) == (2, 2)
    for kind in FINE_KINDS:
        maps, used = heatmap(model, x, kind)
        assert used == kind and maps.shape == (2, 64, 64) and maps.min() >= 0
        stride = FINE_KINDS[kind][1]
        assert heatmap_grid(model, kind, (64, 64)) == (64 // stride, 64 // stride)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, before)  # a heatmap never changes the answer
    assert all(p.grad is None for p in model.parameters())
    assert heatmap_grid(_model("att2"), "cam", (64, 64)) is None
    with pytest.raises(ConfigError, match="no stage maps"):
        heatmap(_model("att2"), torch.zeros(1, 1, 32, 32), "layercam8")


def test_bad_kinds():
    with pytest.raises(ConfigError, match="unknown heatmap kind"):
        heatmap(_model("demo"), torch.zeros(1, 1, 32, 32), "gradients")
    with pytest.raises(ConfigError, match="no attention maps"):
        heatmap(_model("demo"), torch.zeros(1, 1, 32, 32), "attention")


def _count_passes(model, monkeypatch):
    """Count the backbone passes (forward or forward_stages) ``model`` makes."""
    calls = []
    bb = model.backbone
    for name in ("forward", "forward_stages"):
        orig = getattr(bb, name)
        monkeypatch.setattr(bb, name, lambda x, _o=orig, _n=name: calls.append(_n) or _o(x))
    return calls


def test_answer_with_heatmap_shares_the_float32_pass(monkeypatch):
    """A stage map outside autocast: one backbone pass gives the no-grad answer and heatmap()'s map.
    Under bf16 autocast: the answer of a bf16 pass, the map of a float32 pass (two passes)."""
    from chestdx.explain.cam import FINE_KINDS
    from chestdx.explain.heatmap import DEFAULT_CNN_KIND, answer_with_heatmap, float32_map, stage_kind

    torch.manual_seed(0)
    model = _model("demo")
    x = torch.randn(2, 1, 64, 64)
    assert stage_kind(model) == (DEFAULT_CNN_KIND if DEFAULT_CNN_KIND in FINE_KINDS else None)
    assert stage_kind(model, "layercam8") == "layercam8" and float32_map(model, "gradcam16") == ("gradcam16", 1)
    assert stage_kind(model, "cam") is None and stage_kind(model, "auto", 5) is None
    assert stage_kind(_model("att2")) is None and stage_kind(_model("magsd")) is None
    assert float32_map(model, "cam") is None and float32_map(_model("att2"), "att2") is None
    assert float32_map(_model("att2")) == ("intgrad", 2) == float32_map(_model("magsd"))  # auto: intgrad
    assert float32_map(model, "occlusion") == ("occlusion", 64) and float32_map(model, "intgrad") == ("intgrad", 2)
    assert float32_map(model)[0] == DEFAULT_CNN_KIND  # what auto draws on a CNN
    with torch.no_grad():
        ref = model(x)
    want, _ = heatmap(model, x, "layercam8", out=ref)
    calls = _count_passes(model, monkeypatch)
    out, maps, kind = answer_with_heatmap(model, x, "layercam8")
    assert calls == ["forward_stages"] and kind == "layercam8"
    assert torch.equal(out.logits, ref.logits) and torch.equal(out.probs, ref.probs) and torch.equal(maps, want)
    assert all(p.grad is None for p in model.parameters())

    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            ref16 = model(x)
        calls.clear()
        out16, maps16, _ = answer_with_heatmap(model, x, "layercam8")
    assert calls == ["forward", "forward_stages"]  # the answer in bf16, the map in float32
    assert torch.equal(out16.logits.float(), ref16.logits.float()) and not torch.equal(out16.logits.float(), ref.logits)
    torch.testing.assert_close(maps16, want, rtol=0, atol=1e-6)

    att2 = _model("att2")
    xa = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        ref = att2(xa)
    out, maps, kind = answer_with_heatmap(att2, xa)
    assert kind == "intgrad" and maps.shape == (1, 32, 32) and torch.equal(out.logits, ref.logits)
    out, maps, kind = answer_with_heatmap(att2, xa, "att2")
    assert kind == "att2" and maps.shape == (1, 32, 32) and torch.equal(out.logits, ref.logits)
