"""``data.normalize: global`` (issue 17): one mean / std over the training split's pixels, computed
when training starts, stored in the run's recipe and its bundle, used by evaluate / predict / serve."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from chestdx.config import DataConfig, load_recipe
from chestdx.data.layouts import Sample
from chestdx.data.normalization import global_mean_std, with_global_normalization
from chestdx.data.transforms import LoadPreprocess, normalize
from chestdx.errors import ConfigError, DatasetError
from tests.conftest import TINY


def _png(path, value: int, size: int = 16):
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)
    return str(path)


def test_global_stats_by_hand(tmp_path):
    """Two training images, all 0 and all 255: mean 0.5, std 0.5 (population); the validation image
    (all 51 = 0.2) does not enter them. A train pixel of 1.0 becomes 1.0, the val pixel -0.6."""
    samples = [Sample(_png(tmp_path / "a.png", 0), 0, "p1", "s", split="train"),
               Sample(_png(tmp_path / "b.png", 255), 1, "p2", "s", split="train"),
               Sample(_png(tmp_path / "c.png", 51), 1, "p3", "s", split="val")]
    cfg = DataConfig(image_size=16, normalize="global")
    mean, std = global_mean_std(samples, cfg)
    assert (mean, std) == pytest.approx((0.5, 0.5))
    assert global_mean_std(samples, cfg, split=None) == pytest.approx(
        (0.4, float(np.std([0.0, 1.0, 0.2]))))  # with the val image: another answer
    recipe = load_recipe("demo", ["data.image_size=16", "data.normalize=global"])
    fitted = with_global_normalization(recipe, samples)
    assert fitted.data.normalize_stats == pytest.approx((0.5, 0.5))
    assert recipe.data.normalize_stats is None  # the caller's recipe is left alone (k-fold reuses it)
    pre = LoadPreprocess(fitted.data)
    for s, want in zip(samples, (-1.0, 1.0, -0.6), strict=True):
        np.testing.assert_allclose(pre({"path": s.path, "box": None, "mask": None})["image"].numpy(), want, atol=1e-6)
    # per-image z-score would give 0 for these constant images: global is what they got
    z = normalize(np.full((4, 4), 0.2, np.float32), "zscore")
    assert float(np.abs(z).max()) == 0.0
    given = load_recipe("demo", ["data.normalize=global", "data.normalize_stats=[0.1, 2.0]"])
    assert with_global_normalization(given, samples) is given  # given stats are kept, nothing computed


def test_global_without_stats_or_with_a_bad_std_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="normalize_stats"):
        normalize(np.zeros((4, 4), np.float32), "global")
    with pytest.raises(ConfigError, match="std > 0"):
        load_recipe("demo", ["data.normalize=global", "data.normalize_stats=[0.5, 0.0]"])
    with pytest.raises(ConfigError, match="not read by task 'volume'"):
        load_recipe("cmc_model4", ["data.normalize=global"])
    flat = [Sample(_png(tmp_path / f"{i}.png", 7), i % 2, f"p{i}", "s", split="train") for i in range(2)]
    with pytest.raises(DatasetError, match="standard deviation is 0"):
        global_mean_std(flat, DataConfig(image_size=16))
    with pytest.raises(DatasetError, match="no 'train' images"):
        global_mean_std([Sample(flat[0].path, 0, "p", "s", split="val")], DataConfig(image_size=16))


def test_a_run_stores_its_training_stats_and_predict_and_the_bundle_use_them(phantom_slices, tmp_path):
    from chestdx.engine.run import Run
    from chestdx.engine.train import train
    from chestdx.predict.bundle import export_bundle, load_bundle
    from chestdx.predict.predictor import Predictor

    recipe = load_recipe("demo", [*TINY, "data.normalize=global"])
    run = train(recipe, [phantom_slices], tmp_path / "run", progress=False)
    stored = Run(run.path).recipe.data
    assert stored.normalize == "global"
    want = global_mean_std(run.samples(), stored)  # the run's training split
    assert stored.normalize_stats == pytest.approx(want, rel=1e-9)
    test_file = next(s.path for s in run.samples() if s.split == "test")
    unit = LoadPreprocess(stored.model_copy(update={"normalize": "unit"}))({"path": test_file, "box": None,
                                                                          "mask": None})["image"]
    expected = (unit - want[0]) / want[1]
    for source in (run.path, export_bundle(run, tmp_path / "bundle")):
        p = Predictor(source)
        assert p.recipe.data.normalize_stats == pytest.approx(want, rel=1e-9)
        np.testing.assert_allclose(p.preprocess(test_file).numpy(), expected.numpy(), atol=1e-5)
    assert load_bundle(tmp_path / "bundle").recipe.data.normalize_stats == pytest.approx(want, rel=1e-9)
    # --resume with the recipe as given (no stats) continues the run's own stats, not a changed setting
    again = train(recipe, [phantom_slices], tmp_path / "run", progress=False, resume=True)
    assert again.recipe.data.normalize_stats == stored.normalize_stats
