"""The explanation shown to users: the model's own attention where it has one, else CAM."""

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


@pytest.mark.parametrize(("recipe", "kind"), [("demo", "cam"), ("att2", "att2"), ("magsd", "attention")])
def test_auto_picks_the_papers_map(recipe, kind):
    torch.manual_seed(0)
    x = torch.randn(2, 1, 32, 32)
    maps, used = heatmap(_model(recipe), x)
    assert used == kind and maps.shape == (2, 32, 32)
    assert maps.min() >= 0 and torch.allclose(maps.flatten(1).amax(1), torch.ones(2))


def test_att2_map_is_sqrt_of_the_product():
    from chestdx.explain.attention_masks import combine_attention

    model = _model("att2")
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        out = model(x)
    want = combine_attention(out.maps["att1"], out.maps["att2"], (32, 32))
    got, _ = heatmap(model, x, "att2")
    torch.testing.assert_close(got, want / want.max())


def test_bad_kinds():
    with pytest.raises(ConfigError, match="unknown heatmap kind"):
        heatmap(_model("demo"), torch.zeros(1, 1, 32, 32), "gradients")
    with pytest.raises(ConfigError, match="no attention maps"):
        heatmap(_model("demo"), torch.zeros(1, 1, 32, 32), "attention")
